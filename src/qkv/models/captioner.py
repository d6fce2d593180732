"""Image captioners that attend over image patches, one readable file: Show, Attend and Tell
(Xu et al. 2015, "Show, Attend and Tell: Neural Image Caption Generation with Visual Attention")
and a Transformer decoder with cross-attention.

The patch encoder is qkv's ViT patch embedding (:class:`qkv.models.vit.PatchEmbedding`: one
``P x P`` patch, one token, row-major), fixed 2-D sine positions and ``encoder_depth`` ViT
blocks (0: the patch embedding alone). Both decoders read its ``N`` patch features ``a_i``::

    Show, Attend and Tell (kind "captioner"; soft attention, section 4.2)
      h_0, c_0 = tanh(W_h mean(a)), tanh(W_c mean(a))
      alpha_t  = softmax_i(v^T tanh(W_q h_{t-1} + W_k a_i))      AdditiveAttention
      beta_t   = sigmoid(f_beta(h_{t-1}))                        the gate (section 4.2.1)
      z_t      = beta_t * sum_i alpha_ti a_i
      h_t, c_t = LSTM([E y_{t-1}; z_t], (h_{t-1}, c_{t-1}))
      p(y_t)   = softmax(W_o Drop([h_t; z_t]))                   the deep output, simplified
      loss     = CE + lambda * sum_i (1 - sum_t alpha_ti)^2      doubly stochastic attention
                    + mu * sum_t -sum_i g_ti log alpha_ti          supervised attention (optional)

    Transformer decoder (kind "captioner-transformer")
      y = Embed(words) + positions
      y = y + SelfAttn(LN(y), causal);  y = y + CrossAttn(LN(y), a);  y = y + MLP(LN(y))
      p(y_t) = softmax(W_o LN(y_t)); the attention of step t: the last layer's cross-attention
      of word t, averaged over heads
      loss   = CE + mu * sum_t -sum_i g_ti log alpha_ti      supervised attention (optional), alpha_t
                                                           that attention of step t

The doubly stochastic penalty (:func:`doubly_stochastic_penalty`) asks every patch to receive
a total attention of about 1 over the caption (Xu et al. eq. 14, with ``tau = 1`` as the paper
and the best-known tutorial use it); ``stochastic_weight`` is its ``lambda``. Supervised
attention (:func:`supervised_attention_loss`; Liu et al. 2017, "Attention Correctness in Neural
Image Captioning", strong supervision) is the cross-entropy of each word's attention against a
gold distribution ``g_t`` over the patches the word names (words that name none are left out);
``attention_supervision`` is its ``mu`` (0: none, the captioner as Xu et al. train it), for
both captioners. The Transformer's supervised attention is the one it reports (the last layer's
cross-attention averaged over heads): each head of that layer may look elsewhere as long as
their mean peaks on the named digit, and the lower layers are left free.

Both share the step interface decoding uses (:mod:`qkv.crossmodal.decode`): ``encode(images)``
-> ``init_state(memory)`` -> ``step(prev, state, memory)`` repeatedly, every tensor batch
first so a beam reorders it with ``index_select(0, ...)``.

Shapes (B batch, C channels, H x W image, P patch, N = (H/P)(W/P) patches, D features,
T caption steps, V vocabulary)::

    images (B, C, H, W) in [0, 1], words_in (B, T) = <start> y_1 .. y_{T-1}
    -> logits (B, T, V), attention (B, T, N) (each row sums to 1)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .._types import AttentionMaps
from ..masks import causal
from ..modules import AdditiveAttention, MultiHeadAttention
from .vit import MLP, Block, PatchEmbedding, ViTConfig, sincos2d_table

__all__ = [
    "CaptionTransformer",
    "CaptionTransformerConfig",
    "ShowAttendTell",
    "ShowAttendTellConfig",
    "caption_targets",
    "doubly_stochastic_penalty",
    "supervised_attention_loss",
]


def _check_int(name: str, value: object, least: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"{name}: expected an int >= {least}, got {value!r}")


def _check_weight(name: str, w: object) -> None:
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < math.inf:
        raise ValueError(f"{name}: expected a finite number >= 0, got {w!r}")


@dataclass(frozen=True)
class CaptionImageConfig:
    """What both captioners share: the data's facts and the patch encoder.

    Attributes:
        vocab_size: word ids ``0 .. vocab_size - 1``; pad_id, start_id, end_id: padding,
            ``<start>`` and ``<end>`` among them (the data decides them).
        image_size, image_width, channels: the images, ``(channels, image_size, image_width)``
            (``image_width`` None: square).
        max_words: the longest caption in words (``<end>`` not counted).
        patch_size: ``P``; dim: ``D``, the patch features.
        encoder_depth, encoder_heads, encoder_mlp_dim: ViT blocks over the patches (0: none).
        dropout: in the encoder and before the output layer.
        attention_supervision: ``mu`` of the supervised attention term (0: the loss never sees
            a gold alignment); the attention it supervises is the decoder's own, for the
            Transformer the last layer's cross-attention averaged over heads.
    """

    vocab_size: int
    image_size: int = 8
    image_width: int | None = None
    channels: int = 1
    max_words: int = 12
    pad_id: int = 0
    start_id: int = 2
    end_id: int = 3
    patch_size: int = 4
    dim: int = 64
    encoder_depth: int = 1
    encoder_heads: int = 4
    encoder_mlp_dim: int = 128
    dropout: float = 0.0
    attention_supervision: float = 0.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_words", "dim"):
            _check_int(name, getattr(self, name), 1)
        _check_int("encoder_depth", self.encoder_depth, 0)
        _check_weight("attention_supervision", self.attention_supervision)
        for name in ("pad_id", "start_id", "end_id"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < self.vocab_size:
                raise ValueError(
                    f"{name}: expected an int in [0, vocab_size={self.vocab_size}), got {value!r}"
                )
        if len({self.pad_id, self.start_id, self.end_id}) < 3:
            raise ValueError(f"pad_id, start_id, end_id: expected three different ids, got "
                             f"{self.pad_id}, {self.start_id}, {self.end_id}")  # fmt: skip
        self.vision_config()  # checks the image fields

    def vision_config(self) -> ViTConfig:
        """The patch encoder's :class:`ViTConfig` (its head is not built)."""
        return ViTConfig(image_size=self.image_size, image_width=self.image_width, patch_size=self.patch_size,
                         channels=self.channels, dim=self.dim, depth=self.encoder_depth,
                         heads=self.encoder_heads, mlp_dim=self.encoder_mlp_dim, dropout=self.dropout,
                         pool="mean", positions="sincos2d")  # fmt: skip


