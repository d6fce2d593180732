"""Nothing is lost when a training run is stopped: SIGINT and SIGTERM at step boundaries,
periodic checkpoints against SIGKILL, damaged checkpoints skipped, an honest progress bar and
validation report after a resume, files that follow the umask, one training thread by default.

The signal tests run a real training process (a tiny RNN with dropout on one torch thread),
signal it in the middle of a step, resume in a new process and compare every parameter bitwise
with an uninterrupted run of the same total steps.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from qkv.application.run import open_run
from qkv.train import CheckpointError, TrainConfig, Trainer, load_checkpoint, save_checkpoint
from qkv.train.loop import TrainResult
from qkv.train.progress import progress_bar
from qkv.translation import resolve, train

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX signals and file modes")


def tiny(**train_kw):
    """A tiny Bahdanau model with dropout 0.3 on 180 training pairs: 12 steps per epoch, 24 in all."""
    return resolve(
        {
            "data": {"corpus": "numbers", "size": 200, "options": {"max_value": 999}},
            "model": {"embed_dim": 8, "hidden_dim": 16, "dropout": 0.3},
            "train": {
                "epochs": 2,
                "batch_size": 16,
                "valid_decode": 5,
                "warmup": 2,
                "threads": 1,
                "teacher_forcing": 0.7,
                **train_kw,
            },
        },
        preset="bahdanau",
    )


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(load_checkpoint(run).path / "model.safetensors"))


def assert_bitwise_equal(run: Path, reference: Path) -> None:
    a, b = weights(run), weights(reference)
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"parameters differ from the uninterrupted run: {differ}"


def losses(run: Path) -> list[tuple[float, float | None]]:
    history = load_checkpoint(run).state["history"]
    return [(h["train_loss"], h["valid_loss"]) for h in history]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run of 24 steps (the processes below must reproduce it bitwise)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    result = train(tiny(), out, progress=False)
    assert result.step == 24 and not result.interrupted
    return out


# ----------------------------------------------------------------------------- signals, in a process

# Trains a config in a process of its own. At the optimizer step numbered by --hold (1-based),
# after the forward pass has drawn its dropout masks and teacher-forcing coins, it prints
# "holding" and waits (until the trainer has seen a signal, 20 s at most): a signal sent then
# lands in the middle of a step, the case where a checkpoint of the interrupted state would not
# be exact, however slowly the test process reads. Exits with TrainResult.exit_code.
CHILD = textwrap.dedent(
    """
    import json, signal, sys, time
    import qkv.translation.training as training
    from qkv.translation.config import RunConfig

    cfg, out, resume, hold = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3] == "resume", int(sys.argv[4])
    cfg = RunConfig.from_dict(cfg)
    real, calls = training._loss, [0]

    def signal_seen():
        for signum in (signal.SIGINT, signal.SIGTERM):
            trainer = getattr(signal.getsignal(signum), "__self__", None)  # Trainer._on_signal
            if getattr(trainer, "_stop_signal", None) is not None:
                return True
        return False

    def loss(model, batch, t):
        out = real(model, batch, t)
        calls[0] += 1
        print("step", calls[0], flush=True)
        if calls[0] == hold:
            print("holding", flush=True)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not signal_seen():
                time.sleep(0.01)
        return out

    training._loss = loss
    result = training.train(cfg, out, resume=resume, progress=False)
    print("result", result.step, result.interrupted, flush=True)
    sys.exit(result.exit_code)
    """
)


def start(cfg, out: Path, *, resume: bool = False, hold: int = 0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            json.dumps(cfg.to_dict()),
            str(out),
            "resume" if resume else "new",
            str(hold),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_for(proc: subprocess.Popen, word: str, timeout: float = 60.0) -> list[str]:
    """The lines of ``proc`` up to the first that starts with ``word``."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.strip())
        if line.startswith(word):
            return lines
    proc.kill()
    _, err = proc.communicate()
    raise AssertionError(f"the training process never printed {word!r}: {lines}\n{err}")


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


@posix_only
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_step_finishes_the_step_saves_and_resumes_bitwise(tmp_path, reference, signum):
    cfg, out = tiny(), tmp_path / "run"
    proc = start(cfg, out, hold=5)
    wait_for(proc, "holding")  # 4 steps done, the 5th drew its dropout masks
    proc.send_signal(signum)
    code, stdout, stderr = finish(proc)
    assert code == 128 + signum, (code, stdout, stderr)  # 130 for SIGINT, 143 for SIGTERM
    assert "result 5 True" in stdout  # the step under way finished, no other began
    assert f"{signal.Signals(signum).name}: stopping after step 5, saving a checkpoint" in stderr
    assert "checkpoint saved at step 5; continue with --resume" in stderr
    assert load_checkpoint(out).step == 5

    proc = start(cfg, out, resume=True)
    code, stdout, stderr = finish(proc)
    assert code == 0, stderr
    assert "result 24 False" in stdout
    assert "resuming from step 5 of 24" in stderr
    assert_bitwise_equal(out, reference)
    assert losses(out) == losses(reference)


