"""The flex backend (PyTorch FlexAttention) equals the reference; patterns become block masks
from their block layout (never a dense T x T), cached; CPU backward is refused with a reason."""

from __future__ import annotations

import math

import pytest
import torch

import qkv
from qkv.api import prepare
from qkv.backends import BACKENDS, BackendNotSupportedError
from qkv.backends.flex import FlexBackend, _cpu_compile_supported, flex_available, layout_block_mask
from qkv.masks import Mask
from qkv.masks import core as mask_core

from helpers import assert_error_ratio

pytestmark = pytest.mark.skipif(not flex_available(), reason="torch has no FlexAttention")

BLOCK = (16, 8)  # small tiles that divide none of the lengths below


@pytest.fixture(autouse=True)
def flex(monkeypatch):
    """An eager flex backend with small tiles, registered for backend='flex'."""
    backend = FlexBackend(block_size=BLOCK)
    monkeypatch.setitem(BACKENDS, "flex", backend)
    return backend


def _inputs(b=2, h=2, tq=45, tk=45, d=8, dv=5, dtype=torch.float64, seed=7):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=dtype) for s in ((b, h, tq, d), (b, h, tk, d), (b, h, tk, dv))]


def _patterns(b, tq, tk):
    m = qkv.masks
    lens = torch.tensor([max(tk - 11, 1), 0][:b])  # sample 1 has no key at all: every row is empty
    return {
        "none": None,
        "causal": m.causal("bottom_right"),
        "sliding_window": m.sliding_window(5),
        "sliding_window_left": m.sliding_window(6, 0),
        "dilated": m.dilated(3, 2),
        "block_local": m.block_local(7, radius=1),
        "global_tokens": m.global_tokens([0, 13]),
        "random_blocks": m.random_blocks(2, 6, seed=3),
        "longformer": m.longformer(4, [0, 3, 30]),
        "bigbird": m.bigbird(6, 3, 1, 2, seed=0),
        "padding&window": m.sliding_window(4) & m.from_lengths(lens, tk),
        "padding": m.from_lengths(lens, tk),
        "tensor": torch.rand(b, 1, tq, tk, generator=torch.Generator().manual_seed(3)) > 0.6,
    }


PATTERNS = list(_patterns(2, 45, 45))


def _check(request, q64, k64, v64, **kw):
    """flex (fp32) vs golden = reference in fp64, relative to eager = reference in fp32."""
    golden = qkv.attention(q64, k64, v64, backend="reference", **kw)
    q, k, v = (t.float() for t in (q64, k64, v64))
    kw32 = {
        n: (t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t) for n, t in kw.items()
    }
    if "score_kwargs" in kw:
        kw32["score_kwargs"] = {
            n: (t.float() if isinstance(t, torch.Tensor) else t) for n, t in kw["score_kwargs"].items()
        }
    impl = qkv.attention(q, k, v, backend="flex", **kw32)
    eager = qkv.attention(q, k, v, backend="reference", **kw32)
    assert impl.backend == "flex"
    assert_error_ratio(request, impl.out, golden.out, eager.out)
    finite = torch.isfinite(golden.lse)
    assert torch.equal(torch.isfinite(impl.lse), finite), "rows with nothing to attend: lse -inf"
    assert_error_ratio(request, impl.lse[finite], golden.lse[finite], eager.lse[finite], what="lse")
    empty = ~finite
    assert torch.equal(impl.out[empty], torch.zeros_like(impl.out[empty])), "empty rows give 0"
    return impl


@pytest.mark.parametrize("name", PATTERNS)
@pytest.mark.parametrize("lengths", [(45, 45), (37, 45), (1, 45), (45, 1)])
def test_flex_error_ratio_patterns(request, name, lengths):
    tq, tk = lengths
    mask = _patterns(2, tq, tk)[name]
    if name == "tensor" and (tq, tk) != (45, 45):
        mask = torch.rand(2, 1, tq, tk, generator=torch.Generator().manual_seed(3)) > 0.6
    q, k, v = _inputs(tq=tq, tk=tk)
    _check(request, q, k, v, mask=mask)


