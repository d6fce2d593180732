"""Attention capture from Hugging Face ``transformers`` models (used by :func:`qkv.capture`).

``transformers`` >= 5 models declare which module classes produce their attention weights
(``_can_record_outputs``: ``"attentions"``, ``"cross_attentions"``... -> a class, a class name
or an ``OutputRecorder(class, index, layer_name)``); those modules return
``(output, weights, ...)`` whenever their attention function gives weights. Capture:

1. switches every config of the model, and the config of each declared attention module (a layer
   copied with ``copy.deepcopy`` carries its own), to qkv's attention implementation
   (``attn_implementation="qkv"``, :mod:`qkv.interop.hf_implementation`, registered on first
   use) when the model declares it runs any registered attention function
   (``_supports_attention_backend``), else to ``"eager"``;
2. on the qkv path, asks the declared attention modules of the chosen kinds and layers for
   weights (:func:`~qkv.interop.hf_implementation.weights_requested`), of the chosen heads
   only: their weights come from qkv's exact weights pass; a call that keeps every head's
   weights computes its output from them (``weights @ V``, :mod:`qkv.api.weights_first`: one
   pass instead of the fused kernel and the weights pass, as eager does), a call that keeps
   some heads keeps qkv's fused kernel (``auto``'s choice, the same as without capture) and,
   where the call is plain (an encoder's, padded or not), computes those heads' weights by the
   ops eager runs (:func:`~qkv.interop.hf_weights_first.plain_weights`: for them, eager's maps within float
   rounding: a product over fewer heads may round differently, and later layers read the
   fused kernel's outputs);
   the other attention modules compute no weights;
3. puts a forward hook on each of those modules that reads ``output[index]``
   (``(B, H, Tq, Tk)``, or the chosen heads when the call computed those alone) and changes
   nothing;
4. on exit removes the hooks and requests and restores each config's previous implementation.

Steps 1-3 read the model's structure (its declared attention modules, its sub-models, the
implementation it supports, the settings ``set_attn_implementation`` gives its configs) from a
walk kept per model until its module tree changes (:data:`_WALKS`, :mod:`qkv._module_tree`); the
configs' current implementations are read on each entry, and a switch from settings seen before
replays what ``set_attn_implementation`` set then.

The switch is the model's own setting, scoped to the ``with`` block: while it lasts, any call
of that model runs the switched implementation (from any thread); captures of the same model
that overlap share it, and the last one to exit restores the implementation. Nothing else
changes.

On the qkv path the outputs equal the model's own implementation (``sdpa`` by default), eager
and the model on ``attn_implementation="qkv"`` within floating-point tolerance (the error-ratio
rule); they are bitwise those of ``attn_implementation="qkv"`` where the capture records some
heads or no layer (the fused kernel runs), and where it records every head they are bitwise
that model's with ``output_attentions=True`` (both computed from the weights). On the eager
path they are bitwise the eager model's. With ``detach=False`` the
hooked calls run qkv's reference backend, so the recorded weights are the tensor the output is
computed from. In training mode eager's weights are the ones after attention dropout, qkv's
the ones before.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager

from torch import nn

# The recorded structure only: qkv.capture imports this module (for transformers models), never
# the other way round.
from .._captured import CapturedAttention, attention_kind, select_heads, select_layers
from .._module_tree import TreeCache
from .hf_implementation import IMPLEMENTATION, WeightsRequest, register_hf, weights_requested

__all__ = ["attention_modules", "capture_hf", "implementation_for_capture", "is_transformers_model"]


def is_transformers_model(model: nn.Module) -> bool:
    """Whether ``model`` is a ``transformers.PreTrainedModel`` (False when ``transformers`` was
    never imported: then no such model exists)."""
    transformers = sys.modules.get("transformers")
    base = getattr(transformers, "PreTrainedModel", None) if transformers is not None else None
    return base is not None and isinstance(model, base)


def _specs(model: nn.Module) -> list[tuple[str, type | None, str | None, int, str | None]]:
    """``(key, target_class, class_name, index, layer_name)`` of a model's attention recorders."""
    out = []
    for key, value in (getattr(model, "_can_record_outputs", None) or {}).items():
        if "attention" not in key:
            continue
        for spec in value if isinstance(value, list) else [value]:
            if isinstance(spec, type):
                out.append((key, spec, None, 1, None))
            elif isinstance(spec, str):
                out.append((key, None, spec, 1, None))
            else:  # an OutputRecorder
                out.append(
                    (
                        key,
                        getattr(spec, "target_class", None),
                        getattr(spec, "class_name", None),
                        getattr(spec, "index", 1),
                        getattr(spec, "layer_name", None),
                    )
                )
    return out


