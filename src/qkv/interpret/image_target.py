"""What an image explanation explains: one score per image, read from the model's output.

The output's logits are ``(N, classes)``: the output itself, the first element of a tuple (qkv's
ViT returns ``(logits, maps)``), or its ``.logits`` (Hugging Face classifiers). ``target``:

- ``None``: each image's predicted class (the arg max);
- an int: that class for every image; a sequence or tensor ``(N,)``: one class per image;
- a function ``output -> (N,)``: any score (for a model without logits, e.g. ``ViTModel``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["logits_of", "target_classes", "target_scores"]

Target = int | Sequence[int] | Tensor | Callable[[object], Tensor] | None


def logits_of(output: object) -> Tensor:
    """The ``(N, classes)`` logits of a model's output.

    Raises:
        ValueError: no 2-D tensor found where the module docstring looks.
    """
    logits = output
    if isinstance(output, (tuple, list)) and output:
        logits = output[0]
    elif not isinstance(output, Tensor):
        logits = getattr(output, "logits", None)
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        raise ValueError(
            f"model: its output ({type(output).__name__}) has no (N, classes) logits (the output, the first "
            "element of a tuple, or .logits); pass target= a function output -> (N,) scores"
        )
    return logits


def target_classes(logits: Tensor, target: Target) -> Tensor:
    """The class explained for each image, ``(N,)`` long.

    Raises:
        ValueError: a class out of range, or not one per image.
    """
    n, classes = logits.shape
    if target is None:
        return logits.detach().argmax(dim=-1)
    if isinstance(target, int) and not isinstance(target, bool):
        idx = torch.full((n,), target, dtype=torch.long, device=logits.device)
    else:
        idx = torch.as_tensor(target, device=logits.device)
        if idx.dtype.is_floating_point or idx.dtype == torch.bool or tuple(idx.shape) != (n,):
            raise ValueError(
                f"target: expected None, an int or {n} class indices (one per image), got {target!r}"
            )
        idx = idx.long()
    if int(idx.min()) < 0 or int(idx.max()) >= classes:
        raise ValueError(f"target: expected classes in [0, {classes}), got {idx.tolist()}")
    return idx


def target_scores(output: object, target: Target) -> tuple[Tensor, Tensor | None]:
    """``(scores (N,), classes (N,) or None for a function target)``: the explained scores."""
    if callable(target) and not isinstance(target, Tensor):
        scores = target(output)
        if not isinstance(scores, Tensor) or scores.dim() != 1:
            got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            raise ValueError(f"target: the function should return one score per image (N,), got {got}")
        return scores, None
    logits = logits_of(output)
    idx = target_classes(logits, target)
    return logits.gather(1, idx[:, None])[:, 0], idx  # (N, classes) -> (N,)