@posix_only
def test_sigkill_after_a_periodic_save_resumes_bitwise_from_mid_epoch(tmp_path, reference):
    cfg, out = tiny(save_every_steps=4), tmp_path / "run"
    proc = start(cfg, out, hold=7)
    wait_for(proc, "holding")  # the periodic checkpoint of step 4 is written, step 7 is under way
    proc.kill()  # SIGKILL: nothing runs, nothing is saved
    code, _, _ = finish(proc)
    assert code == -signal.SIGKILL
    ckpt = load_checkpoint(out)
    assert ckpt.step == 4 and ckpt.state["epoch"] == 0 and ckpt.state["batch"] == 4  # mid-epoch

    code, _, stderr = finish(start(cfg, out, resume=True))
    assert code == 0, stderr
    assert "resuming from step 4 of 24 (epoch 1, batch 4 of 12)" in stderr
    assert_bitwise_equal(out, reference)
    assert losses(out) == losses(reference)


# ----------------------------------------------------------------------------- signals, in this process


class Regression:
    """A task that is not translation: linear regression with dropout; hooks for the tests."""

    count_unit = "example"
    batches_per_epoch = 8

    def __init__(self, on_step=None):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 3, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5])
        self.on_step, self.calls = on_step, 0

    def batches(self, epoch, start):
        order = torch.randperm(64, generator=torch.Generator().manual_seed(epoch))
        for i in range(start, self.batches_per_epoch):
            idx = order[i * 8 : (i + 1) * 8]
            yield self.x[idx], self.y[idx]

    def loss(self, model, batch):
        x, y = batch
        loss = nn.functional.mse_loss(model(x).squeeze(-1), y)  # draws dropout masks
        self.calls += 1
        if self.on_step is not None:
            self.on_step(self.calls)
        return loss, len(y)

    @torch.no_grad()
    def validate(self, model):
        model.eval()
        return {"valid_loss": float(nn.functional.mse_loss(model(self.x).squeeze(-1), self.y))}


def make_trainer(out, task=None, *, clock=None, stream=None, progress=False, **settings):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.3), nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    config = TrainConfig(**{"epochs": 2, "lr": 0.05, "warmup": 0, "patience": 0, **settings})
    kw = {"clock": clock} if clock is not None else {}
    trainer = Trainer(model, opt, task or Regression(), config=config, out_dir=out, run_config={"task": "regression"},
                      progress=progress, stream=stream or io.StringIO(), **kw)  # fmt: skip
    return trainer, model


def resumed(out, **kw):
    trainer, model = make_trainer(out, **kw)
    trainer.restore(load_checkpoint(out))
    return trainer, model