def _find_attention(model: nn.Module) -> list[tuple[str, nn.Module, int, str]]:
    """:func:`attention_modules`, walked: each sub-model (a nested ``PreTrainedModel``) reads its
    own declarations."""
    from transformers import PreTrainedModel

    found: list[tuple[str, nn.Module, int, str]] = []
    seen: set[int] = set()

    def visit(module: nn.Module, name: str, specs) -> None:
        if isinstance(module, PreTrainedModel) and _specs(module):
            specs = _specs(module)
        for key, cls, class_name, index, layer_name in specs:
            hit = (cls is not None and isinstance(module, cls)) or (
                class_name is not None and name.endswith(class_name)
            )
            if hit and layer_name is not None:
                hit = "." + layer_name.strip(".") + "." in "." + name + "."
            if hit and id(module) not in seen:
                seen.add(id(module))
                kind = "cross" if "cross" in key else attention_kind(name)
                found.append((name, module, index, kind))
                break
        for child_name, child in module.named_children():
            visit(child, f"{name}.{child_name}" if name else child_name, specs)

    visit(model, "", [])
    return found


class _Walk:
    """What capture reads from a ``transformers`` model's module tree (kept per model by
    :data:`_WALKS` until the tree changes; modules held weakly, see :mod:`qkv._module_tree`).

    Attributes:
        found: ``(name, ref to the module, index of the weights in its output, kind)`` of each
            declared attention module, in model order.
        parts: refs to the ``PreTrainedModel`` parts, the model first.
        implementation: ``"qkv"`` when every part declares it runs registered attention
            functions (``_supports_attention_backend``), else ``"eager"``.
        subtrees: name -> the ids of the module and of its submodules (the calls a weights
            request reaches).
    """

    def __init__(self, model: nn.Module) -> None:
        from transformers import PreTrainedModel

        found = _find_attention(model)
        parts = [m for m in model.modules() if isinstance(m, PreTrainedModel)]
        self.found = tuple((n, weakref.ref(m), i, k) for n, m, i, k in found)
        self.parts = tuple(weakref.ref(m) for m in parts)
        supported = all(getattr(m, "_supports_attention_backend", False) for m in parts)
        self.implementation = IMPLEMENTATION if supported else "eager"
        self.subtrees = {n: tuple(dict.fromkeys(id(s) for s in m.modules())) for n, m, _, _ in found}
        # implementation -> (refs to the configs, their implementations before, after):
        # what set_attn_implementation did from those settings, replayed when they recur.
        self._switches: dict[str, tuple[tuple, tuple, tuple]] = {}

    def replay(self, implementation: str, configs: list, saved: list) -> bool:
        """Set what ``set_attn_implementation(implementation)`` set last time, if it started
        from these configs in these settings; whether it did."""
        memo = self._switches.get(implementation)
        if memo is None or len(memo[0]) != len(configs):
            return False
        refs, before, after = memo
        if any(r() is not c for r, c in zip(refs, configs)) or before != tuple(v for _, _, v in saved):
            return False
        for (cfg, attr, _), value in zip(saved, after):
            setattr(cfg, attr, value)
        return True

    def remember(self, implementation: str, configs: list, saved: list) -> None:
        after = tuple(getattr(cfg, attr) for cfg, attr, _ in saved)
        refs = tuple(weakref.ref(c) for c in configs)
        self._switches[implementation] = (refs, tuple(v for _, _, v in saved), after)


_WALKS: TreeCache[_Walk] = TreeCache(_Walk)


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module, int, str]]:
    """``(qualified name, module, index of the weights in its output, kind)`` of every attention
    module a ``transformers`` model declares, in model order. Each sub-model (a nested
    ``PreTrainedModel``, e.g. BART's encoder and decoder) uses its own declarations. Walked
    once per model, again after its module tree changes (:mod:`qkv._module_tree`)."""
    return [(n, ref(), i, k) for n, ref, i, k in _WALKS.get(model).found]


def _configs(parts: Iterable[nn.Module]) -> list:
    """The configs of ``parts`` and their sub-configs (read on each call: a config is a setting,
    not part of the module tree)."""
    configs, seen = [], set()
    todo = [getattr(m, "config", None) for m in parts]
    while todo:
        cfg = todo.pop(0)
        if cfg is None or id(cfg) in seen:
            continue
        seen.add(id(cfg))
        configs.append(cfg)
        todo.extend(getattr(cfg, key, None) for key in (getattr(cfg, "sub_configs", None) or {}))
    return configs


def _implementation(cfg) -> str | None:
    return getattr(cfg, "_attn_implementation", None)


def implementation_for_capture(model: nn.Module) -> str:
    """``"qkv"`` when every ``PreTrainedModel`` in ``model`` declares it runs any registered
    attention function (``_supports_attention_backend``), else ``"eager"``."""
    return _WALKS.get(model).implementation


