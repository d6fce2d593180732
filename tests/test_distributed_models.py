"""BERT and the Transformer translator on a sequence sharded across ranks
(``qkv.distributed.context_parallel``) against the single-process model.

One ``torch.multiprocessing.spawn`` of 3 processes (a file rendezvous in the test's own
directory, gloo, one thread each) runs every case on groups of 2 and 3 ranks: each rank feeds
its shards of the inputs (ids, padding, targets) to the same model and saves its rows of the
output, the gradient of its input embeddings and its parameter gradients. The tests here hold
each rank's rows to the single-process model's rows at that rank's global positions, and the
parameter gradients summed over the ranks to the single-process gradients: float64 within
1e-12, float32 by the error-ratio rule (``tests/helpers.py``). Absolute positions (BERT's and
the Transformer's learned ones, sinusoidal), rotary angles, padding masks, causal
self-attention and cross-attention to a sharded memory are all in play, in both layouts.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import io
import os
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from qkv.models import BertConfig, BertModel
from qkv.models.transformer import Transformer, TransformerConfig

from helpers import GRAD_FACTOR, assert_error_ratio

B, S, T, V = 2, 12, 24, 19  # S and T divisible by 2 x world for world 2 and 3 (zig-zag)
WORLDS = (2, 3)
TIMEOUT = datetime.timedelta(seconds=30)
EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "sharded_models.py"

#: name -> (model, dtype, layout, positional). The Transformer's source (S) and target (T)
#: differ in length, so cross-attention runs the ring with Tq != Tk.
CASES = {
    "bert64": ("bert", torch.float64, "contiguous", None),
    "bert32": ("bert", torch.float32, "contiguous", None),
    "bert_zigzag64": ("bert", torch.float64, "zigzag", None),
    "transformer_zigzag64": ("transformer", torch.float64, "zigzag", "sinusoidal"),
    "transformer_zigzag32": ("transformer", torch.float32, "zigzag", "sinusoidal"),
    "rope_zigzag64": ("transformer", torch.float64, "zigzag", "rope"),
    "learned_contiguous64": ("transformer", torch.float64, "contiguous", "learned"),
}


def _bert(dtype) -> BertModel:
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=V, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
        max_position=T, hidden_dropout=0.0, attention_dropout=0.0,
    )  # fmt: skip
    return BertModel(cfg).to(dtype).eval()


def _transformer(dtype, positional: str) -> Transformer:
    torch.manual_seed(0)
    cfg = TransformerConfig(
        src_vocab=V, tgt_vocab=V, d_model=16, num_heads=2, ff_dim=32, dropout=0.0, max_len=T,
        positional=positional,
    )  # fmt: skip
    return Transformer(cfg).to(dtype).eval()


def _inputs(name: str) -> dict:
    """The whole batch of a case, every rank alike (padding: sample 1 is shorter)."""
    g = torch.Generator().manual_seed(7)
    if CASES[name][0] == "bert":
        ids = torch.randint(4, V, (B, T), generator=g)
        mask = torch.ones(B, T, dtype=torch.long)
        mask[1, T - 9 :] = 0  # sample 1: its last 9 tokens are padding
        types = (torch.arange(T) >= T // 2).long().expand(B, T).contiguous()
        return {"ids": ids, "mask": mask, "types": types}
    src = torch.randint(4, V, (B, S), generator=g)
    lengths = torch.tensor([S, S - 5])  # sample 1: its last 5 source tokens are padding
    src[1, S - 5 :] = 0
    return {"src": src, "lengths": lengths, "tgt": torch.randint(4, V, (B, T), generator=g)}


def _run(name: str, dtype, shard) -> dict:
    """The model of case ``name`` in ``dtype`` on ``shard(inputs)`` (identity for one process):
    its rows, ``[CLS]``'s pooler output (BERT, on the rank holding position 0) and the gradients
    of ``sum(rows * dy) + sum(pooled * dp)``, ``dy`` sharded like the rows."""
    kind, _, _, positional = CASES[name]
    inputs, g = _inputs(name), torch.Generator().manual_seed(11)
    pooled = d_words = None
    if kind == "bert":
        model = _bert(dtype)
        words = model.embeddings.word(shard(inputs["ids"])).detach().requires_grad_()
        out = model(
            inputs_embeds=words, attention_mask=shard(inputs["mask"]), token_type_ids=shard(inputs["types"])
        )
        rows, pooled = out.last_hidden_state, out.pooler_output  # (B, n, E), (B, E) or None
    else:
        model = _transformer(dtype, positional)
        memory = model.encode(shard(inputs["src"]), inputs["lengths"])
        rows = model.decode(shard(inputs["tgt"]), memory)  # (B, n, V)
    dy = torch.randn(B, T, rows.shape[-1], generator=g, dtype=dtype)
    dp = torch.randn(B, rows.shape[-1], generator=g, dtype=dtype)
    loss = (rows * shard(dy)).sum() + (0 if pooled is None else (pooled * dp).sum())
    loss.backward()
    if kind == "bert":
        d_words = words.grad
    return {
        "rows": rows.detach(),
        "pooled": None if pooled is None else pooled.detach(),
        "d_words": d_words,
        "grads": {n: p.grad for n, p in model.named_parameters() if p.grad is not None},
    }


def _sharded_case(name: str, group) -> dict:
    import qkv.distributed as qd

    layout = CASES[name][2]

    def shard(x: torch.Tensor) -> torch.Tensor:
        return qd.shard_sequence(x, dim=1, group=group, layout=layout)

    with qd.context_parallel(group, layout=layout) as sp:
        result = _run(name, CASES[name][1], shard)
    return {**result, "recvs": (sp.stats.forward_recvs, sp.stats.backward_recvs)}


def _cross_inputs() -> tuple[torch.Tensor, ...]:
    """Queries of a T-long sequence over keys of an S-long one, the keys' padding ``(B, 1, 1, S)``
    in global coordinates, and the output gradient."""
    g = torch.Generator().manual_seed(5)
    q, d_out = (torch.randn(B, 2, T, 8, generator=g, dtype=torch.float64) for _ in range(2))
    k, v = (torch.randn(B, 2, S, 8, generator=g, dtype=torch.float64) for _ in range(2))
    keep = torch.ones(B, 1, 1, S, dtype=torch.bool)
    keep[1, ..., S - 5 :] = False
    return q, k, v, keep, d_out


def _cross_case(group) -> dict:
    """``qd.ring_attention`` with queries and keys of different lengths (zig-zag shards)."""
    import qkv.distributed as qd

    q, k, v, keep, d_out = _cross_inputs()
    mine = [qd.shard_sequence(t, group=group, layout="zigzag").requires_grad_() for t in (q, k, v)]
    r = qd.ring_attention(*mine, group=group, layout="zigzag", mask=keep, need_weights=True)
    r.out.backward(qd.shard_sequence(d_out, group=group, layout="zigzag"))
    detached = {key: getattr(r, key).detach() for key in ("out", "lse", "weights")}
    return {**detached, "grads": [t.grad for t in mine]}


def _docs_example() -> str:
    """What ``docs/examples/sharded_models.py``'s ``demo`` prints on the default group."""
    spec = importlib.util.spec_from_file_location("sharded_models_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        module.demo()
    return printed.getvalue()


def _errors(group) -> dict:
    """What the models refuse on a sharded sequence, as each rank sees it."""
    import qkv
    import qkv.distributed as qd

    errors = {}
    conv = Transformer(
        TransformerConfig(src_vocab=V, tgt_vocab=V, d_model=16, num_heads=2, mixer="lightconv")
    )
    alibi = Transformer(
        TransformerConfig(src_vocab=V, tgt_vocab=V, d_model=16, num_heads=2, positional="alibi")
    )
    ids = torch.randint(4, V, (B, 4))
    mha, x = qkv.MultiHeadAttention(16, 2), torch.randn(B, 4, 16)
    calls = {
        "mixer": lambda: conv.encode(ids, torch.tensor([8, 8])),
        "alibi": lambda: alibi.encode(ids, torch.tensor([8, 8])),
        "step": lambda: conv.step(ids[:, 0], conv.init_state({"states": torch.zeros(B, 1, 16)}), {}),
        "bert_mask": lambda: _bert(torch.float64)(ids, torch.ones(B, 8, dtype=torch.long)),
        "mha_mask": lambda: mha(x, mask=torch.ones(4, 4, dtype=torch.bool)),
        "mha_cache": lambda: mha(x, cache=qkv.modules.KVCache()),
    }
    with qd.context_parallel(group):
        for what, call in calls.items():
            try:
                call()
                errors[what] = None
            except ValueError as e:
                errors[what] = str(e)
    return errors


def _worker(rank: int, rendezvous: str, out_dir: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=rendezvous, rank=rank, world_size=max(WORLDS), timeout=TIMEOUT
    )
    for world in WORLDS:
        group = dist.new_group(list(range(world)))  # every rank calls new_group
        if rank >= world:
            continue
        saved = {name: _sharded_case(name, group) for name in CASES}
        saved["cross"] = _cross_case(group)
        if world == 2:
            saved["errors"] = _errors(group)
        torch.save(saved, os.path.join(out_dir, f"w{world}_r{rank}.pt"))
    printed = _docs_example()  # on the default group: every rank
    if rank == 0:
        Path(out_dir, "example.txt").write_text(printed)
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def sharded():
    """Every case on every world size: ``{world: [per-rank results]}``."""
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_worker, args=(f"file://{d}/rendezvous", d), nprocs=max(WORLDS), join=True)
        results = {w: [torch.load(f"{d}/w{w}_r{r}.pt", weights_only=False) for r in range(w)] for w in WORLDS}
        return {**results, "example": Path(d, "example.txt").read_text()}


