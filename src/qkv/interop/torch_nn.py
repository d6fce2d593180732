"""``swap_attention(model)``: every ``torch.nn.MultiheadAttention`` inside any model replaced by
:class:`qkv.TorchMultiheadAttention`, so that :func:`qkv.capture` and every :mod:`qkv.interpret`
method work on models written against torch's module (``nn.TransformerEncoderLayer``,
``nn.Transformer``, torchvision's ViT, your own code).

The replacement is torch's module with qkv's attention inside: the same constructor arguments,
parameters and ``state_dict`` keys, the same call and return, so the model's code does not
change. With ``share_weights=True`` (the default) the new modules hold the *same* parameter
objects, so an optimizer built before the swap keeps training them; with ``False`` they are
copies and the original model's weights are never touched.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from ..modules import TorchMultiheadAttention

__all__ = ["SwapReport", "swap_attention"]

_PARAMETERS = (
    "in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight", "v_proj_weight", "bias_k", "bias_v",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class SwapReport:
    """What :func:`swap_attention` did: the qualified names it ``swapped``, and those it ``left``
    with the reason (``{name: reason}``). ``print(report)`` gives one line each."""

    swapped: tuple[str, ...]
    left: dict[str, str]

    def __str__(self) -> str:
        lines = [
            f"swapped {len(self.swapped)} nn.MultiheadAttention module(s) for qkv.TorchMultiheadAttention"
        ]
        lines += [f"  swapped {name}" for name in self.swapped]
        lines += [f"  left    {name}: {why}" for name, why in self.left.items()]
        return "\n".join(lines)


def swap_attention(
    model: nn.Module, *, share_weights: bool = True, backend: str = "auto", strict: bool = False
) -> SwapReport:
    """Replace, in place, every ``torch.nn.MultiheadAttention`` inside ``model`` by
    :class:`qkv.TorchMultiheadAttention` (its ``from_torch``).

    Args:
        model: any ``nn.Module``; ``model`` itself is not replaced (swap its parent, or wrap it).
        share_weights: the new modules hold the same parameter objects (default), or copies.
        backend: the :func:`qkv.attention` backend of the new modules.
        strict: raise instead of leaving a module out (a subclass of ``nn.MultiheadAttention``
            with its own ``forward``, whose behaviour qkv cannot know).

    Returns:
        :class:`SwapReport`: what was swapped, what was left and why. Modules that already are
        :class:`qkv.TorchMultiheadAttention` are left as they are (swapping twice is harmless).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: with ``strict=True``, a module that cannot be swapped.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(share_weights, bool):
        raise TypeError(f"share_weights: expected a bool, got {share_weights!r}")
    swapped: list[str] = []
    left: dict[str, str] = {}
    for name, parent, child_name, child in _attention_children(model):
        why = _why_not(child)
        if why is None:
            setattr(parent, child_name, _replacement(child, share_weights, backend))
            swapped.append(name)
        elif strict and not isinstance(child, TorchMultiheadAttention):
            raise ValueError(f"model: cannot swap {name}: {why}")
        else:
            left[name] = why
    return SwapReport(tuple(swapped), left)


def _attention_children(model: nn.Module):
    """``(qualified name, parent, attribute, module)`` of every ``nn.MultiheadAttention`` below
    ``model``, listed before any is replaced."""
    found = []
    for parent_name, parent in model.named_modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.MultiheadAttention):
                found.append(
                    (f"{parent_name}.{child_name}" if parent_name else child_name, parent, child_name, child)
                )
    return found


def _why_not(m: nn.MultiheadAttention) -> str | None:
    if isinstance(m, TorchMultiheadAttention):
        return "already qkv.TorchMultiheadAttention"
    if type(m).forward is not nn.MultiheadAttention.forward:
        return f"{type(m).__name__} subclasses nn.MultiheadAttention with its own forward"
    return None


def _replacement(m: nn.MultiheadAttention, share_weights: bool, backend: str) -> TorchMultiheadAttention:
    new = TorchMultiheadAttention.from_torch(m, backend=backend)
    if share_weights:
        for name in _PARAMETERS:
            if getattr(m, name, None) is not None:
                setattr(new, name, getattr(m, name))
        new.out_proj = m.out_proj
    return new
