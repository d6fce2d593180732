"""Ring attention (``backend="ring"``, :mod:`qkv.distributed`) against the single-process
reference backend, on CPU with gloo.

One ``torch.multiprocessing.spawn`` of 4 processes (a file rendezvous in the test's own
directory: parallel test runs never share a port) runs every case on groups of 1, 2, 3 and 4
ranks and saves each rank's shards of the output, log-sum-exp and gradients and its message
counts; the tests here reassemble them and hold them to the reference: float64 within 1e-12,
float32 by the error-ratio rule (``tests/helpers.py``), forward and backward. A second spawn
kills a rank and checks the other fails fast with a clear error.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import io
import math
import os
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import qkv

from helpers import GRAD_FACTOR, assert_error_ratio

T, B, H, D = 24, 2, 2, 8  # T divisible by 2 x world for world 1..4 (zigzag)
TK, DV = 2 * T, 6  # cross-attention: keys of another length and values of another width
WORLDS = (1, 2, 3, 4)
TIMEOUT = datetime.timedelta(seconds=20)
EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "ring_attention.py"


def _padding() -> torch.Tensor:
    keep = torch.ones(B, 1, 1, T, dtype=torch.bool)
    keep[1, ..., T - 7 :] = False  # sample 1: its last 7 keys are padding
    return keep


def _alibi() -> torch.Tensor:
    pos = torch.arange(T, dtype=torch.float64)
    return (-(pos[:, None] - pos[None, :]).abs() * torch.tensor([0.5, 0.25]).view(H, 1, 1)).unsqueeze(0)


#: name -> (dtype, layout, ring_attention keywords). Masks and biases in global coordinates.
CASES = {
    "dense64": (torch.float64, "contiguous", {}),
    "dense32": (torch.float32, "contiguous", {}),
    "causal_zigzag64": (torch.float64, "zigzag", {"mask": "causal"}),
    "causal_zigzag32": (torch.float32, "zigzag", {"mask": "causal"}),
    "causal_zigzag_bf16": (torch.bfloat16, "zigzag", {"mask": "causal"}),
    "causal_contiguous64": (torch.float64, "contiguous", {"mask": "causal"}),
    "window64": (torch.float64, "contiguous", {"mask": "window"}),
    "padding64": (torch.float64, "zigzag", {"mask": "padding"}),
    "bias64": (torch.float64, "contiguous", {"bias": "alibi", "mask": "causal"}),
    "dot64": (torch.float64, "zigzag", {"score": "dot", "scale": 0.3}),
    "gaussian64": (torch.float64, "contiguous", {"score": "gaussian", "score_kwargs": {"sigma": 2.0}}),
    "gaussian32": (torch.float32, "zigzag", {"score": "gaussian", "score_kwargs": {"sigma": 2.0}}),
    "cosine64": (torch.float64, "contiguous", {"score": "cosine", "mask": "causal"}),
    "additive64": (torch.float64, "zigzag", {"score": "additive", "mask": "causal", "params": "additive"}),
    "general64": (torch.float64, "contiguous", {"score": "general", "params": "general"}),
}


def _score_kwargs(which: str, dtype) -> dict:
    """The same score parameters on every rank (seeded)."""
    g = torch.Generator().manual_seed(5)
    if which == "general":
        return {"weight": torch.randn(D, D, generator=g, dtype=torch.float64).to(dtype)}
    shapes = {"w_query": (6, D), "w_key": (6, D), "v": (6,)}
    return {n: torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype) for n, shape in shapes.items()}


def _keywords(spec: dict, dtype) -> dict:
    """The keywords of a case, its named masks and biases built."""
    kw = dict(spec)
    made = {"causal": qkv.masks.causal(), "window": qkv.masks.sliding_window(2), "padding": _padding()}
    if "mask" in kw:
        kw["mask"] = made[kw["mask"]]
    if "bias" in kw:
        kw["bias"] = _alibi().to(dtype)
    if "params" in kw:
        kw["score_kwargs"] = _score_kwargs(kw.pop("params"), dtype)
    return kw


def _inputs(name: str, dtype) -> tuple[torch.Tensor, ...]:
    """query, key, value and the output's gradient, full sequence, the same on every rank."""
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    return tuple(torch.randn(B, H, T, D, generator=g, dtype=torch.float64).to(dtype) for _ in range(4))


