"""A locked (frozen) pretrained text tower for a dual encoder: open_clip's ``--lock-text``.

A pretrained sentence encoder reads the caption; its weights never change::

    h = Encoder(tokens, mask)                    (C, T, D)   mask = tokens != pad_id
    x = sum_t mask_t h_t / sum_t mask_t          (C, D)      sentence-transformers' mean pooling

and :class:`qkv.models.CLIP` projects ``x`` with its own trainable ``text_proj``. The tower is
frozen three ways: its parameters never require gradients (their ``.grad`` stays None), it
stays in eval mode whatever ``train()`` is asked (no dropout), and it runs without building a
graph. Its weights are not part of the model's ``state_dict()``: a checkpoint holds what trains,
and loading one keeps the tower's own weights (whoever builds the model loads them, e.g.
:func:`qkv.interop.load_bert`).

Shapes: ``tokens (C, T)`` int64 ids of the encoder's own tokenizer, padded with ``pad_id``
-> ``(C, out_dim)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .._types import AttentionMaps
from .bert import BertModel, mean_pool

__all__ = ["LockedText"]


class LockedText(nn.Module):
    """A frozen :class:`~qkv.models.BertModel`, mean-pooled (module docstring).

    Args:
        encoder: the pretrained encoder (its parameters are frozen in place).
        pad_id: the padding id of its tokenizer.

    Attributes:
        out_dim: the width of a sentence embedding (the encoder's hidden size).
    """

    def __init__(self, encoder: BertModel, *, pad_id: int) -> None:
        super().__init__()
        if not isinstance(pad_id, int) or not 0 <= pad_id < encoder.config.vocab_size:
            raise ValueError(f"pad_id: expected an int in [0, {encoder.config.vocab_size}), got {pad_id!r}")
        self.encoder = encoder.requires_grad_(False)
        self.pad_id, self.out_dim = pad_id, encoder.config.hidden_size
        self.register_state_dict_post_hook(_drop_encoder)
        self.register_load_state_dict_pre_hook(_keep_encoder)
        self.train(False)

    def train(self, mode: bool = True) -> LockedText:
        """Always eval mode: a locked tower never drops out."""
        return super().train(False)

    def forward(self, tokens: Tensor, maps: AttentionMaps | None = None) -> Tensor:
        """Mean-pooled sentence embeddings ``(C, out_dim)`` of ``tokens (C, T)`` (no graph:
        nothing upstream of the pooled features is ever trained).

        Raises:
            ValueError: not int64 ``(C, T)``, or a caption of padding only.
        """
        if tokens.dim() != 2 or tokens.dtype != torch.int64:
            raise ValueError(
                f"tokens: expected int64 (C, T) token ids, got {tokens.dtype} {tuple(tokens.shape)}"
            )
        mask = tokens != self.pad_id  # (C, T)
        if tokens.shape[1] == 0 or bool((~mask).all(1).any()):
            raise ValueError(
                "tokens: expected every caption to hold a token, got an empty (all padding) caption"
            )
        with torch.no_grad():
            out = self.encoder(tokens, mask.long(), need_weights=maps is not None)
            if maps is not None:
                maps.encoder.extend(out.attentions.encoder)
            return mean_pool(out.last_hidden_state, mask)


def _drop_encoder(module: nn.Module, state: dict[str, Any], prefix: str, metadata: Any) -> None:
    """``state_dict()`` without the frozen encoder's tensors."""
    for name in [n for n in state if n.startswith(prefix + "encoder.")]:
        del state[name]


def _keep_encoder(module: nn.Module, state: dict[str, Any], prefix: str, *args: Any) -> None:
    """``load_state_dict`` of a state without the frozen encoder: its own tensors stand in."""
    for name, tensor in module.encoder.state_dict().items():
        state.setdefault(f"{prefix}encoder.{name}", tensor)
