"""Memory plans: a plan that cannot fit is refused before it runs, with numbers and a way out.

The memory the planner sees is set per test by monkeypatching
``qkv.backends.device_budget.available_bytes`` (nothing process-wide); the inputs stay tiny (D = 8),
so only the ``Tq x Tk`` plans are large.
"""

import re
import time

import pytest
import torch

import qkv
from qkv import masks
from qkv.api import prepare
from qkv.backends import BackendNotSupportedError, device_budget, memory
from qkv.backends.memory import MemoryPlanError

GB = 10**9
MB = 10**6
T_HUGE = 60000


@pytest.fixture
def available(monkeypatch):
    """``available(n)``: every device has ``n`` bytes available from now on (this test only)."""

    def set_available(n: int) -> None:
        monkeypatch.setattr(device_budget, "available_bytes", lambda device: n)

    return set_available


@pytest.fixture(scope="module")
def huge():
    """q, k, v of shape (1, 2, 60000, 8): 3.8 MB each, 7.2e9 logits."""
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, 2, T_HUGE, 8, generator=g) for _ in range(3)]


def test_reference_at_60000_raises_at_once(available, huge):
    available(20 * GB)
    start = time.perf_counter()
    with pytest.raises(MemoryPlanError) as info:
        qkv.attention(*huge, backend="reference")
    assert time.perf_counter() - start < 2.0
    err = info.value
    # logits, exp and weights in float32 at once: 3 x (1 * 2 * 60000 * 60000) x 4 bytes
    assert err.needed == 3 * 2 * T_HUGE * T_HUGE * 4 == 86_400_000_000
    assert err.available == 20 * GB
    msg = str(err)
    assert "backend 'reference' needs about 86.4 GB" in msg
    assert "Tq x Tk = 60000 x 60000 with batch x heads = 2 (float32)" in msg
    assert "about 20.0 GB is available (plans use at most 80%)" in msg
    assert re.search(r"backend 'sdpa' fits \(about \d+(\.\d)? MB\)", msg)
    assert re.search(r"backend 'chunked' fits \(about \d+(\.\d)? MB\)", msg)
    assert isinstance(err, BackendNotSupportedError) and isinstance(err, ValueError)


def test_dense_flex_at_60000_is_refused_too(available, huge):
    available(20 * GB)
    with pytest.raises(MemoryPlanError, match=r"backend 'flex' needs about 115\.\d GB .*'sdpa' fits"):
        qkv.attention(*huge, backend="flex")


def test_auto_at_60000_picks_a_backend_that_fits(available, huge):
    available(20 * GB)
    start = time.perf_counter()
    rep = qkv.dispatch_report(*huge)
    assert time.perf_counter() - start < 2.0
    assert rep.chosen == "sdpa"
    assert rep.reasons["reference"] == [
        "memory: needs about 86.4 GB, 20.0 GB available (plans use at most 80%)"
    ]
    assert rep.memory["reference"] == 86_400_000_000
    assert rep.memory["sdpa"] < 10 * MB  # the fused kernel: the output and a few buffers
    assert rep.available == 20 * GB
    assert "reference    memory: needs about 86.4 GB, 20.0 GB available" in str(rep)
    explicit = qkv.dispatch_report(*huge, backend="reference")
    assert explicit.chosen is None
    assert explicit.reasons["reference"] == rep.reasons["reference"]


@pytest.mark.parametrize("kwargs", [{}, {"backend": "sdpa"}])
def test_full_weights_at_60000_raise_at_once_naming_weights_for(available, huge, kwargs):
    available(20 * GB)
    start = time.perf_counter()
    with pytest.raises(MemoryPlanError) as info:
        qkv.attention(*huge, need_weights=True, **kwargs)
    assert time.perf_counter() - start < 2.0
    msg = str(info.value)
    assert "need_weights=True: the full weights (..., H, Tq, Tk) = (1, 2, 60000, 60000)" in msg
    assert "in float32 take 28.8 GB" in msg  # 2 * 60000 * 60000 * 4 bytes
    assert "about 20.0 GB is available" in msg
    assert "e.g. weights_for=(0, slice(0, 1024)) (about 288 MB)" in msg
    assert info.value.needed > 28_800_000_000


def test_a_large_weights_for_is_refused_too(available, huge):
    available(20 * GB)
    with pytest.raises(MemoryPlanError, match=r"weights_for=\(None, slice\(0, 60000, None\)\): .* 28\.8 GB"):
        qkv.attention(*huge, weights_for=(None, slice(0, T_HUGE)))


def test_the_suggested_weights_for_fits_and_is_exact(available):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 4096, 8, generator=g) for _ in range(3))
    available(16 * MB)  # a budget of 12.8 MB: the full weights alone take 134 MB
    with pytest.raises(MemoryPlanError) as info:
        qkv.attention(q, k, v, need_weights=True)
    found = re.search(r"weights_for=\(0, slice\(0, (\d+)\)\) \(about ([\d.]+) MB\)", str(info.value))
    assert found is not None, str(info.value)
    rows = int(found.group(1))
    assert rows == 128  # 1024, 512, 256 rows of one head do not fit in 12.8 MB; 128 do
    assert float(found.group(2)) < 12.8
    res = qkv.attention(q, k, v, weights_for=(0, slice(0, rows)))
    assert res.backend == "sdpa"
    assert res.weights.shape == (1, 1, rows, 4096)
    logits = (q[:, :1, :rows].double() @ k[:, :1].double().transpose(-2, -1)) / 8**0.5
    torch.testing.assert_close(res.weights.double(), logits.softmax(-1), atol=1e-6, rtol=1e-5)