def _positions(world: int, layout: str, rank: int) -> torch.Tensor:
    import qkv.distributed as qd

    return qd.sequence_positions(T, rank=rank, world=world, layout=layout)


def _maxabs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("name", [n for n in CASES if n.endswith("64")])
def test_float64_equals_the_single_process_model(sharded, world, name):
    """Each rank's rows (and input gradients) are the model's rows at its global positions;
    the parameter gradients summed over the ranks are the model's (what an all-reduce gives)."""
    layout, full = CASES[name][2], _run(name, torch.float64, lambda x: x)
    for rank, r in enumerate(sharded[world]):
        pos = _positions(world, layout, rank)
        assert _maxabs(r[name]["rows"], full["rows"][:, pos]) <= 1e-12
        if full["d_words"] is not None:
            assert _maxabs(r[name]["d_words"], full["d_words"][:, pos]) <= 1e-12
        if full["pooled"] is not None:  # [CLS] lives on rank 0 in both layouts
            assert (r[name]["pooled"] is not None) == (rank == 0)
            if rank == 0:
                assert _maxabs(r[name]["pooled"], full["pooled"]) <= 1e-12
    assert set(sharded[world][0][name]["grads"]) == set(full["grads"])
    for p, want in full["grads"].items():
        summed = sum(r[name]["grads"][p] for r in sharded[world] if p in r[name]["grads"])
        assert _maxabs(summed, want) <= 1e-12, p


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("name", [n for n in CASES if n.endswith("32")])
def test_float32_error_ratio(sharded, world, name, request):
    """float32 on shards is as close to the float64 model as the float32 model is."""
    layout = CASES[name][2]
    golden, eager = _run(name, torch.float64, lambda x: x), _run(name, torch.float32, lambda x: x)
    order = torch.argsort(torch.cat([_positions(world, layout, r) for r in range(world)]))
    rows = torch.cat([r[name]["rows"] for r in sharded[world]], 1)[:, order]
    assert_error_ratio(request, rows, golden["rows"], eager["rows"], what=f"rows, world {world}")
    for p in golden["grads"]:
        summed = sum(r[name]["grads"][p] for r in sharded[world] if p in r[name]["grads"])
        assert_error_ratio(
            request, summed, golden["grads"][p], eager["grads"][p], factor=GRAD_FACTOR, what=f"d {p}"
        )


