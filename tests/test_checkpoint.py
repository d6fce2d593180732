"""Checkpoints: exact resume, tied tensors, atomic under SIGKILL and exceptions, no pickle ever."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from qkv.train import Checkpoint, CheckpointError, list_checkpoints, load_checkpoint, save_checkpoint

# ----------------------------------------------------------------------------- helpers


def assert_same(a, b, where="root"):
    """Equal values with equal types: tensors bitwise with dtype/shape/device, numbers by type."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape, a.device) == (b.dtype, b.shape, b.device), where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {sorted(map(str, a))} != {sorted(map(str, b))}"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def seed_all(seed):
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - the global generator is what checkpoints carry


def make_run(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.25), nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    return model, opt, sched


def train(model, opt, sched, k):
    """k steps whose data and dropout draw from the torch, Python and NumPy generators."""
    losses = []
    for _ in range(k):
        x = torch.randn(8, 6) * (1 + random.random()) + float(np.random.rand())  # noqa: NPY002
        y = torch.randint(0, 3, (8,))
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def next_randoms():
    return torch.rand(4), random.random(), float(np.random.rand())  # noqa: NPY002


class Evil:
    """Unpickling this creates ``marker``: proof that a loader executed the pickle."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def forge(ckpt: Path, name: str, data: bytes) -> None:
    """Replace a file of a checkpoint, its size and digest in meta.json updated to match, so
    only the loader's own format checks can stop it."""
    (ckpt / name).write_bytes(data)
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt / "meta.json").write_text(json.dumps(meta))


def small_checkpoint(directory, step=1, **kw):
    model = nn.Linear(3, 2)
    return save_checkpoint(directory, model=model, step=step, config={"d": 3}, **kw), model


# ----------------------------------------------------------------------------- exact resume


def test_resume_is_bitwise_exact(tmp_path):
    k = 8
    seed_all(0)
    model, opt, sched = make_run(0)
    straight = train(model, opt, sched, k)
    params_straight = [p.detach().clone() for p in model.parameters()]
    randoms_straight = next_randoms()

    seed_all(0)
    model, opt, sched = make_run(0)
    first = train(model, opt, sched, k // 2)
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    path = save_checkpoint(
        tmp_path,
        model=model,
        optimizer=opt,
        scheduler=sched,
        step=k // 2,
        config={"lr": 1e-2, "sizes": [6, 16, 3]},
        vocab={"<pad>": 0, "a": 1},
        metrics={"loss": first[-1], "best": float("inf")},
        state={"epoch": 0, "seen": {"3": "three"}},
    )
    assert path == tmp_path / "ckpt-00000004"

    # a different process state: other seeds, other weights, an optimizer with other state
    seed_all(1234)
    model, opt, sched = make_run(99)
    train(model, opt, sched, 1)
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.step == k // 2
    assert ckpt.config == {"lr": 1e-2, "sizes": [6, 16, 3]}
    assert ckpt.vocab == {"<pad>": 0, "a": 1}
    assert ckpt.metrics == {"loss": first[-1], "best": float("inf")}
    assert ckpt.state == {"epoch": 0, "seen": {"3": "three"}}
    ckpt.restore(model, opt, sched)
    assert_same(opt.state_dict(), saved_opt, "optimizer")
    assert_same(sched.state_dict(), saved_sched, "scheduler")
    assert type(opt.state_dict()["state"][0]["step"]) is torch.Tensor  # Adam's step stays a tensor

    resumed = train(model, opt, sched, k - k // 2)
    assert first + resumed == straight  # bitwise: float equality of every loss
    for p, q in zip(model.parameters(), params_straight):
        assert torch.equal(p, q)
    r = next_randoms()
    assert torch.equal(r[0], randoms_straight[0])
    assert r[1:] == randoms_straight[1:]


def test_restore_leaves_the_checkpoint_untouched(tmp_path):
    """Optimizers adopt the tensors they load; restoring twice must give the same start."""
    seed_all(0)
    model, opt, sched = make_run(0)
    train(model, opt, sched, 2)
    save_checkpoint(tmp_path, model=model, optimizer=opt, scheduler=sched, step=2, config={})
    ckpt = load_checkpoint(tmp_path)
    runs = []
    for _ in range(2):
        model, opt, sched = make_run(5)
        ckpt.restore(model, opt, sched)
        runs.append(train(model, opt, sched, 3))
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    ("make_opt", "make_sched"),
    [
        (
            lambda p: torch.optim.AdamW(p, lr=1e-2, amsgrad=True),
            lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 0.1, total_steps=20),
        ),
        (
            lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
            lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o),
        ),
        (
            lambda p: torch.optim.RMSprop(p, lr=1e-2, centered=True),
            lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 10),
        ),
    ],
    ids=["adamw-onecycle", "sgd-plateau", "rmsprop-cosine"],
)
def test_optimizer_and_scheduler_state_round_trip_with_types(tmp_path, make_opt, make_sched):
    model = nn.Linear(4, 3)
    opt = make_opt(model.parameters())
    sched = make_sched(opt)
    for _ in range(3):
        model(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(1.0)
        else:
            sched.step()
    save_checkpoint(tmp_path, model=model, optimizer=opt, scheduler=sched, step=3, config={})
    model2 = nn.Linear(4, 3)
    opt2 = make_opt(model2.parameters())
    sched2 = make_sched(opt2)
    load_checkpoint(tmp_path).restore(model2, opt2, sched2)
    assert_same(opt2.state_dict(), opt.state_dict(), "optimizer")
    assert_same(sched2.state_dict(), sched.state_dict(), "scheduler")
    assert_same(model2.state_dict(), model.state_dict(), "model")


def test_training_file_holds_only_tensors_numbers_and_containers(tmp_path):
    """training.pt reads back with weights_only=True: optimizer, scheduler and RNG states."""
    seed_all(0)
    model, opt, sched = make_run(0)
    train(model, opt, sched, 1)
    path = save_checkpoint(tmp_path, model=model, optimizer=opt, scheduler=sched, step=1, config={"t": "x"})
    training = torch.load(path / "training.pt", weights_only=True)
    assert set(training) == {"optimizer", "scheduler", "rng"}
    assert training["optimizer"]["param_groups"][0]["lr"] == sched.get_last_lr()[0]
    assert len(training["rng"]["python"][1]) == 625
    assert len(training["rng"]["numpy"][1]) == 624
    assert sorted(safetensors.torch.load_file(path / "model.safetensors")) == [
        "0.bias",
        "0.weight",
        "3.bias",
        "3.weight",
    ]
    assert load_checkpoint(path).config == {"t": "x"}


# ----------------------------------------------------------------------------- tied and shared tensors


class TiedLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 4)
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, 11, bias=False)
        self.head.weight = self.embed.weight  # weight tying (Press & Wolf 2017)

    def forward(self, x):
        return self.head(torch.tanh(self.body(self.embed(x))))


