"""Record the attention weights of any model's forward passes without changing its outputs.

    with capture(model) as maps:
        out = model(x)                 # bitwise the same `out` as without capture
    maps["layers.0.attention"]         # [ (B, H, Tq, Tk) ], one tensor per call
    maps.stack()                       # (L, B, H, Tq, Tk) in model order
    maps.to_maps()                     # qkv.AttentionMaps(encoder=[...], decoder=[...], cross=[...])

What is recorded (shape legend in :mod:`qkv._types`):

- every qkv attention module inside ``model``: :class:`qkv.MultiHeadAttention` and
  :class:`qkv.TorchMultiheadAttention` (``(B, H, Tq, Tk)`` per head) and the RNN attentions :class:`qkv.AdditiveAttention`,
  :class:`qkv.LuongAttention`, :class:`qkv.DotProductAttention` (one head: ``(B, 1, Tq, Tk)``;
  a one-step Luong query gives ``(B, 1, 1, Tk)``); :class:`qkv.AttentionPooling` (its pooling
  weights, ``(B, H, 1, T)``: one query row, kind ``"encoder"`` unless its name says otherwise);
- Hugging Face ``transformers`` models: the modules their class declares as attention
  recorders, run for the duration on qkv's attention implementation (``attn_implementation="qkv"``:
  the maps come from qkv's exact weights pass; a call whose every head is recorded computes its
  output from them, ``weights @ V``, see :mod:`qkv.interop.hf_attention`), or on eager
  attention for models that do not declare they run registered attention functions (see
  :mod:`qkv.interop.hf_attention`).

How outputs stay the same: one rule for every module. Each has a hook point that takes
``need_weights=`` and returns an :class:`qkv.AttentionOutput`: the attention step ``attend``
shared by the two multi-head modules (per head, whatever convention the module speaks), the
RNN attentions themselves. A forward pre-hook on it asks for the weights (``need_weights=True``)
and a forward hook records them and gives back ``weights=None`` if the call did not ask; the
module then averages or returns them as its own convention says. Asking for weights never changes the kernel: ``auto`` chooses the backend
from the output problem alone, and the weights come from that backend or, for fast backends
that do not build them, from an exact second pass (:mod:`qkv.backends.attention_weights`). So the
attention output is bitwise the one the model computes without capture.

Nothing is switched process-wide: the only state capture adds is on ``model`` itself, its
hooks (and, for a ``transformers`` model, its attention implementation), undone when the block exits, also
on exceptions. Calls of the hooked modules are recorded from whatever thread makes them; every
other call (other models, plain :func:`qkv.attention`) runs exactly as without capture, in this
thread or another one. ``detach=False`` changes the kernel of the hooked calls only, each call
by its own argument (see :func:`capture`).

What depends only on the model's structure (its attention modules, their names and kinds; for a
``transformers`` model also its sub-models, which implementation capture runs and how switching
to it sets the configs) is walked on a model's first capture and kept, per model and held
weakly, until its module tree changes (a layer replaced, added, removed, renamed or moved:
:mod:`qkv._module_tree`); a ``with`` block then costs a check of the tree, its hooks and, for a
``transformers`` model, its switch (tens of microseconds).

Kinds, from the module's qualified name: ``"cross"`` where a part contains ``cross``,
``encdec`` or is ``encoder_attn``/``src_attn``/``multihead_attn`` (torch's
``nn.TransformerDecoderLayer``), and for the RNN attentions (which attend from a
decoder to a source) unless a part contains ``self``; then ``"decoder"`` where a part contains
``decoder``; else ``"encoder"`` (:func:`attention_kind`). The recorded structure,
:class:`CapturedAttention`, lives in :mod:`qkv._captured`, shared with the Hugging Face side.
"""

from __future__ import annotations

import dataclasses
import inspect
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager

from torch import Tensor, nn

from ._captured import ATTENTION_KINDS, CapturedAttention, attention_kind, select_heads, select_layers
from ._module_tree import TreeCache
from ._types import AttentionOutput
from .modules import (
    AdditiveAttention,
    AttentionPooling,
    DotProductAttention,
    LuongAttention,
    MultiHeadAttention,
    TorchMultiheadAttention,
)