@dataclass(frozen=True)
class ShowAttendTellConfig(CaptionImageConfig):
    """Hyper-parameters of :class:`ShowAttendTell`: embed_dim (``E``), hidden_dim (the LSTM),
    attention_dim (the additive score's), stochastic_weight (``lambda`` of the doubly stochastic
    penalty; Xu et al. use 1)."""

    embed_dim: int = 32
    hidden_dim: int = 128
    attention_dim: int = 64
    stochastic_weight: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("embed_dim", "hidden_dim", "attention_dim"):
            _check_int(name, getattr(self, name), 1)
        _check_weight("stochastic_weight", self.stochastic_weight)

    def to_dict(self) -> dict:
        return {"kind": "captioner", **asdict(self)}


@dataclass(frozen=True)
class CaptionTransformerConfig(CaptionImageConfig):
    """Hyper-parameters of :class:`CaptionTransformer`: decoder_depth, decoder_heads,
    decoder_mlp_dim (its blocks work in ``dim`` features)."""

    decoder_depth: int = 2
    decoder_heads: int = 4
    decoder_mlp_dim: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("decoder_depth", "decoder_heads", "decoder_mlp_dim"):
            _check_int(name, getattr(self, name), 1)
        if self.dim % self.decoder_heads:
            raise ValueError(
                f"dim: expected a multiple of decoder_heads={self.decoder_heads}, got {self.dim}"
            )

    def to_dict(self) -> dict:
        return {"kind": "captioner-transformer", **asdict(self)}