def test_tied_weights_are_stored_once_and_stay_tied(tmp_path):
    model = TiedLM()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    F.cross_entropy(model(torch.tensor([1, 2, 3])), torch.tensor([2, 3, 4])).backward()
    opt.step()
    path = save_checkpoint(tmp_path, model=model, optimizer=opt, step=1, config={})

    on_disk = safetensors.torch.load_file(path / "model.safetensors")  # readable by any safetensors user
    assert sorted(on_disk) == ["body.bias", "body.weight", "embed.weight"]
    meta = json.loads((path / "meta.json").read_text())
    assert meta["ties"] == {"head.weight": "embed.weight"}

    ckpt = load_checkpoint(tmp_path)
    assert sorted(ckpt.model_state) == sorted(model.state_dict())
    assert ckpt.model_state["head.weight"] is ckpt.model_state["embed.weight"]
    fresh = TiedLM()
    opt2 = torch.optim.Adam(fresh.parameters(), lr=1e-2)
    ckpt.restore(fresh, opt2)
    assert fresh.head.weight is fresh.embed.weight
    assert torch.equal(fresh.embed.weight, model.embed.weight)
    assert_same(opt2.state_dict(), opt.state_dict())
    x = torch.tensor([4, 5])
    assert torch.equal(fresh(x), model(x))


class Views(nn.Module):
    """Buffers that are views of one storage: overlapping, disjoint, transposed."""

    def __init__(self):
        super().__init__()
        base = torch.arange(24.0).reshape(4, 6)
        self.register_buffer("whole", base)
        self.register_buffer("rows", base[1:3])  # overlaps `whole`
        self.register_buffer("cols_t", base.t())  # non-contiguous view
        self.register_buffer("tail", torch.arange(10.0)[4:])  # the only user of a larger storage
        self.register_buffer("empty_a", torch.empty(0))
        self.register_buffer("empty_b", torch.empty(0, 3))


