"""BERT encoder (Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers for
Language Understanding"), one readable file on :class:`qkv.MultiHeadAttention`.

Shape legend (see :mod:`qkv._types`)::

    B   batch              T   tokens (<= max_position)
    E   hidden_size        H   num_heads            F   intermediate_size
    L   num_layers

    input_ids (B, T) long, attention_mask (B, T) 1 = token / 0 = padding, token_type_ids (B, T)
    -> last_hidden_state (B, T, E), hidden_states L + 1 x (B, T, E) (with output_hidden_states),
       attentions: AttentionMaps with L encoder maps (B, H, T, T), pooler_output (B, E)

The layers are post-LN, as in the paper and in every released BERT checkpoint::

    x = LayerNorm(word[ids] + token_type[types] + position[0..T-1])
    for each layer:
        x = LayerNorm(x + Dropout(MultiHead(x, x, x, padding masked)))
        x = LayerNorm(x + Dropout(W_2 gelu(W_1 x)))

On a sharded sequence (inside ``with qkv.distributed.context_parallel(group, layout=...):``,
``input_ids``, ``attention_mask`` and ``token_type_ids`` this rank's shards ``(B, T / world)``
of that layout): the forward returns this rank's rows of the single-process states. Positions
are the shard's global positions, the padding of the whole sequence is gathered once (a small
all-gather of ``attention_mask``) and every layer's self-attention runs the ring; only the
rank holding position 0 (the ``[CLS]`` token) has a ``pooler_output``.

Pretrained weights (Hugging Face ``BertModel`` directories, e.g. all-MiniLM-L6-v2) load with
:func:`qkv.interop.load_bert`; :meth:`BertModel.encode` gives sentence embeddings (mean
pooling, L2-normalized) equal to sentence-transformers' within 1e-5.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._types import AttentionMaps
from ..backends.sequence_parallel import active, global_length, shard_positions
from ..modules.multihead import MultiHeadAttention

__all__ = ["BertConfig", "BertModel", "BertOutput", "mean_pool"]

_ACTIVATIONS = {
    "gelu": F.gelu,  # exact, erf-based (BERT's and Hugging Face's "gelu")
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),  # the tanh approximation
    "relu": F.relu,
}


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return value


@dataclass(frozen=True, kw_only=True)
class BertConfig:
    """Hyper-parameters of :class:`BertModel`; the defaults are BERT-base (uncased).

    Attributes:
        vocab_size: WordPiece vocabulary size.
        hidden_size: ``E``; num_layers: ``L``; num_heads: ``H`` (``E % H == 0``).
        intermediate_size: ``F``, the inner size of the feed-forward block.
        max_position: number of learned absolute positions (the longest input).
        type_vocab_size: number of segment (token type) embeddings.
        layer_norm_eps: epsilon of every LayerNorm.
        hidden_act: ``"gelu"`` (exact, erf), ``"gelu_new"`` (tanh approximation) or ``"relu"``.
        hidden_dropout: dropout on embeddings and sub-layer outputs (training mode only).
        attention_dropout: dropout on the attention weights (training mode only).
        initializer_range: std of the normal initialization of Linear and Embedding weights.
        pooler: build the ``tanh(W h_[CLS] + b)`` pooler (``pooler_output``).
        attention_backend: passed to every :class:`qkv.MultiHeadAttention` (``"auto"``...).

    Raises:
        ValueError: a size that is not a positive int, ``hidden_size`` not divisible by
            ``num_heads``, an unknown ``hidden_act``, a dropout outside ``[0, 1)``, a
            non-positive ``layer_norm_eps``.
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    initializer_range: float = 0.02
    pooler: bool = True
    attention_backend: str = "auto"

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
            "max_position",
            "type_vocab_size",
        ):
            _positive_int(name, getattr(self, name))
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size: expected a multiple of num_heads={self.num_heads}, got {self.hidden_size}"
            )
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(
                f"hidden_act: expected one of {', '.join(_ACTIVATIONS)}, got {self.hidden_act!r}"
            )
        for name in ("hidden_dropout", "attention_dropout"):
            p = getattr(self, name)
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
                raise ValueError(f"{name}: expected a number in [0, 1), got {p!r}")
        if not (isinstance(self.layer_norm_eps, (int, float)) and self.layer_norm_eps > 0):
            raise ValueError(f"layer_norm_eps: expected a number > 0, got {self.layer_norm_eps!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class BertOutput:
    """What :meth:`BertModel.forward` returns.

    Attributes:
        last_hidden_state: ``(B, T, E)``, the output of the last layer.
        hidden_states: with ``output_hidden_states``, ``L + 1`` tensors ``(B, T, E)``: the
            embeddings, then each layer's output; else ``None`` (as in ``transformers``: the
            forward then holds one layer's output at a time).
        attentions: with ``need_weights``, an :class:`qkv.AttentionMaps` whose ``encoder`` holds
            each layer's weights ``(B, H, T, T)`` (padding keys get weight 0); else ``None``.
        pooler_output: ``tanh(W h_[CLS] + b)`` ``(B, E)`` when the model has a pooler, else
            ``None`` (also on a sharded sequence's ranks that do not hold position 0).
    """

    last_hidden_state: Tensor
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: AttentionMaps | None = None
    pooler_output: Tensor | None = None


class BertEmbeddings(nn.Module):
    """``LayerNorm(word[ids] + token_type[types] + position[0..T-1])`` then dropout."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        e = config.hidden_size
        self.word = nn.Embedding(config.vocab_size, e)
        self.position = nn.Embedding(config.max_position, e)
        self.token_type = nn.Embedding(config.type_vocab_size, e)
        self.norm = nn.LayerNorm(e, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, words: Tensor, token_type_ids: Tensor) -> Tensor:
        """``words``: the word embeddings ``(B, T, E)`` (``word[ids]`` or given directly); the
        positions are ``0 .. T-1``, or this shard's global positions in a context-parallel block."""
        positions = shard_positions(words.shape[1], words.device)  # (T,)
        x = words + self.token_type(token_type_ids)  # (B, T, E)
        x = x + self.position(positions)  # (T, E) broadcasts over B
        return self.dropout(self.norm(x))


class BertLayer(nn.Module):
    """One post-LN encoder layer: self-attention block then feed-forward block."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        e = config.hidden_size
        self.attention = MultiHeadAttention(
            embed_dim=e,
            num_heads=config.num_heads,
            dropout=config.attention_dropout,
            backend=config.attention_backend,
        )
        self.attention_norm = nn.LayerNorm(e, eps=config.layer_norm_eps)
        self.ffn_in = nn.Linear(e, config.intermediate_size)
        self.ffn_out = nn.Linear(config.intermediate_size, e)
        self.ffn_norm = nn.LayerNorm(e, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.act = _ACTIVATIONS[config.hidden_act]

    def forward(self, x: Tensor, padding: Tensor | None, need_weights: bool) -> tuple[Tensor, Tensor | None]:
        """``x (B, T, E)``, ``padding (B, T)`` True = padding -> ``(B, T, E)``, weights ``(B, H, T, T)``."""
        x, weights = self._attention_block(x, padding, need_weights)
        h = self.ffn_out(self.act(self.ffn_in(x)))  # (B, T, F) -> (B, T, E)
        x = self.ffn_norm(x + self.dropout(h))
        return x, weights

    def _attention_block(
        self, x: Tensor, padding: Tensor | None, need_weights: bool
    ) -> tuple[Tensor, Tensor | None]:
        """``LayerNorm(x + Dropout(MultiHead(x)))`` and the weights. The attention's output is
        released here, before the feed-forward block allocates its ``(B, T, F)`` tensors, as in
        ``transformers``' ``BertSelfOutput``: fewer blocks held at once, fewer fresh pages."""
        a = self.attention(x, key_padding_mask=padding, need_weights=need_weights)
        return self.attention_norm(x + self.dropout(a.out)), a.weights


class BertPooler(nn.Module):
    """``tanh(W h_[CLS] + b)``: BERT's next-sentence head input (``pooler_output``)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.dense(x[:, 0]))  # (B, T, E) -> (B, E)


class BertModel(nn.Module):
    """The BERT encoder: embeddings, ``num_layers`` post-LN layers, optional pooler.

    Args:
        config: a :class:`BertConfig`.

    Attributes:
        embeddings: :class:`BertEmbeddings` (``word``, ``position``, ``token_type``, ``norm``).
        layers: ``nn.ModuleList`` of :class:`BertLayer` (``attention`` is a
            :class:`qkv.MultiHeadAttention`; ``attention_norm``, ``ffn_in``, ``ffn_out``,
            ``ffn_norm``).
        pooler: :class:`BertPooler` or ``None``.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        if not isinstance(config, BertConfig):
            raise TypeError(f"config: expected a BertConfig, got {type(config).__name__}")
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.layers = nn.ModuleList([BertLayer(config) for _ in range(config.num_layers)])
        self.pooler = BertPooler(config) if config.pooler else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """BERT's initialization: weights ``N(0, initializer_range^2)``, biases 0, LayerNorm 1/0."""
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        *,
        inputs_embeds: Tensor | None = None,
        need_weights: bool = False,
        output_hidden_states: bool = False,
    ) -> BertOutput:
        """Encode a batch of token ids.

        Args:
            input_ids: ``(B, T)`` integer token ids (or pass ``inputs_embeds``).
            attention_mask: ``(B, T)`` with 1 (or True) = token, 0 (False) = padding, as
                Hugging Face tokenizers return it; default: no padding. Padding keys get
                attention weight exactly 0; padded positions still get (meaningless) states.
            token_type_ids: ``(B, T)`` segment ids in ``[0, type_vocab_size)``; default 0.
            inputs_embeds: ``(B, T, E)`` word embeddings used instead of ``word[input_ids]``
                (positions, token types and the LayerNorm still apply). For attribution
                methods such as integrated gradients.
            need_weights: also return every layer's attention weights (``attentions``).
                Asking for weights never changes the kernel, so the hidden states are
                bitwise those without weights; :func:`qkv.capture` records the weights too.
            output_hidden_states: also return every layer's output (``hidden_states``); they
                are then held until the forward returns.

        Returns:
            :class:`BertOutput`.

        Raises:
            ValueError: both or neither of ``input_ids``/``inputs_embeds``, wrong shapes,
                ids out of range, ``T > max_position``.
            TypeError: ids that are not integer tensors.
        """
        cfg = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError(
                "input_ids/inputs_embeds: expected exactly one of them, got "
                + ("both" if input_ids is not None else "neither")
            )
        if input_ids is not None:
            _check_ids("input_ids", input_ids, None, cfg.vocab_size)
            words = self.embeddings.word(input_ids)  # (B, T, E)
        else:
            if (
                not isinstance(inputs_embeds, Tensor)
                or inputs_embeds.dim() != 3
                or (inputs_embeds.shape[-1] != cfg.hidden_size)
            ):
                got = tuple(inputs_embeds.shape) if isinstance(inputs_embeds, Tensor) else type(inputs_embeds)
                raise ValueError(f"inputs_embeds: expected shape (B, T, E={cfg.hidden_size}), got {got}")
            words = inputs_embeds
        bsz, t = words.shape[:2]
        if global_length(t) > cfg.max_position:
            raise ValueError(
                f"input_ids: expected at most max_position={cfg.max_position} tokens, got T={global_length(t)}"
            )
        if token_type_ids is None:
            token_type_ids = torch.zeros(bsz, t, dtype=torch.long, device=words.device)
        else:
            _check_ids("token_type_ids", token_type_ids, (bsz, t), cfg.type_vocab_size)
        padding = _padding_from_attention_mask(_whole_sequence(attention_mask, bsz, t), bsz, global_length(t))

        x = self.embeddings(words, token_type_ids)  # (B, T, E)
        hidden = [x] if output_hidden_states else None
        maps = AttentionMaps() if need_weights else None
        for layer in self.layers:
            x, w = layer(x, padding, need_weights)
            if hidden is not None:
                hidden.append(x)
            if maps is not None:
                maps.encoder.append(w)  # (B, H, T, T)
        holds_cls = active() is None or int(shard_positions(t)[0]) == 0  # its first row is position 0
        pooled = self.pooler(x) if self.pooler is not None and holds_cls else None
        return BertOutput(
            last_hidden_state=x,
            hidden_states=None if hidden is None else tuple(hidden),
            attentions=maps,
            pooler_output=pooled,
        )

    @torch.no_grad()
    def encode(
        self,
        sentences: str | Sequence[str],
        *,
        tokenizer,
        normalize: bool = True,
        batch_size: int = 32,
    ) -> Tensor:
        """Sentence embeddings: mean of the last hidden states over the non-padding tokens,
        L2-normalized (the all-MiniLM-L6-v2 recipe of sentence-transformers: Reimers &
        Gurevych 2019). Runs without gradients in the model's current mode (``load_bert``
        returns it in eval mode).

        Args:
            sentences: a list of strings (or one string).
            tokenizer: a callable ``tokenizer(list_of_str)`` returning an object or mapping with
                ``input_ids``, ``attention_mask`` and optionally ``token_type_ids`` tensors
                ``(B, T)``, padded; e.g. the tokenizer :func:`qkv.interop.load_bert` returns.
            normalize: divide each embedding by its L2 norm.
            batch_size: sentences per forward pass.

        Returns:
            ``(N, E)`` float tensor on the model's device (``(E,)`` for one string).

        Raises:
            TypeError: ``sentences`` not a string or a sequence of strings.
            ValueError: ``batch_size`` not a positive int.
        """
        single = isinstance(sentences, str)
        items = [sentences] if single else sentences
        if not isinstance(items, Sequence) or not all(isinstance(s, str) for s in items):
            raise TypeError(
                f"sentences: expected a string or a sequence of strings, got {type(sentences).__name__}"
            )
        _positive_int("batch_size", batch_size)
        ref = self.embeddings.word.weight
        out = []
        for start in range(0, len(items), batch_size):
            batch = tokenizer(list(items[start : start + batch_size]))
            ids = _field(batch, "input_ids").to(ref.device)
            mask = _field(batch, "attention_mask").to(ref.device)
            types = _field(batch, "token_type_ids", required=False)
            types = None if types is None else types.to(ref.device)
            h = self(ids, mask, types).last_hidden_state  # (b, T, E)
            emb = mean_pool(h, mask)  # (b, E)
            out.append(F.normalize(emb, p=2.0, dim=-1) if normalize else emb)
        if not out:
            return ref.new_zeros(0, self.config.hidden_size)
        emb = torch.cat(out)  # (N, E)
        return emb[0] if single else emb


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """``sum_t m_t h_t / max(sum_t m_t, 1e-9)``: the mean of ``hidden (B, T, E)`` over the
    tokens where ``attention_mask (B, T)`` is 1 -> ``(B, E)`` (sentence-transformers' mean
    pooling; an all-padding row gives zeros)."""
    if attention_mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"attention_mask: expected shape (B, T) = {tuple(hidden.shape[:2])}, got {tuple(attention_mask.shape)}"
        )
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


