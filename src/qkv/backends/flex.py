"""The ``flex`` backend: PyTorch FlexAttention with qkv's patterns as block masks.

Equal to the reference backend within tolerance. Shapes::

    query (B, H, Tq, D), key (B, H, Tk, D), value (B, H, Tk, Dv)
    -> out (B, H, Tq, Dv), lse (B, H, Tq) (None from compiled FlexAttention on CPU)

(more leading dims are flattened into B when the mask and bias do not depend on them).

**Patterns become a** ``BlockMask`` **directly from their block layout**, never from a dense
``Tq x Tk`` matrix: for ``q_block x kv_block`` tiles, :meth:`qkv.masks.Mask.block_layout` says
which tiles may hold an allowed pair (``any``) and which are entirely allowed (``all``); the
tiles ``any & ~all`` are FlexAttention's partial blocks (the kernel evaluates the pattern's
``mask_mod`` inside them), ``all`` its full blocks (no mask evaluated), the others are skipped::

    layout (q_block = kv_block = 2)   pattern sliding_window(1), T = 6
      P . .                           x x . . . .      P = partial, F = full, . = skipped
      P P .                           x x x . . .
      . P P                           . x x x . .
                                      . . x x x .
                                      . . . x x x
                                      . . . . x x

Block masks are cached per (pattern object, Tq, Tk, device, block size) in a small LRU
(:attr:`FlexBackend.cache_size` entries). Bool tensor masks are tiled per (batch, head) on each
call. Scores: ``dot``, ``scaled_dot``, ``general`` (``q W`` then dot), ``cosine`` (normalized
``q``, ``k``) and ``gaussian`` (``q . k`` with the squared norms subtracted in a ``score_mod``);
``bias`` is added in a ``score_mod``. Rows with nothing to attend give 0 (and lse ``-inf``);
keys no query may attend are zeroed first, so NaN/inf placed there cannot leak.

Weights (``need_weights``) come from qkv's second pass over key blocks, with the lse returned
here. Limits (each is a reason from :meth:`FlexBackend.supports`): FlexAttention has no
backward on CPU (torch refuses CPU inputs that require grad); no dropout, no additive or
custom scores; compiled FlexAttention on CPU returns no log-sum-exp and needs AVX2 and
fp32/fp16/bf16. ``FlexBackend(compile=False)`` runs torch's unfused eager implementation
(dense scores: for tests and small inputs); ``compile=True`` wraps ``flex_attention`` in
``torch.compile`` once per process (each new shape or pattern kind compiles again, seconds
on CPU).
"""

from __future__ import annotations

import functools
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._types import AttentionOutput
from ..masks.core import Mask, pool_blocks
from . import memory
from .base import AttentionInputs, Capabilities, not_supported_reasons, zero_unreachable_keys

__all__ = ["FlexBackend", "flex_available", "layout_block_mask"]

try:  # torch >= 2.5
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    _IMPORT_ERROR: str | None = None
except ImportError as e:  # pragma: no cover - depends on the torch build
    BlockMask = flex_attention = None  # type: ignore[assignment,misc]
    _IMPORT_ERROR = f"torch.nn.attention.flex_attention is not importable in torch {torch.__version__} ({e})"

try:  # torch >= 2.9: return_aux replaces the deprecated return_lse
    from torch.nn.attention.flex_attention import AuxRequest
except ImportError:  # pragma: no cover
    AuxRequest = None  # type: ignore[assignment,misc]

_COMPILED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Each new (shape, pattern kind) is a new graph for dynamo; torch's default limit (8) would
# silently fall back to the unfused eager implementation (dense T x T scores) after that.
_RECOMPILE_LIMIT = 64


def flex_available() -> bool:
    """True when ``torch.nn.attention.flex_attention`` can be imported."""
    return _IMPORT_ERROR is None


