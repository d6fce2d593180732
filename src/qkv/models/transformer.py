"""Transformer encoder-decoder translation (Vaswani et al. 2017), one readable file.

Pre-LN blocks (Xiong et al. 2020: LayerNorm before each sub-layer, which trains without
warm-up tricks at small sizes) on :class:`qkv.MultiHeadAttention`, sinusoidal positions,
optional embeddings shared between source, target and the output layer.

Two choices replace parts of the original (defaults: the original):

    mixer        what mixes positions in the encoder and decoder self-attention sub-layers:
                 "attention" (multi-head attention), "lightconv" or "dynamicconv" (Wu et al.
                 2019, "Pay Less Attention with Lightweight and Dynamic Convolutions": a GLU,
                 a softmax-normalized depthwise convolution of width kernel_size, centered in
                 the encoder and causal in the decoder). Cross-attention stays attention.
    positional   "sinusoidal" (Vaswani et al. 2017, added to the embeddings), "learned"
                 (a trained vector per position, per side), "rope" (rotary queries and keys in
                 self-attention, Su et al. 2021), "alibi" (a linear distance penalty on the
                 self-attention logits, Press et al. 2021: symmetric in the encoder, causal in
                 the decoder), "t5" (a learned bias per relative-position bucket and head,
                 one table per stack, Raffel et al. 2020) or "none". rope, alibi and t5 act on
                 self-attention logits, so they need mixer="attention". Note: the symmetric
                 ALiBi encoder bias -m|i - j| cannot tell left from right, and cross-attention
                 has no positions, so a source and its reverse give the decoder the same
                 memory: with "alibi" the model cannot learn order-sensitive translation
                 (benchmarks/compare_variants.py measures it); rope and t5 see the direction.

    encoder layer   x = x + Drop(SelfAttn(LN(x), source padding))
                    x = x + Drop(FFN(LN(x)))
    decoder layer   y = y + Drop(SelfAttn(LN(y), causal))
                    y = y + Drop(CrossAttn(LN(y), memory, source padding))
                    y = y + Drop(FFN(LN(y)))

Shapes (B batch, S source length, T target length, E model size, V vocabulary)::

    src (B, S) long, src_lengths (B,), tgt_in (B, T) = <sos> y_1 .. y_{T-1}
    -> logits (B, T, V); with need_weights an AttentionMaps with per layer
       encoder (B, H, S, S), decoder (B, H, T, T), cross (B, H, T, S)

On a sharded sequence (inside ``with qkv.distributed.context_parallel(group, layout=...):``,
``src`` and ``tgt_in`` this rank's shards ``(B, S / world)`` and ``(B, T / world)`` of that
layout, ``src_lengths`` the whole sequences'): the forward returns this rank's rows of the
single-process logits. Absolute positions and rotary angles are the shard's global positions,
the source padding is built over the whole source, self-attention (causal in the decoder) and
cross-attention run the ring (the decoder's query shard over the memory's shards). The mixer
must be attention and the positions sinusoidal, learned, rope or none; ``step`` runs outside.

The step interface (``encode`` -> ``init_state`` -> ``step``) matches
:class:`qkv.models.seq2seq.Seq2Seq`; a step re-runs the decoder over the prefix decoded so
far (targets here are short; each step costs O(t) attention rows).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .._types import AttentionMaps
from ..backends.sequence_parallel import active, global_length, shard_positions
from ..masks import causal
from ..modules import MultiHeadAttention
from ..modules.dynamic_conv import DynamicConv, LightConv
from ..modules.positional import positional as build_positional
from ..modules.positional import sinusoidal_table

__all__ = ["MIXERS", "POSITIONALS", "Transformer", "TransformerConfig"]

#: The values of :attr:`TransformerConfig.mixer` and :attr:`TransformerConfig.positional`.
MIXERS = ("attention", "lightconv", "dynamicconv")
POSITIONALS = ("sinusoidal", "learned", "rope", "alibi", "t5", "none")
_LOGIT_POSITIONALS = ("rope", "alibi", "t5")  # act on self-attention logits


@dataclass(frozen=True)
class TransformerConfig:
    """Hyper-parameters of :class:`Transformer` (keyword-only, JSON-serializable).

    Attributes:
        src_vocab, tgt_vocab: vocabulary sizes (ids 0..3 are <pad> <sos> <eos> <unk>).
        d_model, num_heads, ff_dim: sizes (``d_model % num_heads == 0``).
        encoder_layers, decoder_layers: depths.
        dropout: on embeddings, attention outputs and the FFN.
        share_embeddings: one embedding table for source, target and the output layer
            (needs ``src_vocab == tgt_vocab``, a joint vocabulary); the target embedding is
            always tied to the output layer.
        max_len: longest sequence the positions cover ("sinusoidal" and "learned"; the
            relative kinds have no limit).
        mixer: one of ``MIXERS``: the encoder and decoder self-attention sub-layers.
        kernel_size: the convolution width of the ``"lightconv"``/``"dynamicconv"`` mixers.
        positional: one of ``POSITIONALS``.
    """

    src_vocab: int
    tgt_vocab: int
    d_model: int = 128
    num_heads: int = 4
    ff_dim: int = 256
    encoder_layers: int = 2
    decoder_layers: int = 2
    dropout: float = 0.1
    share_embeddings: bool = False
    max_len: int = 512
    pad_id: int = 0
    mixer: str = "attention"
    kernel_size: int = 7
    positional: str = "sinusoidal"

    def __post_init__(self) -> None:
        for name in ("src_vocab", "tgt_vocab", "d_model", "num_heads", "ff_dim", "max_len", "kernel_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
        for name in ("encoder_layers", "decoder_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}: expected an int >= 0, got {value!r}")
        if self.d_model % self.num_heads:
            raise ValueError(
                f"d_model: expected a multiple of num_heads={self.num_heads}, got {self.d_model}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {self.dropout!r}")
        for name, valid in (("mixer", MIXERS), ("positional", POSITIONALS)):
            if getattr(self, name) not in valid:
                raise ValueError(f"{name}: expected one of {', '.join(valid)}, got {getattr(self, name)!r}")
        if self.mixer != "attention" and self.positional in _LOGIT_POSITIONALS:
            raise ValueError(
                f"positional: {self.positional!r} acts on self-attention logits, which mixer={self.mixer!r} "
                "does not have; use sinusoidal, learned or none"
            )
        if self.positional == "rope" and (self.d_model // self.num_heads) % 2:
            raise ValueError(
                f"positional: 'rope' rotates feature pairs and needs an even head dim, "
                f"got d_model / num_heads = {self.d_model // self.num_heads}"
            )
        if self.share_embeddings and self.src_vocab != self.tgt_vocab:
            raise ValueError(
                "share_embeddings: needs one joint vocabulary (src_vocab == tgt_vocab), "
                f"got {self.src_vocab} and {self.tgt_vocab}"
            )

    def to_dict(self) -> dict:
        return {"kind": "transformer", **asdict(self)}


class FeedForward(nn.Sequential):
    def __init__(self, d_model: int, ff_dim: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(d_model, ff_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_dim, d_model)
        )


def _self_mixer(cfg: TransformerConfig, *, causal: bool) -> nn.Module:
    """The self-attention sub-layer: multi-head attention (rotary under "rope") or a
    LightConv/DynamicConv block (causal in the decoder, centered in the encoder)."""
    if cfg.mixer == "attention":
        return MultiHeadAttention(
            embed_dim=cfg.d_model,
            num_heads=cfg.num_heads,
            dropout=cfg.dropout,
            **({"rotary": True} if cfg.positional == "rope" else {}),
        )
    conv = LightConv if cfg.mixer == "lightconv" else DynamicConv
    return conv(
        embed_dim=cfg.d_model,
        kernel_size=cfg.kernel_size,
        num_heads=cfg.num_heads,
        causal=causal,
        weight_dropout=cfg.dropout,
    )


def _bias_kwargs(bias: Tensor | None) -> dict:
    return {} if bias is None else {"bias": bias}


class EncoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.self_attn = _self_mixer(cfg, causal=False)
        self.ff = FeedForward(cfg.d_model, cfg.ff_dim, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self, x: Tensor, pad: Tensor, need_weights: bool, bias: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """``bias``: a position bias ``(H, S, S)`` for the attention logits, or None."""
        h = self.norm1(x)
        a = self.self_attn(h, key_padding_mask=pad, need_weights=need_weights, **_bias_kwargs(bias))
        x = x + self.drop(a.out)
        return x + self.drop(self.ff(self.norm2(x))), a.weights


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(cfg.d_model) for _ in range(3))
        self.self_attn = _self_mixer(cfg, causal=True)
        self.causal_mask = cfg.mixer == "attention"  # a convolution mixer is causal by itself
        self.cross_attn = MultiHeadAttention(
            embed_dim=cfg.d_model, num_heads=cfg.num_heads, dropout=cfg.dropout
        )
        self.ff = FeedForward(cfg.d_model, cfg.ff_dim, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self, y: Tensor, memory: Tensor, pad: Tensor, need_weights: bool, bias: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``bias``: a position bias ``(H, T, T)`` for the self-attention logits, or None."""
        h = self.norm1(y)
        if self.causal_mask:
            s = self.self_attn(h, mask=causal(), need_weights=need_weights, **_bias_kwargs(bias))
        else:
            s = self.self_attn(h, need_weights=need_weights)
        y = y + self.drop(s.out)
        c = self.cross_attn(self.norm2(y), memory, memory, key_padding_mask=pad, need_weights=need_weights)
        y = y + self.drop(c.out)
        return y + self.drop(self.ff(self.norm3(y))), s.weights, c.weights