def _field(batch, name: str, *, required: bool = True) -> Tensor | None:
    value = batch.get(name) if isinstance(batch, Mapping) else getattr(batch, name, None)
    if value is None and required:
        raise TypeError(
            f"tokenizer: its output has no {name!r} (expected input_ids and attention_mask tensors)"
        )
    return value


def _check_ids(name: str, ids: object, shape: tuple[int, int] | None, bound: int) -> None:
    if not isinstance(ids, Tensor) or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        got = ids.dtype if isinstance(ids, Tensor) else type(ids).__name__
        raise TypeError(f"{name}: expected an integer tensor, got {got}")
    if ids.dim() != 2 or (shape is not None and tuple(ids.shape) != shape):
        want = "(B, T)" if shape is None else f"(B, T) = {shape}"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(ids.shape)}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= bound):
        raise ValueError(f"{name}: expected values in [0, {bound}), got {int(ids.min())}..{int(ids.max())}")


def _whole_sequence(attention_mask: Tensor | None, bsz: int, t: int) -> Tensor | None:
    """Inside a context-parallel block: this rank's shard ``(B, t)`` of ``attention_mask`` ->
    the whole sequence's ``(B, T)`` (a small all-gather); else ``attention_mask`` itself."""
    sp = active()
    if sp is None or attention_mask is None:
        return attention_mask
    if not isinstance(attention_mask, Tensor) or tuple(attention_mask.shape) != (bsz, t):
        got = (
            tuple(attention_mask.shape)
            if isinstance(attention_mask, Tensor)
            else type(attention_mask).__name__
        )
        raise ValueError(
            f"attention_mask: inside context_parallel expected this rank's shard (B, T / world) = ({bsz}, {t}), "
            f"sharded like input_ids, got {got}"
        )
    from ..distributed import gather_sequence  # loaded only on a sharded sequence

    whole = gather_sequence(attention_mask.to(torch.int64), dim=1, group=sp.group, layout=sp.layout)
    return whole.to(attention_mask.dtype)


def _padding_from_attention_mask(attention_mask: Tensor | None, bsz: int, t: int) -> Tensor | None:
    """Hugging Face's ``attention_mask`` (1 = token) -> torch's ``key_padding_mask`` (True = pad)."""
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, Tensor) or tuple(attention_mask.shape) != (bsz, t):
        got = (
            tuple(attention_mask.shape)
            if isinstance(attention_mask, Tensor)
            else type(attention_mask).__name__
        )
        raise ValueError(f"attention_mask: expected shape (B, T) = ({bsz}, {t}) with 1 = token, got {got}")
    if attention_mask.dtype != torch.bool and not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise ValueError("attention_mask: expected 0/1 values (1 = token, 0 = padding)")
    padding = attention_mask == 0  # (B, T), True = padding
    return padding if bool(padding.any()) else None  # no padding: attention runs without a mask