@functools.cache
def _compiled_flex() -> Callable:
    """``torch.compile(flex_attention)``, made once per process (compiles lazily per shape)."""
    return torch.compile(flex_attention, dynamic=False, fullgraph=True)


def _cpu_compile_supported() -> bool:
    try:
        from torch._inductor.kernel.flex.flex_cpu import check_cpu_supported
    except ImportError:  # pragma: no cover - older layouts of torch._inductor
        return bool(torch.cpu._is_avx2_supported())
    return bool(check_cpu_supported())


# ----------------------------------------------------------------------------- block masks


def _ordered(tiles: Tensor) -> tuple[Tensor, Tensor]:
    """``(num, indices)`` of FlexAttention from bool tiles ``(..., nQB, nKB)``: int32 counts
    ``(..., nQB)`` and the tiles' key-block indices ascending, padded to ``nKB`` columns."""
    n_kb = tiles.shape[-1]
    cols = torch.arange(n_kb, device=tiles.device).expand(tiles.shape)
    keys = torch.where(tiles, cols, torch.full_like(cols, n_kb)).sort(dim=-1).values  # absent last
    idx = torch.where(keys == n_kb, torch.zeros_like(keys), keys)
    return tiles.sum(dim=-1, dtype=torch.int32), idx.to(torch.int32)


def _from_tiles(any_: Tensor, all_: Tensor, q_len: int, kv_len: int, block: tuple[int, int], mask_mod):
    """A BlockMask from bool tiles ``(Bm, Hm, nQB, nKB)``: partial = any & ~all, full = all."""
    all_ = all_ & any_
    kv_num, kv_idx = _ordered(any_ & ~all_)
    full_num, full_idx = _ordered(all_)
    return BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block, mask_mod=mask_mod, seq_lengths=(q_len, kv_len)
    )


def _warm(mask_mod, device: torch.device):
    """Call ``mask_mod`` once eagerly so the tables it builds lazily (global tokens, random
    blocks, documents) exist before FlexAttention traces it: building them inside the trace
    reads tensor values (``int(idx[-1])``), which dynamo cannot trace."""
    z = torch.zeros((), dtype=torch.int32, device=device)
    mask_mod(z, z, z, z)
    return mask_mod