@pytest.mark.parametrize("world", WORLDS)
def test_every_attention_ran_the_ring(sharded, world):
    """Each attention receives the K/V blocks it needs: w - 1 forward and 2 (w - 1) backward
    (K/V again, partials home) when every rank needs every other's (dense, padding, causal
    zig-zag, cross-attention); causal contiguous: rank r receives r blocks forward, r K/V plus
    w - 1 - r partials backward."""
    for name, (kind, _, layout, _) in CASES.items():
        dense, causal = (2, 0) if kind == "bert" else (2 + 2, 2)  # decoder: cross dense, self causal
        if layout == "zigzag":  # causal zig-zag: every rank needs every other's block
            dense, causal = dense + causal, 0
        for rank, r in enumerate(sharded[world]):
            forward = dense * (world - 1) + causal * rank
            backward = 2 * dense * (world - 1) + causal * (world - 1)
            assert r[name]["recvs"] == (forward, backward), (name, rank)


def test_what_does_not_shard_is_refused_on_every_rank(sharded):
    for r in sharded[2]:
        errors = r["errors"]
        assert "mixer: 'lightconv'" in errors["mixer"]
        assert "positional: 'alibi'" in errors["alibi"]
        assert "step: " in errors["step"]
        assert "attention_mask: inside context_parallel" in errors["bert_mask"]
        assert "(2, 4)" in errors["bert_mask"]
        assert "mask: inside qkv.distributed.context_parallel pass a qkv.masks pattern" in errors["mha_mask"]
        assert "cache: incremental decoding does not shard" in errors["mha_cache"]