class Transformer(nn.Module):
    """Encoder-decoder Transformer translator; see the module docstring."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        cfg = self.config = config
        self.tgt_embed = nn.Embedding(cfg.tgt_vocab, cfg.d_model, padding_idx=cfg.pad_id)
        self.src_embed = (
            self.tgt_embed
            if cfg.share_embeddings
            else nn.Embedding(cfg.src_vocab, cfg.d_model, padding_idx=cfg.pad_id)
        )
        if cfg.positional == "sinusoidal":
            table = sinusoidal_table(torch.arange(cfg.max_len), cfg.d_model, dtype=torch.get_default_dtype())
            self.register_buffer("positions", table, persistent=False)  # (max_len, E)
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = nn.ModuleList([EncoderLayer(cfg) for _ in range(cfg.encoder_layers)])
        self.decoder = nn.ModuleList([DecoderLayer(cfg) for _ in range(cfg.decoder_layers)])
        self.enc_norm, self.dec_norm = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.tgt_vocab, bias=False)
        self.out.weight = self.tgt_embed.weight  # tied output layer (Press & Wolf 2017)
        nn.init.normal_(self.tgt_embed.weight, std=cfg.d_model**-0.5)
        if not cfg.share_embeddings:
            nn.init.normal_(self.src_embed.weight, std=cfg.d_model**-0.5)
        # Other position kinds (built last, so the default model draws its initial weights
        # exactly as before they existed).
        if cfg.positional == "learned":  # one table per side: x + P[0 .. T-1]
            self.src_positions = build_positional("learned", dim=cfg.d_model, max_len=cfg.max_len)
            self.tgt_positions = build_positional("learned", dim=cfg.d_model, max_len=cfg.max_len)
        elif cfg.positional in ("alibi", "t5"):  # biases (H, T, T), shared by the layers of a stack
            heads = cfg.num_heads
            self.enc_bias = build_positional(cfg.positional, num_heads=heads, causal=False)
            self.dec_bias = build_positional(cfg.positional, num_heads=heads, causal=True)

    def _embed(self, table: nn.Embedding, ids: Tensor, *, side: str = "src") -> Tensor:
        """Embeddings plus absolute positions: ``0 .. T-1``, or this shard's global positions
        inside a context-parallel block."""
        kind, length = self.config.positional, global_length(ids.shape[1])
        if kind in ("sinusoidal", "learned") and length > self.config.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len={self.config.max_len}")
        x = table(ids) * math.sqrt(self.config.d_model)  # (B, T, E)
        pos = shard_positions(ids.shape[1], ids.device)  # (T,)
        if kind == "sinusoidal":
            x = x + self.positions[pos]
        elif kind == "learned":
            x = (self.src_positions if side == "src" else self.tgt_positions)(x, positions=pos)
        return self.drop(x)

    def _check_sharded(self) -> None:
        """Inside a context-parallel block: refuse what mixes positions outside attention."""
        cfg = self.config
        if active() is None:
            return
        if cfg.mixer != "attention":
            raise ValueError(
                f"mixer: {cfg.mixer!r} convolves across shard boundaries; inside "
                "qkv.distributed.context_parallel the Transformer runs with mixer='attention'"
            )
        if cfg.positional in ("alibi", "t5"):
            raise ValueError(
                f"positional: {cfg.positional!r} is a (T, T) bias, which attention on a shard does not "
                "take; inside qkv.distributed.context_parallel use sinusoidal, learned, rope or none"
            )

    def _position_bias(self, stack: str, length: int) -> Tensor | None:
        """ALiBi / T5 bias ``(1, H, T, T)`` of a stack's self-attention (positions 0 .. T-1), or None."""
        if self.config.positional not in ("alibi", "t5"):
            return None
        return (self.enc_bias if stack == "encoder" else self.dec_bias)(length)[None]  # per head

    def encode(
        self, src: Tensor, src_lengths: Tensor, *, maps: AttentionMaps | None = None
    ) -> dict[str, Tensor]:
        """Run the encoder; the memory every decoding step reads (batch first).

        Inside a context-parallel block ``src`` is this rank's shard ``(B, S / world)`` and
        ``src_lengths`` the whole sequences' lengths; the memory's ``states`` are this rank's
        rows and its ``mask`` covers the whole source ``(B, S)``."""
        self._check_sharded()
        total = global_length(src.shape[1])
        valid = torch.arange(total, device=src.device) < src_lengths.unsqueeze(1)  # (B, S)
        x = self._embed(self.src_embed, src)
        bias = self._position_bias("encoder", src.shape[1])
        for layer in self.encoder:
            x, w = layer(x, ~valid, maps is not None, bias)
            if maps is not None:
                maps.encoder.append(w)
        return {"states": self.enc_norm(x), "mask": valid, "lengths": src_lengths}

    def decode(
        self, tgt_in: Tensor, memory: dict[str, Tensor], *, maps: AttentionMaps | None = None
    ) -> Tensor:
        """Decoder over a whole (teacher-forced) target prefix -> logits (B, T, V); inside a
        context-parallel block ``tgt_in`` and the logits are this rank's rows and ``memory``
        the sharded encoder's (cross-attention runs the ring over the memory's shards)."""
        self._check_sharded()
        y = self._embed(self.tgt_embed, tgt_in, side="tgt")
        bias = self._position_bias("decoder", tgt_in.shape[1])
        for layer in self.decoder:
            y, ws, wc = layer(y, memory["states"], ~memory["mask"], maps is not None, bias)
            if maps is not None:
                maps.decoder.append(ws)
                maps.cross.append(wc)
        return self.out(self.dec_norm(y))

    def forward(
        self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor, *, teacher_forcing: float = 1.0,
        generator: torch.Generator | None = None, need_weights: bool = False,
    ) -> Tensor | tuple[Tensor, AttentionMaps]:  # fmt: skip
        """Teacher-forced logits ``(B, T, V)`` (and the attention maps with ``need_weights``).

        ``teacher_forcing`` must be 1: a Transformer decodes every position in parallel.
        """
        if teacher_forcing != 1.0:
            raise ValueError(
                f"teacher_forcing: the Transformer trains with full teacher forcing (1.0), got {teacher_forcing!r}"
            )
        maps = AttentionMaps() if need_weights else None
        memory = self.encode(src, src_lengths, maps=maps)
        logits = self.decode(tgt_in, memory, maps=maps)
        return (logits, maps) if need_weights else logits

    # ------------------------------------------------------------------ step interface
    def init_state(self, memory: dict[str, Tensor]) -> dict[str, Tensor]:
        bsz = memory["states"].shape[0]
        return {"prefix": torch.zeros(bsz, 0, dtype=torch.long, device=memory["states"].device)}

    def step(
        self, prev: Tensor, state: dict[str, Tensor], memory: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """Previous tokens ``(B,)`` -> logits ``(B, V)``, new state, and the last layer's cross
        attention of this position averaged over heads ``(B, S)``."""
        if active() is not None:
            raise ValueError(
                "step: decoding one token at a time does not shard; call it outside "
                "qkv.distributed.context_parallel (encode and decode run inside it)"
            )
        prefix = torch.cat([state["prefix"], prev.unsqueeze(1)], dim=1)  # (B, t+1)
        maps = AttentionMaps()
        logits = self.decode(prefix, memory, maps=maps)
        weights = maps.cross[-1][:, :, -1].mean(dim=1) if maps.cross else None  # (B, H, S) -> (B, S)
        return logits[:, -1], {"prefix": prefix}, weights