__all__ = ["ATTENTION_KINDS", "CapturedAttention", "attention_kind", "capture"]

_RNN_ATTENTION = (AdditiveAttention, LuongAttention, DotProductAttention)
_MULTI_HEAD = (MultiHeadAttention, TorchMultiheadAttention)
_QKV_ATTENTION = (*_MULTI_HEAD, *_RNN_ATTENTION, AttentionPooling)


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


def _as_bhqk(weights: Tensor) -> Tensor:
    """An RNN attention's ``(B, Tk)`` or ``(B, Tq, Tk)`` weights as ``(B, 1, Tq, Tk)``."""
    if weights.dim() == 2:
        return weights[:, None, None, :]  # (B, Tk) -> (B, 1, 1, Tk)
    if weights.dim() == 3:
        return weights[:, None]  # (B, Tq, Tk) -> (B, 1, Tq, Tk)
    return weights


def _pooled_as_bhqk(weights: Tensor) -> Tensor:
    """An :class:`qkv.AttentionPooling`'s ``(B, T)`` or ``(B, H, T)`` weights as ``(B, H, 1, T)``:
    one query row (the pooled vector) per head."""
    return weights[:, None, None, :] if weights.dim() == 2 else weights[:, :, None, :]


def _takes_backend(module: nn.Module) -> bool:
    """Whether ``module``'s forward takes a per-call ``backend=`` (this call's backend instead of
    the module's)."""
    try:
        return "backend" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - a forward without a signature
        return False


