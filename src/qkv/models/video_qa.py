"""Video question answering on qkv attention, one readable file: a question attends to the frames
of a clip and the answer is read from what it gathered.

::

    frames    v_t = ViT(frame_t)                              one vector per frame (the ViT's head projects)
    time      x = [v_1 .. v_F] + frame positions (+ W [0, v_1 .. v_{F-1}]: each frame's predecessor)
              x = x + SelfAttn(LN(x)),  x = x + MLP(LN(x))    padding frames never attended
    question  q = TextEncoder(words)                          the class token of a Transformer over the words
    cross     m = [null; LN(x)]                               a learned null frame: "nothing here"
              q = q + CrossAttn(LN(q), m),  q = q + MLP(LN(q))    (cross_depth times)
    answer    logits = Linear(LN(q))
    reading   frame_logits_t = Linear(v_t)                    the digit of each frame (training only)

The loss is the answer's cross-entropy plus ``frame_loss_weight`` times the mean cross-entropy
of the real frames' digits read from their ViT vectors (:meth:`VideoQA.loss`): the answer alone
is too weak a signal to learn reading handwriting through one softmax over the frames, a
direct per-frame digit label is not. ``frame_loss_weight = 0`` is the answer's loss alone.

The null frame lets a question attend to nothing (a count of zero) and makes the attention
weight on the matching frames grow with their number (``c e^s / (c e^s + e^n + ...)``): a
count is readable from one softmax.

Controls (:data:`VARIANTS`), the same model without part of the video:

- ``"question_only"``: no frame is read; the answer is ``Linear(LN(q))`` of the question alone
  (what the question's wording gives away);
- ``"frames_averaged"``: the frame vectors mean-pooled over the clip's frames, no positions,
  no temporal attention: the question attends to ``[null; mean]`` (what the frames give
  without their order).

Shapes (B clips, F frames, C channels, S frame side, T words, E dim, A answers)::

    frames (B, F, C, S, S) in [0, 1], lengths (B,) int64 (frames past a length are padding),
    tokens (B, T) int64 (pad_id = padding) -> logits (B, A); with need_weights a
    VideoQAMaps: ``frames`` (the ViT's, per layer (B*F, heads, 1+N, 1+N)), ``question`` (per
    layer (B, heads, 1+T, 1+T)), ``video`` (``encoder``: temporal, per layer (B, heads, F, F);
    ``cross``: per layer (B, heads, 1, 1+F), key 0 the null frame)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .._types import AttentionMaps
from .clip import CLIPConfig, PaddedBlock, TextEncoder
from .vit import Block, ViT, ViTConfig

__all__ = ["VARIANTS", "VideoQA", "VideoQAConfig", "VideoQAMaps"]

#: The values of :attr:`VideoQAConfig.variant`: the model and its two controls.
VARIANTS = ("full", "question_only", "frames_averaged")


@dataclass(frozen=True)
class VideoQAConfig:
    """Hyper-parameters of :class:`VideoQA` (keyword-only, JSON-serializable).

    Attributes:
        vocab_size, max_words, pad_id: the question words (``pad_id`` among the ids).
        num_answers: ``A``, the answer classes.
        max_frames: the longest clip, in frames (the learned frame positions).
        frame_size, channels: a frame is ``(channels, frame_size, frame_size)``.
        patch_size, frame_depth: the per-frame ViT (its patches, its blocks).
        dim, heads, mlp_dim, dropout: every part's token size ``E``, heads, MLP size, dropout.
        temporal_depth, question_depth, cross_depth: blocks of temporal self-attention, of the
            question encoder, of question-to-frame cross-attention.
        variant: one of :data:`VARIANTS`.
        frame_classes: the digits a frame can show (the frame head's outputs).
        frame_loss_weight: the weight of the per-frame digit loss (0: none; ``question_only``
            reads no frame and has none).
        previous_frame: add to each frame's token a learned projection of the frame before it
            (zeros for the first): the one frame-to-frame step a question about order needs.
    """

    vocab_size: int
    num_answers: int = 10
    max_words: int = 8
    pad_id: int = 0
    max_frames: int = 12
    frame_size: int = 12
    channels: int = 1
    patch_size: int = 4
    frame_depth: int = 2
    dim: int = 64
    heads: int = 4
    mlp_dim: int = 128
    dropout: float = 0.0
    temporal_depth: int = 2
    question_depth: int = 2
    cross_depth: int = 1
    variant: str = "full"
    frame_classes: int = 10
    frame_loss_weight: float = 0.0
    previous_frame: bool = False

    def __post_init__(self) -> None:
        for name in ("num_answers", "max_frames", "cross_depth", "frame_classes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
        if (
            not isinstance(self.temporal_depth, int)
            or isinstance(self.temporal_depth, bool)
            or self.temporal_depth < 0
        ):
            raise ValueError(f"temporal_depth: expected an int >= 0, got {self.temporal_depth!r}")
        w = self.frame_loss_weight
        if isinstance(w, bool) or not isinstance(w, int | float) or not 0 <= w < float("inf"):
            raise ValueError(f"frame_loss_weight: expected a finite number >= 0, got {w!r}")
        if not isinstance(self.previous_frame, bool):
            raise ValueError(f"previous_frame: expected a bool, got {self.previous_frame!r}")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {', '.join(VARIANTS)}, got {self.variant!r}")
        self.frame_config()  # checks the frame ViT's fields
        self.question_config()  # checks the question encoder's fields

    def frame_config(self) -> ViTConfig:
        """The per-frame :class:`ViTConfig` (its ``num_classes`` is ``dim``: the head projects)."""
        return ViTConfig(image_size=self.frame_size, patch_size=self.patch_size, channels=self.channels,
                         num_classes=self.dim, dim=self.dim, depth=self.frame_depth, heads=self.heads,
                         mlp_dim=self.mlp_dim, dropout=self.dropout)  # fmt: skip

    def question_config(self) -> CLIPConfig:
        """The question encoder's fields, as the text tower of a :class:`CLIPConfig`."""
        return CLIPConfig(vocab_size=self.vocab_size, max_words=self.max_words, pad_id=self.pad_id,
                          text_dim=self.dim, text_depth=self.question_depth, text_heads=self.heads,
                          text_mlp_dim=self.mlp_dim, dropout=self.dropout)  # fmt: skip

    def to_dict(self) -> dict:
        return {"kind": "video-qa", **asdict(self)}


class VideoQAMaps(NamedTuple):
    """The attention maps of a forward pass (see the module docstring for their shapes)."""

    frames: AttentionMaps
    question: AttentionMaps
    video: AttentionMaps


class CrossBlock(Block):
    """The question attends to the frames: ``q + CrossAttn(LN(q), memory)``, then an MLP: the
    ViT's pre-LN :class:`~qkv.models.vit.Block` (the same pieces, built from the config's
    ``dim``, ``heads``, ``mlp_dim`` and ``dropout``) with cross-attention in its forward."""

    def forward(  # type: ignore[override]
        self, q: Tensor, memory: Tensor, padding: Tensor, need_weights: bool
    ) -> tuple[Tensor, Tensor | None]:
        a = self.attn(self.norm1(q), memory, memory, key_padding_mask=padding, need_weights=need_weights)
        q = q + self.drop(a.out)  # (B, 1, E); weights (B, heads, 1, 1 + F)
        return q + self.drop(self.mlp(self.norm2(q))), a.weights


class VideoQA(nn.Module):
    """A question answered from a clip's frames; see the module docstring.

    Attributes:
        config: the :class:`VideoQAConfig`.
        frame_encoder: the per-frame :class:`ViT`.
        question: the question's :class:`~qkv.models.clip.TextEncoder`.
        frame_head: reads each frame's digit from its ViT vector (the frame loss).
    """

    def __init__(self, config: VideoQAConfig) -> None:
        super().__init__()
        cfg = self.config = config
        block = {"dim": cfg.dim, "heads": cfg.heads, "mlp_dim": cfg.mlp_dim, "dropout": cfg.dropout}
        self.frame_encoder = ViT(cfg.frame_config())
        # positions as large as the frame vectors: with 0.02 (a ViT's) the question finds "the
        # third frame" many times slower
        self.frame_pos = nn.Parameter(torch.randn(1, cfg.max_frames, cfg.dim))
        self.previous = nn.Linear(cfg.dim, cfg.dim) if cfg.previous_frame else None
        self.temporal = nn.ModuleList([PaddedBlock(**block) for _ in range(cfg.temporal_depth)])
        self.frame_norm = nn.LayerNorm(cfg.dim)
        self.null_frame = nn.Parameter(torch.randn(1, 1, cfg.dim) * 0.02)
        self.question = TextEncoder(cfg.question_config())
        self.cross = nn.ModuleList([CrossBlock(cfg) for _ in range(cfg.cross_depth)])
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.num_answers)
        self.frame_head = nn.Linear(cfg.dim, cfg.frame_classes)  # last: the rest inits as without it

    def _check(self, frames: Tensor, lengths: Tensor, tokens: Tensor) -> None:
        cfg = self.config
        side = (cfg.channels, cfg.frame_size, cfg.frame_size)
        if frames.dim() != 5 or tuple(frames.shape[2:]) != side or not 1 <= frames.shape[1] <= cfg.max_frames:
            raise ValueError(f"frames: expected (B, F, C, S, S) = (B, 1..{cfg.max_frames}, "
                             f"{', '.join(map(str, side))}), got shape {tuple(frames.shape)}")  # fmt: skip
        if lengths.shape != frames.shape[:1] or lengths.dtype != torch.int64:
            raise ValueError(f"lengths: expected int64 ({frames.shape[0]},), one per clip, "
                             f"got {lengths.dtype} {tuple(lengths.shape)}")  # fmt: skip
        if lengths.numel() and not 1 <= int(lengths.min()) <= int(lengths.max()) <= frames.shape[1]:
            raise ValueError(f"lengths: expected values in [1, {frames.shape[1]}] (the frames given), "
                             f"got {int(lengths.min())}..{int(lengths.max())}")  # fmt: skip
        if tokens.dim() != 2 or tokens.shape[0] != frames.shape[0]:
            raise ValueError(f"tokens: expected ({frames.shape[0]}, T) word ids, one question per clip, "
                             f"got shape {tuple(tokens.shape)}")  # fmt: skip

    def encode_frames(
        self, frames: Tensor, lengths: Tensor, maps: VideoQAMaps | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The memory the question attends to ``(B, 1 + F', E)`` (the null frame first; ``F' = F``,
        or 1 when ``frames_averaged``), its padding ``(B, 1 + F')`` (True = never attended) and
        the ViT's frame vectors ``(B, F, E)``."""
        b, f = frames.shape[:2]
        if maps is not None:
            v, frame_maps = self.frame_encoder(frames.flatten(0, 1), need_weights=True)
            maps.frames.encoder.extend(frame_maps.encoder)
        else:
            v = self.frame_encoder(frames.flatten(0, 1))  # (B*F, C, S, S) -> (B*F, E)
        v = v.view(b, f, -1)  # (B, F, E)
        padding = torch.arange(f, device=frames.device)[None, :] >= lengths[:, None]  # (B, F)
        if self.config.variant == "frames_averaged":
            keep = (~padding).unsqueeze(-1).to(v.dtype)  # (B, F, 1)
            x = (v * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True)  # (B, 1, E): no order
            padding = torch.zeros_like(padding[:, :1])
        else:
            x = v + self.frame_pos[:, :f]
            if self.previous is not None:  # frame t also shows frame t - 1 (zeros before the first)
                x = x + self.previous(nn.functional.pad(v, (0, 0, 1, 0))[:, :f])  # (B, F, E)
            for block in self.temporal:
                x, w = block(x, padding, maps is not None)
                if maps is not None:
                    maps.video.encoder.append(w)
        memory = torch.cat([self.null_frame.expand(b, -1, -1), self.frame_norm(x)], 1)  # (B, 1 + F', E)
        return memory, torch.cat([torch.zeros_like(padding[:, :1]), padding], 1), v

    def _answer(
        self, frames: Tensor, lengths: Tensor, tokens: Tensor, maps: VideoQAMaps | None
    ) -> tuple[Tensor, Tensor | None]:
        """Answer logits ``(B, A)`` and the frame vectors ``(B, F, E)`` (None: ``question_only``)."""
        self._check(frames, lengths, tokens)
        q = self.question(tokens, maps.question if maps else None)[:, None]  # (B, T) -> (B, 1, E)
        v = None
        if self.config.variant != "question_only":
            memory, padding, v = self.encode_frames(frames, lengths, maps)
            for block in self.cross:
                q, w = block(q, memory, padding, maps is not None)
                if maps is not None:
                    maps.video.cross.append(w)
        return self.head(self.norm(q[:, 0])), v

    def forward(
        self, frames: Tensor, lengths: Tensor, tokens: Tensor, *, need_weights: bool = False
    ) -> Tensor | tuple[Tensor, VideoQAMaps]:
        """Answer logits ``(B, A)`` (and :class:`VideoQAMaps` when ``need_weights``).

        Raises:
            ValueError: frames not ``(B, 1..max_frames, channels, frame_size, frame_size)``,
                lengths not int64 ``(B,)`` in ``[1, F]``, tokens not ``(B, T)`` word ids (or an
                empty question, too many words, ids out of the vocabulary).
        """
        maps = VideoQAMaps(AttentionMaps(), AttentionMaps(), AttentionMaps()) if need_weights else None
        logits, _ = self._answer(frames, lengths, tokens, maps)
        return (logits, maps) if need_weights else logits

    def frame_logits(self, frames: Tensor) -> Tensor:
        """The digit logits of every frame ``(B, F, frame_classes)``, padding frames included."""
        return self.frame_head(self.frame_encoder(frames.flatten(0, 1))).unflatten(0, frames.shape[:2])

    def loss_terms(
        self, frames: Tensor, lengths: Tensor, tokens: Tensor, answers: Tensor, digits: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """The answers' cross-entropy and the frames' digit cross-entropy (the mean over the real
        frames, ``digits (B, F)`` -1 after each length; None for ``question_only``), one pass.

        Raises:
            ValueError: ``digits`` not ``(B, F)`` int64 labels, -1 exactly on the padding frames.
        """
        logits, v = self._answer(frames, lengths, tokens, None)
        answer_loss = nn.functional.cross_entropy(logits, answers)
        if v is None:
            return answer_loss, None
        real = torch.arange(frames.shape[1], device=frames.device)[None, :] < lengths[:, None]
        if digits.shape != real.shape or digits.dtype != torch.int64 or not torch.equal(digits >= 0, real):
            raise ValueError(f"digits: expected int64 {tuple(real.shape)}, a digit per real frame and -1 "
                             f"on padding, got {digits.dtype} {tuple(digits.shape)}")  # fmt: skip
        return answer_loss, nn.functional.cross_entropy(self.frame_head(v[real]), digits[real])

    def loss(
        self, frames: Tensor, lengths: Tensor, tokens: Tensor, answers: Tensor, digits: Tensor | None = None
    ) -> Tensor:
        """The cross-entropy of the answers ``(B,)`` (ids), plus ``frame_loss_weight`` times the
        frames' digit loss (:meth:`loss_terms`) when ``digits`` are given and the weight is not 0."""
        if digits is None or self.config.frame_loss_weight == 0:
            return nn.functional.cross_entropy(self(frames, lengths, tokens), answers)
        answer_loss, frame_loss = self.loss_terms(frames, lengths, tokens, answers, digits)
        return answer_loss if frame_loss is None else answer_loss + self.config.frame_loss_weight * frame_loss