# ----------------------------------------------------------------------------- the workers


def _battery_case(name: str, group, world: int) -> dict:
    """One case on this rank: ring_attention forward (counted) and backward (counted)."""
    import qkv.distributed as qd

    dtype, layout, spec = CASES[name]
    shards = [qd.shard_sequence(t, group=group, layout=layout) for t in _inputs(name, dtype)]
    q, k, v = (t.requires_grad_() for t in shards[:3])
    with qd.context_parallel(group, layout=layout) as sp:
        kw = _keywords(spec, dtype)
        if isinstance(kw.get("mask"), torch.Tensor) or "bias" in kw:  # global tensors
            r = qd.ring_attention(q, k, v, group=group, layout=layout, need_weights=True, **kw)
        else:  # through qkv.attention: auto runs the ring inside the context
            r = qkv.attention(q, k, v, need_weights=True, **kw)
        fwd = (sp.stats.forward_recvs, sp.stats.forward_bytes, sorted(sp.stats.peers))
        r.out.backward(shards[3])
    return {
        "out": r.out.detach(), "lse": r.lse.detach(), "weights": r.weights.detach(), "backend": r.backend,
        "grads": [t.grad for t in (q, k, v)], "forward": fwd,
        "backward": (sp.stats.backward_recvs, sp.stats.backward_bytes),
    }  # fmt: skip


def _cross_inputs() -> tuple[torch.Tensor, ...]:
    """Queries ``(B, H, T, D)`` over keys and values of a ``TK``-long sequence, a mask
    ``(B, 1, T, TK)`` in global coordinates (random holes, sample 1's last 5 keys padding) and
    the output's gradient, float64, the same on every rank."""
    g = torch.Generator().manual_seed(11)
    q = torch.randn(B, H, T, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, H, TK, D, generator=g, dtype=torch.float64)
    v, d_out = (torch.randn(B, H, n, DV, generator=g, dtype=torch.float64) for n in (TK, T))
    keep = torch.rand(B, 1, T, TK, generator=g) > 0.3
    keep[1, ..., TK - 5 :] = False
    return q, k, v, keep, d_out


def _cross_case(group) -> dict:
    """Cross-attention (Tq != Tk) through the ring, zig-zag shards: the key blocks stream in
    pieces of the battery's ``kv_block`` keys."""
    import qkv.distributed as qd

    q, k, v, keep, d_out = _cross_inputs()
    mine = [qd.shard_sequence(t, group=group, layout="zigzag").requires_grad_() for t in (q, k, v)]
    with qd.context_parallel(group, layout="zigzag") as sp:
        r = qd.ring_attention(*mine, group=group, layout="zigzag", mask=keep, need_weights=True)
        r.out.backward(qd.shard_sequence(d_out, group=group, layout="zigzag"))
    stats = (sp.stats.forward_recvs, sp.stats.forward_bytes, sp.stats.backward_recvs, sp.stats.backward_bytes)
    return {**{key: getattr(r, key).detach() for key in ("out", "lse", "weights")},
            "grads": [t.grad for t in mine], "stats": stats}  # fmt: skip


