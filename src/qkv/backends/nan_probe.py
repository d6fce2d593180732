"""Where SDPA's kernels break the NaN rule, found by asking them once per size.

qkv's rule: a query row holding NaN gives a NaN output row. Without a mask, torch's fused CPU
kernel drops the NaN at some sizes (in torch 2.13 on AVX-512, when ``Tk < 16``: its row max
skips NaN in the scalar tail), and the reduction that repairs it (``isnan(query.sum())``) is a
quarter of a small call's cost. :func:`drops_nan_rows` runs one tiny probe per
``(device, dtype, dims, Tq bucket, Tk bucket, D, Dv)`` (a single all-NaN query row against zero
keys, through the same public SDPA call) and remembers the answer in a bounded cache: the
reduction is paid only where the kernel needs it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._bounded_cache import BoundedCache

__all__ = ["drops_nan_rows"]

_ANSWERS = BoundedCache(1024)
_EXACT_LEN = 256  # lengths probed one by one; longer ones by their remainder mod _TAIL
_TAIL = 64  # a multiple of every kernel's vector width and block tail


def _bucket(n: int) -> tuple[int, int]:
    return (n, 0) if n <= _EXACT_LEN else (_EXACT_LEN + 1, n % _TAIL)


def drops_nan_rows(query: Tensor, key: Tensor, value: Tensor) -> bool:
    """True when unmasked SDPA on inputs shaped like these may return a non-NaN row for a
    query row holding NaN (then the caller must repair the rows)."""
    tq, tk = query.shape[-2], key.shape[-2]
    sig = (
        query.device,
        query.dtype,
        query.dim(),
        min(tq, _EXACT_LEN + 1),
        _bucket(tk),
        query.shape[-1],
        value.shape[-1],
    )
    answer = _ANSWERS.get(sig)
    if answer is None:
        answer = _probe(query, tk, value.shape[-1])
        _ANSWERS.put(sig, answer)
    return answer


@torch.no_grad()
def _probe(query: Tensor, tk: int, dv: int) -> bool:
    lead = (1,) * (query.dim() - 2)
    opts = dict(dtype=query.dtype, device=query.device)
    q = torch.full((*lead, min(query.shape[-2], _EXACT_LEN + 1), query.shape[-1]), float("nan"), **opts)
    k = torch.zeros((*lead, tk, query.shape[-1]), **opts)
    v = torch.zeros((*lead, tk, dv), **opts)
    return not bool(torch.isnan(F.scaled_dot_product_attention(q, k, v)).all())