def test_views_of_one_storage_round_trip(tmp_path):
    model = Views()
    save_checkpoint(tmp_path, model=model, step=0, config={})
    state = load_checkpoint(tmp_path).model_state
    for name, t in model.state_dict().items():
        assert torch.equal(state[name], t), name
        assert state[name].shape == t.shape


# ----------------------------------------------------------------------------- atomicity

CHILD = textwrap.dedent(
    """
    import sys, torch
    from torch import nn
    from qkv.train import list_checkpoints, load_checkpoint, save_checkpoint

    directory = sys.argv[1]
    if sys.stdin.readline().strip() != "go":  # started early; waits until the previous saver is dead
        sys.exit(0)
    model = nn.Linear(512, 512)

    class Momentum:
        # what save_checkpoint reads from an optimizer (building a torch.optim one imports
        # torch's compiler support: seconds per process)
        def __init__(self, params):
            self.buffers = [torch.zeros_like(p) for p in params]

        def state_dict(self):
            state = {i: {"momentum_buffer": b} for i, b in enumerate(self.buffers)}
            return {"state": state, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}

    opt = Momentum(model.parameters())
    step = load_checkpoint(directory).step + 1 if list_checkpoints(directory) else 0
    while True:
        with torch.no_grad():
            for p, b in zip(model.parameters(), opt.buffers):
                p.fill_(step)
                b.fill_(-step)
        save_checkpoint(directory, model=model, optimizer=opt, step=step,
                        config={"step": step}, state={"step": step}, keep=2)
        print(step, flush=True)
        step += 1
    """
)