@pytest.mark.parametrize("score", ["dot", "general", "cosine", "gaussian"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_flex_error_ratio_scores_and_bias(request, score, with_bias):
    q, k, v = _inputs(tq=37)
    g = torch.Generator().manual_seed(5)
    params = {
        "general": {"weight": torch.randn(8, 8, generator=g, dtype=torch.float64) / math.sqrt(8)},
        "cosine": {"temperature": 0.3},
        "gaussian": {"sigma": 1.7},
    }.get(score, {})
    bias = torch.randn(1, 2, 37, 45, generator=g, dtype=torch.float64) if with_bias else None
    mask = qkv.masks.longformer(4, [0, 20]) & qkv.masks.from_lengths(torch.tensor([40, 45]), 45)
    _check(request, q, k, v, score=score, score_kwargs=params, mask=mask, bias=bias)


def test_flex_more_leading_dims_and_one_head_layouts(request):
    q, k, v = (t.reshape(2, 1, 2, 45, -1) for t in _inputs())
    _check(request, q, k, v, mask=qkv.masks.sliding_window(3))
    q3, k3, v3 = (t[:, 0] for t in _inputs())  # (B, T, D): one head
    _check(request, q3, k3, v3, mask=qkv.masks.bigbird(6, 3, 1, 1, seed=1))


def test_flex_block_mask_matches_pattern_exactly():
    """What the compiled kernel computes, from the BlockMask tensors alone: a pair is attended
    iff its tile is full, or partial and the mask_mod allows it. Equal to the dense pattern."""
    for (tq, tk), block in [((45, 45), (16, 8)), ((37, 50), (8, 16)), ((130, 130), (128, 64))]:
        for name, pattern in _patterns(1, tq, tk).items():
            if pattern is None or isinstance(pattern, torch.Tensor):
                continue
            bm = layout_block_mask(pattern, tq, tk, block)
            assert bm.kv_indices.shape[-1] == -(-tk // block[1]), "padded to nKB columns"
            tiles = torch.zeros(2, -(-tq // block[0]), -(-tk // block[1]), dtype=torch.bool)
            for which, (num, idx) in enumerate(
                [(bm.kv_num_blocks, bm.kv_indices), (bm.full_kv_num_blocks, bm.full_kv_indices)]
            ):
                for qb in range(tiles.shape[1]):
                    tiles[which, qb, idx[0, 0, qb, : num[0, 0, qb]].long()] = True
            assert not (tiles[0] & tiles[1]).any(), f"{name}: a tile both partial and full"
            rows = torch.arange(tq)[:, None] // block[0]
            cols = torch.arange(tk)[None, :] // block[1]
            partial, full = tiles[0][rows, cols], tiles[1][rows, cols]
            mod = pattern.mask_mod(tq, tk)
            zero = torch.zeros((), dtype=torch.long)
            allowed = mod(zero, zero, torch.arange(tq)[:, None], torch.arange(tk)[None, :])
            dense = qkv.masks.materialize(pattern, tq, tk)[0, 0]
            assert torch.equal(full | (partial & allowed), dense), f"{name} at {tq}x{tk}, {block}"
            assert not (full & ~dense).any(), f"{name}: a full tile holds a masked pair"


def _no_dense(pattern, monkeypatch):
    """Make every dense materialization inside ``pattern`` raise (bool tensors excepted)."""

    def boom(*a, **k):
        raise AssertionError("dense T x T materialization")

    stack = [pattern]
    while stack:
        p = stack.pop()
        if isinstance(getattr(p, "tensor", None), torch.Tensor):
            continue
        monkeypatch.setattr(p, "materialize", boom)
        stack += [getattr(p, n) for n in ("left", "right", "inner") if isinstance(getattr(p, n, None), Mask)]
    reduce_dense = mask_core.reduce_dense

    def reduce_small(dense, *args):  # a padding mask (B, 1, 1, Tk) is fine, a Tq x Tk one is not
        if dense.dim() >= 2 and dense.shape[-2] > 1 and dense.shape[-1] > 1:
            boom()
        return reduce_dense(dense, *args)

    monkeypatch.setattr(mask_core, "reduce_dense", reduce_small)


@pytest.mark.parametrize("name", ["sliding_window", "longformer", "bigbird", "padding&window"])
def test_flex_builds_block_masks_without_dense_materialization(request, monkeypatch, name):
    q, k, v = (t.float() for t in _inputs())
    pattern = _patterns(2, 45, 45)[name]
    expected = qkv.attention(q, k, v, mask=pattern, backend="reference").out
    _no_dense(pattern, monkeypatch)
    with pytest.raises(AssertionError, match="dense"):
        qkv.attention(q, k, v, mask=pattern, backend="reference")
    got = qkv.attention(q, k, v, mask=pattern, backend="flex")
    torch.testing.assert_close(got.out, expected, rtol=0, atol=1e-5)


def test_flex_block_mask_cache(flex):
    q, k, v = (t.float() for t in _inputs())
    pattern = qkv.masks.sliding_window(4)
    qkv.attention(q, k, v, mask=pattern, backend="flex")
    assert (flex.cache_hits, flex.cache_misses) == (0, 1)
    first = flex.block_mask(pattern, 45, 45, "cpu")[0]
    out = qkv.attention(q, k, v, mask=pattern, backend="flex")
    assert (flex.cache_hits, flex.cache_misses) == (2, 1)
    assert flex.block_mask(pattern, 45, 45, "cpu")[0] is first
    qkv.attention(q[..., :30, :], k, v, mask=pattern, backend="flex")  # new lengths: a new entry
    qkv.attention(q, k, v, mask=qkv.masks.sliding_window(4), backend="flex")  # a new pattern object
    assert flex.cache_misses == 3
    small = FlexBackend(block_size=BLOCK, cache_size=2)
    patterns = [qkv.masks.sliding_window(w) for w in range(4)]  # alive: no id reused by the next one
    for p in patterns:
        small.block_mask(p, 45, 45, "cpu")
    assert len(small._cache) == 2
    torch.testing.assert_close(out.out, qkv.attention(q, k, v, mask=pattern, backend="reference").out)


def test_flex_garbage_in_unreachable_keys_changes_nothing():
    q, k, v = (t.float() for t in _inputs())
    pattern = qkv.masks.sliding_window(4) & qkv.masks.from_lengths(torch.tensor([30, 45]), 45)
    clean = qkv.attention(q, k, v, mask=pattern, backend="flex").out
    k2, v2 = k.clone(), v.clone()
    k2[0, :, 30:] = float("nan")
    v2[0, :, 30:] = float("inf")
    dirty = qkv.attention(q, k2, v2, mask=pattern, backend="flex").out
    assert torch.equal(clean, dirty)
    tensor_mask = qkv.masks.from_lengths(torch.tensor([30, 45]), 45)
    clean_t = qkv.attention(q, k, v, mask=tensor_mask, backend="flex").out
    assert torch.equal(clean_t, qkv.attention(q, k2, v2, mask=tensor_mask, backend="flex").out)


def test_flex_refuses_cpu_backward_with_reason():
    q, k, v = (t.float().requires_grad_() for t in _inputs())
    with pytest.raises(BackendNotSupportedError, match=r"no CPU backward in torch \d"):
        qkv.attention(q, k, v, mask=qkv.masks.sliding_window(3), backend="flex")
    with torch.no_grad():  # inputs that require grad are fine when no graph is recorded
        out = qkv.attention(q, k, v, mask=qkv.masks.sliding_window(3), backend="flex")
    ref = qkv.attention(q.detach(), k.detach(), v.detach(), mask=qkv.masks.sliding_window(3))
    torch.testing.assert_close(out.out, ref.out)
    inputs, _ = prepare(q, k, v)
    assert FlexBackend().auto_skip(inputs), "auto never picks flex on CPU"


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"score": "additive"}, "score 'additive'"),
        ({"dropout_p": 0.1, "training": True}, "dropout"),
    ],
)
def test_flex_reasons(kwargs, reason):
    q, k, v = (t.float() for t in _inputs())
    if kwargs.get("score") == "additive":
        g = torch.Generator().manual_seed(0)
        kwargs["score_kwargs"] = {
            "w_query": torch.randn(4, 8, generator=g),
            "w_key": torch.randn(4, 8, generator=g),
            "v": torch.randn(4, generator=g),
        }
    with pytest.raises(BackendNotSupportedError, match=reason):
        qkv.attention(q, k, v, backend="flex", **kwargs)
    q5, k5, v5 = (t.reshape(2, 1, 2, 45, -1) for t in (q, k, v))
    with pytest.raises(BackendNotSupportedError, match="leading dims"):
        qkv.attention(q5, k5, v5, mask=torch.ones(2, 1, 1, 45, 45, dtype=torch.bool), backend="flex")


@pytest.mark.skipif(
    not flex_available() or not _cpu_compile_supported(), reason="compiled FlexAttention needs AVX2 on CPU"
)
def test_flex_compiled_cpu_forward(monkeypatch):
    """One compiled call (a few seconds): window & padding with empty rows, tiles that do not
    divide T; compiled FlexAttention on CPU returns no lse."""
    backend = FlexBackend(compile=True, block_size=(32, 16))
    monkeypatch.setitem(BACKENDS, "flex", backend)
    q, k, v = (t.float() for t in _inputs(tq=100, tk=100))
    pattern = qkv.masks.sliding_window(9) & qkv.masks.from_lengths(torch.tensor([70, 0]), 100)
    got = qkv.attention(q, k, v, mask=pattern, backend="flex")
    ref = qkv.attention(q, k, v, mask=pattern, backend="reference")
    assert got.lse is None
    torch.testing.assert_close(got.out, ref.out, rtol=0, atol=2e-6)
    assert torch.equal(got.out[1], torch.zeros_like(got.out[1]))


@pytest.mark.skipif(not flex_available(), reason="FlexAttention unavailable")
def test_block_mask_cache_is_safe_under_threads():
    """Eight threads ask one backend (LRU of 2) for 5 patterns' block masks: every mask is the
    one built alone, the counters add up to the calls, the cache stays within its size."""
    import threading

    from qkv import masks

    backend = FlexBackend(cache_size=2)
    patterns = [masks.sliding_window(w) for w in (2, 4, 8, 16, 32)]
    alone = [FlexBackend().block_mask(p, 64, 64, "cpu")[0].to_dense() for p in patterns]
    bad: list[object] = []
    calls = 8 * 10

    def work(seed: int) -> None:
        try:
            for r in range(10):
                i = (seed + r) % len(patterns)
                bm, _ = backend.block_mask(patterns[i], 64, 64, "cpu")
                if not torch.equal(bm.to_dense(), alone[i]):
                    bad.append((seed, i))
        except Exception as e:  # reported below with the thread's seed
            bad.append((seed, repr(e)))

    threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bad == []
    assert backend.cache_hits + backend.cache_misses == calls
    assert len(backend._cache) <= 2
