"""A Transformer encoder-decoder over speech frames (one readable file), the Speech-Transformer
shape (Dong, Xu, Xu 2018, "Speech-Transformer: a no-recurrence sequence-to-sequence model for
speech recognition") on qkv's :class:`qkv.MultiHeadAttention`::

    subsample  ``front="conv1d"``: ``subsample`` Conv1d layers over time (kernel 3, stride 2,
               padding 1, GELU), the mel bands as channels; ``front="conv2d"`` (Dong et al. 2018;
               ESPnet's Conv2dSubsampling): ``subsample`` 3x3 Conv2d layers of ``channels``
               channels over (time, mel), stride 2 on both, GELU, whose (channels x
               ceil(M / 2^subsample)) outputs per state the projection W below maps to D (a
               formant moved along the mel axis meets the same filters, which Conv1d's mel
               channels do not give). Either way the frames are subsampled by a strided
               convolution, not stacked, 2^subsample frames per state (two layers: one state
               per 40 ms); frames past an utterance's length are set to zero before the first
               layer and after each, so padding never reaches a real state
    encoder    x = W x + P (sinusoidal positions, Vaswani et al. 2017, section 3.5; with
               ``front_norm``, x = LN(W x) + P: at initialisation W x has a standard deviation
               near 0.08 against the positions' 0.59, so without it the first blocks see mostly
               positions), then
               pre-LN blocks: x = x + SelfAttn(LN(x)) (padding masked), x = x + FFN(LN(x))
    decoder    y = Embed(tokens) + P, pre-LN blocks: y = y + SelfAttn(LN(y), causal),
               y = y + CrossAttn(LN(y), states) (padding masked), y = y + FFN(LN(y))
    output     P(y_i) = softmax(W_o LN(y_i)); the attention of output step i over the states:
               the last decoder block's cross-attention of step i, averaged over its heads
    loss       (1 - lambda) CE + lambda CTC (``ctc_weight`` = lambda; 0: CE alone), CE with
               ``label_smoothing`` epsilon (Szegedy et al. 2016: the target is 1 - epsilon on
               the word, epsilon / V on every unit, <pad> included as torch counts it): joint
               CTC-attention training (Kim, Hori, Watanabe 2017, "Joint CTC-attention based
               end-to-end speech recognition using multi-task learning"), the CTC of a linear
               layer over the encoder states (blank: the <pad> id), which asks the encoder for
               states that line up with the words in order, so cross-attention finds them sooner

Output units are the tokens of the data (words, for spoken numbers); ids 0, 1, 2 are <pad>,
<sos>, <eos>, as in :mod:`qkv.models.las`.

Decoding (:mod:`qkv.speech.decode`) uses the step interface of :class:`qkv.models.las.LAS`:
``encode`` -> ``init_state`` -> ``step``, every tensor batch first. The decoding state is the
tokens so far; each step reruns the decoder on them (a transcript is a few words long), so step
``i`` gives exactly the teacher-forced logits of position ``i``.

Shapes (B batch, T frames, M mel bands, S = ceil(T / 2^subsample) states, D = ``d_model``,
H heads, U target length, V vocabulary)::

    features (B, T, M) float, lengths (B,) long, tgt_in (B, U) = <sos> y_1 .. y_{U-1}
    -> logits (B, U, V); with need_weights an AttentionMaps: encoder (B, H, S, S), decoder
       (B, H, U, U) and cross (B, H, U, S) per block
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .._types import AttentionMaps
from ..masks import causal
from ..modules import MultiHeadAttention
from ..modules.positional import sinusoidal_table
from .las import check_features

__all__ = ["SpeechTransformer", "SpeechTransformerConfig"]

PAD, SOS, EOS = 0, 1, 2
#: The subsampling fronts (``SpeechTransformerConfig.front``).
FRONTS = ("conv1d", "conv2d")


@dataclass(frozen=True)
class SpeechTransformerConfig:
    """A Transformer over speech frames (see the module docstring)."""

    n_mels: int  # input features per frame
    vocab_size: int  # output tokens, <pad> <sos> <eos> included
    subsample: int = 2  # stride-2 convolutions over time: 2^subsample frames per state
    d_model: int = 96
    heads: int = 4
    encoder_layers: int = 3
    decoder_layers: int = 2
    ff_dim: int = 256
    dropout: float = 0.1
    ctc_weight: float = 0.0  # lambda of the joint CTC-attention loss (0: cross-entropy alone)
    label_smoothing: float = 0.0  # epsilon: the cross-entropy's target keeps 1 - epsilon on the word
    front_norm: bool = False  # LayerNorm the subsampled states before the positions are added
    front: str = "conv1d"  # the subsampling convolutions: "conv1d" over time, "conv2d" over (time, mel)
    channels: int = 32  # the conv2d front's channels (unused by conv1d)

    def __post_init__(self) -> None:
        for name in ("n_mels", "vocab_size", "subsample", "d_model", "heads", "encoder_layers", "decoder_layers",
                     "ff_dim", "channels"):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SpeechTransformerConfig.{name}: expected an int >= 1, got {value!r}")
        if self.vocab_size < 4:
            raise ValueError(f"SpeechTransformerConfig.vocab_size: expected >= 4 (<pad> <sos> <eos> and a token), "
                             f"got {self.vocab_size}")  # fmt: skip
        if self.d_model % self.heads:
            raise ValueError(
                f"SpeechTransformerConfig.d_model: expected a multiple of heads={self.heads}, got {self.d_model}"
            )
        if self.front not in FRONTS:
            raise ValueError(f"SpeechTransformerConfig.front: expected one of {', '.join(map(repr, FRONTS))}, "
                             f"got {self.front!r}")  # fmt: skip
        if not isinstance(self.front_norm, bool):
            raise ValueError(f"SpeechTransformerConfig.front_norm: expected a bool, got {self.front_norm!r}")
        for name in ("dropout", "ctc_weight", "label_smoothing"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"SpeechTransformerConfig.{name}: expected a float in [0, 1), got {value!r}")

    @property
    def reduction(self) -> int:
        """How many frames one encoder state covers: ``2 ** subsample``."""
        return 2**self.subsample

    def to_dict(self) -> dict:
        return asdict(self)


def _positions(n: int, dim: int, like: Tensor) -> Tensor:
    """The sinusoidal table ``(1, n, dim)`` on ``like``'s device and dtype."""
    return sinusoidal_table(torch.arange(n, device=like.device), dim, dtype=like.dtype)[None]


