"""The per-call caches of qkv.attention: checks and backend choice per call signature, the NaN
probe of SDPA's kernel, the bounded cache itself, and what they must never change."""

from __future__ import annotations

import importlib
import threading

import pytest
import torch

import qkv
from qkv._bounded_cache import BoundedCache
from qkv.api.prepare import prepare
from qkv.backends import dispatch
from qkv.backends.nan_probe import drops_nan_rows
from qkv.functional.normalize import masked_softmax


def test_bounded_cache_keeps_at_most_maxsize_newest_first():
    cache = BoundedCache(3)
    for i in range(10):
        cache.put(i, i * i)
    assert len(cache) == 3
    assert [cache.get(i) for i in range(10)] == [None] * 7 + [49, 64, 81]
    with pytest.raises(ValueError, match="maxsize"):
        BoundedCache(0)


def test_bounded_cache_is_safe_between_threads():
    cache = BoundedCache(16)

    def work(offset):
        for i in range(2000):
            cache.put((offset, i % 40), i)
            cache.get((offset, (i + 1) % 40))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 16


def test_a_repeated_call_gives_the_same_result_and_backend():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g) for _ in range(3))
    mask = torch.rand(2, 1, 5, 5, generator=g) > 0.3
    first = qkv.attention(q, k, v, mask=mask, need_weights=True)
    second = qkv.attention(q, k, v, mask=mask, need_weights=True)
    ref = qkv.attention(q, k, v, mask=mask, need_weights=True, backend="reference")
    assert first.backend == second.backend == "sdpa"
    assert torch.equal(first.out, second.out) and torch.equal(first.weights, second.weights)
    assert (first.weights - ref.weights).abs().max() < 1e-6
    assert (first.lse - ref.lse).abs().nan_to_num(0.0).max() < 1e-5


def test_errors_are_raised_on_every_call_after_a_cached_one():
    q, k, v = (torch.randn(1, 2, 4, 8) for _ in range(3))
    qkv.attention(q, k, v)  # cached signature
    for _ in range(2):
        with pytest.raises(ValueError, match="mask: shape"):
            qkv.attention(q, k, v, mask=torch.ones(3, 4, dtype=torch.bool))
        with pytest.raises(TypeError, match="scale"):
            qkv.attention(q, k, v, scale=float("inf"))
        with pytest.raises(TypeError, match="mask"):
            qkv.attention(q, k, v, mask=torch.ones(4, 4))


def test_the_signature_tells_apart_what_the_checks_read():
    q, k, v = (torch.randn(1, 2, 4, 8) for _ in range(3))
    base, _ = prepare(q, k, v)
    assert base.signature is not None
    other_dtype, _ = prepare(q.double(), k.double(), v.double())
    grad, _ = prepare(q.requires_grad_(), k, v)
    scaled, _ = prepare(q, k, v, scale=0.5)
    assert len({base.signature, other_dtype.signature, grad.signature, scaled.signature}) == 4
    with_pattern, _ = prepare(q, k, v, mask=qkv.masks.causal())
    assert with_pattern.signature is None  # patterns are not cached


def test_a_swapped_registry_is_not_answered_from_the_cache(monkeypatch):
    q, k, v = (torch.randn(1, 2, 4, 8) for _ in range(3))
    inputs, _ = prepare(q, k, v)
    assert dispatch.choose(inputs, "auto").name == "sdpa"

    class Refusing(type(dispatch.BACKENDS["sdpa"])):
        def supports(self, inputs):
            return ["refused here"]

    monkeypatch.setitem(dispatch.BACKENDS, "sdpa", Refusing())
    assert dispatch.choose(inputs, "auto").name == "reference"


@pytest.mark.parametrize("tk", [1, 3, 7, 15, 16, 17, 64, 300])
def test_nan_query_rows_stay_nan_without_a_mask(tk):
    g = torch.Generator().manual_seed(tk)
    q = torch.randn(2, 2, 3, 8, generator=g)
    k, v = torch.randn(2, 2, tk, 8, generator=g), torch.randn(2, 2, tk, 8, generator=g)
    q[1, 0, 2, 5] = float("nan")
    for _ in range(2):  # the probe's answer, then the cached one
        out = qkv.attention(q, k, v).out
        assert bool(out[1, 0, 2].isnan().all())
        assert int(out.isnan().sum()) == 8


