"""Ring attention against torch's own ring: qkv's ``ring`` backend and PyTorch's private
context-parallel ring (``torch.distributed.tensor.experimental._context_parallel._attention``:
``_templated_ring_attention`` and its backward, driving the CPU flash-attention kernels), on the
same shards of the same sequence, at world 2 with gloo.

Torch's ring is an independent implementation (its own merge, its own load-balanced causal
schedule, its own backward), so agreeing with it checks the ring end to end, not only against a
single-process reference. Cases: causal over the zig-zag layout (torch's load balancer holds
chunks ``r`` and ``2 world - 1 - r``, as qkv's ``"zigzag"``) and dense over the contiguous one.
float64: every rank's out, lse and gradients within 1e-12 of torch's. float32: the error-ratio
rule (``tests/helpers.py``) with torch's ring in float64 as the golden and torch's ring in
float32 as the eager baseline. The API is private: when it is missing, or refuses CPU, the tests
skip and say why. Test only: qkv's runtime code never imports it.
"""

from __future__ import annotations

import datetime
import importlib
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import qkv

from helpers import GRAD_FACTOR, OUT_FACTOR, assert_error_ratio

B, H, T, D = 2, 2, 24, 8
WORLD = 2
TIMEOUT = datetime.timedelta(seconds=20)
TORCH_RING = "torch.distributed.tensor.experimental._context_parallel._attention"
#: name -> (layout, causal): torch's load balancing (the zig-zag layout) requires causal.
CASES = {"causal_zigzag": ("zigzag", True), "dense_contiguous": ("contiguous", False)}
DTYPES = (torch.float64, torch.float32)


def _torch_ring():
    """Torch's private ring module, or the reason it cannot be used."""
    try:
        module = importlib.import_module(TORCH_RING)
        for name in ("_templated_ring_attention", "_templated_ring_attention_backward", "_cp_options"):
            getattr(module, name)
    except (ImportError, AttributeError) as e:
        return None, f"torch {torch.__version__} has no private ring attention to compare with: {e}"
    if not hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        return None, f"torch {torch.__version__} has no CPU flash-attention backward for its ring"
    return module, None


def _inputs(name: str) -> tuple[torch.Tensor, ...]:
    """query, key, value and the output's gradient, float64, the same on every rank."""
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    return tuple(torch.randn(B, H, T, D, generator=g, dtype=torch.float64) for _ in range(4))


def _torch_case(ring, q, k, v, d_out, causal: bool) -> dict:
    """Torch's ring on this rank's shards: out, lse, dq, dk, dv (merged in the input dtype)."""
    aten = torch.ops.aten
    ring._cp_options.enable_load_balance = causal  # its zig-zag schedule, causal only
    ring._cp_options.convert_to_f32 = q.dtype != torch.float64  # keep float64 float64
    group = dist.group.WORLD
    out, lse, *_ = ring._templated_ring_attention(
        group, 2, aten._scaled_dot_product_flash_attention_for_cpu, q, k, v, is_causal=causal, dropout_p=0.0
    )
    grads = ring._templated_ring_attention_backward(
        group, 2, aten._scaled_dot_product_flash_attention_for_cpu_backward, d_out, "grad_out",
        q, k, v, out, lse, causal, dropout_p=0.0,
    )  # fmt: skip
    return {"out": out, "lse": lse, "grads": list(grads[:3])}


def _qkv_case(q, k, v, d_out, layout: str, causal: bool) -> dict:
    import qkv.distributed as qd

    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    r = qd.ring_attention(q, k, v, layout=layout, mask=qkv.masks.causal() if causal else None)
    r.out.backward(d_out)
    return {"out": r.out.detach(), "lse": r.lse, "grads": [q.grad, k.grad, v.grad]}


def _worker(rank: int, rendezvous: str, out_dir: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=WORLD, timeout=TIMEOUT)
    import qkv.distributed as qd

    ring, _ = _torch_ring()
    saved = {}
    for name, (layout, causal) in CASES.items():
        for dtype in DTYPES:
            shards = [qd.shard_sequence(t.to(dtype), layout=layout) for t in _inputs(name)]
            try:
                theirs = _torch_case(ring, *shards, causal)
            except (RuntimeError, NotImplementedError) as e:  # e.g. a kernel that refuses CPU
                saved = {"skip": f"torch's ring refuses this case on CPU ({name}, {dtype}): {e}"}
                break
            saved[name, dtype] = {"torch": theirs, "qkv": _qkv_case(*shards, layout, causal)}
        if "skip" in saved:
            break
    torch.save(saved, os.path.join(out_dir, f"r{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """``{(case, dtype): {"torch": ..., "qkv": ...}}`` of every rank, or a skip."""
    _, reason = _torch_ring()
    if reason is not None:
        pytest.skip(reason)
    d = tmp_path_factory.mktemp("ring_oracle")
    mp.spawn(_worker, args=(f"file://{d / 'rendezvous'}", str(d)), nprocs=WORLD, join=True)
    per_rank = [torch.load(d / f"r{r}.pt", weights_only=False) for r in range(WORLD)]
    if "skip" in per_rank[0]:
        pytest.skip(per_rank[0]["skip"])
    return per_rank


def _pairs(result: dict):
    """``(what, qkv's, torch's)`` for the out, the lse and the three gradients."""
    yield "out", result["qkv"]["out"], result["torch"]["out"]
    yield "lse", result["qkv"]["lse"], result["torch"]["lse"]
    yield from zip(("dq", "dk", "dv"), result["qkv"]["grads"], result["torch"]["grads"])


@pytest.mark.parametrize("name", CASES)
def test_float64_equals_torchs_ring(shards, name):
    for rank, per_rank in enumerate(shards):
        for what, mine, theirs in _pairs(per_rank[name, torch.float64]):
            assert mine.dtype == theirs.dtype == torch.float64, what
            err = float((mine - theirs).abs().max())
            assert err <= 1e-12, f"rank {rank} {what}: {err:.3g} from torch's ring"


@pytest.mark.parametrize("name", CASES)
def test_float32_error_ratio_against_torchs_ring(shards, name, request):
    """qkv's float32 ring is no further from torch's float64 ring than torch's float32 ring is."""
    for rank, per_rank in enumerate(shards):
        golden = {what: theirs for what, _, theirs in _pairs(per_rank[name, torch.float64])}
        for what, mine, eager in _pairs(per_rank[name, torch.float32]):
            factor = GRAD_FACTOR if what.startswith("d") else OUT_FACTOR
            assert_error_ratio(request, mine, golden[what], eager, factor=factor, what=f"rank {rank} {what}")