def _mha(seed: int = 3) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A float64 qkv.MultiHeadAttention and its full input and output gradient (every rank alike)."""
    torch.manual_seed(seed)
    module = qkv.MultiHeadAttention(4 * H, H).double()
    g = torch.Generator().manual_seed(seed)
    x, dy = (torch.randn(B, T, 4 * H, generator=g, dtype=torch.float64) for _ in range(2))
    return module, x, dy


def _module_case(group) -> dict:
    """qkv.MultiHeadAttention on this rank's shard of the sequence, inside context_parallel."""
    import qkv.distributed as qd

    module, x, dy = _mha()
    xs = qd.shard_sequence(x, dim=1, group=group, layout="zigzag").requires_grad_()
    with qd.context_parallel(group, layout="zigzag"):
        out = module(xs, mask=qkv.masks.causal()).out
    out.backward(qd.shard_sequence(dy, dim=1, group=group, layout="zigzag"))
    return {"out": out.detach(), "dx": xs.grad, "dw": {n: p.grad for n, p in module.named_parameters()}}


def _bad_inputs(group, rank: int) -> dict:
    """Errors of a 2-rank group: unequal shards, dtypes that differ, a non-softmax normalizer."""
    import qkv.distributed as qd

    errors = {}
    q = torch.randn(1, 1, 6 if rank == 0 else 4, 4, dtype=torch.float64)
    for what, call in {
        "unequal": lambda: qd.ring_attention(q, q, q, group=group),
        "dtype": lambda: qd.ring_attention(
            *(q[..., :4, :].to([torch.float64, torch.float32][rank]),) * 3, group=group
        ),
        "normalize": lambda: _attention_in_context(qd, group, q[..., :4, :], normalize="sparsemax"),
        "local_mask": lambda: _attention_in_context(
            qd, group, q[..., :4, :], mask=torch.ones(4, 4, dtype=torch.bool)
        ),
    }.items():
        try:
            call()
            errors[what] = None
        except (ValueError, TypeError) as e:
            errors[what] = f"{type(e).__name__}: {e}"
    return errors


def _attention_in_context(qd, group, q, **kw):
    with qd.context_parallel(group):
        return qkv.attention(q, q, q, **kw)