class PatchEncoder(nn.Module):
    """Images ``(B, C, H, W)`` in [0, 1] -> patch features ``(B, N, D)``, row-major: the ViT's
    patch embedding, fixed 2-D positions, ``encoder_depth`` ViT blocks, a LayerNorm.

    Attributes:
        grid: ``(h, w)``; patch_size: ``P``; num_prefix_tokens: 0 (no class token).
    """

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.grid, self.patch_size, self.num_prefix_tokens = cfg.grid, cfg.patch_size, 0
        self.patch_embed = PatchEmbedding(cfg)
        table = sincos2d_table(*cfg.grid, cfg.dim, dtype=torch.get_default_dtype())  # (N, D)
        self.register_buffer("pos_embed", table[None], persistent=False)  # (1, N, D)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.dim)

    def check_images(self, images: object) -> None:
        """Raises ValueError unless ``images`` is a float ``(B, channels, image_size, width)``."""
        cfg = self.config
        want = f"(B, {cfg.channels}, {cfg.image_size}, {cfg.width})"
        if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
            got = (
                f"{images.dtype} {tuple(images.shape)}"
                if isinstance(images, Tensor)
                else type(images).__name__
            )
            raise ValueError(f"images: expected a float tensor {want}, got {got}")
        if images.shape[1] != cfg.channels:
            raise ValueError(f"images: expected {cfg.channels} channel(s) {want}, got {tuple(images.shape)}")
        if tuple(images.shape[2:]) != (cfg.image_size, cfg.width):
            raise ValueError(f"images: expected {cfg.image_size}x{cfg.width} pixels {want}, "
                             f"got {tuple(images.shape)}")  # fmt: skip

    def forward(self, images: Tensor) -> Tensor:
        self.check_images(images)
        cfg = self.config
        x = self.patch_embed((images - cfg.pixel_mean) / cfg.pixel_std) + self.pos_embed  # (B, N, D)
        for block in self.blocks:
            x, _ = block(x, False)
        return self.norm(x)


def caption_targets(words: Tensor, *, pad_id: int, start_id: int, end_id: int) -> tuple[Tensor, Tensor]:
    """Teacher forcing: captions ``(B, T)`` (word ids, right-padded) -> the decoder's inputs
    ``(B, T+1) = <start> y_1 .. y_T`` and targets ``(B, T+1) = y_1 .. y_T <end>`` (padding after).

    Raises:
        ValueError: not an int64 ``(B, T)`` tensor, or a caption without a word.
    """
    if not isinstance(words, Tensor) or words.dim() != 2 or words.dtype != torch.int64:
        got = f"{words.dtype} {tuple(words.shape)}" if isinstance(words, Tensor) else type(words).__name__
        raise ValueError(f"words: expected int64 word ids (B, T), got {got}")
    lengths = (words != pad_id).sum(1)  # (B,)
    if not words.shape[1] or bool((lengths == 0).any()):
        raise ValueError("words: expected every caption to hold a word, got an empty caption")
    pad_col = torch.full_like(words[:, :1], pad_id)
    inputs = torch.cat([torch.full_like(pad_col, start_id), words], 1)  # (B, T+1)
    targets = torch.cat([words, pad_col], 1).scatter(1, lengths[:, None], end_id)  # (B, T+1)
    return inputs, targets


def doubly_stochastic_penalty(attention: Tensor, steps: Tensor | None = None) -> Tensor:
    """``sum_i (1 - sum_t alpha_ti)^2`` per caption, ``(B,)`` (Xu et al. 2015, eq. 14, ``tau = 1``).

    Args:
        attention: ``(B, T, N)``, each step's weights over the ``N`` patches.
        steps: ``(B, T)`` bool, the steps that count (True); None: all.
    """
    if steps is not None:
        attention = attention * steps[..., None].to(attention.dtype)
    return ((1.0 - attention.sum(1)) ** 2).sum(1)


def supervised_attention_loss(attention: Tensor, gold: Tensor) -> Tensor:
    """The mean over supervised words of ``-sum_i g_ti log alpha_ti`` (Liu et al. 2017, strong
    supervision), a scalar; 0 when no word is supervised.

    Args:
        attention: ``(B, T', N)``, each step's weights over the ``N`` patches (``T' >= T``: the
            steps after the caption's words, ``<end>``'s, are not supervised).
        gold: ``(B, T, N)``, each word's gold distribution over the patches (a row of zeros: a
            word without gold, left out).

    Raises:
        ValueError: shapes that do not fit.
    """
    fits = gold.dim() == attention.dim() == 3 and gold.shape[1] <= attention.shape[1]
    if not fits or gold.shape[::2] != attention.shape[::2]:
        raise ValueError(f"gold: expected (B, T <= {attention.shape[1]}, N) fitting the attention "
                         f"{tuple(attention.shape)}, got {tuple(gold.shape)}")  # fmt: skip
    log_alpha = attention[:, : gold.shape[1]].clamp_min(torch.finfo(attention.dtype).tiny).log()  # (B, T, N)
    per_word = -(gold * log_alpha).sum(-1)  # (B, T)
    supervised = gold.sum(-1) > 0  # (B, T)
    return per_word[supervised].sum() / supervised.sum().clamp_min(1)


