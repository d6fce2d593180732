"""Record the attention weights of any model's forward passes without changing its outputs.

    with capture(model) as maps:
        out = model(x)                 # bitwise the same `out` as without capture
    maps["layers.0.attention"]         # [ (B, H, Tq, Tk) ], one tensor per call
    maps.stack()                       # (L, B, H, Tq, Tk) in model order
    maps.to_maps()                     # qkv.AttentionMaps(encoder=[...], decoder=[...], cross=[...])

What is recorded (shape legend in :mod:`qkv._types`):

- every qkv attention module inside ``model``: :class:`qkv.MultiHeadAttention` (``(B, H, Tq,
  Tk)`` per head) and the RNN attentions :class:`qkv.AdditiveAttention`,
  :class:`qkv.LuongAttention`, :class:`qkv.DotProductAttention` (one head: ``(B, 1, Tq, Tk)``;
  a one-step Luong query gives ``(B, 1, 1, Tk)``);
- Hugging Face ``transformers`` models: the modules their class declares as attention
  recorders, run with eager attention for the duration (see :mod:`qkv.interop.hf_attention`).

How outputs stay the same: a forward pre-hook asks each module for its weights
(``need_weights=True``, per head) and a forward hook records them and gives the caller the
output it asked for (``weights=None`` if it did not ask, the head average if it asked for
``average_weights``). The weights come from the same attention computation or, for fast
backends that do not build them, from an exact second pass; ``auto`` dispatch is kept on the
backend it picks without weights, so the attention output is bitwise the one the model
computes without capture.

Kinds, from the module's qualified name: ``"cross"`` where a part contains ``cross``,
``encdec`` or is ``encoder_attn``/``src_attn``, and for the RNN attentions (which attend from a
decoder to a source) unless a part contains ``self``; then ``"decoder"`` where a part contains
``decoder``; else ``"encoder"``.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager

import torch
from torch import Tensor, nn

from ._types import AttentionMaps, AttentionOutput
from .backends import dispatch as _dispatch
from .modules import AdditiveAttention, DotProductAttention, LuongAttention, MultiHeadAttention

__all__ = ["ATTENTION_KINDS", "CapturedAttention", "attention_kind", "capture"]

ATTENTION_KINDS = ("encoder", "decoder", "cross")
_RNN_ATTENTION = (AdditiveAttention, LuongAttention, DotProductAttention)
_QKV_ATTENTION = (MultiHeadAttention, *_RNN_ATTENTION)
_CROSS_PARTS = ("encoder_attn", "src_attn")


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


class CapturedAttention(Mapping):
    """The weights recorded by :func:`capture`: ``name -> list of (B, H, Tq, Tk)``, one per call.

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
        _check_kind(kind)
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


def _check_kind(kind: str | None) -> None:
    if kind is not None and kind not in ATTENTION_KINDS:
        raise ValueError(f"kind: expected one of {', '.join(ATTENTION_KINDS)} or None, got {kind!r}")


def _check_kinds(kinds: Iterable[str] | str | None) -> frozenset[str]:
    if kinds is None:
        return frozenset(ATTENTION_KINDS)
    if isinstance(kinds, str):
        kinds = (kinds,)
    kinds = frozenset(kinds)
    bad = sorted(kinds - set(ATTENTION_KINDS))
    if bad or not kinds:
        raise ValueError(
            f"kinds: expected a non-empty subset of {', '.join(ATTENTION_KINDS)}, got {sorted(kinds)}"
        )
    return kinds


def _check_heads(heads: int | Sequence[int] | None) -> list[int] | None:
    if heads is None:
        return None
    items = [heads] if isinstance(heads, int) else list(heads)
    if not items or not all(isinstance(h, int) and not isinstance(h, bool) and h >= 0 for h in items):
        raise ValueError(f"heads: expected a non-negative int or a non-empty list of them, got {heads!r}")
    return items


def select_heads(weights: Tensor, heads: list[int] | None, name: str) -> Tensor:
    """``weights (B, H, Tq, Tk)`` restricted to ``heads`` (dim 1), with a clear error."""
    if heads is None:
        return weights
    if max(heads) >= weights.shape[1]:
        raise ValueError(f"heads: {name!r} has {weights.shape[1]} heads, got heads={heads}")
    return weights[:, heads]


def _as_bhqk(weights: Tensor) -> Tensor:
    """An RNN attention's ``(B, Tk)`` or ``(B, Tq, Tk)`` weights as ``(B, 1, Tq, Tk)``."""
    if weights.dim() == 2:
        return weights[:, None, None, :]  # (B, Tk) -> (B, 1, 1, Tk)
    if weights.dim() == 3:
        return weights[:, None]  # (B, Tq, Tk) -> (B, 1, Tq, Tk)
    return weights


class _AutoKeepsBackend:
    """While a hooked call runs that did not ask for weights, ``auto`` dispatch must pick the
    backend it picks without weights (it otherwise prefers the reference on small problems,
    which builds weights in one pass but rounds differently). Sets the dispatch threshold for
    each call and restores it after the call and when the capture ends. The threshold is
    process-wide: while a hooked call runs, another thread's small calls with weights take the
    fast path plus the exact second pass instead (equal within tolerance)."""

    name = "WEIGHTS_IN_ONE_PASS_MAX"

    def __init__(self) -> None:
        self.saved = getattr(_dispatch, self.name, None)

    def call(self, caller_asked: bool) -> None:
        if self.saved is not None:
            setattr(_dispatch, self.name, self.saved if caller_asked else -1)

    def restore(self) -> None:
        if self.saved is not None:
            setattr(_dispatch, self.name, self.saved)


