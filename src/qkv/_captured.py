"""What :func:`qkv.capture` records: :class:`CapturedAttention` (module name -> weights per call),
the kind rules (:func:`attention_kind`), layer selection (:func:`select_layers`) and head
selection (:func:`select_heads`).

This is the structure both capture sides fill: the hooks on qkv's attention modules
(:mod:`qkv.capture`) and the hooks on Hugging Face ``transformers`` models
(:mod:`qkv.interop.hf_attention`). It imports neither, so they depend on it and not on each
other. The public names are re-exported by :mod:`qkv.capture`; import them from there.

Kinds, from the module's qualified name: ``"cross"`` where a part contains ``cross``,
``encdec`` or is ``encoder_attn``/``src_attn``/``multihead_attn`` (torch's
``nn.TransformerDecoderLayer``), and for the RNN attentions (which attend from a
decoder to a source) unless a part contains ``self``; then ``"decoder"`` where a part contains
``decoder``; else ``"encoder"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from ._types import AttentionMaps

__all__ = [
    "ATTENTION_KINDS",
    "CapturedAttention",
    "attention_kind",
    "check_kind",
    "select_heads",
    "select_layers",
]

ATTENTION_KINDS = ("encoder", "decoder", "cross")
_CROSS_PARTS = ("encoder_attn", "src_attn", "multihead_attn")  # the last: torch's TransformerDecoderLayer


def attention_kind(name: str, *, rnn: bool = False) -> str:
    """``"encoder"``, ``"decoder"`` or ``"cross"`` for an attention module's qualified name
    (rules in the module docstring); ``rnn``: the module is an RNN (decoder-to-source) attention."""
    parts = name.lower().split(".")
    if any("cross" in p or "encdec" in p or p in _CROSS_PARTS for p in parts):
        return "cross"
    if rnn and not any("self" in p for p in parts):
        return "cross"
    if any("decoder" in p for p in parts):
        return "decoder"
    return "encoder"


def check_kind(kind: str | None) -> None:
    """Raise ``ValueError`` unless ``kind`` is one of :data:`ATTENTION_KINDS` or None."""
    if kind is not None and kind not in ATTENTION_KINDS:
        raise ValueError(f"kind: expected one of {', '.join(ATTENTION_KINDS)} or None, got {kind!r}")


def select_layers(names: Sequence[str], layers: int | str | Iterable[int | str] | None) -> list[str]:
    """The attention modules ``layers`` chooses among ``names`` (qualified names in model order),
    in model order.

    Each item of ``layers`` is an index into ``names`` (negative from the end) or a name: a
    module's qualified name or a dotted prefix of it (``"encoder.layer.3"`` chooses
    ``"encoder.layer.3.attention.self"``). None chooses every module.

    Raises:
        ValueError: an item chooses no module, or ``layers`` is empty (naming the modules
            there are, with their indices).
        TypeError: an item is neither an int nor a str.
    """
    if layers is None:
        return list(names)
    items = [layers] if isinstance(layers, int | str) else list(layers)
    have = ", ".join(f"{i}: {n}" for i, n in enumerate(names))
    if not items:
        raise ValueError(f"layers: expected at least one index or name, got none; the modules are {have}")
    chosen: set[str] = set()
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | str):
            raise TypeError(
                f"layers: expected ints (indices) or strs (names), got {type(item).__name__} {item!r}"
            )
        if isinstance(item, int):
            if not -len(names) <= item < len(names):
                raise ValueError(f"layers: index {item} is out of range for {len(names)} modules ({have})")
            chosen.add(names[item])
            continue
        hits = [n for n in names if n == item or n.startswith(item.rstrip(".") + ".")]
        if not hits:
            raise ValueError(
                f"layers: no attention module named {item!r} or under it; the modules are {have}"
            )
        chosen.update(hits)
    return [n for n in names if n in chosen]


def select_heads(weights: Tensor, heads: list[int] | None, name: str) -> Tensor:
    """``weights (B, H, Tq, Tk)`` restricted to ``heads`` (dim 1), with a clear error."""
    if heads is None:
        return weights
    if max(heads) >= weights.shape[1]:
        raise ValueError(f"heads: {name!r} has {weights.shape[1]} heads, got heads={heads}")
    return weights[:, heads]


class CapturedAttention(Mapping):
    """The weights recorded by :func:`qkv.capture`: ``name -> list of (B, H, Tq, Tk)``, one per
    call.

    Iterates over the modules that were called, in model order (``model.named_modules()``).
    """

    def __init__(self, names: Sequence[str], kinds: Mapping[str, str]) -> None:
        self._order = list(names)
        self._kinds = dict(kinds)
        self._records: dict[str, list[Tensor]] = {n: [] for n in self._order}

    # Mapping protocol ------------------------------------------------------------------------
    def __getitem__(self, name: str) -> list[Tensor]:
        if name not in self._records or not self._records[name]:
            raise KeyError(f"{name!r}: no weights recorded (recorded: {', '.join(self) or 'none'})")
        return self._records[name]

    def __iter__(self) -> Iterator[str]:
        return (n for n in self._order if self._records[n])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        rows = [f"  {n} [{self._kinds[n]}]: {len(v)} x {tuple(v[0].shape)}" for n, v in self.items()]
        return "CapturedAttention(\n" + "\n".join(rows) + "\n)" if rows else "CapturedAttention(empty)"

    # helpers ---------------------------------------------------------------------------------
    def record(self, name: str, weights: Tensor) -> None:
        """Append one call's weights ``(B, H, Tq, Tk)`` for module ``name``."""
        self._records[name].append(weights)

    def kind(self, name: str) -> str:
        """The kind (``"encoder"``, ``"decoder"``, ``"cross"``) of module ``name``."""
        return self._kinds[name]

    def names(self, kind: str | None = None) -> list[str]:
        """Recorded module names in model order, optionally of one kind."""
        check_kind(kind)
        return [n for n in self if kind is None or self._kinds[n] == kind]

    def clear(self) -> None:
        """Forget what was recorded (the hooks stay while the ``with`` block runs)."""
        for v in self._records.values():
            v.clear()

    def merged(self, name: str, *, call: int | None = None) -> Tensor:
        """One ``(B, H, Tq, Tk)`` for module ``name``.

        ``call=i`` picks call ``i`` (negative counts from the end). ``call=None``: the only call,
        or, for step-by-step decoding (every call after the first has ``Tq = 1``, e.g. an RNN
        decoder or a KV-cached decoder), all calls joined along ``Tq`` with ``Tk`` right-padded
        by zeros to the longest (a cached decoder's self-attention becomes its causal matrix).

        Raises:
            KeyError: nothing recorded for ``name``.
            ValueError: several full calls and ``call=None``; calls whose batch or heads differ.
            IndexError: ``call`` out of range.
        """
        calls = self[name]
        if call is not None:
            if not isinstance(call, int) or not -len(calls) <= call < len(calls):
                raise IndexError(f"call: expected an int in [-{len(calls)}, {len(calls)}), got {call!r}")
            return calls[call]
        if len(calls) == 1:
            return calls[0]
        if any(c.shape[2] != 1 for c in calls[1:]):
            raise ValueError(
                f"{name!r} was called {len(calls)} times with Tq > 1 (separate forward passes?): "
                "pass call=i to choose one, or clear() between passes"
            )
        b, h = calls[0].shape[:2]
        if any(c.shape[:2] != (b, h) for c in calls):
            raise ValueError(
                f"{name!r}: calls with different (B, H): {sorted({tuple(c.shape[:2]) for c in calls})}; pass call=i"
            )
        tk = max(c.shape[3] for c in calls)
        padded = [torch.nn.functional.pad(c, (0, tk - c.shape[3])) for c in calls]  # each (B, H, tq_i, Tk)
        return torch.cat(padded, dim=2)  # (B, H, sum tq_i, Tk)

    def layers(self, kind: str | None = None, *, call: int | None = None) -> list[Tensor]:
        """One ``(B, H, Tq, Tk)`` per recorded module of ``kind`` (all kinds if None), in model
        order (see :meth:`merged` for ``call``)."""
        return [self.merged(n, call=call) for n in self.names(kind)]

    def stack(self, kind: str | None = None, *, call: int | None = None) -> Tensor:
        """:meth:`layers` stacked: ``(L, B, H, Tq, Tk)``.

        Raises:
            ValueError: nothing recorded, or layers whose shapes differ (listed).
        """
        layers = self.layers(kind, call=call)
        if not layers:
            raise ValueError(f"nothing recorded{'' if kind is None else f' of kind {kind!r}'}")
        shapes = {tuple(t.shape) for t in layers}
        if len(shapes) > 1:
            raise ValueError(
                f"cannot stack layers of different shapes {sorted(shapes)}; pass kind= (one of "
                f"{', '.join(ATTENTION_KINDS)}) or use layers()"
            )
        return torch.stack(layers)

    def to_maps(self, *, call: int | None = None) -> AttentionMaps:
        """An :class:`qkv.AttentionMaps` with the layers of each kind, for :mod:`qkv.viz` and
        :mod:`qkv.interpret`."""
        return AttentionMaps(**{k: self.layers(k, call=call) for k in ATTENTION_KINDS})