def _docs_example():
    """``docs/examples/ring_attention.py`` as a module (its ``demo`` runs on the default group)."""
    spec = importlib.util.spec_from_file_location("ring_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _init(rank: int, world: int, rendezvous: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=world, timeout=TIMEOUT)


def _battery(rank: int, rendezvous: str, out_dir: str) -> None:
    _init(rank, max(WORLDS), rendezvous)
    ring = qkv.backends.BACKENDS["ring"]
    ring.q_block, ring.kv_block = 5, 4  # tiles that divide nothing: edges and skipped tiles tested
    for world in WORLDS:
        group = dist.new_group(list(range(world)))  # every rank calls new_group
        if rank >= world:
            continue
        saved = {name: _battery_case(name, group, world) for name in CASES}
        saved["module"] = _module_case(group)
        saved["cross"] = _cross_case(group)
        if world == 2:
            saved["errors"] = _bad_inputs(group, rank)
        torch.save(saved, os.path.join(out_dir, f"w{world}_r{rank}.pt"))
    with contextlib.redirect_stdout(io.StringIO()) as printed:  # the documentation's example
        _docs_example().demo()
    if rank == 0:
        Path(out_dir, "example.txt").write_text(printed.getvalue())
    dist.barrier()
    dist.destroy_process_group()


def _dying(rank: int, rendezvous: str, out_dir: str) -> None:
    """Rank 1 dies after one call; rank 0's next call must fail with a clear error, fast."""
    _init(rank, 2, rendezvous)
    import qkv.distributed as qd

    q = torch.randn(1, 1, 4, 4)
    qd.ring_attention(q, q, q)
    if rank == 1:
        os._exit(0)
    start = time.monotonic()
    try:
        qd.ring_attention(q, q, q)
        result = "no error"
    except Exception as e:  # what the caller sees
        result = f"{type(e).__name__}: {e}"
    torch.save({"error": result, "seconds": time.monotonic() - start}, os.path.join(out_dir, "dying.pt"))
    os._exit(0)  # no collective shutdown with a dead peer


# ----------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def battery(tmp_path_factory):
    """Every case on every world size: ``{world: [per-rank results]}``."""
    d = tmp_path_factory.mktemp("ring")
    mp.spawn(_battery, args=(f"file://{d / 'rendezvous'}", str(d)), nprocs=max(WORLDS), join=True)
    results = {w: [torch.load(d / f"w{w}_r{r}.pt", weights_only=False) for r in range(w)] for w in WORLDS}
    return {**results, "example": (d / "example.txt").read_text()}


def _assemble(per_rank: list, world: int, layout: str, get) -> torch.Tensor:
    """The full sequence (dim -2, or the last dim of an lse) from every rank's shard."""
    import qkv.distributed as qd

    parts = [get(r) for r in per_rank]
    lse = parts[0].dim() == 3
    shape = (*parts[0].shape[:-1], T) if lse else (*parts[0].shape[:-2], T, parts[0].shape[-1])
    full = torch.empty(shape, dtype=parts[0].dtype)
    for rank, part in enumerate(parts):
        full.index_copy_(2, qd.sequence_positions(T, rank=rank, world=world, layout=layout), part)
    return full


def _reference(name: str, dtype) -> dict:
    """out, lse, weights and the q, k, v gradients of the reference backend, in ``dtype``."""
    _, _, spec = CASES[name]
    q, k, v, d_out = (t.to(dtype) for t in _inputs(name, CASES[name][0]))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    r = qkv.attention(q, k, v, backend="reference", need_weights=True, **_keywords(spec, dtype))
    r.out.backward(d_out)
    return {
        "out": r.out.detach(),
        "lse": r.lse.detach(),
        "weights": r.weights.detach(),
        "grads": [q.grad, k.grad, v.grad],
    }


def _ring(per_rank: list, world: int, name: str) -> dict:
    layout = CASES[name][1]
    full = {
        key: _assemble(per_rank, world, layout, lambda r, key=key: r[name][key])
        for key in ("out", "lse", "weights")
    }
    full["grads"] = [_assemble(per_rank, world, layout, lambda r, i=i: r[name]["grads"][i]) for i in range(3)]
    return full


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("name", [n for n in CASES if n.endswith("64")])
def test_float64_equals_the_reference(battery, world, name):
    ring, ref = _ring(battery[world], world, name), _reference(name, torch.float64)
    assert all(r[name]["backend"] == "ring" for r in battery[world])
    for key in ("out", "lse", "weights"):
        finite = torch.isfinite(ref[key])
        assert torch.equal(finite, torch.isfinite(ring[key])), key
        assert float((ring[key] - ref[key])[finite].abs().max()) <= 1e-12, key
    for got, want in zip(ring["grads"], ref["grads"]):
        assert float((got - want).abs().max()) <= 1e-12


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("name", [n for n in CASES if n.endswith("32")])
def test_float32_error_ratio(battery, world, name, request):
    ring = _ring(battery[world], world, name)
    golden, eager = _reference(name, torch.float64), _reference(name, torch.float32)
    assert_error_ratio(request, ring["out"], golden["out"], eager["out"], what=f"out, world {world}")
    for i, what in enumerate("qkv"):
        assert_error_ratio(
            request,
            ring["grads"][i],
            golden["grads"][i],
            eager["grads"][i],
            factor=GRAD_FACTOR,
            what=f"d{what}",
        )


@pytest.mark.parametrize("world", WORLDS)
def test_bfloat16_error_ratio(battery, world, request):
    """Half inputs: running statistics, accumulators and partials in float32 (their partials
    are not written over the received bfloat16 block); the float32 reference as the golden."""
    name = "causal_zigzag_bf16"
    ring = _ring(battery[world], world, name)
    golden, eager = _reference(name, torch.float32), _reference(name, torch.bfloat16)
    assert ring["out"].dtype == torch.bfloat16
    assert_error_ratio(request, ring["out"], golden["out"], eager["out"], what=f"out, world {world}")
    for i, what in enumerate("qkv"):
        assert_error_ratio(
            request,
            ring["grads"][i],
            golden["grads"][i],
            eager["grads"][i],
            factor=GRAD_FACTOR,
            what=f"d{what}",
        )


@pytest.mark.parametrize("world", [2, 4, 8])
def test_the_memory_plan_per_rank_falls_with_the_world(world):
    """The ring's plan per rank at T = 8192 (the benchmark's problem, causal, with grad) against
    the chunked backend's in one process: its outputs are 1/world of chunked's, and beyond them
    it holds a few pieces of blocks and a tile, both sized to the shard (never a whole received
    block): within 1/world + 10% of chunked's."""
    from qkv.api.prepare import prepare
    from qkv.backends import sequence_parallel

    t, limit = 8192, {2: 0.44, 4: 0.23, 8: 0.12}[world]
    full = torch.empty(1, 4, t, 64, requires_grad=True)
    chunked = qkv.backends.BACKENDS["chunked"].memory_bytes(
        prepare(full, full, full, mask=qkv.masks.causal())[0]
    )
    shard = torch.empty(1, 4, t // world, 64, requires_grad=True)
    inputs, _ = prepare(shard, shard, shard, mask=qkv.masks.causal())
    with sequence_parallel.activate(sequence_parallel.SequenceParallel(None, "zigzag", 0, world)):
        ring = qkv.backends.ring.RingBackend().memory_bytes(inputs)
    assert ring <= limit * chunked <= (1 / world + 0.1) * chunked
    assert ring >= 4 * shard.numel() * 4  # out, dq, dk, dv: never less than the outputs


def _blocks_needed(world: int, rank: int, name: str) -> set[int]:
    """The ranks whose keys rank ``rank``'s queries may attend (from the dense reference mask)."""
    import qkv.distributed as qd

    dtype, layout, spec = CASES[name]
    mask = _keywords(spec, dtype).get("mask")
    dense = (
        torch.ones(T, T, dtype=torch.bool)
        if mask is None
        else qkv.masks.materialize(mask, T, T).reshape(-1, T, T).any(0)
    )
    mine = qd.sequence_positions(T, rank=rank, world=world, layout=layout)
    return {
        s for s in range(world)
        if s != rank and bool(dense[mine][:, qd.sequence_positions(T, rank=s, world=world, layout=layout)].any())
    }  # fmt: skip


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("name", ["dense64", "causal_zigzag64", "causal_contiguous64", "window64"])
def test_communication_is_counted(battery, world, name):
    block = B * H * (T // world) * 2 * D * 8  # one rank's K and V, float64
    for rank, r in enumerate(battery[world]):
        recvs, nbytes, peers = r[name]["forward"]
        needed = _blocks_needed(world, rank, name)
        assert set(peers) == needed and recvs == len(needed) and nbytes == recvs * block
        senders = {s for s in range(world) if s != rank and rank in _blocks_needed(world, s, name)}
        assert r[name]["backward"] == (len(needed) + len(senders), (len(needed) + len(senders)) * block)
        if name == "dense64" or name == "causal_zigzag64":
            assert recvs == world - 1 and r[name]["backward"][0] == 2 * (world - 1)
        if name == "window64":  # a sliding window talks only to the neighbours
            assert set(peers) <= {rank - 1, rank + 1}


def test_bad_input_gives_clear_errors_on_every_rank(battery):
    for r in battery[2]:
        errors = r["errors"]
        assert "same shard length" in errors["unequal"] and "rank 0: 6, rank 1: 4" in errors["unequal"]
        assert "same dtype" in errors["dtype"] and "torch.float32" in errors["dtype"]
        assert "backend 'ring' cannot run" in errors["normalize"] and "sparsemax" in errors["normalize"]
        assert "auto means ring" in errors["normalize"]
        assert "global coordinates" in errors["local_mask"]


def test_ring_outside_a_context_is_refused():
    q = torch.randn(1, 1, 4, 4)
    with pytest.raises(qkv.backends.BackendNotSupportedError, match="no sequence-parallel context"):
        qkv.attention(q, q, q, backend="ring")
    assert qkv.attention(q, q, q).backend != "ring"


def test_a_dead_rank_fails_the_others_fast(tmp_path):
    mp.spawn(_dying, args=(f"file://{tmp_path / 'rendezvous'}", str(tmp_path)), nprocs=2, join=True)
    seen = torch.load(tmp_path / "dying.pt", weights_only=False)
    assert seen["error"].startswith("RingCommunicationError: ring attention, rank 0")
    assert seen["seconds"] < TIMEOUT.total_seconds() + 5


def test_world_sizes_are_flat(battery):
    """The float64 error does not grow with the world size (the merge is exact)."""
    errors = [
        float(
            (_ring(battery[w], w, "dense64")["out"] - _reference("dense64", torch.float64)["out"]).abs().max()
        )
        for w in WORLDS
    ]
    assert max(errors) <= 1e-12 and math.isfinite(sum(errors))


def test_the_documented_example_runs_on_four_ranks(battery):
    """docs/guides/distributed.md shows this line for 2 ranks; on 4 it reads the same way."""
    assert battery["example"] == "world 4: equal to one process: True; rank 0 received 3 K/V block(s)\n"
    page = (EXAMPLE.parents[1] / "guides" / "distributed.md").read_text()
    assert "world 2: equal to one process: True; rank 0 received 1 K/V block(s)" in page


@pytest.mark.parametrize("world", WORLDS)
def test_multi_head_attention_runs_on_a_sharded_sequence(battery, world):
    """Each rank's rows and input gradients equal the single-process module's; its parameter
    gradients sum over the ranks to the module's (what an all-reduce of them gives)."""
    import qkv.distributed as qd

    module, x, dy = _mha()
    x.requires_grad_()
    full = module(x, mask=qkv.masks.causal()).out
    full.backward(dy)
    for rank, r in enumerate(battery[world]):
        pos = qd.sequence_positions(T, rank=rank, world=world, layout="zigzag")
        assert float((r["module"]["out"] - full.detach()[:, pos]).abs().max()) <= 1e-12
        assert float((r["module"]["dx"] - x.grad[:, pos]).abs().max()) <= 1e-12
    for name, p in module.named_parameters():
        summed = sum(r["module"]["dw"][name] for r in battery[world])
        assert float((summed - p.grad).abs().max()) <= 1e-12, name


@pytest.mark.parametrize("world", WORLDS)
def test_cross_attention_streams_the_keys_in_pieces(battery, world):
    """Queries (T) over keys of another length (TK = 2T, Dv != D), a mask in global
    coordinates, key blocks streamed in pieces of 4 keys: each rank's rows, log-sum-exp,
    weights ``(B, H, n, TK)`` and gradients equal the reference within 1e-12, and each other
    rank's block counts as one receive whose pieces carry it whole, once."""
    import qkv.distributed as qd

    q, k, v, keep, d_out = _cross_inputs()
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    ref = qkv.attention(q, k, v, mask=keep, backend="reference", need_weights=True)
    ref.out.backward(d_out)
    kv_bytes = B * H * (TK // world) * (D + DV) * 8  # one rank's K and V shards, float64
    for rank, r in enumerate(battery[world]):
        got = r["cross"]
        qpos, kpos = (qd.sequence_positions(n, rank=rank, world=world, layout="zigzag") for n in (T, TK))
        wants = [ref.out[:, :, qpos], ref.lse[:, :, qpos], ref.weights[:, :, qpos], q.grad[:, :, qpos]]
        gots = [got["out"], got["lse"], got["weights"], got["grads"][0], *got["grads"][1:]]
        for g, want in zip(gots, [*wants, k.grad[:, :, kpos], v.grad[:, :, kpos]]):
            finite = torch.isfinite(want)
            assert torch.equal(finite, torch.isfinite(g))
            assert float((g - want.detach())[finite].abs().max()) <= 1e-12
        others = world - 1
        assert got["stats"] == (others, others * kv_bytes, 2 * others, 2 * others * kv_bytes)
