"""Sparse attention patterns on pretrained Hugging Face encoders and decoders, without retraining.

    model = AutoModel.from_pretrained(DIR, attn_implementation="qkv")
    with qkv.interop.use_pattern(model, qkv.masks.sliding_window(128) | qkv.masks.global_tokens([0])):
        out = model(**batch)                     # every self-attention call: pattern & padding
    handle = qkv.interop.use_pattern(model, pattern)   # or until handle.remove()

Encoders. Every self-attention call of the model attends ``pattern & padding``: query ``i``
sees key ``j`` when the pattern allows ``(i, j)`` and ``j`` is a real token. The padding reaches
qkv as ``(B, 1, 1, Tk)`` (:func:`qkv.interop.hf_implementation.qkv_mask`), so no ``Tq x Tk``
tensor is built: on a sparse pattern (a window) qkv's ``auto`` dispatch runs the block-sparse
backend, whose memory is linear in the length. The result equals the model's eager attention
given the dense mask ``pattern.materialize(T, T) & padding`` (as an additive mask), within
floating-point tolerance.

Decoders (GPT-2, Llama and other grouped-query models, Mistral). Every self-attention call
attends ``pattern & causal & padding``, the pattern read at cache positions: a call's new
tokens sit at ``q_offset ..`` (the tokens already in the KV cache), so a decode step's single
query at position ``p`` sees exactly the keys the pattern allows in row ``p``
(:class:`~qkv.interop.hf_decoder_mask.DecoderMask`, ``O(B Tk)``: no ``Tq x Tk`` tensor in
prefill either). Cached generation equals recomputing without the cache. Positions count the
slots of the batch, padding included (as ``transformers``' own sliding window does): with left
padding, ``global_tokens([0])`` is the first slot, a pad token in a padded row. The pattern
must be causal-compatible (:mod:`qkv.interop.hf_causal_pattern`: a token's row may not depend
on the sequence length, and every token must see a key at or before it); a model with its own
sliding window (Mistral's ``config.sliding_window = W``) attends ``pattern & causal &
window(W)``, and a pattern that reaches outside the window is refused rather than cut.
A static KV cache (``StaticCache``, ``cache_implementation="static"``) runs the pattern too: the
queries sit at the cache's filled length, every slot of the cache is a key, and the slots not
filled yet come after every query, so causal masks them; greedy generation equals generation
with the default dynamic cache. Refused, named, at the call: a 4-D ``attention_mask`` prepared
by the caller, mask overlays and packed sequences (``transformers`` builds those as dense
tensors, without positions), and a static cache under ``torch.compile`` (its filled length is a
tensor the mask cannot read while tracing).

Which models. A ``transformers`` model on ``attn_implementation="qkv"`` whose attention runs
``transformers``' attention functions: BERT-style encoders (BERT, RoBERTa, ELECTRA, all-MiniLM
and other sentence-transformers), ViT, CLIP's vision tower alone, decoders built on ``create_causal_mask``
(GPT-2, Llama, Mistral, Qwen2...). Cross-attention is left as it is. A model with no attention
modules declared, or not running qkv's implementation, is refused with the reason.

Positions. A pattern changes which tokens attend each other, not the model's position
embeddings: BERT has ``max_position_embeddings`` (512) absolute positions. A longer input
raises a ``ValueError`` naming ``max_position_embeddings`` before the model runs; to read
longer documents, use a model whose configuration has enough positions (trained so, or built
from a configuration for measurements).

The pattern is the model's own setting: while it is set, every call of the model, from any
thread, runs it; nothing else changes. Setting the same pattern twice stacks; setting another
one while one is held raises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..masks.core import Mask
from .hf_attention import attention_modules, implementation_for_capture, is_transformers_model
from .hf_causal_pattern import check_causal_pattern
from .hf_implementation import IMPLEMENTATION, patterns_set, register_hf

__all__ = ["PatternHandle", "use_pattern"]


class PatternHandle:
    """A pattern set on a model: :meth:`remove` (or leaving its ``with`` block) takes it off.

    Attributes:
        pattern: the pattern.
        modules: qualified names of the self-attention modules that run it.
    """

    def __init__(self, pattern: Mask, modules: list[str], removers: list[Callable[[], None]]) -> None:
        self.pattern, self.modules, self._removers = pattern, modules, removers

    def remove(self) -> None:
        """Take the pattern off the model (again: nothing happens)."""
        while self._removers:
            self._removers.pop()()

    def __enter__(self) -> PatternHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"PatternHandle({self.pattern!r} on {len(self.modules)} modules)"


def use_pattern(model: nn.Module, pattern: Mask) -> PatternHandle:
    """Put ``pattern`` on every self-attention call of ``model`` (see the module docstring).

    Args:
        model: a ``transformers`` model on ``attn_implementation="qkv"``: an encoder, or a
            decoder (causal self-attention, see the module docstring).
        pattern: a :class:`qkv.masks.Mask`, e.g. ``sliding_window(256) | global_tokens([0])``.

    Returns:
        A :class:`PatternHandle`: use it as a context manager, or call ``remove()``.

    Raises:
        TypeError: ``model`` is not a ``transformers`` model or ``pattern`` not a Mask.
        ValueError: the model is not on ``attn_implementation="qkv"``, or already holds
            another pattern; on a decoder, the pattern is not causal-compatible or reaches
            outside the model's own sliding window (each named).
        NotImplementedError: the model declares no self-attention modules.
    """
    if not isinstance(pattern, Mask):
        raise TypeError(
            f"use_pattern: pattern must be a qkv.masks.Mask (e.g. qkv.masks.sliding_window(256)), "
            f"got {type(pattern).__name__}"
        )
    if not is_transformers_model(model):
        raise TypeError(
            f"use_pattern: model must be a transformers PreTrainedModel, got {type(model).__name__}"
        )
    register_hf()
    targets = _self_attention(model)
    if any(getattr(m, "is_causal", False) for _, m in targets):
        check_causal_pattern(pattern, model_window=_config_window(model))
    removers = [patterns_set([m for _, m in targets], pattern)]
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int):
        hook = model.register_forward_pre_hook(_position_check(limit), with_kwargs=True)
        removers.append(hook.remove)
    return PatternHandle(pattern, [n for n, _ in targets], removers)


def _self_attention(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's self-attention modules, after checking it can take a pattern."""
    name = type(model).__name__
    if implementation_for_capture(model) != IMPLEMENTATION:
        raise NotImplementedError(
            f"use_pattern: {name} does not run transformers' attention functions "
            "(_supports_attention_backend), so attn_implementation='qkv' cannot reach it"
        )
    configs = [
        m.config
        for m in model.modules()
        if hasattr(m, "config") and hasattr(m.config, "_attn_implementation")
    ]
    others = sorted({str(c._attn_implementation) for c in configs} - {IMPLEMENTATION})
    if others:
        raise ValueError(
            f"use_pattern: {name} runs attn_implementation={others[0]!r}; expected 'qkv': load it with "
            "attn_implementation='qkv' or call model.set_attn_implementation('qkv')"
        )
    found = [(n, m) for n, m, _, kind in attention_modules(model) if kind != "cross"]
    if not found:
        raise NotImplementedError(
            f"use_pattern: {name} declares no self-attention modules (_can_record_outputs)"
        )
    return found


def _config_window(model: nn.Module) -> int | None:
    """The model's own sliding window (Mistral's ``config.sliding_window``), or None."""
    window = getattr(getattr(model, "config", None), "sliding_window", None)
    return window if isinstance(window, int) and not isinstance(window, bool) and window > 0 else None


def _position_check(limit: int):
    def check(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        x = kwargs.get("input_ids", args[0] if args else None)
        if x is None:
            x = kwargs.get("inputs_embeds")
        if x is not None and x.dim() >= 2 and x.shape[1] > limit:
            raise ValueError(
                f"use_pattern: {x.shape[1]} tokens exceed the model's max_position_embeddings={limit}: a "
                "pattern changes which tokens attend, not the positions the model was trained on"
            )

    return check
