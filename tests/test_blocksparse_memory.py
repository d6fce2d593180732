"""The blocksparse forward allocates its output, its log-sum-exp and a workspace bounded
independently of the sequence length: no full-size temporary, no per-piece outputs stacked.

Allocations are read from the profiler's record of the CPU allocator (``profile_memory``: every
allocation and free, in order), so the peak is exact and does not depend on timing or load."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import qkv
from qkv import masks
from qkv.backends import blocksparse

B, H, D = 1, 4, 32
FORWARD_BYTES = 64 << 10  # one kernel call's output: two query blocks of 64 rows
WORKSPACE = 2 << 20  # what a forward may hold besides its output and lse, at any length

# (pattern, the long length): the window also at a ragged length (its last block partial). The
# rows of global tokens read their keys as views only when every key block is whole; at ragged
# lengths they gather them (bounded by blocksparse.GATHER_BYTES, not by this workspace).
PATTERNS = {
    "window": (masks.sliding_window(128), 8192 - 37),
    "longformer": (masks.longformer(128, list(range(16))), 8192),
    "bigbird": (masks.bigbird(64, 3, 2, 2, seed=0), 8192),
}


def peak_allocated(fn) -> int:
    """The most bytes the CPU allocator held during ``fn()`` beyond what it held before."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    held = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        held += e.nbytes()
        peak = max(peak, held)
    return peak


def forward_workspace(pattern, t: int) -> int:
    """Peak bytes of one warm forward (plan built) beyond its output and log-sum-exp."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, t, D, generator=g) for _ in range(3))
    held = []
    with torch.no_grad():
        qkv.attention(q, k, v, mask=pattern, backend="blocksparse")  # builds and caches the plan
        peak = peak_allocated(
            lambda: held.append(qkv.attention(q, k, v, mask=pattern, backend="blocksparse"))
        )
    out, lse = held[0].out, held[0].lse
    assert held[0].backend == "blocksparse"
    return peak - out.numel() * out.element_size() - lse.numel() * lse.element_size()


@pytest.mark.parametrize("name", list(PATTERNS))
def test_forward_holds_output_lse_and_a_bounded_workspace(monkeypatch, name):
    monkeypatch.setattr(blocksparse._BlockSparseAttention, "forward_bytes", FORWARD_BYTES)
    pattern, t = PATTERNS[name]
    short, long = forward_workspace(pattern, 2048), forward_workspace(pattern, t)
    # With per-piece outputs copied into place afterwards the long forward held 16 to 30 MiB
    # besides its 4 MiB output; written in place, the workspace does not grow with T.
    assert 0 <= long <= WORKSPACE, f"{name}: {long / 2**20:.2f} MiB besides the output"
    assert long <= short + 4 * FORWARD_BYTES, (short, long)
