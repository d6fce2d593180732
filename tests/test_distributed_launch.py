"""``qkv train --nproc 2`` as a user runs it: torchrun's elastic agent starts two ranks; SIGTERM
to the launcher (what a scheduler or ``kill`` sends) reaches every rank through the agent, each
finishes the step under way, rank 0 saves, the launcher exits 143, and ``--resume`` with the same
``--nproc`` ends bitwise equal to a run that was never stopped.

The ranks are real ``python -m qkv`` processes. To land the signal in the middle of a step, a
``sitecustomize`` on their ``PYTHONPATH`` makes every rank print ``holding`` at one optimizer step
and wait there until its process group has recorded a signal (at most 30 s).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qkv.train import load_checkpoint

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")

ARGS = [
    "--model", "bahdanau", "--data", "numbers", "--quiet",
    "--data.size=200", "--data.options.max_value=999",
    "--model.embed_dim=8", "--model.hidden_dim=16", "--model.dropout=0.3",
    "--train.epochs=2", "--train.batch_size=8", "--train.valid_decode=5", "--train.warmup=2",
    "--train.teacher_forcing=0.7",
]  # fmt: skip
HOLD_AT = 4  # the optimizer step (1-based, per rank) where the signal lands

# Loaded by every Python process of the run (launcher and ranks) when QKV_TEST_HOLD is set.
SITECUSTOMIZE = textwrap.dedent(
    """
    import os
    if os.environ.get("QKV_TEST_HOLD") and os.environ.get("RANK") is not None:
        import signal, time
        import qkv.translation.training as training

        real, calls, hold = training._loss, [0], int(os.environ["QKV_TEST_HOLD"])

        def signal_seen():
            for signum in (signal.SIGINT, signal.SIGTERM):
                group = getattr(signal.getsignal(signum), "__self__", None)  # ProcessGroup._record
                if getattr(group, "_signal", 0):
                    return True
            return False

        def loss(model, batch, t):
            out = real(model, batch, t)
            calls[0] += 1
            if calls[0] == hold:
                os.write(1, f"holding {os.environ['RANK']}\\n".encode())  # one write: lines never interleave
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and not signal_seen():
                    time.sleep(0.01)
            return out

        training._loss = loss
    """
)


def qkv_train(out: Path, *extra: str, hold_dir: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    if hold_dir is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(hold_dir), env.get("PYTHONPATH", "")) if p)
        env["QKV_TEST_HOLD"] = str(HOLD_AT)
    return subprocess.Popen(
        [sys.executable, "-m", "qkv", "train", *ARGS, "--out", str(out), "--nproc", "2", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # the test's own process group never sees the signal
    )


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"qkv train --nproc 2 did not finish in {timeout} s\n{out}\n{err}") from None
    return proc.returncode, out, err


def wait_for_holding(proc: subprocess.Popen, ranks: int, timeout: float = 180) -> None:
    seen, lines, deadline = set(), [], time.monotonic() + timeout
    while len(seen) < ranks and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if line.startswith("holding"):
            seen.add(line.split()[1])
    if len(seen) < ranks:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        raise AssertionError(f"the ranks never reached step {HOLD_AT}: {lines}\n{err}")


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(load_checkpoint(run).path / "model.safetensors"))


def test_sigterm_to_the_launcher_stops_every_rank_and_resume_is_bitwise(tmp_path):
    hold_dir = tmp_path / "site"
    hold_dir.mkdir()
    (hold_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)

    code, out, err = finish(qkv_train(tmp_path / "reference"))
    assert code == 0, (out, err)
    reference = load_checkpoint(tmp_path / "reference").state
    total = reference["step"]
    assert total > HOLD_AT + 2, total

    run = tmp_path / "stopped"
    proc = qkv_train(run, hold_dir=hold_dir)
    wait_for_holding(proc, ranks=2)
    proc.send_signal(signal.SIGTERM)  # the launcher only: the agent passes it on
    code, out, err = finish(proc)
    assert code == 128 + signal.SIGTERM, (code, out, err)
    stopped = load_checkpoint(run).state
    assert stopped["step"] == HOLD_AT, stopped["step"]  # the step under way was finished, then saved

    code, out, err = finish(qkv_train(run, "--resume"))
    assert code == 0, (out, err)
    assert load_checkpoint(run).state["step"] == total
    a, b = weights(run), weights(tmp_path / "reference")
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"parameters differ from the uninterrupted run: {differ}"