def _switch(model: nn.Module, walk: _Walk) -> list[tuple[object, str, object]]:
    """Switch every config of ``model`` to ``walk.implementation``; return what to restore. The
    switch is ``model.set_attn_implementation``'s, replayed without it when it already ran
    from the same settings on this tree (``walk``).

    Raises:
        RuntimeError: some config stays on another implementation (nothing is left switched).
    """
    implementation = walk.implementation
    configs = _configs(ref() for ref in walk.parts)
    # An attention module reads its own config: one copied with its layer (copy.deepcopy) is
    # reachable from no part, so set_attn_implementation never reaches it; it is set directly.
    known = {id(cfg) for cfg in configs}
    own = [cfg for cfg in _configs(ref() for _, ref, _, _ in walk.found) if id(cfg) not in known]
    configs += own
    internal = "_attn_implementation_internal"
    saved = [
        (cfg, internal, getattr(cfg, internal))
        if hasattr(cfg, internal)
        else (cfg, "_attn_implementation", _implementation(cfg))
        for cfg in configs
    ]
    try:
        if any(_implementation(cfg) != implementation for cfg in configs) and not walk.replay(
            implementation, configs, saved
        ):
            if hasattr(model, "set_attn_implementation"):
                model.set_attn_implementation(implementation)
            else:
                for cfg in configs:
                    cfg._attn_implementation = implementation
            for cfg in own:
                cfg._attn_implementation = implementation
            walk.remember(implementation, configs, saved)
        stuck = sorted(
            {str(_implementation(cfg)) for cfg in configs if _implementation(cfg) != implementation}
        )
        if stuck:
            raise RuntimeError(
                f"capture: could not switch {type(model).__name__} to {implementation} attention (still "
                f"{', '.join(stuck)}); load it with attn_implementation='eager' or call it with output_attentions=True"
            )
    except BaseException:
        _restore(saved)
        raise
    return saved


def _restore(saved: list[tuple[object, str, object]]) -> None:
    for cfg, attr, value in saved:
        setattr(cfg, attr, value)


# Captures running per model: id(model) -> [how many, what to restore]. The switch is the
# model's own setting (its configs), never a process-wide one: the first capture of a model
# makes it and the last one to exit undoes it, so captures that overlap, also from several
# threads, never leave a model switched.
_SWITCH_LOCK = threading.Lock()
_SWITCH_USERS: dict[int, list] = {}


@contextmanager
def _switched(model: nn.Module, walk: _Walk) -> Iterator[None]:
    """``walk.implementation`` for every config of ``model`` while any capture of it runs; then
    the old implementations."""
    key = id(model)  # the model outlives the block: its captures hold it
    with _SWITCH_LOCK:
        users = _SWITCH_USERS.get(key)
        if users is None:
            users = _SWITCH_USERS[key] = [0, _switch(model, walk)]
        users[0] += 1
    try:
        yield
    finally:
        with _SWITCH_LOCK:
            users[0] -= 1
            if users[0] == 0:
                del _SWITCH_USERS[key]
                _restore(users[1])


@contextmanager
def capture_hf(
    model: nn.Module,
    *,
    kinds: frozenset[str],
    heads: list[int] | None,
    detach: bool,
    layers: int | str | Iterable[int | str] | None = None,
) -> Iterator[CapturedAttention]:
    """:func:`qkv.capture` for a ``transformers`` model (see the module docstring).

    Raises:
        RuntimeError: the model declares no attention modules (``transformers`` < 5, or a
            model without ``_can_record_outputs``), or cannot be switched to the attention
            implementation capture runs (qkv's or eager).
        ValueError: no attention module of the requested kinds, or ``layers`` chooses none.
    """
    walk = _WALKS.get(model)  # the model's structure, walked once (until its tree changes)
    found = [(n, ref(), i, k) for n, ref, i, k in walk.found]
    if not found:
        import transformers

        raise RuntimeError(
            f"capture: {type(model).__name__} declares no attention modules to record "
            f"(transformers {transformers.__version__}; needs _can_record_outputs, transformers >= 5); "
            "call it with output_attentions=True instead"
        )
    targets = [t for t in found if t[3] in kinds]
    if not targets:
        have = ", ".join(f"{n} ({k})" for n, _, _, k in found[:6])
        raise ValueError(f"kinds: no attention module of kinds {sorted(kinds)} in model; it has {have}, ...")
    if layers is not None:
        chosen = set(select_layers([n for n, _, _, _ in targets], layers))
        targets = [t for t in targets if t[0] in chosen]
    maps = CapturedAttention([n for n, _, _, _ in targets], {n: k for n, _, _, k in found})
    if walk.implementation == IMPLEMENTATION:
        register_hf()
    with ExitStack() as stack:
        stack.enter_context(_switched(model, walk))
        request = None
        if walk.implementation == IMPLEMENTATION:
            ids = [i for name, _, _, _ in targets for i in walk.subtrees[name]]
            request = stack.enter_context(
                weights_requested([m for _, m, _, _ in targets], graph=not detach, heads=heads, ids=ids)
            )
        for name, module, index, _ in targets:
            stack.callback(
                module.register_forward_hook(_recorder(maps, name, index, request, heads, detach)).remove
            )
        yield maps


def _recorder(
    maps: CapturedAttention, name: str, index: int, request: WeightsRequest | None, heads, detach: bool
) -> Callable:
    """The forward hook of module ``name``: records ``output[index]`` (the chosen heads) in
    ``maps`` and changes nothing."""
    narrowed = request is not None and heads is not None  # a call may have computed `heads` alone

    def hook(mod, args, output):
        w = output[index] if isinstance(output, tuple) and len(output) > index else None
        selected = narrowed and request.took_heads()  # w holds `heads` alone
        if w is not None:
            w = w.detach() if detach else w
            maps.record(name, w if selected or heads is None else select_heads(w, heads, name))

    return hook
