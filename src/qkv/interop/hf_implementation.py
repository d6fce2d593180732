"""``attn_implementation="qkv"``: every attention call of a Hugging Face ``transformers`` model
on :func:`qkv.attention`'s dispatch.

    import qkv.interop
    qkv.interop.register_hf()                      # once; registering again changes nothing
    model = AutoModel.from_config(cfg, attn_implementation="qkv")
    model.set_attn_implementation("qkv")           # or switch a loaded model

:func:`register_hf` adds the name ``"qkv"`` to ``transformers``' ``AttentionInterface`` (the
attention function, :func:`qkv_attention_forward`) and ``AttentionMaskInterface`` (the masks:
``transformers``' own SDPA masks, so a model's mask reaches the function as it reaches SDPA:
a 4-D bool mask, True = takes part, or None with ``is_causal``; a bidirectional mask, the
encoders' one, comes as its padding alone, ``(B, 1, 1, Tk)``, or None without padding, never
as a ``(B, 1, Tq, Tk)`` matrix: :func:`qkv_mask`). Registering adds a name; it switches no
model: a model runs qkv only when its own config says ``"qkv"``.

The function mirrors ``transformers``' ``sdpa_attention_forward`` and converts every argument
exactly (shapes ``query (B, H, Tq, D)``, ``key``/``value`` ``(B, Hkv, Tk, D)``):

====================  ===================================================================
``transformers``      qkv
====================  ===================================================================
bool mask             ``mask=`` (True = takes part, as in qkv)
float mask            added to the scores: ``-inf`` entries become ``mask=False``, the
                      finite ones ``bias=`` (``transformers``' ``finfo.min`` stays a bias)
None + ``is_causal``  ``qkv.masks.causal("top_left")`` when ``Tq > 1`` (as SDPA's flag;
                      ``is_causal`` defaults to the module's ``is_causal``)
``scaling``           ``scale=`` (None: ``1/sqrt(D)``)
``dropout``           ``dropout_p=``, applied when the module is training (as eager)
GQA (``Hkv < H``)     grouped-query attention, key/value heads not copied
``sliding_window``    already in the mask (``transformers`` builds the window into it, and
                      skips the mask only where the window cannot bind)
``position_bias``     ``bias=`` (T5's relative positions), with the mask
``output_attentions`` exact weights from qkv's weights pass, the output ``weights @ V``
====================  ===================================================================

A sparse pattern set on a module (:func:`patterns_set`, what :func:`qkv.interop.use_pattern`
calls) is combined with the module's mask: ``pattern & padding`` on an encoder, ``pattern &
causal & padding`` at the call's cache positions on a decoder (its mask arrives as a
:class:`~qkv.interop.hf_decoder_mask.DecoderMask`), so its calls run the block-sparse backend
where it pays (``auto``'s choice, reported per call).

Refused with :class:`NotImplementedError` naming the model feature: logit soft-capping
(``softcap``, Gemma 2), attention sinks (``s_aux``), packed variable-length batches
(``cu_seq_lens_q``/``cu_seq_lens_k``/``max_length_q``/``max_length_k``, a flash-attention
input) and paged caches (continuous batching). Rows with no key to attend give 0 (as torch's
SDPA on CPU; eager gives them a uniform average).

:func:`qkv.capture` asks the hooked modules for weights through :func:`weights_requested`:
the request is the module's own, for the ``with`` block only. A call that returns every head's
weights (``output_attentions=True``, or a capture of all heads) computes its output from them
(:func:`qkv.api.weights_first.attention_from_weights`: one pass, as eager does, instead of the
fused kernel plus the weights pass), where the call qualifies: a tensor mask or none (a
pattern keeps its block-sparse kernel), no dropout in training, no gradient wanted, no
``detach=False`` capture (that one runs the reference backend). Its output then equals the
fused kernel's within tolerance, not bitwise. Plain calls (at most a padding or additive
mask: an encoder's) run that in a handful of ops (:mod:`qkv.interop.hf_weights_first`),
bitwise the general path and eager's; a plain call keeping some heads runs the fused kernel
for its output and those heads' weights by the same ops.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ..api.attention import attention
from ..api.weights_first import attention_from_weights, weights_first_applies
from ..masks.core import Mask, causal
from ..masks.torch_masks import split_float_mask
from .hf_decoder_mask import DecoderMask, decoder_mask
from .hf_weights_first import own_mask, plain_weights, plain_weights_first

__all__ = [
    "IMPLEMENTATION",
    "WeightsRequest",
    "patterns_set",
    "qkv_attention_forward",
    "qkv_mask",
    "register_hf",
    "weights_requested",
]

IMPLEMENTATION = "qkv"

# Model features qkv cannot express: keyword -> what it is.
_REFUSED = {
    "softcap": "attention logit soft-capping (softcap): qkv has no soft-capped score",
    "s_aux": "attention sinks (s_aux)",
    "cu_seq_lens_q": "packed variable-length sequences (cu_seq_lens_q, a flash-attention input)",
    "cu_seq_lens_k": "packed variable-length sequences (cu_seq_lens_k, a flash-attention input)",
    "max_length_q": "packed variable-length sequences (max_length_q, a flash-attention input)",
    "max_length_k": "packed variable-length sequences (max_length_k, a flash-attention input)",
    "cache": "a paged KV cache (continuous batching)",
}


def register_hf() -> None:
    """Register ``"qkv"`` with ``transformers``' attention and mask interfaces (idempotent).

    Raises:
        ImportError: ``transformers`` is not installed (``pip install 'qkv[interop]'``).
    """
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface
    except ImportError as exc:
        raise ImportError(
            "attn_implementation='qkv' needs transformers >= 5: pip install 'qkv[interop]'"
        ) from exc
    AttentionInterface.register(IMPLEMENTATION, qkv_attention_forward)
    AttentionMaskInterface.register(IMPLEMENTATION, qkv_mask)


def qkv_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function: Any = None,
    attention_mask: Tensor | None = None,
    allow_is_bidirectional_skip: bool = False,
    **kwargs: Any,
) -> Tensor | None:
    """``transformers``' mask interface for ``"qkv"``: ``sdpa_mask``'s masks, except the plain
    causal one of a model holding a pattern, which is its cache positions and padding, and the
    plain bidirectional one (an encoder's, without overlays), which is its padding alone.

    Returns:
        For the causal mask of a model holding a pattern (plain causal, or Mistral's
        sliding-window causal), without overlays, on a dynamic cache or a static one (not under
        ``torch.compile``): a :class:`~qkv.interop.hf_decoder_mask.DecoderMask` (its cache
        positions, window and padding, ``O(B Tk)`` memory); the same object when ``generate``
        hands back the one it prepared for a static cache. For a bidirectional mask that may be skipped
        (``allow_is_bidirectional_skip``): None without padding, else bool ``(B, 1, 1, Tk)`` (True = a real token): ``O(B Tk)`` memory,
        the same attention as ``sdpa_mask``'s ``(B, 1, Tq, Tk)`` matrix. Otherwise what
        ``sdpa_mask`` returns for the same arguments.
    """
    from transformers.masking_utils import bidirectional_mask_function, sdpa_mask

    if isinstance(attention_mask, DecoderMask):  # prepared by generate for this step (static cache)
        return attention_mask
    patterned = id(kwargs.get("config")) in _PATTERNS  # a model holding a pattern (use_pattern)
    # Overlays and packed sequences wrap the mask function (decoder_mask leaves them to sdpa_mask);
    # allow_is_causal_skip is not read: a static cache's decode step turns it off as well.
    if patterned and not kwargs.get("use_vmap", False):
        decoder = decoder_mask(
            mask_function, kv_length, q_offset, kv_offset, attention_mask, kwargs.get("local_size")
        )
        if decoder is not None:
            return decoder
    if mask_function is bidirectional_mask_function and allow_is_bidirectional_skip:
        if attention_mask is None:
            return None
        padding = attention_mask.to(torch.bool)
        if padding.shape[-1] < kv_offset + kv_length:  # as transformers' prepare_padding_mask
            padding = torch.nn.functional.pad(padding, (0, kv_offset + kv_length - padding.shape[-1]))
        padding = padding[:, kv_offset : kv_offset + kv_length]
        return None if bool(padding.all()) else own_mask(padding[:, None, None, :])  # (B, 1, 1, Tk)
    return sdpa_mask(
        batch_size, q_length, kv_length, q_offset=q_offset, kv_offset=kv_offset,
        mask_function=mask_function, attention_mask=attention_mask,
        allow_is_bidirectional_skip=allow_is_bidirectional_skip, **kwargs,
    )  # fmt: skip


class WeightsRequest:
    """One capture's request for the weights of some modules (made by :func:`weights_requested`).

    Attributes:
        graph: the calls run the reference backend, so the weights carry gradients.
        heads: the only heads the capture records (dim 1), or None for all of them.

    A call that computed the weights of ``heads`` alone (every request on its module names the
    same heads, and the caller did not ask for weights itself) says so through
    :meth:`took_heads`, read by the capture's hook right after the call, in the same thread.
    """

    def __init__(self, *, graph: bool, heads: tuple[int, ...] | None) -> None:
        self.graph = graph
        self.heads = heads
        self._handed = threading.local()  # per thread: the last call gave the weights of `heads` only

    def hand_heads(self, selected: bool) -> None:
        self._handed.selected = selected

    def took_heads(self) -> bool:
        """Whether the last call in this thread gave the weights of :attr:`heads` only (reset)."""
        selected = getattr(self._handed, "selected", False)
        self._handed.selected = False
        return selected


# Modules whose calls return weights while a capture reads them: id(module) -> the requests of
# the captures reading it. A module's own request, made and undone by qkv.capture's block.
_REQUESTS_LOCK = threading.Lock()
_REQUESTS: dict[int, list[WeightsRequest]] = {}


@contextmanager
def weights_requested(
    modules: Iterable[nn.Module],
    *,
    graph: bool,
    heads: Iterable[int] | None = None,
    ids: Iterable[int] | None = None,
) -> Iterator[WeightsRequest]:
    """While the block runs, calls of ``modules`` (and of their submodules: the one that calls
    the attention function may be a child) return exact weights. With ``graph=True`` those
    calls run the reference backend, so the weights are the tensor the output is computed
    from (gradients flow through them). With ``heads``, a call may compute the weights of those
    heads only (see :class:`WeightsRequest`). Overlapping requests (from several threads) stack.

    ``ids``: the ids of ``modules`` and of all their submodules, when the caller holds them
    (a cached walk of the model): ``modules`` are then not walked.

    Yields:
        The :class:`WeightsRequest`.
    """
    request = WeightsRequest(graph=graph, heads=None if heads is None else tuple(heads))
    if ids is None:
        ids = (id(m) for module in modules for m in module.modules())
    keys = list(dict.fromkeys(ids))
    with _REQUESTS_LOCK:
        for key in keys:
            _REQUESTS.setdefault(key, []).append(request)
    try:
        yield request
    finally:
        with _REQUESTS_LOCK:
            for key in keys:
                held = _REQUESTS[key]
                held.remove(request)
                if not held:
                    del _REQUESTS[key]


def _heads_for(requests: list[WeightsRequest] | None, num_heads: int, asked: bool) -> tuple[int, ...] | None:
    """The heads a call computes weights for: those of its requests when they all name the same
    heads (each one a head of the call) and the caller did not ask for every weight itself."""
    if asked or not requests:
        return None
    heads = requests[0].heads
    if heads is None or any(r.heads != heads for r in requests) or max(heads) >= num_heads:
        return None
    return heads


# Patterns set on modules: id(module) -> [pattern, how many settings hold it]. The module's own
# setting (made and undone by qkv.interop.use_pattern), read by every call of that module.
_PATTERNS_LOCK = threading.Lock()
_PATTERNS: dict[int, list] = {}
# The last patterns combined with a padding mask: (id(pattern), id(padding)) -> (pattern,
# padding, combined). The layers of one forward pass share one padding tensor, so they share
# the combined pattern and the block-sparse backend's plan for it.
_COMBINED: dict[tuple[int, int], tuple[Mask, Tensor | DecoderMask, Mask]] = {}


def patterns_set(modules: Iterable[nn.Module], pattern: Mask) -> Callable[[], None]:
    """Set ``pattern`` on ``modules`` (their own calls of :func:`qkv_attention_forward` combine it
    with their mask) until the returned function is called. Setting the same pattern again
    stacks (the last removal clears it); thread-safe. The modules' configs hold it too: the
    mask interface (:func:`qkv_mask`), which sees a model's config but not its modules, then
    hands a decoder's mask over as its cache positions (a
    :class:`~qkv.interop.hf_decoder_mask.DecoderMask`), where the pattern is placed.

    Raises:
        ValueError: a module already holds another pattern (nothing is set).
    """
    modules = list(modules)
    configs = [m.config for m in modules if getattr(m, "config", None) is not None]
    keys = list(dict.fromkeys([id(m) for m in modules] + [id(c) for c in configs]))
    with _PATTERNS_LOCK:
        for key in keys:
            held = _PATTERNS.get(key)
            if held is not None and held[0] is not pattern:
                raise ValueError(
                    f"pattern: the model already holds the pattern {held[0]!r}; remove it before setting {pattern!r}"
                )
        for key in keys:
            _PATTERNS.setdefault(key, [pattern, 0])[1] += 1
    done = []

    def remove() -> None:
        with _PATTERNS_LOCK:
            if done:  # removing twice changes nothing
                return
            done.append(True)
            for key in keys:
                held = _PATTERNS[key]
                held[1] -= 1
                if held[1] == 0:
                    del _PATTERNS[key]

    return remove


def _decoder_call_mask(decoder: DecoderMask, pattern: Mask | None, query: Tensor, key: Tensor) -> Mask | None:
    """A decoder call's qkv mask: the pattern at the call's cache positions, with causal, the
    model's window and padding; without a pattern, the decoder mask alone (None when it allows
    every key)."""
    if pattern is None:
        return decoder.plain(query.shape[-2], key.shape[-2])
    return _with_pattern(pattern, decoder)


def _with_pattern(pattern: Mask, mask: Tensor | Mask | None) -> Mask:
    """``pattern & mask`` (for a :class:`DecoderMask`, the pattern at its cache positions); the
    same object for the same two inputs, the last 8 kept (the layers of one call share it)."""
    if mask is None:
        return pattern
    if not isinstance(mask, Tensor | DecoderMask):
        return pattern & mask
    key = (id(pattern), id(mask))
    with _PATTERNS_LOCK:
        hit = _COMBINED.get(key)
        if hit is not None and hit[0] is pattern and hit[1] is mask:
            return hit[2]
        combined = mask.with_pattern(pattern) if isinstance(mask, DecoderMask) else pattern & mask
        if len(_COMBINED) >= 8:
            _COMBINED.pop(next(iter(_COMBINED)))
        _COMBINED[key] = (pattern, mask, combined)
        return combined


def qkv_attention_forward(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    position_bias: Tensor | None = None,
    sliding_window: int | None = None,
    **kwargs: Any,
) -> tuple[Tensor, Tensor | None]:
    """``transformers``' attention function signature on :func:`qkv.attention` (see the module
    docstring for each argument's conversion).

    Returns:
        ``(out (B, Tq, H, Dv), weights (B, H, Tq, Tk) or None)``: weights when the call passes
        ``output_attentions=True`` or a capture reads this module.

    Raises:
        NotImplementedError: a model feature qkv cannot express (named).
        TypeError: ``attention_mask`` is neither None nor a tensor (e.g. a flex ``BlockMask``).
    """
    _refuse(module, kwargs)
    del sliding_window  # already in attention_mask (see the module docstring)
    held = _PATTERNS.get(id(module))
    pattern = None if held is None else held[0]
    if isinstance(attention_mask, DecoderMask):
        mask, bias = _decoder_call_mask(attention_mask, pattern, query, key), position_bias
    else:
        if pattern is not None and (
            is_causal if is_causal is not None else getattr(module, "is_causal", False)
        ):
            raise NotImplementedError(
                f"use_pattern: {type(module).__name__}'s causal mask reached attn_implementation='qkv' as a "
                "tensor, without the cache positions the pattern is placed at: a 4-D attention_mask prepared by "
                "the caller, a mask overlay or packed sequences (transformers builds those densely), or a static "
                "cache under torch.compile (its filled length is a tensor, not read while tracing); pass a 2-D "
                "attention_mask (or none) and run a static cache without torch.compile"
            )
        mask, bias = _mask_and_bias(module, query, attention_mask, is_causal, position_bias)
        if pattern is not None:
            mask = _with_pattern(pattern, mask)
    requests = _REQUESTS.get(id(module))
    asked = bool(kwargs.get("output_attentions"))
    heads = _heads_for(requests, query.shape[1], asked)
    training = module.training and dropout > 0
    graph = bool(requests) and any(r.graph for r in requests)
    out, weights = _attend(
        query, key, value, mask, bias, scaling, float(dropout), training,
        need_weights=requests is not None or asked, heads=heads, graph=graph, bias_is_mask=position_bias is None,
    )  # fmt: skip
    for request in requests or ():
        request.hand_heads(heads is not None)
    return out.transpose(1, 2).contiguous(), weights  # (B, H, Tq, Dv) -> (B, Tq, H, Dv)


def _attend(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | Mask | None,
    bias: Tensor | None,
    scale: float | None,
    dropout: float,
    training: bool,
    *,
    need_weights: bool,
    heads: tuple[int, ...] | None,
    graph: bool,
    bias_is_mask: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """``(out (B, H, Tq, Dv), weights or None)`` of one call. A call that keeps every weight
    computes its output from them (one pass instead of the kernel and the weights pass): in a
    handful of ops when it has at most a tensor mask and an additive mask to apply (``bias``
    is one when ``bias_is_mask``: a float ``attention_mask``'s finite part, no position bias;
    :mod:`qkv.interop.hf_weights_first`), else through
    :func:`qkv.api.weights_first.attention_from_weights`. A call that keeps some heads' weights
    runs :func:`qkv.attention` without weights for its output (the call it makes without a
    capture) and, when plain, those heads' weights by the same ops (:func:`plain_weights`).
    Other calls run :func:`qkv.attention` (``auto``, or the reference backend when the weights
    carry gradients), with the weights pass for the heads asked."""
    plain = need_weights and not graph and (bias is None or bias_is_mask)
    if plain and heads is not None and weights_first_applies(query, key, value, mask, training):
        weights = plain_weights(query, key, scale, heads, mask, bias)
        if weights is not None:  # the output: the same call as without weights
            out = attention(
                query, key, value, mask=mask, bias=bias, scale=scale, dropout_p=dropout, training=training
            )
            return out.out, weights
    if (
        need_weights
        and heads is None
        and not graph
        and weights_first_applies(query, key, value, mask, training)
    ):
        both = plain_weights_first(query, key, value, scale, mask, bias) if plain else None
        if both is not None:
            return both
        res = attention_from_weights(query, key, value, mask=mask, bias=bias, scale=scale)
    else:
        res = attention(
            query, key, value, mask=mask, bias=bias, scale=scale, dropout_p=dropout, training=training,
            need_weights=need_weights, weights_for=None if heads is None else (list(heads), None),
            backend="reference" if graph else "auto",
        )  # fmt: skip
    return res.out, res.weights


def _refuse(module: nn.Module, kwargs: dict[str, Any]) -> None:
    for name, feature in _REFUSED.items():
        if kwargs.get(name) is not None:
            raise NotImplementedError(
                f"attn_implementation='qkv': {type(module).__name__} uses {feature}, which qkv cannot "
                "express; load this model with attn_implementation='eager' or 'sdpa'"
            )


def _mask_and_bias(
    module: nn.Module,
    query: Tensor,
    attention_mask: Tensor | None,
    is_causal: bool | None,
    position_bias: Tensor | None,
) -> tuple[Tensor | Mask | None, Tensor | None]:
    """``transformers``' mask, causal flag and position bias -> qkv's ``(mask, bias)``."""
    if attention_mask is None:
        causal_flag = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        mask = causal("top_left") if causal_flag and query.shape[-2] > 1 else None
        return mask, position_bias
    if not isinstance(attention_mask, Tensor):
        raise TypeError(
            f"attention_mask: expected None or a bool/float tensor (the masks of attn_implementation='qkv'), "
            f"got {type(attention_mask).__name__}"
        )
    if attention_mask.dtype == torch.bool:
        return attention_mask, position_bias
    if not attention_mask.is_floating_point():
        raise TypeError(f"attention_mask: expected a bool or float tensor, got {attention_mask.dtype}")
    keep, bias = split_float_mask(attention_mask)
    if position_bias is not None:
        bias = position_bias if bias is None else bias + position_bias
    return (None if bool(keep.all()) else keep), bias