@pytest.mark.parametrize("world", WORLDS)
def test_cross_attention_rings_over_the_memory(sharded, world):
    """Queries (T) and keys (S != T) sharded alike, padding in global coordinates: each rank's
    rows, log-sum-exp and weights ``(B, H, n, S)`` and the gradients equal the reference."""
    import qkv
    import qkv.distributed as qd

    q, k, v, keep, d_out = _cross_inputs()
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    ref = qkv.attention(q, k, v, mask=keep, backend="reference", need_weights=True)
    lse, weights = ref.lse.detach(), ref.weights.detach()
    ref.out.backward(d_out)
    for rank, r in enumerate(sharded[world]):
        qpos, kpos = (qd.sequence_positions(n, rank=rank, world=world, layout="zigzag") for n in (T, S))
        got = r["cross"]
        assert _maxabs(got["out"], ref.out.detach()[:, :, qpos]) <= 1e-12
        assert _maxabs(got["lse"], lse[:, :, qpos]) <= 1e-12
        assert _maxabs(got["weights"], weights[:, :, qpos]) <= 1e-12
        assert _maxabs(got["grads"][0], q.grad[:, :, qpos]) <= 1e-12
        for i, full in ((1, k.grad), (2, v.grad)):
            assert _maxabs(got["grads"][i], full[:, :, kpos]) <= 1e-12


def test_the_documented_example_runs_on_three_ranks(sharded):
    """docs/guides/distributed.md shows this line for 2 ranks; on 3 it reads the same way."""
    assert sharded["example"] == "world 3: translator equal to one process: True; BERT: True\n"
    page = (EXAMPLE.parents[1] / "guides" / "distributed.md").read_text()
    assert "world 2: translator equal to one process: True; BERT: True" in page