def _keep_valid(x: Tensor, lengths: Tensor, dim: int = 1) -> Tensor:
    """``x`` ``(B, ...)`` with every frame (along ``dim``, time) at or past its utterance's
    length set to zero."""
    valid = torch.arange(x.shape[dim], device=x.device)[None] < lengths[:, None]  # (B, T)
    shape = [1] * x.dim()
    shape[0], shape[dim] = valid.shape
    return x * valid.view(shape).to(x.dtype)


class Subsample(nn.Module):
    """Strided convolutions over time: ``(B, T, M)`` -> ``(B, ceil(T / 2^k), D)`` and lengths."""

    def __init__(self, cfg: SpeechTransformerConfig) -> None:
        super().__init__()
        d = self.out_dim = cfg.d_model
        self.convs = nn.ModuleList(
            [nn.Conv1d(cfg.n_mels if i == 0 else d, d, 3, stride=2, padding=1) for i in range(cfg.subsample)]
        )
        self.act = nn.GELU()

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x = _keep_valid(x, lengths).transpose(1, 2)  # (B, M, T): Conv1d's channels first
        for conv in self.convs:
            x = self.act(conv(x))  # (B, D, ceil(T / 2))
            lengths = torch.div(lengths + 1, 2, rounding_mode="floor")  # ceil(length / 2)
            x = _keep_valid(x, lengths, dim=2)  # padding stays zero: the next layer reads zeros there
        return x.transpose(1, 2), lengths  # (B, S, D)


class Subsample2d(nn.Module):
    """Strided 3x3 convolutions over (time, mel): ``(B, T, M)`` -> ``(B, ceil(T / 2^k), C ceil(M / 2^k))``
    (``out_dim``; each state's channels by reduced mel bands, channel-major) and lengths."""

    def __init__(self, cfg: SpeechTransformerConfig) -> None:
        super().__init__()
        c, mels = cfg.channels, cfg.n_mels
        self.convs = nn.ModuleList(
            [nn.Conv2d(1 if i == 0 else c, c, 3, stride=2, padding=1) for i in range(cfg.subsample)]
        )
        for _ in range(cfg.subsample):
            mels = (mels + 1) // 2
        self.out_dim = c * mels
        self.act = nn.GELU()

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x = _keep_valid(x, lengths)[:, None]  # (B, 1, T, M)
        for conv in self.convs:
            x = self.act(conv(x))  # (B, C, ceil(T / 2), ceil(M / 2))
            lengths = torch.div(lengths + 1, 2, rounding_mode="floor")  # ceil(length / 2)
            x = _keep_valid(x, lengths, dim=2)  # zero past the length
        return x.permute(0, 2, 1, 3).flatten(2), lengths  # (B, S, C * M')