def assert_same_model(a: nn.Module, b: nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_a_keyboard_interrupt_mid_step_still_saves_an_exact_checkpoint(tmp_path):
    """Without handlers (another thread, or KeyboardInterrupt raised by code) the step under way
    is abandoned and the random generators rewound: the old loop saved them advanced."""
    full, full_model = make_trainer(tmp_path / "full")
    full.fit()

    def interrupt(call):
        if call == 6:  # after the forward pass of step 6 drew its dropout masks
            raise KeyboardInterrupt

    trainer, _ = make_trainer(tmp_path / "run", Regression(on_step=interrupt))
    result = trainer.fit()
    assert result.interrupted and result.step == 5 and result.exit_code == 130
    assert "interrupted: stopping after step 5" in trainer.stream.getvalue()
    torch.manual_seed(99)  # the checkpoint restores the generators
    rest, model = resumed(tmp_path / "run")
    assert rest.fit().step == 16
    assert_same_model(model, full_model)


@posix_only
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_in_this_process_stops_at_the_step_boundary(tmp_path, signum):
    full, full_model = make_trainer(tmp_path / "full")
    full.fit()

    def signal_once(call):
        if call == 3:
            os.kill(os.getpid(), signum)  # handled at once, in the middle of step 3

    trainer, _ = make_trainer(tmp_path / "run", Regression(on_step=signal_once))
    result = trainer.fit()
    assert result.interrupted and result.step == 3 and result.exit_code == 128 + signum
    assert load_checkpoint(tmp_path / "run").step == 3
    rest, model = resumed(tmp_path / "run")
    assert rest.fit().step == 16
    assert_same_model(model, full_model)


@posix_only
def test_a_second_signal_stops_at_once_and_the_checkpoint_is_still_exact(tmp_path):
    full, full_model = make_trainer(tmp_path / "full")
    full.fit()

    def two_signals(call):
        if call == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # finish this step, then stop...
            os.kill(os.getpid(), signal.SIGTERM)  # ...no: stop now (the step is abandoned)

    trainer, _ = make_trainer(tmp_path / "run", Regression(on_step=two_signals))
    result = trainer.fit()
    assert result.interrupted and result.step == 2 and result.exit_code == 143
    assert result.stop_signal == signal.SIGTERM
    rest, model = resumed(tmp_path / "run")
    rest.fit()
    assert_same_model(model, full_model)


def test_signal_handlers_are_installed_for_the_fit_only_and_in_the_main_thread_only(tmp_path):
    seen = {}

    def look(call):
        seen.setdefault(
            threading.current_thread().name,
            (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)),
        )

    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    trainer, _ = make_trainer(tmp_path / "main", Regression(on_step=look))
    trainer.fit()
    during = seen.pop("MainThread")
    assert during[0] == trainer._on_signal and during[1] == trainer._on_signal
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before

    errors = []

    def fit_in_a_thread():
        try:
            make_trainer(tmp_path / "thread", Regression(on_step=look))[0].fit()
        except BaseException as e:  # reported below
            errors.append(e)

    worker = threading.Thread(target=fit_in_a_thread, name="worker")
    worker.start()
    worker.join()
    assert not errors
    assert seen["worker"] == before  # nothing installed from another thread (Python forbids it)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


@posix_only
def test_an_ignored_signal_stays_ignored(tmp_path):
    """A run started under nohup (SIGINT ignored) is not made interruptible by the fit."""
    seen = []
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        trainer, _ = make_trainer(
            tmp_path / "run", Regression(on_step=lambda c: seen.append(signal.getsignal(signal.SIGINT)))
        )
        assert trainer.fit().step == 16
        assert set(seen) == {signal.SIG_IGN}
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_exit_codes():
    result = TrainResult(step=1)
    assert result.exit_code == 0
    result.interrupted = True
    assert result.exit_code == 130
    result.stop_signal = signal.SIGTERM
    assert result.exit_code == 143


# ----------------------------------------------------------------------------- periodic checkpoints


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_periodic_checkpoints_by_minutes_keep_the_newest(tmp_path):
    clock = Clock()

    def tick(call):
        clock.t += 50.0  # every step takes 50 s

    trainer, _ = make_trainer(tmp_path / "run", Regression(on_step=tick), clock=clock, save_every_minutes=2,
                              keep_last=3)  # fmt: skip
    saved = []
    real_save = trainer.save

    def save():
        real_save()
        saved.append(trainer.state.step)

    trainer.save = save
    trainer.fit()
    # 150 s after the last save at steps 3, 6 (then 8: the epoch's end, which resets the timer), 11, 14, 16
    assert saved == [3, 6, 8, 11, 14, 16]
    names = sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith("ckpt-"))
    assert names == ["ckpt-00000011", "ckpt-00000014", "ckpt-00000016"]


def test_the_default_bounds_what_a_kill_loses_and_the_help_says_so(capsys):
    from qkv.cli.main import main

    t = TrainConfig()
    assert 0 < t.save_every_minutes <= 10 and t.keep_last >= 2

    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    minutes = f"{t.save_every_minutes:g}"
    assert f"loses at most about {minutes} minutes" in text
    assert "--train.save_every_minutes" in text and "--train.save_every_steps" in text
    assert "--train.keep_last" in text and "130 or 143" in text


def test_save_keys_are_checked_and_old_names_are_unknown():
    with pytest.raises(
        ValueError, match=r"config \[train\]: unknown keys \['keep', 'save_every'\]; valid: epochs"
    ):
        resolve(overrides=["--train.save_every=7", "--train.keep=4"])
    with pytest.raises(ValueError, match=r"\[train\] save_every_minutes: expected a number >= 0, got -1"):
        resolve(overrides=["--train.save_every_minutes=-1"])
    with pytest.raises(ValueError, match=r"\[train\] keep_last: expected an int >= 1, got 0"):
        resolve(overrides=["--train.keep_last=0"])
    cfg = resolve(overrides=["--train.save_every_steps=7", "--train.keep_last=4"])
    assert (cfg.train.save_every_steps, cfg.train.keep_last) == (7, 4)


