"""The blocksparse backend equals the reference on every pattern, forward and backward."""

from __future__ import annotations

import pytest
import torch

import qkv
from qkv import masks
from qkv.api import prepare
from qkv.backends import BACKENDS, blocksparse

from helpers import GRAD_FACTOR, assert_error_ratio, assert_garbage_changes_nothing


@pytest.fixture(autouse=True, params=[(4, 8), (8, 8), (16, 8)], ids=["gather", "band", "band2"])
def small_blocks(request, monkeypatch):
    """(4, 8) tiles always gather; (8, 8) and (16, 8) take the strided band path for windows."""
    q_block, kv_block = request.param
    monkeypatch.setattr(BACKENDS["blocksparse"], "q_block", q_block)
    monkeypatch.setattr(BACKENDS["blocksparse"], "kv_block", kv_block)
    monkeypatch.setattr(blocksparse._BlockSparseAttention, "backward_rows", 3)  # exercise row slices
    monkeypatch.setattr(blocksparse._BlockSparseAttention, "forward_bytes", 2000)  # 1 to 5 blocks a call
    monkeypatch.setattr(BACKENDS["blocksparse"], "_plans", type(BACKENDS["blocksparse"]._plans)())


PATTERNS = {
    "window": lambda t: masks.sliding_window(5),
    "causal_local": lambda t: masks.sliding_window(6, 0),
    "dilated": lambda t: masks.dilated(3, 2),
    "block_local": lambda t: masks.block_local(6),
    "causal": lambda t: masks.causal(),
    "longformer": lambda t: masks.longformer(4, [0, 1, t - 1]),
    "bigbird": lambda t: masks.bigbird(4, 3, 1, 1, seed=0),
    "padded_window": lambda t: masks.sliding_window(6) & masks.from_lengths(torch.tensor([t - 7, 0]), t),
    "document": lambda t: masks.document(torch.tensor([0] * 10 + [1] * (t - 20) + [2] * 10)),
}


@pytest.mark.parametrize("name", list(PATTERNS))
@pytest.mark.parametrize("t", [37, 64])
def test_blocksparse_error_ratio(request, name, t):
    g = torch.Generator().manual_seed(3)
    q64, k64, v64 = (
        torch.randn(2, 3, t, 8, generator=g, dtype=torch.float64).requires_grad_() for _ in range(3)
    )
    pattern = PATTERNS[name](t)
    golden = qkv.attention(q64, k64, v64, mask=pattern, backend="reference").out
    q, k, v = (x.detach().float().requires_grad_() for x in (q64, k64, v64))
    impl = qkv.attention(q, k, v, mask=pattern, backend="blocksparse")
    assert impl.backend == "blocksparse"
    eager = qkv.attention(q, k, v, mask=pattern, backend="reference").out
    assert_error_ratio(request, impl.out, golden, eager)
    go = torch.randn(golden.shape, generator=g, dtype=torch.float64)
    gg = torch.autograd.grad(golden, (q64, k64, v64), go)
    gi = torch.autograd.grad(impl.out, (q, k, v), go.float())
    ge = torch.autograd.grad(eager, (q, k, v), go.float())
    for a, b, c in zip(gi, gg, ge):
        assert_error_ratio(request, a, b, c, factor=GRAD_FACTOR, what="grad")