class FeedForward(nn.Sequential):
    def __init__(self, cfg: SpeechTransformerConfig) -> None:
        super().__init__(nn.Linear(cfg.d_model, cfg.ff_dim), nn.GELU(), nn.Dropout(cfg.dropout),
                         nn.Linear(cfg.ff_dim, cfg.d_model))  # fmt: skip


class EncoderBlock(nn.Module):
    """Pre-LN: padding-masked self-attention over the states, then the feed-forward."""

    def __init__(self, cfg: SpeechTransformerConfig) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = MultiHeadAttention(embed_dim=cfg.d_model, num_heads=cfg.heads, dropout=cfg.dropout)
        self.ff, self.drop = FeedForward(cfg), nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, pad: Tensor, need_weights: bool) -> tuple[Tensor, Tensor | None]:
        a = self.attn(self.norm1(x), key_padding_mask=pad, need_weights=need_weights)
        x = x + self.drop(a.out)
        return x + self.drop(self.ff(self.norm2(x))), a.weights


class DecoderBlock(nn.Module):
    """Pre-LN: causal self-attention, cross-attention to the states, the feed-forward."""

    def __init__(self, cfg: SpeechTransformerConfig) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(cfg.d_model) for _ in range(3))
        self.self_attn = MultiHeadAttention(embed_dim=cfg.d_model, num_heads=cfg.heads, dropout=cfg.dropout)
        self.cross_attn = MultiHeadAttention(embed_dim=cfg.d_model, num_heads=cfg.heads, dropout=cfg.dropout)
        self.ff, self.drop = FeedForward(cfg), nn.Dropout(cfg.dropout)

    def forward(self, y: Tensor, states: Tensor, pad: Tensor, need_weights: bool) -> tuple[Tensor, ...]:
        """-> y ``(B, U, D)``, its self-attention ``(B, H, U, U)`` (None unless ``need_weights``) and
        its cross-attention ``(B, H, U, S)`` (always: it is each step's alignment)."""
        s = self.self_attn(self.norm1(y), mask=causal(), need_weights=need_weights)
        y = y + self.drop(s.out)
        c = self.cross_attn(self.norm2(y), states, states, key_padding_mask=pad, need_weights=True)
        y = y + self.drop(c.out)
        return y + self.drop(self.ff(self.norm3(y))), s.weights, c.weights