@contextmanager
def capture(
    model: nn.Module,
    *,
    kinds: Iterable[str] | str | None = None,
    heads: int | Sequence[int] | None = None,
    layers: int | str | Iterable[int | str] | None = None,
    detach: bool = True,
) -> Iterator[CapturedAttention]:
    """Record the attention weights of every attention module of ``model`` while the ``with``
    block runs; the model's outputs do not change (bitwise).

    Args:
        model: any ``nn.Module`` holding qkv attention modules, or a Hugging Face
            ``transformers`` model (switched to qkv's attention implementation, or to eager,
            for the duration, then back; its outputs equal its own within floating-point
            tolerance, see :mod:`qkv.interop.hf_attention`).
        kinds: record only these kinds (``"encoder"``, ``"decoder"``, ``"cross"``); other
            attention modules are not hooked at all. Default: all.
        heads: record only these heads (an int or a list) of multi-head modules, saving
            memory; the one-head RNN attentions are recorded whole. On a ``transformers``
            model the weights pass computes only these heads.
        layers: record only these attention modules (of the requested ``kinds``): indices in
            model order (negative from the end), qualified names, or dotted prefixes of them
            (``"encoder.layer.3"``). The others are not hooked and compute no weights: they run as without capture. Default: all.
        detach: record detached tensors (default). With ``detach=False`` the recorded weights
            stay in the autograd graph, for gradient-weighted methods: each hooked call of a
            module whose forward takes a per-call ``backend=`` is made with
            ``backend="reference"``, so that its weights are the tensor its output is computed
            from (outputs equal the fast backends' within floating-point tolerance, not
            bitwise). Only those calls run differently; the modules' ``backend`` attributes
            and every other call stay as they are.

    Yields:
        :class:`CapturedAttention`, filled as the model runs.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: no attention module of the requested kinds in ``model``; bad ``kinds`` or
            ``heads`` (``heads`` beyond a module's head count is reported at the call);
            ``layers`` names or indexes no module (the error lists the modules there are).
        RuntimeError: a Hugging Face model that cannot be switched to qkv's or eager attention.

    Hooks (and the attention switch) are removed when the block exits, also on exceptions.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    wanted = _check_kinds(kinds)
    head_list = _check_heads(heads)
    # One-way: the Hugging Face side imports only the recorded structure (qkv._captured).
    from .interop import hf_attention

    if hf_attention.is_transformers_model(model):
        with hf_attention.capture_hf(
            model, kinds=wanted, heads=head_list, layers=layers, detach=detach
        ) as maps:
            yield maps
        return

    found = [(n, ref()) for n, ref in _WALKS.get(model)]  # walked once, until the tree changes
    if not found:
        raise ValueError(_no_attention(model))
    kind_of = {n: attention_kind(n, rnn=isinstance(m, _RNN_ATTENTION)) for n, m in found}
    targets = [(n, m) for n, m in found if kind_of[n] in wanted]
    if not targets:
        have = ", ".join(f"{n} ({kind_of[n]})" for n, _ in found)
        raise ValueError(f"kinds: no attention module of kinds {sorted(wanted)} in model; it has {have}")
    if layers is not None:
        chosen = set(select_layers([n for n, _ in targets], layers))
        targets = [(n, m) for n, m in targets if n in chosen]
    maps = CapturedAttention([n for n, _ in targets], kind_of)
    with ExitStack() as stack:
        for name, module in targets:
            _hook(stack, name, module, maps, head_list, detach)
        yield maps


def _attention_modules(model: nn.Module) -> tuple[tuple[str, weakref.ref], ...]:
    """``(qualified name, ref to the module)`` of every qkv attention module of ``model``, in
    model order (held weakly: see :mod:`qkv._module_tree`)."""
    return tuple((n, weakref.ref(m)) for n, m in model.named_modules() if isinstance(m, _QKV_ATTENTION))


_WALKS = TreeCache(_attention_modules)  # per model, walked again when its module tree changes


def _no_attention(model: nn.Module) -> str:
    """Why ``model`` cannot be captured, naming the torch modules a swap would make capturable."""
    torch_mha = [n or "model" for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    hint = (
        f"; its torch.nn.MultiheadAttention modules ({', '.join(torch_mha[:3])}"
        f"{', ...' if len(torch_mha) > 3 else ''}) become capturable with "
        "qkv.interop.swap_attention(model)"
        if torch_mha
        else ""
    )
    return (
        f"model: {type(model).__name__} holds no qkv attention module "
        f"({', '.join(c.__name__ for c in _QKV_ATTENTION)}) and is not a transformers model{hint}"
    )


def _hook_point(module: nn.Module) -> nn.Module:
    """Where ``module``'s weights are read: the attention step ``attend`` of the multi-head
    modules (whatever convention the module speaks), the module itself for the RNN attentions.
    Either way a call takes ``need_weights=`` and returns an :class:`qkv.AttentionOutput`."""
    return module.attend if isinstance(module, _MULTI_HEAD) else module


def _hook(
    stack: ExitStack,
    name: str,
    module: nn.Module,
    maps: CapturedAttention,
    heads: list[int] | None,
    detach: bool,
) -> None:
    """Hook ``module`` for the duration of ``stack``: each call of its hook point asks for
    weights, they are recorded in ``maps[name]``, and the caller gets back what it asked for."""
    rnn = isinstance(module, _RNN_ATTENTION)  # one head: ``heads`` does not apply
    pooled = isinstance(module, AttentionPooling)
    point = _hook_point(module)
    graph_backend = not detach and _takes_backend(point)  # this call's weights carry gradients
    # Whether the caller of each running call asked for weights, per thread: the module may
    # be called from several threads, and calls may nest.
    calls = threading.local()

    def running() -> list[bool]:
        if not hasattr(calls, "asked"):
            calls.asked = []
        return calls.asked

    def pre_hook(mod, args, kwargs):
        running().append(bool(kwargs.get("need_weights", False)))
        kwargs = dict(kwargs, need_weights=True)
        if graph_backend:
            kwargs["backend"] = "reference"  # this call only: its weights are what `out` is made of
        return args, kwargs

    def post_hook(mod, args, kwargs, output):
        asked = running()
        need = asked.pop() if asked else True
        if not isinstance(output, AttentionOutput) or output.weights is None:
            return None  # the call raised (this hook is always called), or gave no weights
        w = output.weights  # per head (B, H, Tq, Tk); one-head modules: (B, [Tq,] Tk)
        rec = _as_bhqk(w) if rnn else (_pooled_as_bhqk(w) if pooled else w)
        rec = rec.detach() if detach else rec
        maps.record(name, rec if rnn else select_heads(rec, heads, name))
        return None if need else dataclasses.replace(output, weights=None)

    stack.callback(point.register_forward_pre_hook(pre_hook, with_kwargs=True).remove)
    stack.callback(point.register_forward_hook(post_hook, with_kwargs=True, always_call=True).remove)