def test_the_probe_answers_per_size():
    q = torch.randn(1, 1, 4, 8)
    answers = {tk: drops_nan_rows(q, torch.randn(1, 1, tk, 8), torch.randn(1, 1, tk, 8)) for tk in (2, 64)}
    assert all(isinstance(a, bool) for a in answers.values())


def test_unreachable_non_finite_keys_are_still_zeroed():
    q, k, v = (torch.randn(1, 1, 4, 8) for _ in range(3))
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    mask[..., 3] = False
    clean = qkv.attention(q, k, v, mask=mask).out
    k[..., 3, :], v[..., 3, :] = float("inf"), float("nan")
    for backend in ("sdpa", "reference"):
        assert torch.equal(
            qkv.attention(q, k, v, mask=mask, backend=backend).out.isnan(),
            torch.zeros(1, 1, 4, 8, dtype=torch.bool),
        )
        assert (qkv.attention(q, k, v, mask=mask, backend=backend).out - clean).abs().max() < 1e-6


def test_masked_softmax_leaves_its_logits_alone():
    logits = torch.randn(2, 3, 5)
    before = logits.clone()
    mask = torch.rand(2, 3, 5) > 0.5
    for m in (None, mask):
        weights, _ = masked_softmax(logits, m)
        assert torch.equal(logits, before)
        expected = torch.softmax(logits if m is None else logits.masked_fill(~m, float("-inf")), -1)
        assert (weights - expected.nan_to_num(0.0)).abs().max() < 1e-6


def _plain_problem(seed=0, shape=(2, 3, 6, 8)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(3)]


def test_a_repeated_plain_call_skips_the_checks_and_the_choice(monkeypatch):
    attention_module = importlib.import_module("qkv.api.attention")
    q, k, v = _plain_problem(1)
    first = qkv.attention(q, k, v)

    def no_full_path(*args, **kwargs):
        raise AssertionError("the full path ran for a repeated plain call")

    monkeypatch.setattr(attention_module, "prepare", no_full_path)
    again = qkv.attention(q, k, v)
    assert again.backend == first.backend == "sdpa"
    assert torch.equal(again.out, first.out) and again.weights is None and again.lse is None
    with pytest.raises(AssertionError, match="full path"):  # anything not plain still takes it
        qkv.attention(q, k, v, mask=torch.ones(6, 6, dtype=torch.bool))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_plain_path_equals_the_reference(dtype):
    q, k, v = (t.to(dtype) for t in _plain_problem(2, (1, 4, 5, 16)))
    ref = qkv.attention(q, k, v, backend="reference").out
    for _ in range(3):  # the full path, then the kept runner
        out = qkv.attention(q, k, v).out
        assert (out - ref).abs().max() < (1e-12 if dtype == torch.float64 else 1e-5)


def test_the_plain_path_keeps_gradients_and_dropout_streams():
    q, k, v = (t.double().requires_grad_() for t in _plain_problem(3, (1, 2, 4, 8)))
    grads = []
    for _ in range(2):
        torch.manual_seed(7)
        out = qkv.attention(q, k, v, dropout_p=0.3, training=True).out
        (gq,) = torch.autograd.grad(out.square().sum(), q)
        grads.append((out.detach(), gq))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    assert torch.autograd.gradcheck(lambda a, b, c: qkv.attention(a, b, c).out, (q, k, v))


def test_a_swapped_registry_is_not_answered_by_a_kept_runner(monkeypatch):
    q, k, v = _plain_problem(4)
    for _ in range(2):
        assert qkv.attention(q, k, v).backend == "sdpa"

    class Refusing(type(dispatch.BACKENDS["sdpa"])):
        def supports(self, inputs):
            return ["refused here"]

    monkeypatch.setitem(dispatch.BACKENDS, "sdpa", Refusing())
    assert qkv.attention(q, k, v).backend == "reference"