class SpeechTransformer(nn.Module):
    """The Transformer encoder-decoder over frames; see the module docstring."""

    def __init__(self, config: SpeechTransformerConfig) -> None:
        super().__init__()
        cfg = self.config = config
        self.subsample = Subsample(cfg) if cfg.front == "conv1d" else Subsample2d(cfg)
        self.proj = nn.Linear(self.subsample.out_dim, cfg.d_model)
        self.front_norm = nn.LayerNorm(cfg.d_model) if cfg.front_norm else nn.Identity()
        self.encoder = nn.ModuleList([EncoderBlock(cfg) for _ in range(cfg.encoder_layers)])
        self.enc_norm = nn.LayerNorm(cfg.d_model)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=PAD)
        self.decoder = nn.ModuleList([DecoderBlock(cfg) for _ in range(cfg.decoder_layers)])
        self.dec_norm = nn.LayerNorm(cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.vocab_size)
        self.drop = nn.Dropout(cfg.dropout)
        self.ctc = nn.Linear(cfg.d_model, cfg.vocab_size) if cfg.ctc_weight else None  # states -> CTC logits

    def _encode(self, features: Tensor, lengths: Tensor, maps: AttentionMaps | None) -> dict[str, Tensor]:
        check_features(features, lengths, self.config.n_mels)
        x, lengths = self.subsample(features, lengths)  # (B, S, D) or (B, S, C M'), (B,)
        x = self.proj(x)  # (B, S, D)
        x = self.drop(self.front_norm(x) + _positions(x.shape[1], x.shape[2], x))
        pad = torch.arange(x.shape[1], device=x.device)[None] >= lengths[:, None]  # (B, S), True = padding
        for block in self.encoder:
            x, w = block(x, pad, maps is not None)
            if maps is not None:
                maps.encoder.append(w)
        return {"states": self.enc_norm(x), "lengths": lengths}

    def decode(
        self, tgt_in: Tensor, memory: dict[str, Tensor], maps: AttentionMaps | None = None
    ) -> tuple[Tensor, Tensor]:
        """Logits ``(B, U, V)`` of ``tgt_in`` ``(B, U)`` over the encoder's ``memory``, and the
        last block's cross-attention averaged over heads ``(B, U, S)``; ``maps`` (if given)
        collects every block's self- and cross-attention."""
        states = memory["states"]
        pad = (
            torch.arange(states.shape[1], device=states.device)[None] >= memory["lengths"][:, None]
        )  # (B, S)
        d = self.config.d_model
        y = self.embed(tgt_in)  # (B, U, D): N(0, 1) entries, the scale of the positions
        y = self.drop(y + _positions(tgt_in.shape[1], d, y))
        for block in self.decoder:
            y, ws, wc = block(y, states, pad, maps is not None)
            if maps is not None:
                maps.decoder.append(ws)
                maps.cross.append(wc)
        return self.out(self.dec_norm(y)), wc.mean(1)

    # ------------------------------------------------------------------ step interface
    def encode(self, features: Tensor, lengths: Tensor) -> dict[str, Tensor]:
        """The encoder's states ``(B, S, D)`` and their lengths ``(B,)``: the memory every step reads."""
        return self._encode(features, lengths, None)

    def init_state(self, memory: dict[str, Tensor]) -> dict[str, Tensor]:
        """No tokens yet: ``{"tokens": (B, 0)}``."""
        states = memory["states"]
        return {"tokens": torch.zeros(states.shape[0], 0, dtype=torch.long, device=states.device)}

    def step(
        self, prev: Tensor, state: dict[str, Tensor], memory: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """One output step: previous tokens ``(B,)`` -> logits ``(B, V)``, the new state and the
        attention over the encoder states ``(B, S)``."""
        tokens = torch.cat([state["tokens"], prev[:, None]], dim=1)  # (B, i + 1)
        logits, cross = self.decode(tokens, memory)
        return logits[:, -1], {"tokens": tokens}, cross[:, -1]

    def loss(self, features: Tensor, lengths: Tensor, tgt_in: Tensor, tgt_out: Tensor) -> Tensor:
        """The training loss of ``tgt_out`` ``(B, U)`` (``y_1 .. y_U <eos>``, <pad> after) given
        ``tgt_in``: the mean (label-smoothed) cross-entropy per target token, mixed with the CTC of the words
        (``<eos>`` left out) by ``ctc_weight`` (see the module docstring)."""
        memory = self.encode(features, lengths)
        logits, _ = self.decode(tgt_in, memory)
        ce = nn.functional.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=PAD,
                                         label_smoothing=self.config.label_smoothing)  # fmt: skip
        if self.ctc is None:
            return ce
        words = tgt_out > EOS  # (B, U): the words, neither <eos> nor <pad>
        log_probs = torch.log_softmax(self.ctc(memory["states"]).float(), -1).transpose(0, 1)  # (S, B, V)
        ctc = nn.functional.ctc_loss(log_probs, tgt_out[words], memory["lengths"], words.sum(1), blank=PAD,
                                     zero_infinity=True)  # fmt: skip
        w = self.config.ctc_weight
        return (1 - w) * ce + w * ctc

    def forward(self, features: Tensor, lengths: Tensor, tgt_in: Tensor, *, need_weights: bool = False):
        """Teacher-forced logits ``(B, U, V)`` of ``tgt_in``; with ``need_weights`` also the
        :class:`AttentionMaps` of every block (``cross[-1]`` is ``(B, H, U, S)``)."""
        maps = AttentionMaps() if need_weights else None
        logits, _ = self.decode(tgt_in, self._encode(features, lengths, maps), maps)
        return logits if maps is None else (logits, maps)