class _Captioner(nn.Module):
    """What both captioners share: the encoder, the loss, teacher-forced forward."""

    config: CaptionImageConfig

    def _encoder(self, cfg: CaptionImageConfig) -> None:
        self.encoder = PatchEncoder(cfg.vision_config())
        self.grid, self.patch_size, self.num_prefix_tokens = self.encoder.grid, cfg.patch_size, 0

    def encode(self, images: Tensor) -> dict[str, Tensor]:
        """The memory of decoding: ``{"features": (B, N, D)}``."""
        return {"features": self.encoder(images)}

    def loss(self, images: Tensor, words: Tensor, gold: Tensor | None = None) -> Tensor:
        """Mean cross-entropy per target word (``<end>`` included), plus, for Show, Attend and
        Tell, ``stochastic_weight`` times the mean :func:`doubly_stochastic_penalty` and, given
        each word's gold attention ``gold`` ``(B, T, N)`` (``words`` is ``(B, T)``),
        ``attention_supervision`` times :func:`supervised_attention_loss`."""
        cfg = self.config
        inputs, targets = caption_targets(words, pad_id=cfg.pad_id, start_id=cfg.start_id, end_id=cfg.end_id)
        logits, attention = self(images, inputs)
        ce = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=cfg.pad_id)
        return ce + self.attention_penalty(attention, targets != cfg.pad_id, gold)

    def attention_penalty(self, attention: Tensor, steps: Tensor, gold: Tensor | None) -> Tensor | float:
        """What the loss adds for the attention ``(B, T, N)`` of the real ``steps`` ``(B, T)``
        (``gold``: the words' gold attention, or None): given ``gold``, ``attention_supervision``
        times :func:`supervised_attention_loss` (nothing at weight 0)."""
        mu = self.config.attention_supervision
        return mu * supervised_attention_loss(attention, gold) if gold is not None and mu else 0.0