def test_auto_falls_back_to_a_backend_that_fits(available):
    """Gaussian scores at T = 1500 (2.25M logits): auto prefers the reference (chunked is
    slower on such a small problem), but the reference needs ~171 MB; with 32 MB available auto
    runs chunked, which equals the reference."""
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 1, 1500, 8, generator=g) for _ in range(3))
    expected = qkv.attention(q.double(), k.double(), v.double(), score="gaussian", backend="reference").out
    assert qkv.dispatch_report(q, k, v, score="gaussian").chosen == "reference"  # plenty of memory
    available(32 * MB)
    rep = qkv.dispatch_report(q, k, v, score="gaussian")
    assert rep.chosen == "chunked"
    # 3 L c + 2 L W e for the (Tq, Tk, D) differences: (3 * 4 + 2 * 8 * 4) * 1500^2 bytes
    assert rep.memory["reference"] == 76 * 1500 * 1500 == 171_000_000
    assert rep.reasons["reference"] == ["memory: needs about 171 MB, 32 MB available (plans use at most 80%)"]
    assert any("memory: needs about" in r for r in rep.reasons["flex"])  # eager flex is dense
    assert "<- runs: the backends auto prefers do not fit in memory" in str(rep)
    res = qkv.attention(q, k, v, score="gaussian")
    assert res.backend == "chunked"
    torch.testing.assert_close(res.out.double(), expected, atol=1e-5, rtol=1e-5)


def test_auto_raises_when_nothing_fits(available):
    q = k = v = torch.randn(1, 1, 1500, 8)
    available(1 * MB)
    with pytest.raises(MemoryPlanError, match=r"no backend fits these inputs in memory .*reference 171 MB"):
        qkv.attention(q, k, v, score="gaussian")


def test_small_plans_never_read_the_memory(monkeypatch):
    def unreadable(device):
        raise AssertionError("a plan under MIN_CHECKED_BYTES read the available memory")

    monkeypatch.setattr(device_budget, "available_bytes", unreadable)
    q = k = v = torch.randn(2, 2, 64, 8)
    assert qkv.attention(q, k, v, backend="reference", need_weights=True).weights.shape == (2, 2, 64, 64)
    assert qkv.attention(q, k, v, weights_for=(1, None)).backend == "sdpa"


def test_the_budget_is_80_percent_of_the_available(available):
    q = k = v = torch.randn(1, 1, 1024, 8)
    needed = memory.estimate_bytes(qkv.backends.BACKENDS["reference"], prepare(q, k, v)[0])
    assert needed == 3 * 1024 * 1024 * 4
    available(int(needed / 0.8) + 8)
    assert qkv.attention(q, k, v, backend="reference").backend == "reference"
    available(int(needed / 0.8) - 8)
    with pytest.raises(MemoryPlanError, match=r"needs about 13 MB .* about 16 MB is available"):
        qkv.attention(q, k, v, backend="reference")