# ----------------------------------------------------------------------------- progress after a resume


def test_a_resumed_run_says_so_and_continues_the_bar(tmp_path):
    cfg = tiny()
    train(cfg, tmp_path / "run", progress=False, stop_after_steps=10)
    log = io.StringIO()  # not a terminal: the quiet log mode
    train(cfg, tmp_path / "run", resume=True, progress=True, stream=log)
    lines = log.getvalue().splitlines()
    said = lines.index("resuming from step 10 of 24 (epoch 1, batch 10 of 12)")
    assert said < len(lines) - 1
    assert lines[-1].startswith("train bahdanau: 100% 24/24 ["), lines[-1]

    quiet = io.StringIO()  # no bar (--quiet): the line is still printed
    train(cfg, tmp_path / "again", progress=False, stop_after_steps=3)
    train(cfg, tmp_path / "again", resume=True, progress=False, stream=quiet)
    assert quiet.getvalue().splitlines() == ["resuming from step 3 of 24 (epoch 1, batch 3 of 12)"]


def test_progress_counts_rate_and_eta_from_where_it_resumed(monkeypatch):
    out, clock = io.StringIO(), Clock()
    monkeypatch.setattr("tqdm.std.time", clock)  # tqdm's clock, read when a bar is made
    bar = progress_bar(100, desc="t", initial=50, stream=out, every=10)
    clock.t = 10.0
    bar.update(10)  # 10 steps in 10 s here: 1 step/s, 40 left
    bar.close()
    assert (
        out.getvalue().splitlines()
        == ["t:  50% 50/100 [00:00<?, ?step/s]"] + ["t:  60% 60/100 [00:10<00:40,  1.00step/s]"] * 2
    )


# ----------------------------------------------------------------------------- damaged checkpoints


def small(directory, step):
    torch.manual_seed(step)
    return save_checkpoint(directory, model=nn.Linear(30, 20), step=step, config={}, keep=None)


