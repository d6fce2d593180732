"""Attention capture from Hugging Face ``transformers`` models (used by :func:`qkv.capture`).

``transformers`` >= 5 models declare which module classes produce their attention weights
(``_can_record_outputs``: ``"attentions"``, ``"cross_attentions"``... -> a class, a class name
or an ``OutputRecorder(class, index, layer_name)``); those modules return
``(output, weights, ...)`` whenever their attention function gives weights. Capture:

1. switches every config of the model to qkv's attention implementation
   (``attn_implementation="qkv"``, :mod:`qkv.interop.hf_implementation`, registered on first
   use) when the model declares it runs any registered attention function
   (``_supports_attention_backend``), else to ``"eager"``;
2. on the qkv path, asks the declared attention modules of the chosen kinds and layers for
   weights (:func:`~qkv.interop.hf_implementation.weights_requested`), of the chosen heads
   only: their weights come from qkv's exact weights pass; a call that keeps every head's
   weights computes its output from them (``weights @ V``, :mod:`qkv.api.weights_first`: one
   pass instead of the fused kernel and the weights pass, as eager does), a call that keeps
   some heads keeps qkv's fused kernel (``auto``'s choice, the same as without capture); the
   other attention modules compute no weights;
3. puts a forward hook on each of those modules that reads ``output[index]``
   (``(B, H, Tq, Tk)``, or the chosen heads when the call computed those alone) and changes
   nothing;
4. on exit removes the hooks and requests and restores each config's previous implementation.

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
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager

from torch import nn

# The recorded structure only: qkv.capture imports this module (for transformers models), never
# the other way round.
from .._captured import CapturedAttention, attention_kind, select_heads, select_layers
from .hf_implementation import IMPLEMENTATION, register_hf, weights_requested

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


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module, int, str]]:
    """``(qualified name, module, index of the weights in its output, kind)`` of every attention
    module a ``transformers`` model declares, in model order. Each sub-model (a nested
    ``PreTrainedModel``, e.g. BART's encoder and decoder) uses its own declarations."""
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


def _configs(model: nn.Module) -> list:
    from transformers import PreTrainedModel

    configs, seen = [], set()
    todo = [getattr(m, "config", None) for m in model.modules() if isinstance(m, PreTrainedModel)]
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
    from transformers import PreTrainedModel

    parts = [m for m in model.modules() if isinstance(m, PreTrainedModel)]
    return IMPLEMENTATION if all(getattr(m, "_supports_attention_backend", False) for m in parts) else "eager"


def _switch(model: nn.Module, implementation: str) -> list[tuple[object, str, object]]:
    """Switch every config of ``model`` to ``implementation``; return what to restore.

    Raises:
        RuntimeError: some config stays on another implementation (nothing is left switched).
    """
    configs = _configs(model)
    internal = "_attn_implementation_internal"
    saved = [
        (cfg, internal, getattr(cfg, internal))
        if hasattr(cfg, internal)
        else (cfg, "_attn_implementation", _implementation(cfg))
        for cfg in configs
    ]
    try:
        if any(_implementation(cfg) != implementation for cfg in configs):
            if hasattr(model, "set_attn_implementation"):
                model.set_attn_implementation(implementation)
            else:
                for cfg in configs:
                    cfg._attn_implementation = implementation
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
def _switched(model: nn.Module, implementation: str) -> Iterator[None]:
    """``implementation`` for every config of ``model`` while any capture of it runs; then the
    old implementations."""
    key = id(model)  # the model outlives the block: its captures hold it
    with _SWITCH_LOCK:
        users = _SWITCH_USERS.get(key)
        if users is None:
            users = _SWITCH_USERS[key] = [0, _switch(model, implementation)]
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
    found = attention_modules(model)
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
    chosen = set(select_layers([n for n, _, _, _ in targets], layers))
    targets = [t for t in targets if t[0] in chosen]
    maps = CapturedAttention([n for n, _, _, _ in targets], {n: k for n, _, _, k in found})
    implementation = implementation_for_capture(model)
    if implementation == IMPLEMENTATION:
        register_hf()
    with ExitStack() as stack:
        stack.enter_context(_switched(model, implementation))
        request = None
        if implementation == IMPLEMENTATION:
            modules = [m for _, m, _, _ in targets]
            request = stack.enter_context(weights_requested(modules, graph=not detach, heads=heads))
        for name, module, index, _ in targets:

            def hook(mod, args, output, name=name, index=index):
                w = output[index] if isinstance(output, tuple) and len(output) > index else None
                selected = request is not None and request.took_heads()  # w holds `heads` alone
                if w is not None:
                    w = w.detach() if detach else w
                    maps.record(name, w if selected else select_heads(w, heads, name))

            stack.callback(module.register_forward_hook(hook).remove)
        yield maps