def test_blocksparse_gradcheck():
    q, k, v = (torch.randn(1, 2, 13, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    pattern = masks.longformer(2, [0])
    assert torch.autograd.gradcheck(
        lambda q, k, v: qkv.attention(q, k, v, mask=pattern, backend="blocksparse").out, (q, k, v)
    )


@pytest.mark.parametrize("garbage", [float("nan"), float("inf")])
def test_blocksparse_garbage_in_padded_keys(garbage):
    q, k, v = (torch.randn(2, 2, 40, 8) for _ in range(3))
    pattern = masks.sliding_window(5) & masks.from_lengths(torch.tensor([30, 40]), 40)
    assert_garbage_changes_nothing(
        q, k, v, where=(0, slice(None), slice(30, None)), garbage=garbage, mask=pattern, backend="blocksparse"
    )


def test_blocksparse_plan_is_cached_and_never_builds_the_dense_mask(monkeypatch):
    pattern = masks.sliding_window(5)
    q, k, v = (torch.randn(1, 2, 64, 8) for _ in range(3))

    def boom(*a, **k):
        raise AssertionError("the dense mask was built")

    monkeypatch.setattr(type(pattern), "materialize", boom)
    backend = BACKENDS["blocksparse"]
    first = qkv.attention(q, k, v, mask=pattern, backend="blocksparse").out
    assert len(backend._plans) == 1
    second = qkv.attention(q, k, v, mask=pattern, backend="blocksparse").out
    assert len(backend._plans) == 1
    assert torch.equal(first, second)


def test_blocksparse_reasons_and_auto():
    q, k, v = (torch.randn(1, 2, 64, 8) for _ in range(3))
    with pytest.raises(qkv.BackendNotSupportedError, match="no mask pattern"):
        qkv.attention(q, k, v, backend="blocksparse")
    with pytest.raises(qkv.BackendNotSupportedError, match=r"score 'gaussian'"):
        qkv.attention(q, k, v, score="gaussian", mask=masks.sliding_window(3), backend="blocksparse")
    assert qkv.attention(q, k, v, mask=masks.sliding_window(3)).backend == "blocksparse"
    dense = masks.sliding_window(60)
    rep = qkv.dispatch_report(q, k, v, mask=dense)
    assert rep.chosen == "sdpa"
    assert any("dense pattern" in r for r in rep.reasons["blocksparse"])


def test_plan_pieces_for_windows_and_longformer():
    """Windows are one band of strided views (no gather); Longformer adds gathered extras."""
    backend = BACKENDS["blocksparse"]
    q = torch.randn(1, 2, 64, 8)
    window, _ = prepare(q, q, q, mask=masks.sliding_window(9))
    plan = backend.plan(window)
    banded = backend.q_block % backend.kv_block == 0
    assert (plan.width > 0) == banded
    if banded:  # one band of views; the query blocks at the edges gather their few tiles
        kinds = [p.idx is None for p in plan.pieces]
        assert kinds[0]
        assert kinds.count(True) == 1
        interior = plan.pieces[0].rows
        assert interior.numel() >= plan.n_qb - 4
    longformer, _ = prepare(q, q, q, mask=masks.longformer(9, [0, 1]))
    kinds = [p.idx is None for p in backend.plan(longformer).pieces]
    assert kinds.count(False) >= 1
    assert kinds.count(True) == int(banded)


@pytest.mark.parametrize("garbage", [float("nan"), float("-inf")])
def test_garbage_in_a_key_no_query_attends(garbage):
    """Key 20 is masked for every query (~global_tokens): garbage there changes nothing."""
    pattern = masks.sliding_window(5) & ~masks.global_tokens([20])
    q, k, v = (torch.randn(1, 2, 48, 8) for _ in range(3))
    assert_garbage_changes_nothing(
        q, k, v, where=(slice(None), slice(None), 20), garbage=garbage, mask=pattern, backend="blocksparse"
    )


def test_patterns_flow_through_multihead_attention():
    torch.manual_seed(0)
    mha = qkv.MultiHeadAttention(embed_dim=16, num_heads=2, backend="blocksparse")
    x = torch.randn(2, 70, 16, requires_grad=True)
    pad = torch.zeros(2, 70, dtype=torch.bool)
    pad[1, 60:] = True
    pattern = masks.longformer(5, [0, 1])
    fast = mha(x, mask=pattern, key_padding_mask=pad)
    mha.backend = "reference"
    slow = mha(x, mask=pattern, key_padding_mask=pad)
    assert fast.backend == "blocksparse"
    torch.testing.assert_close(fast.out, slow.out, rtol=0, atol=1e-5)
    g_fast = torch.autograd.grad(fast.out.sum(), x)[0]
    g_slow = torch.autograd.grad(slow.out.sum(), x)[0]
    torch.testing.assert_close(g_fast, g_slow, rtol=0, atol=1e-5)


def test_plan_cache_is_safe_under_threads():
    """Eight threads share one backend whose LRU holds 3 of 6 patterns' plans: every output is
    bitwise the one-thread output, and the cache never holds more than its size."""
    import threading

    backend = blocksparse.BlockSparseBackend(q_block=16, kv_block=16)
    backend.cache_size = 3
    patterns = [masks.sliding_window(w) for w in (4, 8, 12, 20, 28, 36)]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 96, 8, generator=g) for _ in range(3))
    with torch.no_grad():
        alone = [
            blocksparse.BlockSparseBackend(16, 16).run(prepare(q, k, v, mask=p)[0]).out for p in patterns
        ]
    bad: list[object] = []

    def work(seed: int) -> None:
        try:
            with torch.no_grad():
                for r in range(12):
                    i = (seed + r) % len(patterns)
                    out = backend.run(prepare(q, k, v, mask=patterns[i])[0]).out
                    if not torch.equal(out, alone[i]):
                        bad.append((seed, i))
                    if len(backend._plans) > backend.cache_size:
                        bad.append(("size", len(backend._plans)))
        except Exception as e:  # reported below with the thread's seed
            bad.append((seed, repr(e)))

    threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bad == []
    assert len(backend._plans) <= 3


