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


BACKWARD_BYTES = 256 << 10  # one backward kernel call's key and value gradients


def backward_workspace(pattern, t: int) -> int:
    """Peak bytes of one backward (``_backward`` on a forward's output) beyond the three
    gradients it returns."""
    g = torch.Generator().manual_seed(0)
    q, k, v, d_out = (torch.randn(B, H, t, D, generator=g) for _ in range(4))
    backend = qkv.backends.BACKENDS["blocksparse"]
    plan = backend.plan_for(pattern, t, t, B, H, q.device)
    with torch.no_grad():
        out, lse = blocksparse._BlockSparseAttention.apply(q, k, v, plan, D**-0.5, backend)
    tall = backend.backward_plan(plan, q)  # the plan the backward runs
    assert tall.q_block == blocksparse.BACKWARD_Q_SCALE * plan.q_block
    blocksparse._backward(tall, D**-0.5, q, k, v, out, lse, d_out)  # builds the plan's masks
    held = []
    peak = peak_allocated(lambda: held.append(blocksparse._backward(tall, D**-0.5, q, k, v, out, lse, d_out)))
    return peak - sum(x.numel() * x.element_size() for x in held[0])


def test_backward_accumulates_into_its_gradients(monkeypatch):
    """At whole-block lengths in float32 the backward adds every piece's gradients straight into
    dq, dk and dv: besides them a window's backward holds per-call buffers that do not grow with
    T. (A row of global tokens is one kernel call over all the keys: its key gradients are as
    long as the keys, so Longformer and BigBird are not bounded this way.)"""
    monkeypatch.setattr(blocksparse._BlockSparseAttention, "backward_bytes", BACKWARD_BYTES)
    pattern = PATTERNS["window"][0]
    short, long = backward_workspace(pattern, 2048), backward_workspace(pattern, 8192)
    # With separate band and gathered-row buffers summed at the end it held several times the key
    # gradients besides them (29 MiB at T=8192, 9 MiB at T=2048).
    assert 0 <= long <= WORKSPACE, f"{long / 2**20:.2f} MiB besides the gradients"
    assert long <= short + 4 * BACKWARD_BYTES, (short, long)