def layout_block_mask(
    pattern: Mask, q_len: int, kv_len: int, block: tuple[int, int], device: torch.device | str | None = None
):
    """The ``BlockMask`` of ``pattern`` at ``(Tq, Tk)`` for ``block = (q_block, kv_block)``
    tiles, built from :meth:`qkv.masks.Mask.block_layout` (no ``Tq x Tk`` tensor), with the
    pattern's ``mask_mod`` for the partial tiles. Shape ``(1, 1, Tq, Tk)``: broadcast over
    batch and heads (a pattern that depends on them has a union layout; its ``mask_mod`` is exact)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    layout = pattern.block_layout(q_len, kv_len, block[0], block[1], device=device)
    mask_mod = _warm(pattern.mask_mod(q_len, kv_len), device)
    return _from_tiles(layout.any[None, None], layout.all[None, None], q_len, kv_len, block, mask_mod)


def _tensor_block_mask(mask: Tensor, q_len: int, kv_len: int, block: tuple[int, int]):
    """A BlockMask of a bool tensor ``(Bm, Hm, Tq or 1, Tk or 1)``, tiled per (batch, head)."""
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    any_ = pool_blocks(pool_blocks(mask, q_len, block[0], 2, False), kv_len, block[1], 3, False)
    all_ = pool_blocks(pool_blocks(mask, q_len, block[0], 2, True), kv_len, block[1], 3, True)
    bm, hm, tqm, tkm = mask.shape

    def mask_mod(b, h, q, kv):
        return mask[b if bm > 1 else 0, h if hm > 1 else 0, q if tqm > 1 else 0, kv if tkm > 1 else 0]

    return _from_tiles(any_, all_, q_len, kv_len, block, mask_mod)


def _reachable(pattern: Mask, q_len: int, kv_len: int, device) -> Tensor:
    """bool, broadcastable to ``(B, H, 1, Tk)``: False where no query may attend the key (a
    superset of the reachable keys: never False where some query may). From block layouts
    with one tile per key, except bool tensors inside ``&``/``|`` combinations, which keep
    their batch and head axes (padding masks)."""
    op = getattr(pattern, "op", None)
    if op in ("&", "|"):
        a = _reachable(pattern.left, q_len, kv_len, device)
        b = _reachable(pattern.right, q_len, kv_len, device)
        return a & b if op == "&" else a | b
    tensor = getattr(pattern, "tensor", None)
    if isinstance(tensor, Tensor):
        t = pattern.materialize(q_len, kv_len, device=device)
        while t.dim() < 4:
            t = t.unsqueeze(0)
        return t.any(dim=-2, keepdim=True)
    layout = pattern.block_layout(q_len, kv_len, max(q_len, 1), 1, device=device)
    return layout.any.view(1, 1, 1, kv_len)


# ----------------------------------------------------------------------------- backend


class FlexBackend:
    """PyTorch FlexAttention (``torch.nn.attention.flex_attention``); equal to the reference
    within tolerance.

    Args:
        compile: wrap ``flex_attention`` in ``torch.compile`` (once per process; each new shape
            or pattern kind compiles on its first call). Without it, torch's eager
            implementation runs: unfused, it builds the dense scores (for tests).
        block_size: ``(q_block, kv_block)`` of the block masks; default 128 x 128 on CUDA (the
            Triton kernels' tile) and 64 x 64 on CPU, where the C++ kernel's tile is the block:
            smaller tiles visit fewer masked pairs (window 256, Longformer and BigBird at
            T = 16384 ran 1.1-3x faster than at 128 x 128, see benchmarks/attention_long.py).
        cache_size: how many pattern block masks to keep (least recently used dropped); the
            cache is safe to share between threads (a lock around every lookup and insertion).
    """

    name = "flex"
    # FlexAttention scores are q . k with a score_mod: the scores rewritten that way (see _score_mod)
    capabilities = Capabilities(
        "FlexAttention", scores=frozenset({"dot", "scaled_dot", "general", "cosine", "gaussian"}),
        custom_scores=False, softmax_only=True, dropout=False, empty=False, instead="backend='chunked'",
    )  # fmt: skip

    def __init__(
        self, *, compile: bool = False, block_size: tuple[int, int] | None = None, cache_size: int = 32
    ) -> None:
        self.compile = compile
        self.block_size = block_size
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple, tuple[Any, Any, Tensor | None]] = OrderedDict()
        self._lock = threading.Lock()  # guards _cache and the counters
        self.cache_hits = 0
        self.cache_misses = 0

    # -- choice --------------------------------------------------------------------------

    def supports(self, inputs: AttentionInputs) -> list[str]:
        if _IMPORT_ERROR is not None:
            return [_IMPORT_ERROR]
        reasons = not_supported_reasons(self.capabilities, inputs)
        q = inputs.query
        if q.dim() > 4 and self._depends_on_lead(inputs):
            reasons.append(
                f"{q.dim()}-D inputs with a mask or bias over the leading dims: FlexAttention "
                "takes (B, H, T, D)"
            )
        if q.device.type == "cpu" and torch.is_grad_enabled() and self._needs_grad(inputs):
            reasons.append(
                f"FlexAttention has no CPU backward in torch {torch.__version__} (it refuses CPU "
                "inputs that require grad): use backend='chunked' or run under torch.no_grad()"
            )
        if self.compile:
            if q.dtype not in _COMPILED_DTYPES:
                reasons.append(f"dtype {q.dtype}: compiled FlexAttention runs float32, float16, bfloat16")
            if q.device.type == "cpu" and not _cpu_compile_supported():
                reasons.append("compiled FlexAttention on CPU needs AVX2 (x86, not macOS)")
        return reasons

    def auto_skip(self, inputs: AttentionInputs) -> list[str]:
        """Why ``auto`` passes over flex although it could run: only compiled, on CUDA."""
        if inputs.query.device.type != "cuda":
            return [
                f"{inputs.query.device.type}: auto picks flex only on CUDA (a compile step per shape, "
                "no backward on CPU); request backend='flex' to use it"
            ]
        if not self.compile:
            return ["eager FlexAttention is unfused (dense scores): auto picks flex only when compiled"]
        if not inputs.has_mask and inputs.bias is None and inputs.score.dot_like:
            return ["no mask, bias or score_mod: SDPA's fused kernels run plain dense attention"]
        return []

    @staticmethod
    def _needs_grad(inputs: AttentionInputs) -> bool:
        tensors = [inputs.query, inputs.key, inputs.value, inputs.bias]
        tensors += [t for t in inputs.score_kwargs.values() if isinstance(t, Tensor)]
        return any(t is not None and t.requires_grad for t in tensors)

    @staticmethod
    def _depends_on_lead(inputs: AttentionInputs) -> bool:
        if inputs.tensor_mask is not None or inputs.bias is not None:
            return True
        return inputs.pattern is not None and inputs.pattern.depends_on_batch_head

    def _block(self, device: torch.device) -> tuple[int, int]:
        if self.block_size is not None:
            return tuple(self.block_size)  # type: ignore[return-value]
        return (128, 128) if device.type == "cuda" else (64, 64)

    def memory_bytes(self, inputs: AttentionInputs) -> int:
        """Peak extra bytes (see :mod:`qkv.backends.memory`). Eager FlexAttention is unfused:
        the scores, their modifications and softmax (4 L c). Compiled, the kernel works per
        tile: copies of q, k, v (score transforms, zeroed keys) and the output. A bool tensor
        mask is pooled to tiles (two padded copies, 2 M)."""
        s = memory.sizes(inputs)
        c, dense = s["c"], not self.compile
        total = s["n"] * s["tq"] * (s["dv"] * s["e"] + c) + 4 * s["qkv"] * c
        total += memory.pattern_tables_bytes(inputs)
        if dense:
            total += 4 * s["L"] * c
        if inputs.tensor_mask is not None:
            total += 2 * inputs.tensor_mask.numel()
        if memory.needs_grad(inputs):  # (CUDA: no CPU backward) dq, dk, dv; eager: the scores' gradients
            total += 3 * s["qkv"] * c + (3 * s["L"] * c if dense else 0)
        return total

    # -- block masks ---------------------------------------------------------------------

    def block_mask(self, pattern: Mask, q_len: int, kv_len: int, device) -> tuple[Any, Tensor | None]:
        """``(BlockMask, reachable keys or None if all are)`` of a pattern, from the LRU cache."""
        device = torch.device(device)
        block = self._block(device)
        key = (id(pattern), q_len, kv_len, str(device), block)
        with self._lock:  # an OrderedDict is not safe to reorder from several threads
            hit = self._cache.get(key)
            if hit is not None and hit[0]() is pattern:
                self._cache.move_to_end(key)
                self.cache_hits += 1
                return hit[1], hit[2]
            self.cache_misses += 1
        bm = layout_block_mask(pattern, q_len, kv_len, block, device)  # built outside the lock
        reach = _reachable(pattern, q_len, kv_len, device)
        reach = None if bool(reach.all()) else reach
        with self._lock:
            self._cache[key] = (weakref.ref(pattern), bm, reach)
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return bm, reach

    # -- run -----------------------------------------------------------------------------

    def run(self, inputs: AttentionInputs) -> AttentionOutput:
        q, k, v = inputs.query, inputs.key, inputs.value
        lead = q.shape[:-3]
        if q.dim() != 4:  # (..., H, T, D) -> (B, H, T, D); masks and bias do not depend on "..."
            q, k, v = (t.reshape(-1, *t.shape[-3:]) for t in (q, k, v))
        bias = inputs.bias
        if not torch.is_grad_enabled():  # torch refuses CPU inputs that require grad, even so
            q, k, v = q.detach(), k.detach(), v.detach()
            bias = None if bias is None else bias.detach()
        b, h, tq, tk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]

        block_mask = None
        if inputs.pattern is not None:
            block_mask, reach = self.block_mask(inputs.pattern, tq, tk, q.device)
            if reach is not None:
                k, v = zero_unreachable_keys(k, v, reach)
        elif inputs.tensor_mask is not None:
            mask = inputs.tensor_mask
            k, v = zero_unreachable_keys(k, v, mask)
            block_mask = _tensor_block_mask(mask, tq, tk, self._block(q.device))

        q, k, scale, score_mod = self._score(inputs, q, k, bias, (b, h, tq, tk))
        want_lse = not (self.compile and q.device.type == "cpu")  # not implemented there
        fn = _compiled_flex() if self.compile else flex_attention
        kwargs: dict[str, Any] = {"score_mod": score_mod, "block_mask": block_mask, "scale": scale}
        if want_lse:
            kwargs.update({"return_aux": AuxRequest(lse=True)} if AuxRequest else {"return_lse": True})
        with warnings.catch_warnings(), torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            res = fn(q, k, v, **kwargs)
        if want_lse:
            out, aux = res
            lse = aux.lse if AuxRequest else aux
            empty = lse == float("-inf")  # rows with nothing to attend: out 0 (qkv's rule)
            out = out.masked_fill(empty.unsqueeze(-1), 0.0)
            lse = lse.reshape(*lead, *lse.shape[-2:])
        else:
            out, lse = res, None
        out = out.reshape(*lead, *out.shape[-3:])
        return AttentionOutput(out=out, weights=None, lse=lse, backend=self.name)

    @staticmethod
    def _score(inputs: AttentionInputs, q: Tensor, k: Tensor, bias: Tensor | None, shape):
        """``(q, k, scale, score_mod)`` such that FlexAttention's ``q . k * scale`` followed by
        ``score_mod`` equals ``score(q, k) * scale + bias``."""
        scale, p = inputs.scale, inputs.score_kwargs
        mods: list[Callable] = []
        if inputs.score.name == "general":  # q^T W k = (q W) . k
            q = q @ p["weight"].to(q.dtype)
        elif inputs.score.name == "cosine":  # cos(q, k) / temperature
            eps = p.get("eps", 1e-8)
            q = q / q.norm(dim=-1, keepdim=True).clamp_min(eps)
            k = k / k.norm(dim=-1, keepdim=True).clamp_min(eps)
            q = q / p.get("temperature", 1.0)
        elif inputs.score.name == "gaussian":  # -|q - k|^2 / (2 s^2) = q'.k' - |q'|^2/2 - |k'|^2/2, q' = q/s
            sigma = p.get("sigma", 1.0)
            q, k = q / sigma, k / sigma
            q_sq = q.pow(2).sum(-1) * (0.5 * scale)  # (B, H, Tq)
            k_sq = k.pow(2).sum(-1) * (0.5 * scale)  # (B, H, Tk)
            mods.append(lambda s, b, h, i, j: s - q_sq[b, h, i] - k_sq[b, h, j])
        if bias is not None:
            full = bias.expand(*shape)  # a view: (B, H, Tq, Tk) indexable per pair
            mods.append(lambda s, b, h, i, j: s + full[b, h, i, j].to(s.dtype))
        if not mods:
            return q, k, scale, None
        if len(mods) == 1:
            return q, k, scale, mods[0]
        first, second = mods

        def score_mod(s, b, h, i, j):
            return second(first(s, b, h, i, j), b, h, i, j)

        return q, k, scale, score_mod
