"""What callers hand to :mod:`qkv.viz` (tensors, numpy arrays, nested lists) turned into tensors.

Shape legend (see :mod:`qkv._types`)::

    L   layers     H   heads     B   batch     Tq  query length     Tk  key length
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

__all__ = ["BIDI_CONTROLS", "as_float", "check_batch_index", "labels", "stack_layers", "visible_text"]

#: The Unicode bidirectional control characters (``Bidi_Control``): ALM U+061C, LRM U+200E,
#: RLM U+200F, LRE..RLO U+202A-U+202E, LRI..PDI U+2066-U+2069. In a token they would reorder
#: the text around it (U+202E shows "abc" as "cba"); :func:`visible_text` shows them instead.
BIDI_CONTROLS = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_BIDI = re.compile(f"[{BIDI_CONTROLS}]")


def as_float(name: str, value: object, *, ndim: int | None = None, what: str = "") -> Tensor:
    """``value`` as a detached float64 CPU tensor, with ``ndim`` dimensions when given.

    Raises:
        TypeError: ``value`` is not a tensor, numpy array or (nested) list of numbers.
        ValueError: the number of dimensions is not ``ndim``.
    """
    if isinstance(value, Tensor):
        t = value.detach().to("cpu", torch.float64)
    else:
        try:
            t = torch.as_tensor(value, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(
                f"{name}: expected a tensor, numpy array or nested list of numbers, "
                f"got {type(value).__name__} ({exc})"
            ) from exc
    if ndim is not None and t.dim() != ndim:
        kind = f"{ndim}-D {what}" if what else f"{ndim}-D"
        raise ValueError(f"{name}: expected a {kind} array, got shape {tuple(t.shape)}")
    return t


def check_batch_index(batch_index: object, batch: int, name: str) -> int:
    """``batch_index`` checked against a batch of size ``batch`` (negative indices allowed)."""
    if isinstance(batch_index, bool) or not isinstance(batch_index, int):
        raise TypeError(f"batch_index: expected an int, got {type(batch_index).__name__}")
    if not -batch <= batch_index < batch:
        raise ValueError(f"batch_index: {batch_index} is out of range for {name} with batch size {batch}")
    return batch_index


def _is_array(value: object) -> bool:
    return isinstance(value, Tensor) or (hasattr(value, "shape") and hasattr(value, "dtype"))


def stack_layers(name: str, value: object, *, batch_index: int = 0) -> Tensor:
    """Attention weights of several layers as one ``(L, H, Tq, Tk)`` float64 tensor.

    Accepted forms:

    - a list over layers of tensors/arrays, each ``(B, H, Tq, Tk)`` (batch ``batch_index``
      is taken, as in :class:`qkv.AttentionMaps`), ``(H, Tq, Tk)`` or ``(Tq, Tk)``;
    - one array ``(L, B, H, Tq, Tk)`` (batch ``batch_index`` taken), ``(L, H, Tq, Tk)``,
      ``(H, Tq, Tk)`` (one layer) or ``(Tq, Tk)`` (one layer, one head); nested lists count as
      one array.

    Raises:
        ValueError: no layers, layers of different shapes, a wrong number of dimensions or
            ``batch_index`` out of range.
    """
    if isinstance(value, (list, tuple)) and value and all(_is_array(v) for v in value):
        layers = []
        for index, layer in enumerate(value):
            t = as_float(f"{name}[{index}]", layer)
            if t.dim() == 4:  # (B, H, Tq, Tk) -> (H, Tq, Tk)
                t = t[check_batch_index(batch_index, t.shape[0], f"{name}[{index}]")]
            elif t.dim() == 2:  # (Tq, Tk) -> (1, Tq, Tk)
                t = t.unsqueeze(0)
            elif t.dim() != 3:
                raise ValueError(
                    f"{name}[{index}]: expected a layer of shape (B, H, Tq, Tk), (H, Tq, Tk) or (Tq, Tk), "
                    f"got {tuple(t.shape)}"
                )
            if layers and t.shape != layers[0].shape:
                raise ValueError(
                    f"{name}: layer {index} has shape {tuple(t.shape)} but layer 0 has {tuple(layers[0].shape)}"
                )
            layers.append(t)
        return torch.stack(layers)  # L x (H, Tq, Tk) -> (L, H, Tq, Tk)
    if isinstance(value, (list, tuple)) and not value:
        raise ValueError(f"{name}: expected at least one layer of attention weights, got an empty list")
    t = as_float(name, value)
    if t.dim() == 5:  # (L, B, H, Tq, Tk) -> (L, H, Tq, Tk)
        return t[:, check_batch_index(batch_index, t.shape[1], name)]
    if t.dim() == 4:
        return t
    if t.dim() == 3:  # (H, Tq, Tk) -> (1, H, Tq, Tk)
        return t.unsqueeze(0)
    if t.dim() == 2:  # (Tq, Tk) -> (1, 1, Tq, Tk)
        return t[None, None]
    raise ValueError(
        f"{name}: expected attention weights of shape (L, H, Tq, Tk) (or a list over layers), "
        f"got {tuple(t.shape)}"
    )


def labels(name: str, tokens: object, count: int | None = None, *, what: str = "") -> list[str]:
    """Token strings from a sequence (each item passed through ``str``), ``count`` of them if given.

    Raises:
        TypeError: ``tokens`` is a single string or not a sequence.
        ValueError: the number of tokens is not ``count``.
    """
    if isinstance(tokens, (str, bytes, Mapping)) or not isinstance(tokens, Iterable):
        raise TypeError(f"{name}: expected a sequence of token strings, got {type(tokens).__name__}")
    out = [str(t) for t in tokens]
    if count is not None and len(out) != count:
        raise ValueError(f"{name}: expected {count} labels{' ' + what if what else ''}, got {len(out)}")
    return out


def visible_text(text: object) -> str:
    """``str(text)`` with every bidi control character written as its code point,
    ``"\u202eabc"`` -> ``"⟨U+202E⟩abc"``: shown, never applied (figures, terminals, the viewer)."""
    return _BIDI.sub(lambda m: f"\u27e8U+{ord(m.group(0)):04X}\u27e9", str(text))