def truncate(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


def test_a_truncated_safetensors_file_is_reported_as_truncated_not_as_a_pickle(tmp_path):
    ckpt = small(tmp_path, 1)
    model_file = ckpt / "model.safetensors"
    good = model_file.read_bytes()
    size = len(good)
    truncate(model_file, size // 2)  # the header is whole, the tensor data is cut
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated") as e:
        load_checkpoint(ckpt)
    assert "pickle" not in str(e.value)
    assert f"{size // 2:,} bytes, {size:,} when saved" in str(e.value)
    for cut in (0, 5, 40):  # empty, inside the header's length, inside the header
        model_file.write_bytes(good[:cut])
        with pytest.raises(CheckpointError, match=rf"model\.safetensors: truncated .*: {cut} bytes"):
            load_checkpoint(ckpt, verify=False)

    # a file replaced by a pickle or a zip: changed, and refused
    for foreign in (pickle.dumps({"weight": [1.0] * size}), b"PK\x03\x04" + bytes(size)):
        model_file.write_bytes(foreign)
        with pytest.raises(CheckpointError, match=r"model\.safetensors: changed"):
            load_checkpoint(ckpt, verify=False)


def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path):
    for step in (1, 2, 3):
        small(tmp_path, step)
    truncate(tmp_path / "ckpt-00000003" / "model.safetensors", 100)
    with pytest.warns(
        UserWarning, match=r"skipped damaged checkpoints .*ckpt-00000003.*truncated.*using ckpt-00000002"
    ):
        ckpt = load_checkpoint(tmp_path)
    assert ckpt.step == 2 and ckpt.skipped == [tmp_path / "ckpt-00000003"]

    # a flipped bit keeps the size: the digest check sees it
    data = bytearray((tmp_path / "ckpt-00000002" / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (tmp_path / "ckpt-00000002" / "model.safetensors").write_bytes(bytes(data))
    with pytest.warns(
        UserWarning, match=r"skipped damaged checkpoints .*SHA-256 mismatch.*using ckpt-00000001"
    ):
        assert load_checkpoint(tmp_path).step == 1

    # resuming moves the damaged ones aside, so the resumed run's checkpoints are the newest
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert open_run(tmp_path, resume=True).step == 1
    said = "\n".join(str(w.message) for w in caught)
    assert "skipped damaged checkpoints" in said
    assert "ckpt-00000003 was moved to ckpt-00000003.damaged (kept for inspection" in said
    assert "ckpt-00000002 was moved to ckpt-00000002.damaged" in said
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ckpt-00000001", "ckpt-00000002.damaged", "ckpt-00000003.damaged"]

    truncate(tmp_path / "ckpt-00000001" / "training.pt", 10)
    with pytest.raises(CheckpointError, match=r"no intact checkpoint: .*truncated"):
        load_checkpoint(tmp_path)


def test_a_damaged_run_resumes_through_train(tmp_path):
    cfg = tiny(save_every_steps=4)
    train(cfg, tmp_path / "run", progress=False, stop_after_steps=9)  # checkpoints at 4, 8, 9
    truncate(tmp_path / "run" / "ckpt-00000009" / "model.safetensors", 1000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(cfg, tmp_path / "run", resume=True, progress=False)
    said = "\n".join(str(w.message) for w in caught)
    assert "ckpt-00000009/model.safetensors: truncated" in said and "using ckpt-00000008" in said
    assert "moved to ckpt-00000009.damaged" in said
    assert result.step == 24
    assert (tmp_path / "run" / "ckpt-00000009.damaged").is_dir()


def test_an_explicit_checkpoint_is_never_substituted(tmp_path):
    small(tmp_path, 1)
    small(tmp_path, 2)
    truncate(tmp_path / "ckpt-00000002" / "model.safetensors", 100)
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "ckpt-00000002")


# ----------------------------------------------------------------------------- empty validation split


def test_an_empty_validation_split_warns_and_reports_no_loss(tmp_path):
    from qkv.translation.data import DataWarning

    tsv = tmp_path / "one.tsv"
    tsv.write_text("a b\tc d\n", encoding="utf-8")
    cfg = resolve({"data": {"corpus": str(tsv)}, "model": {"embed_dim": 8, "hidden_dim": 8},
                   "train": {"epochs": 2}}, preset="bahdanau")  # fmt: skip
    log = io.StringIO()
    with pytest.warns(DataWarning, match=r"validation split of .* is empty \(1 train, 0 valid, 0 test pairs"):
        result = train(cfg, tmp_path / "run", progress=True, stream=log)
    assert [h["valid_loss"] for h in result.history] == [None, None]
    assert "valid_exact_match" not in result.history[0]
    assert result.best_valid_loss == math.inf and not (tmp_path / "run" / "best").exists()
    assert "valid loss n/a (no validation data)" in log.getvalue()
    assert "valid loss 0.0000" not in log.getvalue()


def test_an_empty_training_split_is_refused():
    from qkv.translation.data import build_tokenizer
    from qkv.translation.data.corpus import Example
    from qkv.translation.training import TranslationTask

    cfg = tiny()
    tok = build_tokenizer("word", ["a b"])
    corpus = {"train": [], "valid": [Example("a", "b")], "test": []}
    with pytest.raises(ValueError, match=r"training split of 'numbers' is empty \(0 train, 1 valid, 0 test"):
        TranslationTask(cfg, corpus, tok, tok)


# ----------------------------------------------------------------------------- threads, file modes


def test_training_runs_on_one_thread_by_default(tmp_path, monkeypatch):
    import qkv.translation.training as training

    assert TrainConfig().threads == 1
    cfg = resolve(  # no threads key: the default
        {"data": {"corpus": "numbers", "size": 100}, "model": {"embed_dim": 8, "hidden_dim": 8},
         "train": {"epochs": 1, "max_steps": 1, "valid_decode": 0}},
        preset="bahdanau",
    )  # fmt: skip
    seen, real = [], training._loss

    def loss(model, batch, t):
        seen.append(torch.get_num_threads())
        return real(model, batch, t)

    monkeypatch.setattr(training, "_loss", loss)
    before = torch.get_num_threads()
    train(cfg, tmp_path / "run", progress=False)
    assert seen == [1]
    assert torch.get_num_threads() == before


@posix_only
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_checkpoint_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        ckpt = small(tmp_path / "run", 1)
    finally:
        os.umask(old)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in ckpt.iterdir()}
    assert modes == dict.fromkeys(["model.safetensors", "training.pt", "meta.json"], oct(mode))


def test_the_summary_line_says_why_there_is_no_validation_loss():
    from types import SimpleNamespace

    from qkv.cli.train import best_loss_text

    assert best_loss_text(SimpleNamespace(best_valid_loss=0.25, history=[{}])) == "0.2500"
    stopped_early = SimpleNamespace(best_valid_loss=float("inf"), history=[])
    assert best_loss_text(stopped_early) == "n/a (no epoch finished yet)"
    no_valid = SimpleNamespace(best_valid_loss=float("inf"), history=[{"valid_loss": None}])
    assert best_loss_text(no_valid) == "n/a (no validation data)"