@contextmanager
def capture(
    model: nn.Module,
    *,
    kinds: Iterable[str] | str | None = None,
    heads: int | Sequence[int] | None = None,
    detach: bool = True,
) -> Iterator[CapturedAttention]:
    """Record the attention weights of every attention module of ``model`` while the ``with``
    block runs; the model's outputs do not change (bitwise).

    Args:
        model: any ``nn.Module`` holding qkv attention modules, or a Hugging Face
            ``transformers`` model (switched to eager attention for the duration, then back).
        kinds: record only these kinds (``"encoder"``, ``"decoder"``, ``"cross"``); other
            attention modules are not hooked at all. Default: all.
        heads: record only these heads (an int or a list) of multi-head modules, saving
            memory; the one-head RNN attentions are recorded whole.
        detach: record detached tensors (default). With ``detach=False`` the recorded weights
            stay in the autograd graph, for gradient-weighted methods: qkv modules then run
            their ``"reference"`` backend for the duration (outputs equal the fast backends'
            within floating-point tolerance, not bitwise).

    Yields:
        :class:`CapturedAttention`, filled as the model runs.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: no attention module of the requested kinds in ``model``; bad ``kinds`` or
            ``heads`` (``heads`` beyond a module's head count is reported at the call).
        RuntimeError: a Hugging Face model that cannot run eager attention.

    Hooks (and the eager switch) are removed when the block exits, also on exceptions.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    wanted = _check_kinds(kinds)
    head_list = _check_heads(heads)
    if _is_hf_model(model):
        from .interop.hf_attention import capture_hf

        with capture_hf(model, kinds=wanted, heads=head_list, detach=detach) as maps:
            yield maps
        return

    found = [(n, m) for n, m in model.named_modules() if isinstance(m, _QKV_ATTENTION)]
    if not found:
        raise ValueError(
            f"model: {type(model).__name__} holds no qkv attention module "
            f"({', '.join(c.__name__ for c in _QKV_ATTENTION)}) and is not a transformers model"
        )
    kind_of = {n: attention_kind(n, rnn=isinstance(m, _RNN_ATTENTION)) for n, m in found}
    targets = [(n, m) for n, m in found if kind_of[n] in wanted]
    if not targets:
        have = ", ".join(f"{n} ({kind_of[n]})" for n, _ in found)
        raise ValueError(f"kinds: no attention module of kinds {sorted(wanted)} in model; it has {have}")
    maps = CapturedAttention([n for n, _ in targets], kind_of)
    auto = _AutoKeepsBackend()
    with ExitStack() as stack:
        stack.callback(auto.restore)
        for name, module in targets:
            _hook(stack, name, module, maps, auto, head_list, detach)
        yield maps


# Keyword arguments that make a call to qkv.MultiHeadAttention torch-style (see its forward).
_TORCH_CALL_KEYS = ("attn_mask", "is_causal", "average_attn_weights")


def _hook(
    stack: ExitStack,
    name: str,
    module: nn.Module,
    maps: CapturedAttention,
    auto: _AutoKeepsBackend,
    heads: list[int] | None,
    detach: bool,
) -> None:
    rnn = isinstance(module, _RNN_ATTENTION)  # one head: ``heads`` does not apply
    asked: list[tuple[bool, bool]] = []  # per active call: (need_weights, average_weights) of the caller

    def pre_hook(mod, args, kwargs):
        torch_call = any(kwargs.get(k) is not None for k in _TORCH_CALL_KEYS)
        if torch_call:  # torch's convention: weights by default, averaged by default
            need = kwargs.get("need_weights") is not False
            avg = kwargs.get("average_attn_weights") is not False
            kwargs = dict(kwargs, need_weights=True, average_attn_weights=False)
        else:
            need, avg = bool(kwargs.get("need_weights", False)), bool(kwargs.get("average_weights", False))
            kwargs = dict(kwargs, need_weights=True)
            if "average_weights" in kwargs:
                kwargs["average_weights"] = False
        asked.append((need, avg))
        if detach:
            auto.call(need)
        return args, kwargs

    def post_hook(mod, args, kwargs, output):
        need, avg = asked.pop() if asked else (True, False)
        auto.restore()
        if isinstance(output, tuple) and len(output) == 2 and isinstance(output[1], torch.Tensor):
            out, w = output  # a torch-style call: (out, weights (B, H, Tq, Tk))
        elif isinstance(output, AttentionOutput) and output.weights is not None:
            out, w = output.out, output.weights
        else:
            return None
        rec = _as_bhqk(w)
        rec = rec.detach() if detach else rec
        maps.record(name, rec if rnn else select_heads(rec, heads, name))
        given = (w.mean(dim=1) if avg else w) if need else None
        if isinstance(output, tuple):
            return out, given
        if need and not avg:
            return None
        return dataclasses.replace(output, weights=given)

    if not detach and isinstance(getattr(module, "backend", None), str):
        saved = module.backend
        module.backend = "reference"  # its weights are the tensor the output is computed from
        stack.callback(setattr, module, "backend", saved)
    stack.callback(module.register_forward_pre_hook(pre_hook, with_kwargs=True).remove)
    stack.callback(module.register_forward_hook(post_hook, with_kwargs=True).remove)


def _is_hf_model(model: nn.Module) -> bool:
    transformers = sys.modules.get("transformers")
    if transformers is None:
        return False
    base = getattr(transformers, "PreTrainedModel", None)
    return base is not None and isinstance(model, base)