class ShowAttendTell(_Captioner):
    """The LSTM captioner with soft additive attention; see the module docstring.

    Attributes:
        config: the :class:`ShowAttendTellConfig`.
        grid, patch_size, num_prefix_tokens: where each patch is (row-major, no prefix token).
        attention: the :class:`qkv.modules.AdditiveAttention` over patches.
    """

    def __init__(self, config: ShowAttendTellConfig) -> None:
        super().__init__()
        cfg = self.config = config
        self._encoder(cfg)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=cfg.pad_id)
        self.init_h, self.init_c = nn.Linear(cfg.dim, cfg.hidden_dim), nn.Linear(cfg.dim, cfg.hidden_dim)
        self.attention = AdditiveAttention(
            query_dim=cfg.hidden_dim, key_dim=cfg.dim, hidden_dim=cfg.attention_dim
        )
        self.f_beta = nn.Linear(cfg.hidden_dim, cfg.dim)
        self.cell = nn.LSTMCell(cfg.embed_dim + cfg.dim, cfg.hidden_dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.hidden_dim + cfg.dim, cfg.vocab_size)

    def attention_penalty(self, attention: Tensor, steps: Tensor, gold: Tensor | None) -> Tensor | float:
        """``stochastic_weight`` times the mean :func:`doubly_stochastic_penalty`, plus the
        supervised attention term of every captioner (each nothing at weight 0)."""
        cfg = self.config
        out = (
            cfg.stochastic_weight * doubly_stochastic_penalty(attention, steps).mean()
            if cfg.stochastic_weight
            else 0.0
        )
        return out + super().attention_penalty(attention, steps, gold)

    def init_state(self, memory: dict[str, Tensor]) -> dict[str, Tensor]:
        mean = memory["features"].mean(1)  # (B, D)
        return {"h": torch.tanh(self.init_h(mean)), "c": torch.tanh(self.init_c(mean))}

    def step(
        self, prev: Tensor, state: dict[str, Tensor], memory: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """One word: ``prev (B,)`` -> logits ``(B, V)``, the new state, attention ``(B, N)``."""
        a = memory["features"]  # (B, N, D)
        h, c = state["h"], state["c"]
        att = self.attention(h[:, None], a, a, need_weights=True)  # out (B, 1, D), weights (B, 1, N)
        z = torch.sigmoid(self.f_beta(h)) * att.out[:, 0]  # (B, D), gated context
        h, c = self.cell(torch.cat([self.embed(prev), z], -1), (h, c))
        logits = self.out(self.drop(torch.cat([h, z], -1)))  # (B, V)
        return logits, {"h": h, "c": c}, att.weights.reshape(a.shape[0], a.shape[1])

    def forward(self, images: Tensor, words_in: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher forcing: logits ``(B, T, V)`` and attention ``(B, T, N)``."""
        memory = self.encode(images)
        state = self.init_state(memory)
        logits, attention = [], []
        for t in range(words_in.shape[1]):
            step_logits, state, alpha = self.step(words_in[:, t], state, memory)
            logits.append(step_logits)
            attention.append(alpha)
        return torch.stack(logits, 1), torch.stack(attention, 1)


class DecoderBlock(nn.Module):
    """A pre-LN decoder block: causal self-attention, cross-attention to the patches, an MLP."""

    def __init__(self, cfg: CaptionTransformerConfig, *, supervised: bool = False) -> None:
        """``supervised``: the loss reads this block's cross-attention weights, so they must
        carry gradients: the reference backend builds them in the graph (the others' come from a
        second pass that builds none)."""
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(cfg.dim) for _ in range(3))
        self.self_attn = MultiHeadAttention(
            embed_dim=cfg.dim, num_heads=cfg.decoder_heads, dropout=cfg.dropout
        )
        self.cross_attn = MultiHeadAttention(
            embed_dim=cfg.dim, num_heads=cfg.decoder_heads, dropout=cfg.dropout,
            backend="reference" if supervised else "auto",
        )  # fmt: skip
        self.mlp = MLP(cfg.dim, cfg.decoder_mlp_dim, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, y: Tensor, patches: Tensor, padding: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """-> y ``(B, T, D)`` and the cross-attention ``(B, heads, T, N)``; ``padding`` ``(B, N)``,
        True = a memory token never attended."""
        y = y + self.drop(self.self_attn(self.norm1(y), mask=causal()).out)
        c = self.cross_attn(self.norm2(y), patches, patches, key_padding_mask=padding, need_weights=True)
        y = y + self.drop(c.out)
        return y + self.drop(self.mlp(self.norm3(y))), c.weights


class CaptionTransformer(_Captioner):
    """The Transformer-decoder captioner; see the module docstring. Its decoding state is the
    words so far (each step reruns the decoder on them: captions are a few words long).

    Attributes:
        config: the :class:`CaptionTransformerConfig`.
        grid, patch_size, num_prefix_tokens: where each patch is (row-major, no prefix token).
    """

    def __init__(self, config: CaptionTransformerConfig) -> None:
        super().__init__()
        cfg = self.config = config
        self._encoder(cfg)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim, padding_idx=cfg.pad_id)
        self.pos_embed = nn.Parameter(torch.randn(1, cfg.max_words + 1, cfg.dim) * 0.02)
        last, supervised = cfg.decoder_depth - 1, cfg.attention_supervision > 0
        self.blocks = nn.ModuleList(
            [DecoderBlock(cfg, supervised=supervised and i == last) for i in range(cfg.decoder_depth)]
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.dim, cfg.vocab_size)

    def decode(
        self, words_in: Tensor, patches: Tensor, padding: Tensor | None = None
    ) -> tuple[Tensor, AttentionMaps]:
        """Logits ``(B, T, V)`` and every layer's cross-attention ``(B, heads, T, N)`` over the
        memory ``patches`` ``(B, N, D)`` (``padding`` ``(B, N)``: True = never attended)."""
        if words_in.shape[1] > self.pos_embed.shape[1]:
            raise ValueError(f"words_in: expected at most max_words + 1 = {self.pos_embed.shape[1]} "
                             f"steps, got {words_in.shape[1]}")  # fmt: skip
        y = self.drop(self.embed(words_in) + self.pos_embed[:, : words_in.shape[1]])  # (B, T, D)
        maps = AttentionMaps()
        for block in self.blocks:
            y, w = block(y, patches, padding)
            maps.cross.append(w)
        return self.out(self.norm(y)), maps

    def init_state(self, memory: dict[str, Tensor]) -> dict[str, Tensor]:
        features = memory["features"]
        return {"words": torch.full((features.shape[0], 0), self.config.start_id, dtype=torch.long,
                                    device=features.device)}  # fmt: skip

    def step(
        self, prev: Tensor, state: dict[str, Tensor], memory: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """One word: ``prev (B,)`` -> logits ``(B, V)``, the new state, attention ``(B, N)``."""
        words = torch.cat([state["words"], prev[:, None]], 1)  # (B, t)
        logits, maps = self.decode(words, memory["features"], memory.get("padding"))
        return logits[:, -1], {"words": words}, maps.cross[-1][:, :, -1].mean(1)

    def forward(self, images: Tensor, words_in: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher forcing: logits ``(B, T, V)`` and attention ``(B, T, N)`` (the last layer's,
        averaged over heads)."""
        logits, maps = self.decode(words_in, self.encode(images)["features"])
        return logits, maps.cross[-1].mean(1)