def check_consistent(ckpt: Checkpoint):
    s = ckpt.step
    assert ckpt.config == {"step": s}
    assert ckpt.state == {"step": s}
    for name, t in ckpt.model_state.items():
        assert torch.all(t == s), name
    for param_state in ckpt.optimizer_state["state"].values():
        assert torch.all(param_state["momentum_buffer"] == -s)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_sigkill_during_save_always_leaves_a_loadable_checkpoint(tmp_path, record_property):
    script = tmp_path / "saver.py"
    script.write_text(CHILD)
    run = tmp_path / "run"
    rng = random.Random(7)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    interrupted = 0

    def spawn():
        return subprocess.Popen(
            [sys.executable, str(script), str(run)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    rounds = 4
    upcoming = spawn()  # each saver imports torch while the previous one is saving
    try:
        for i in range(rounds):
            child, upcoming = upcoming, (spawn() if i + 1 < rounds else None)
            try:
                child.stdin.write("go\n")
                child.stdin.flush()
                first = child.stdout.readline()  # one save completed in this process
                assert first.strip().isdigit(), "the saving process failed to start"
                time.sleep(rng.uniform(0.0, 0.3))
            finally:
                child.send_signal(signal.SIGKILL)
                child.wait()
            confirmed = [int(line) for line in [first, *child.stdout.read().split()] if line.strip()]
            child.stdout.close()
            child.stdin.close()
            interrupted += any(p.name.startswith(".tmp-ckpt-") for p in run.iterdir())
            ckpt = load_checkpoint(run)
            check_consistent(ckpt)
            # what save_checkpoint returned is durable; at most one more save may have landed
            assert confirmed[-1] <= ckpt.step <= confirmed[-1] + 1
            assert len([p for p in run.iterdir() if p.name.startswith("ckpt-")]) <= 3
    finally:
        if upcoming is not None:
            upcoming.kill()
            upcoming.wait()
    record_property("kills_during_a_save", interrupted)

    # the next save removes what killed saves left behind
    model = nn.Linear(512, 512)
    save_checkpoint(run, model=model, step=ckpt.step + 1, config={}, keep=2)
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []
    assert len([p for p in run.iterdir() if p.name.startswith("ckpt-")]) == 2


def test_exception_while_writing_keeps_previous_checkpoint(tmp_path, monkeypatch):
    small_checkpoint(tmp_path, step=1)
    real_replace = os.replace

    def disk_full(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="disk full"):
        small_checkpoint(tmp_path, step=2)
    monkeypatch.setattr(os, "replace", real_replace)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000001"]
    assert load_checkpoint(tmp_path).step == 1


def test_half_written_directories_are_never_picked(tmp_path):
    small_checkpoint(tmp_path, step=5)
    (tmp_path / "ckpt-00000009").mkdir()  # no meta.json: incomplete
    (tmp_path / "ckpt-00000009" / "model.safetensors").write_bytes(b"partial")
    (tmp_path / f".tmp-ckpt-00000010-{os.getpid()}-00ff00ff").mkdir()
    assert list_checkpoints(tmp_path) == [tmp_path / "ckpt-00000005"]
    assert load_checkpoint(tmp_path).step == 5


# ----------------------------------------------------------------------------- keep / prune


def test_keep_prunes_older_checkpoints(tmp_path):
    for step in range(1, 6):
        small_checkpoint(tmp_path / "three", step=step, keep=3)
        small_checkpoint(tmp_path / "all", step=step, keep=None)
        small_checkpoint(tmp_path / "one", step=step, keep=1)
    names = lambda d: sorted(p.name for p in d.iterdir())  # noqa: E731
    assert names(tmp_path / "three") == ["ckpt-00000003", "ckpt-00000004", "ckpt-00000005"]
    assert len(names(tmp_path / "all")) == 5
    assert names(tmp_path / "one") == ["ckpt-00000005"]


def test_the_checkpoint_just_saved_is_never_pruned(tmp_path):
    for step in (10, 20, 5):  # a run rewound to an earlier step
        small_checkpoint(tmp_path, step=step, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000005", "ckpt-00000020"]
    assert load_checkpoint(tmp_path).step == 20  # the highest step is the newest


def test_saving_the_same_step_again_replaces_it(tmp_path):
    _, first = small_checkpoint(tmp_path, step=3)
    _, second = small_checkpoint(tmp_path, step=3)
    state = load_checkpoint(tmp_path).model_state
    assert torch.equal(state["weight"], second.weight)
    assert not torch.equal(state["weight"], first.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000003"]


# ----------------------------------------------------------------------------- safety


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(Evil(marker))
    proof = tmp_path / "proof"
    subprocess.run(
        [sys.executable, "-c", "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"],
        input=pickle.dumps(Evil(proof)),
        check=True,
    )
    assert proof.exists()  # unpickling this payload (in another process) does create its marker

    # 1. a pickle, and a torch.save archive of code, in place of each file (sizes and digests
    # forged to match, so only the format can stop them)
    archive = io.BytesIO()
    torch.save({"optimizer": Evil(marker), "scheduler": None, "rng": None}, archive)
    for name, data in [
        ("model.safetensors", payload),
        ("training.pt", payload),
        ("training.pt", archive.getvalue()),
    ]:
        path, _ = small_checkpoint(tmp_path / "run", step=1)
        forge(path, name, data)
        with pytest.raises(CheckpointError, match=rf"{re.escape(name)}: refused"):
            load_checkpoint(path)
    (path / "meta.json").write_bytes(payload)
    with pytest.raises(CheckpointError, match=r"meta\.json: not valid JSON"):
        load_checkpoint(path)

    # 2. a torch.save file offered as a checkpoint, and a directory holding one
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    torch.save({"weight": Evil(marker)}, legacy / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt: expected a run or ckpt-\* directory"):
        load_checkpoint(legacy / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        load_checkpoint(legacy)
    assert not marker.exists()


def test_bad_digest_missing_file_and_unknown_version(tmp_path):
    path, model = small_checkpoint(tmp_path, step=1)
    model_file = path / "model.safetensors"
    good = model_file.read_bytes()
    model_file.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # one flipped bit in the data
    with pytest.raises(CheckpointError, match="SHA-256 mismatch") as e:
        load_checkpoint(tmp_path / "ckpt-00000001")
    assert str(model_file) in str(e.value)
    unverified = load_checkpoint(tmp_path, verify=False).model_state  # what verify=True protects from
    assert any(not torch.equal(unverified[k], v) for k, v in model.state_dict().items())

    model_file.write_bytes(good)
    (path / "training.pt").unlink()
    with pytest.raises(CheckpointError, match="missing file") as e:
        load_checkpoint(path)
    assert "training.pt" in str(e.value)

    path, _ = small_checkpoint(tmp_path / "v", step=1)
    meta = json.loads((path / "meta.json").read_text())
    meta["format_version"] = 99
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(path)
    (path / "meta.json").write_text('{"format": "qkv-checkpoint", "format_')
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path)


# ----------------------------------------------------------------------------- bad input


class LambdaHoldingScheduler:
    def __init__(self):
        self.fn = lambda step: 0.5**step

    def state_dict(self):
        return {"last_epoch": 3, "fn": self.fn}


def test_unstorable_values_fail_before_anything_is_written(tmp_path):
    model = nn.Linear(2, 2)
    with pytest.raises(TypeError, match=r"scheduler: only tensors, numbers, strings and containers.*lambda"):
        save_checkpoint(tmp_path, model=model, scheduler=LambdaHoldingScheduler(), step=1, config={})
    with pytest.raises(TypeError, match=r"config: expected plain JSON data.*Tensor"):
        save_checkpoint(tmp_path, model=model, step=1, config={"w": torch.ones(2)})
    with pytest.raises(TypeError, match=r"state: expected plain JSON data.*PosixPath|WindowsPath"):
        save_checkpoint(tmp_path, model=model, step=1, config={}, state={"path": tmp_path})
    with pytest.raises(TypeError, match="config: expected a dict"):
        save_checkpoint(tmp_path, model=model, step=1, config=[1])
    with pytest.raises(ValueError, match="step: expected an int >= 0, got -1"):
        save_checkpoint(tmp_path, model=model, step=-1, config={})
    with pytest.raises(ValueError, match="keep: expected an int >= 1 or None, got 0"):
        save_checkpoint(tmp_path, model=model, step=1, config={}, keep=0)
    assert list(tmp_path.iterdir()) == []


def test_missing_sources_and_restore_mismatches(tmp_path):
    assert list_checkpoints(tmp_path / "nope") == list_checkpoints(tmp_path) == []
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        load_checkpoint(tmp_path)
    small_checkpoint(tmp_path, step=1)
    ckpt = load_checkpoint(tmp_path / "ckpt-00000001" / "meta.json")
    model = nn.Linear(3, 2)
    with pytest.raises(CheckpointError, match="no optimizer state"):
        ckpt.restore(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(RuntimeError, match="size mismatch"):
        ckpt.restore(nn.Linear(4, 2))


@pytest.mark.cuda
def test_cuda_model_optimizer_and_rng_resume(tmp_path):
    dev = "cuda"
    torch.manual_seed(0)
    model = nn.Linear(8, 8).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(torch.randn(4, 8, device=dev)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path, model=model, optimizer=opt, step=1, config={})
    expected = torch.randn(3, device=dev)
    model2 = nn.Linear(8, 8).to(dev)
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-2)
    load_checkpoint(tmp_path, map_location=dev).restore(model2, opt2)
    assert torch.equal(torch.randn(3, device=dev), expected)
    assert_same(opt2.state_dict(), opt.state_dict())
    assert model2.weight.device.type == "cuda"


def test_a_kill_while_the_same_step_is_replaced_still_loads(tmp_path):
    """Between moving the old ckpt-<step> aside and renaming the new one in."""
    path, model = small_checkpoint(tmp_path, step=3, keep=1)
    os.replace(path, tmp_path / ".old-ckpt-00000003-999999-abcd")
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.step == 3
    assert torch.equal(ckpt.model_state["weight"], model.weight)
    small_checkpoint(tmp_path, step=4, keep=1)  # the next save cleans up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000004"]


def test_a_kill_while_pruning_leaves_no_half_deleted_checkpoint(tmp_path, monkeypatch):
    """Pruning renames an old checkpoint out of the ``ckpt-*`` names before deleting it: a kill
    mid-delete (here: the delete stops after one file) leaves a leftover the next save removes,
    never a ``ckpt-*`` directory without its files that no later prune would see."""
    import qkv.train.checkpoint as ck

    model = nn.Linear(4, 4)
    for step in (1, 2):
        save_checkpoint(tmp_path, model=model, step=step, config={}, keep=2)

    rmtree = ck.shutil.rmtree

    def killed_mid_delete(path, ignore_errors=False):
        if not (Path(path) / "meta.json").exists():
            return rmtree(path, ignore_errors=ignore_errors)
        (Path(path) / "meta.json").unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(ck.shutil, "rmtree", killed_mid_delete)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, model=model, step=3, config={}, keep=2)
    monkeypatch.undo()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert [n for n in names if n.startswith("ckpt-")] == ["ckpt-00000002", "ckpt-00000003"]
    assert load_checkpoint(tmp_path).step == 3
    save_checkpoint(tmp_path, model=model, step=4, config={}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000003", "ckpt-00000004"]