def test_what_the_plain_path_never_serves():
    from qkv.api import plain_calls
    from qkv.backends import sequence_parallel

    q, k, v = _plain_problem(5)
    key = plain_calls.plain_key(q, k, v, "scaled_dot", None, 0.0, False, "auto", "softmax")
    qkv.attention(q, k, v)
    assert plain_calls.lookup(key, "auto") is not None
    context = sequence_parallel.SequenceParallel(group=None, layout="contiguous", rank=0, world=1)
    with sequence_parallel.activate(context):  # auto means ring there
        assert plain_calls.lookup(key, "auto") is None
    three_d = [t[0] for t in (q, k, v)]
    assert plain_calls.plain_key(*three_d, "scaled_dot", None, 0.0, False, "auto", "softmax") is None
    assert plain_calls.plain_key(q, k, v, "scaled_dot", None, 0.0, False, "auto", "sparsemax") is None
    assert plain_calls.plain_key(q, k, v, "scaled_dot", None, 0.0, False, 3, "softmax") is None
    with pytest.raises(TypeError, match="backend"):  # and its errors come on every call
        qkv.attention(q, k, v, backend=3)


def test_a_score_module_is_checked_once_and_never_mistaken_for_another(monkeypatch):
    """A score module's calls are cached by the module itself (identity): the second call skips
    the checks, a second module of the same shape gets its own entry and its own logits."""
    from qkv.modules import AdditiveAttention

    prepare_module = importlib.import_module("qkv.api.prepare")
    torch.manual_seed(0)
    first, second = (AdditiveAttention(query_dim=8, key_dim=8, hidden_dim=16) for _ in range(2))
    q, k, v = torch.randn(2, 3, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 4)
    lens = torch.tensor([5, 3])
    a1 = first(q, k, v, valid_lens=lens).out
    checks = []
    original = prepare_module._check_arguments
    monkeypatch.setattr(prepare_module, "_check_arguments", lambda *a: checks.append(1) or original(*a))
    assert torch.equal(first(q, k, v, valid_lens=lens).out, a1) and checks == []
    b1 = second(q, k, v, valid_lens=lens).out
    assert checks == [1] and not torch.allclose(a1, b1)
    mask = torch.arange(5) < lens[:, None, None]
    ref = qkv.attention(q, k, v, score=second.score, mask=mask, backend="reference")
    torch.testing.assert_close(b1, ref.out, rtol=0, atol=1e-6)
    assert prepare(q, k, v, score=lambda a, b: a @ b.transpose(-2, -1))[0].signature is not None


def test_a_method_bound_to_a_score_module_is_cached_by_its_module(monkeypatch):
    """``AdditiveAttention(..., keys_projected=True)`` scores with the bound method
    ``score.from_projected_keys``: its second call skips the checks, another module's method gets
    its own entry, and the output equals the call on the unprojected keys."""
    from qkv.modules import AdditiveAttention

    prepare_module = importlib.import_module("qkv.api.prepare")
    torch.manual_seed(0)
    first, second = (AdditiveAttention(query_dim=8, key_dim=6, hidden_dim=16) for _ in range(2))
    q, k, v = torch.randn(2, 3, 8), torch.randn(2, 5, 6), torch.randn(2, 5, 4)
    lens = torch.tensor([5, 3])
    whole = first(q, k, v, valid_lens=lens, need_weights=True)
    keys = first.score.project_keys(k)
    a1 = first(q, keys, v, valid_lens=lens, need_weights=True, keys_projected=True)
    torch.testing.assert_close(a1.out, whole.out, rtol=0, atol=1e-6)
    torch.testing.assert_close(a1.weights, whole.weights, rtol=0, atol=1e-6)
    checks = []
    original = prepare_module._check_arguments
    monkeypatch.setattr(prepare_module, "_check_arguments", lambda *a: checks.append(1) or original(*a))
    again = first(q, keys, v, valid_lens=lens, need_weights=True, keys_projected=True)
    assert torch.equal(again.out, a1.out) and checks == []
    b1 = second(
        q, second.score.project_keys(k), v, valid_lens=lens, need_weights=True, keys_projected=True
    ).out
    assert checks == [1] and not torch.allclose(a1.out, b1)
    assert first.score.from_projected_keys == first.score.from_projected_keys  # a new object each access
    with pytest.raises(ValueError, match="feature dim 16"):
        first(q, k, v, valid_lens=lens, keys_projected=True)