def test_a_pattern_allowing_nothing_gives_zero_rows():
    """No tile at all: every row is output 0 and log-sum-exp -inf, as on the reference."""
    q, k, v = (torch.randn(1, 2, 40, 8) for _ in range(3))
    pattern = masks.sliding_window(4) & masks.from_lengths(torch.tensor([0]), 40)
    got = qkv.attention(q, k, v, mask=pattern, backend="blocksparse")
    assert torch.equal(got.out, torch.zeros_like(got.out))
    assert torch.equal(got.lse, torch.full_like(got.lse, float("-inf")))
    assert torch.equal(got.out, qkv.attention(q, k, v, mask=pattern, backend="reference").out)


def test_pieces_cut_at_the_ends_of_their_runs_equal_the_reference(request, monkeypatch):
    """A global token in the middle makes a piece whose query blocks are two runs (before and
    after the band that covers the token): its parts are cut where a run ends, so each is a span
    (views, merged in place), and the result still meets the error-ratio rule, forward and backward."""
    monkeypatch.setattr(blocksparse, "RUN_ROWS", 2)
    t = 160
    pattern = masks.longformer(4, [t // 2])
    g = torch.Generator().manual_seed(5)
    q64, k64, v64 = (
        torch.randn(2, 3, t, 8, generator=g, dtype=torch.float64).requires_grad_() for _ in range(3)
    )
    q, k, v = (x.detach().float().requires_grad_() for x in (q64, k64, v64))
    backend = BACKENDS["blocksparse"]
    plan = backend.plan(prepare(q, k, v, mask=pattern)[0])
    two_runs = max((p for p in plan.pieces if p.span is None), key=lambda p: p.rows.numel())
    rows = two_runs.rows.tolist()
    assert rows != list(range(rows[0], rows[-1] + 1)), "expected a piece whose query blocks are not one run"
    cuts = blocksparse._cuts(two_runs, 1000)
    assert len(cuts) == 2 and cuts[0][0] == 0 and cuts[-1][1] == len(rows)
    spans = [two_runs.part(a, c, plan.per_batch).span for a, c in cuts]
    assert spans == [slice(rows[a], rows[c - 1] + 1) for a, c in cuts]
    parts = blocksparse._parts(plan, lambda p: 1000, torch.float32)
    assert sum(p.rows.numel() for _, p in parts) == sum(p.rows.numel() for p in plan.pieces)
    golden = qkv.attention(q64, k64, v64, mask=pattern, backend="reference").out
    impl = qkv.attention(q, k, v, mask=pattern, backend="blocksparse")
    eager = qkv.attention(q, k, v, mask=pattern, backend="reference").out
    assert impl.backend == "blocksparse"
    assert_error_ratio(request, impl.out, golden, eager)
    go = torch.randn(golden.shape, generator=g, dtype=torch.float64)
    gg = torch.autograd.grad(golden, (q64, k64, v64), go)
    gi = torch.autograd.grad(impl.out, (q, k, v), go.float())
    ge = torch.autograd.grad(eager, (q, k, v), go.float())
    for a, b, c in zip(gi, gg, ge):
        assert_error_ratio(request, a, b, c, factor=GRAD_FACTOR, what="grad")


def _assert_parity(request, run, pattern, q64, k64, v64, g):
    """``run(q, k, v)`` in float32 against the float64 reference: the error-ratio rule on the
    output and on the three gradients."""
    q, k, v = (x.detach().float().requires_grad_() for x in (q64, k64, v64))
    golden = qkv.attention(q64, k64, v64, mask=pattern, backend="reference").out
    eager = qkv.attention(q, k, v, mask=pattern, backend="reference").out
    impl = run(q, k, v)
    assert_error_ratio(request, impl, golden, eager)
    go = torch.randn(golden.shape, generator=g, dtype=torch.float64)
    gg = torch.autograd.grad(golden, (q64, k64, v64), go)
    gi = torch.autograd.grad(impl, (q, k, v), go.float())
    ge = torch.autograd.grad(eager, (q, k, v), go.float())
    for a, b, c in zip(gi, gg, ge):
        assert_error_ratio(request, a, b, c, factor=GRAD_FACTOR, what="grad")


@pytest.mark.parametrize("t", [187, 192])
def test_open_pieces_run_without_a_mask(request, t):
    """BigBird at its own block size: the random and global tiles are wholly allowed, so their
    pieces are open, build no additive mask and call the kernel with none; the gathered ones
    land in the workspace. Forward and backward still meet the error-ratio rule, with a ragged
    last block (T=187) and query blocks that have no random block outside the band."""
    backend = blocksparse.BlockSparseBackend(q_block=8, kv_block=8)
    pattern = masks.bigbird(8, 3, 2, 2, seed=0)
    plan = backend.plan_for(pattern, t, t, 2, 3, torch.device("cpu"))
    open_ = [p for p in plan.pieces if p.open]
    assert any(p.idx is not None and p.idx.dim() == 2 and p.run is None for p in open_)
    g = torch.Generator().manual_seed(7)
    q64, k64, v64 = (
        torch.randn(2, 3, t, 8, generator=g, dtype=torch.float64).requires_grad_() for _ in range(3)
    )
    _assert_parity(
        request, lambda q, k, v: backend.attend(plan, q, k, v, 8**-0.5)[0], pattern, q64, k64, v64, g
    )
    assert all(not p._additive for p in open_)
    assert any(not p.open and p._additive for p in plan.pieces) == any(not p.open for p in plan.pieces)


def _float64_run(pattern, t, seed=11):
    """Output and gradients of blocksparse in float64 on random inputs (B=2, H=3, D=8)."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 3, t, 8, generator=g, dtype=torch.float64).requires_grad_() for _ in range(3))
    out = qkv.attention(q, k, v, mask=pattern, backend="blocksparse").out
    go = torch.randn(out.shape, generator=g, dtype=torch.float64)
    return (out, *torch.autograd.grad(out, (q, k, v), go))


def test_joined_groups_equal_separate_pieces(monkeypatch):
    """BigBird's query blocks whose random block falls in the band have one gathered tile fewer:
    their group joins the larger one, padded with the masked zero block, so the plan has fewer
    pieces; the output and gradients equal those of the separate pieces in float64."""
    backend = BACKENDS["blocksparse"]
    t = 200
    pattern = masks.bigbird(backend.kv_block, 3, 1, 2, seed=0)
    joined = len(backend.plan_for(pattern, t, t, 2, 3, torch.device("cpu")).pieces)
    together = _float64_run(pattern, t)
    monkeypatch.setattr(blocksparse, "PAD_SHARE", 0.0)
    monkeypatch.setattr(backend, "_plans", type(backend._plans)())
    apart = len(backend.plan_for(pattern, t, t, 2, 3, torch.device("cpu")).pieces)
    assert joined < apart
    for a, b in zip(together, _float64_run(pattern, t)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["window", "longformer", "padded_window"])
def test_tall_backward_plan_equals_the_forward_plan(monkeypatch, name):
    """The backward runs query blocks BACKWARD_Q_SCALE times taller when that computes at most
    BACKWARD_MAX_WORK times the pairs: the gradients equal those of the forward's own plan in
    float64."""
    backend = BACKENDS["blocksparse"]
    t = 64
    pattern = PATTERNS[name](t)
    plan = backend.plan_for(pattern, t, t, 2, 3, torch.device("cpu"))
    tall = backend.backward_plan(plan, torch.empty(2, 3, t, 8))
    work = blocksparse._work
    assert tall is plan or (tall.q_block == 2 * plan.q_block and work(tall) <= 1.4 * work(plan))
    tall_grads = _float64_run(pattern, t)
    monkeypatch.setattr(blocksparse, "BACKWARD_Q_SCALE", 1)
    for a, b in zip(tall_grads, _float64_run(pattern, t)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_window_backward_runs_tall_query_blocks():
    """At the backend's own tiles a window's backward plan has query blocks twice as tall."""
    backend = blocksparse.BlockSparseBackend()
    plan = backend.plan_for(masks.sliding_window(256), 4096, 4096, 1, 2, torch.device("cpu"))
    tall = backend.backward_plan(plan, torch.empty(1, 2, 4096, 8))
    assert tall.q_block == 128 and tall.width > 0
    assert blocksparse._work(tall) <= blocksparse.BACKWARD_MAX_WORK * blocksparse._work(plan)