def test_estimates_follow_the_plans():
    def est(backend, n=4096, **kwargs):
        q = k = v = torch.randn(1, 2, n, 8)
        return memory.estimate_bytes(qkv.backends.BACKENDS[backend], prepare(q, k, v, **kwargs)[0])

    L = 2 * 4096 * 4096
    assert est("reference") == 3 * L * 4
    assert est("reference", mask=masks.causal()) == 4 * L * 4 + L + 4096 * 4096  # + ~mask, the dense mask
    # sdpa: fused kernel (output only) vs the math kernel that dropout forces (the logits, 3 L c)
    assert est("sdpa") < 1 * MB
    assert est("sdpa", dropout_p=0.1, training=True) > 4 * L * 4
    # the block-wise backends grow with T, not T^2
    assert est("chunked", n=T_HUGE) < 20 * MB
    window = masks.sliding_window(128)
    assert est("blocksparse", n=T_HUGE, mask=window) < 2.1 * est("blocksparse", n=T_HUGE // 2, mask=window)
    with torch.no_grad():
        assert est("flex", n=1024) == pytest.approx(4 * 2 * 1024 * 1024 * 4, rel=0.05)  # eager: dense


def test_weights_bytes_counts_the_selection():
    q = k = v = torch.randn(3, 4, 2048, 8)
    inputs = prepare(q, k, v, weights_for=([0, 2], slice(0, 100)))[0]
    work = 3 * 2 * 100 * 1024 * 10 * 4  # one key block of the second pass
    assert memory.weights_bytes(inputs) == 3 * 2 * 100 * 2048 * 4 + work
    assert memory.weights_bytes(prepare(q, k, v)[0]) == 0  # no weights asked for
    full = memory.weights_bytes(inputs, (None, None))
    assert full == 3 * 4 * 2048 * 2048 * 4 + 3 * 4 * 2048 * 1024 * 40


def test_estimate_of_other_backends():
    inputs = prepare(*(torch.randn(1, 1, 16, 8) for _ in range(3)))[0]

    class Own:
        name = "own"

        def memory_bytes(self, inputs):
            return 1234

    class Unknown:
        name = "unknown"

    assert memory.estimate_bytes(Own(), inputs) == 1234
    assert memory.estimate_bytes(Unknown(), inputs) is None


def test_available_bytes_respects_a_cgroup_limit(monkeypatch):
    files = {
        "/proc/self/cgroup": "0::/job\n",
        "/sys/fs/cgroup/job/memory.max": "1000000000\n",
        "/sys/fs/cgroup/job/memory.current": "300000000\n",
        "/sys/fs/cgroup/job/memory.stat": "anon 200000000\ninactive_file 100000000\n",
    }
    monkeypatch.setattr(device_budget, "_read", files.get)
    monkeypatch.setattr(device_budget, "_meminfo_available", lambda: 16 * GB)
    # 1 GB limit - (300 MB used - 100 MB of reclaimable page cache)
    assert device_budget.available_bytes("cpu") == 800_000_000
    files["/sys/fs/cgroup/job/memory.max"] = "max\n"
    assert device_budget.available_bytes("cpu") == 16 * GB
    monkeypatch.setattr(device_budget, "_read", lambda path: None)
    monkeypatch.setattr(device_budget, "_meminfo_available", lambda: None)
    assert device_budget.available_bytes("cpu") == device_budget.UNKNOWN_AVAILABLE
    assert device_budget.available_bytes("meta") == device_budget.UNKNOWN_AVAILABLE


def test_available_bytes_reads_this_machine():
    n = device_budget.available_bytes("cpu")
    assert isinstance(n, int)
    assert n > 0


def test_format_bytes():
    assert memory.format_bytes(115_200_000_000) == "115.2 GB"
    assert memory.format_bytes(31_000_000) == "31 MB"
    assert memory.format_bytes(4_200_000) == "4.2 MB"
    assert memory.format_bytes(512_000) == "512 kB"
    assert memory.format_bytes(12) == "12 bytes"


@pytest.mark.cuda
def test_available_bytes_on_cuda():
    free, total = torch.cuda.mem_get_info()
    n = device_budget.available_bytes("cuda")
    assert free <= n <= total


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"dtype": torch.float64, "grad": True},
        {"dtype": torch.bfloat16},
        {"score": "gaussian", "grad": True},
        {"score": "additive", "score_kwargs": "additive"},
        {"mask": "tensor", "bias": True, "grad": True},
        {"dropout_p": 0.2, "training": True},
        {"normalize": "sparsemax", "dtype": torch.float64},
        {"shape": (2, 2, 2, 16, 8)},
    ],
)
def test_tiny_calls_skip_the_estimates_soundly(kwargs):
    """``below_check`` bounds every built-in estimate: where it says tiny, none reaches
    ``MIN_CHECKED_BYTES`` (so skipping them refuses nothing)."""
    kwargs = dict(kwargs)
    dtype, grad = kwargs.pop("dtype", torch.float32), kwargs.pop("grad", False)
    shape = kwargs.pop("shape", (1, 2, 16, 8))
    q, k, v = (torch.randn(shape, dtype=dtype, requires_grad=grad) for _ in range(3))
    if kwargs.pop("mask", None):
        kwargs["mask"] = torch.ones(shape[-2], shape[-2], dtype=torch.bool).tril()
    if kwargs.pop("bias", False):
        kwargs["bias"] = torch.randn(shape[-2], shape[-2], dtype=dtype, requires_grad=grad)
    if kwargs.pop("score_kwargs", None):
        w = [torch.randn(16, 8, dtype=dtype), torch.randn(16, 8, dtype=dtype), torch.randn(16, dtype=dtype)]
        kwargs["score_kwargs"] = dict(zip(("w_query", "w_key", "v"), w))
    inputs = prepare(q, k, v, **kwargs)[0]
    assert memory.below_check(inputs)
    for name, backend in qkv.backends.BACKENDS.items():
        if not backend.supports(inputs):
            assert memory.estimate_bytes(backend, inputs) <= memory.MIN_CHECKED_BYTES, name
    bigger = prepare(*(torch.randn(1, 2, 256, 8) for _ in range(3)))[0]
    assert not memory.below_check(bigger)


def test_every_backend_owns_its_estimate():
    """Each registered backend declares ``memory_bytes``; the planner asks it and nothing else."""
    q = k = v = torch.randn(1, 2, 256, 8)
    for mask in (None, masks.sliding_window(32)):
        inputs = prepare(q, k, v, mask=mask)[0]
        for name, backend in qkv.backends.BACKENDS.items():
            if backend.supports(inputs):
                continue
            own = backend.memory_bytes(inputs)
            assert isinstance(own, int) and own > 0, name
            assert memory.estimate_bytes(backend, inputs) == own, name
