"""Data-parallel training (qkv.parallel) on CPU with gloo, inside pytest: ``torch.multiprocessing
.spawn``, a ``file://`` rendezvous in each test's tmp_path (parallel workers never share a port),
one thread a process.

The equivalence: 2 ranks with ``batch_size`` b give, step for step, the weights of 1 process
with 2b (float64 within 1e-12; float32 within the error-ratio rule, against the float64 run);
the ranks stay bitwise identical; a run stopped by a signal that reached one rank only resumes
bitwise; another world size on resume is refused.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from qkv.application.run import fit_run
from qkv.parallel import Share, data_parallel, process_group, share_of
from qkv.train import TrainConfig, Trainer, load_checkpoint

from helpers import assert_error_ratio

WORLD = 2


def _rank_main(rank: int, init: str, fn, args) -> None:
    """A spawned rank: one thread, the gloo group of a file rendezvous, ``fn(rank, *args)``."""
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()


def _spawn(tmp_path: Path, fn, *args) -> None:
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_rank_main, args=(init, fn, args), nprocs=WORLD, join=True)


# ----------------------------------------------------------------------------- a task


class Lines:
    """Regression on fixed data; 41 rows, so the last batch of 2 x 4 holds one row (rank 1
    then has no share: a stand-in whose loss counts zero)."""

    count_unit = "example"

    def __init__(self, dtype: torch.dtype, batch_size: int, n: int = 41):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, generator=g, dtype=torch.float64).to(dtype)
        self.y = (self.x @ torch.tensor([1.0, -2.0, 0.5], dtype=dtype)).sin()
        self.batch_size, self.rank, self.world = batch_size, 0, 1
        self.batches_per_epoch = -(-n // batch_size)
        self.signal_at: int | None = None  # (a test) SIGTERM to this process at this batch

    def shard(self, rank: int, world: int) -> Lines:
        sharded = Lines(self.x.dtype, self.batch_size * world, len(self.x))
        sharded.rank, sharded.world, sharded.signal_at = rank, world, self.signal_at
        return sharded

    def batches(self, epoch, start):
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(epoch))
        for i in range(start, self.batches_per_epoch):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            if i == self.signal_at and epoch == 0:
                os.kill(os.getpid(), signal.SIGTERM)
            if self.world == 1:
                yield self.x[idx], self.y[idx]
            else:
                share = share_of(idx.tolist(), self.rank, self.world)
                yield share._replace(batch=(self.x[share.batch], self.y[share.batch]))

    def loss(self, model, batch):
        x, y = batch
        return F.mse_loss(model(x).squeeze(-1), y), len(y)

    @torch.no_grad()
    def validate(self, model):
        return {"valid_loss": float(F.mse_loss(model(self.x).squeeze(-1), self.y))}


def _model(dtype: torch.dtype, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 1))
    return model.to(dtype)


def _trainer(out: Path, dtype: torch.dtype, batch_size: int, epochs: int = 2, dropout: float = 0.0):
    model = _model(dtype, dropout)
    opt = torch.optim.AdamW(model.parameters(), lr=0.02)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=0.02, warmup=2, patience=0)
    task = Lines(dtype, batch_size)
    return Trainer(model, opt, task, config=config, out_dir=out, run_config={}, progress=False)


def _weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# ----------------------------------------------------------------------------- the sampler


def test_shares_are_disjoint_interleaved_and_cover_the_batch():
    rows = [7, 3, 9, 1, 4]
    shares = [share_of(rows, r, 3) for r in range(3)]
    assert shares == [Share([7, 1], True), Share([3, 4], True), Share([9], True)]
    assert share_of([5], 1, 2) == Share([5], False)  # no row: a stand-in that counts zero
    with pytest.raises(ValueError, match=r"rank: expected an int in \[0, 2\), got 2"):
        share_of(rows, 2, 2)


# ----------------------------------------------------------------------------- equivalence


def _equivalence_rank(rank: int, out: Path) -> dict:
    results = {}
    for dtype in (torch.float64, torch.float32):
        trainer = _trainer(out / str(dtype), dtype, batch_size=4)
        with process_group() as group:
            data_parallel(trainer, group)
            result = trainer.fit()
        results[str(dtype)] = (
            _weights(trainer.model),
            [h["train_loss"] for h in result.history],
            result.step,
        )
    return results


def _every_scenario(rank: int, out: Path) -> None:
    """The runs of every test, in one spawn (start-up is most of the time), saved per rank."""
    runs = {"lines": _equivalence_rank(rank, out / "lines"), "resume": _resume_rank(rank, out / "resume")}
    for app in ("translation", "vision", "clip"):
        cfg, train = _application(app, batch_size=8)
        runs[app] = train(cfg, out / app, progress=False)
    torch.save(runs, out / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("ranks")
    _spawn(out, _every_scenario, out)
    return out, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def test_two_ranks_of_b_equal_one_process_of_2b(ranks, tmp_path, request):
    ranks = [r["lines"] for r in ranks[1]]
    one = {}
    for dtype in (torch.float64, torch.float32):
        trainer = _trainer(tmp_path / f"one-{dtype}", dtype, batch_size=8)
        result = trainer.fit()
        one[dtype] = (_weights(trainer.model), [h["train_loss"] for h in result.history], result.step)
    for dtype in (torch.float64, torch.float32):
        w0, losses0, steps = ranks[0][str(dtype)]
        w1, losses1, _ = ranks[1][str(dtype)]
        assert torch.equal(w0, w1)  # the ranks stay identical
        assert steps == one[dtype][2] == 12  # 6 steps of 8 (the last of one row) x 2 epochs
        assert losses0 == losses1
        assert torch.allclose(torch.tensor(losses0), torch.tensor(one[dtype][1]), rtol=1e-5, atol=0)
    diff64 = float((ranks[0]["torch.float64"][0] - one[torch.float64][0]).abs().max())
    assert diff64 <= 1e-12, diff64
    request.node.user_properties.append(("weights_diff_float64", diff64))
    golden, eager, impl = one[torch.float64][0], one[torch.float32][0], ranks[0]["torch.float32"][0]
    assert_error_ratio(request, impl, golden, eager, what="weights after 12 steps")


# ----------------------------------------------------------------------------- stop and resume


@dataclass
class _Cfg:
    """What fit_run reads of a config: the [train] table."""

    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=2, batch_size=4, lr=0.02, warmup=2,
                                                                   patience=0))  # fmt: skip

    def to_dict(self):
        return {}


def _make(signal_at: int | None):
    def make(cfg, ckpt, *, out, progress, stream, announce):
        model = _model(torch.float32, dropout=0.2)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
        task = Lines(torch.float32, cfg.train.batch_size)
        task.signal_at = signal_at
        return Trainer(model, opt, task, config=cfg.train, out_dir=out, run_config={}, progress=progress,
                       stream=stream)  # fmt: skip

    return make


def _resume_rank(rank: int, out: Path) -> dict:
    full = fit_run(_Cfg(), out / "full", _make(None), config_type=None, progress=False)
    # SIGTERM reaches rank 1 alone during batch 3: both ranks stop after the same step
    half = fit_run(_Cfg(), out / "half", _make(3 if rank == 1 else None), config_type=None, progress=False)
    rest = fit_run(_Cfg(), out / "half", _make(None), config_type=None, progress=False, resume=True)
    return {"full": full, "half": half, "rest": rest}


def test_a_stop_on_one_rank_stops_all_and_resumes_exactly(ranks):
    tmp_path, ranks = ranks[0] / "resume", [r["resume"] for r in ranks[1]]
    for r in ranks:
        assert (
            r["half"].interrupted and r["half"].stop_signal == signal.SIGTERM and r["half"].exit_code == 143
        )
        assert r["half"].step == ranks[0]["half"].step == 4  # one stop decision for both
        assert not r["rest"].interrupted and r["rest"].step == r["full"].step == 12
        assert [h["train_loss"] for h in r["rest"].history] == [h["train_loss"] for h in r["full"].history]
    full, rest = (load_checkpoint(tmp_path / run) for run in ("full", "half"))
    assert full.step == rest.step == 12 and rest.state["world_size"] == 2
    for name, tensor in full.model_state.items():
        assert torch.equal(tensor, rest.model_state[name]), name  # dropout on both ranks, bitwise
    assert sorted(p.name for p in (tmp_path / "half").iterdir() if p.name.startswith("ckpt")) == [
        "ckpt-00000006",
        "ckpt-00000012",
    ]
    with pytest.raises(ValueError, match=r"trained by 2 processes .* resume it with 2 .* not 1"):
        fit_run(_Cfg(), tmp_path / "half", _make(None), config_type=None, progress=False, resume=True)


# ----------------------------------------------------------------------------- the applications


def _application(app: str, *, batch_size: int):
    """A tiny config of ``app`` (no dropout: the equivalence is exact only without it) and its train."""
    if app == "translation":
        from qkv.translation import resolve, train

        tables = {
            "data": {"corpus": "numbers", "size": 120, "options": {"max_value": 999}},
            "model": {"embed_dim": 8, "hidden_dim": 12, "dropout": 0.0},
            "train": {"epochs": 1, "batch_size": batch_size, "valid_decode": 0, "warmup": 2, "threads": 1},
        }
        return resolve(tables, preset="bahdanau"), train
    if app == "clip":  # 41 strips: the last step of 2 x 8 has 9, shares of 5 and 4
        from qkv.crossmodal.config import resolve
        from qkv.crossmodal.training import train

        overrides = ["--data.train_size=41", "--data.valid_size=8", "--data.augment_shift=1",
                     "--model.vision_dim=16", "--model.vision_depth=1", "--model.vision_heads=2",
                     "--model.vision_mlp_dim=16", "--model.text_dim=16", "--model.text_depth=1",
                     "--model.text_heads=2", "--model.text_mlp_dim=16", "--model.embed_dim=16",
                     f"--train.batch_size={batch_size}", "--train.epochs=1", "--train.warmup=2"]  # fmt: skip
        return resolve({}, preset="clip", overrides=overrides), train
    from qkv.vision.config import resolve
    from qkv.vision.training import train

    overrides = ["--data.dataset=digits", "--data.augment_shift=1", "--train.max_steps=4", "--model.dim=16",
                 "--model.depth=1", "--model.heads=2", "--model.mlp_dim=16", "--model.dropout=0.0",
                 f"--train.batch_size={batch_size}", "--train.epochs=1"]  # fmt: skip
    return resolve(overrides=overrides), train


@pytest.mark.parametrize("app", ["translation", "vision", "clip"])
def test_every_model_the_loop_trains_runs_data_parallel(app, ranks, tmp_path, request):
    """Translation (bucketed batches), the ViT (shifted images) and the CLIP matcher (InfoNCE
    over the embeddings of every rank, gathered with their gradient; shares of unequal size):
    2 ranks of 8 give the
    weights of 1 process of 16 within float32 rounding (AdamW, a few steps: relative 1e-5).
    Apart: the key biases, whose exact gradient is zero (softmax ignores a score added to
    every key), so AdamW turns rounding noise into steps of up to the learning rate."""
    out, results = ranks
    cfg, train = _application(app, batch_size=16)
    one = train(cfg, tmp_path / app, progress=False)
    assert results[0][app].step == results[1][app].step == one.step > 1
    a, b = (load_checkpoint(path).model_state for path in (out / app, tmp_path / app))
    scale = max(float(t.abs().max()) for t in b.values())
    diffs = {k: float((a[k] - b[k]).abs().max()) for k in b}
    diff = max(d for k, d in diffs.items() if not k.endswith("k_proj.bias"))
    request.node.user_properties.append((f"{app}_weights_diff", diff))
    assert diff <= 1e-5 * scale, (diff, scale)
    assert all(d <= cfg.train.lr * one.step for k, d in diffs.items() if k.endswith("k_proj.bias"))
