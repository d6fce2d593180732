"""Progress: tqdm's own bar on a terminal, tqdm's meter as a log line every N steps elsewhere."""

from __future__ import annotations

import io

import pytest
from tqdm import tqdm

from qkv.train import progress_bar
from qkv.train.progress import LogLines


class Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


@pytest.fixture
def clock(monkeypatch):
    """tqdm's clock, set by hand (tqdm reads it when a bar is made)."""
    clock = Clock()
    monkeypatch.setattr("tqdm.std.time", clock)
    return clock


def test_log_lines_every_n_steps_and_once_at_the_end(clock):
    out = Stream(tty=False)
    bar = progress_bar(100, desc="train", stream=out, every=25)
    for i in range(90):
        clock.t = i + 1.0  # one step per second
        bar.set_postfix(loss=f"{2.0 - i / 100:.2f}", refresh=False)  # as the Trainer does
        bar.update(1)
    bar.close()
    bar.close()  # closing twice prints nothing more
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    assert lines == [
        "train:   0% 0/100 [00:00<?, ?step/s]",  # it started
        "train:  25% 25/100 [00:25<01:15,  1.00step/s, loss=1.76]",
        "train:  50% 50/100 [00:50<00:50,  1.00step/s, loss=1.51]",
        "train:  75% 75/100 [01:15<00:25,  1.00step/s, loss=1.26]",
        "train:  90% 90/100 [01:30<00:10,  1.00step/s, loss=1.11]",  # stopped early: the last line
    ]


def test_a_resumed_count_continues_and_its_rate_counts_only_this_session(clock):
    out = Stream(tty=False)
    bar = progress_bar(100, desc="t", initial=50, stream=out, every=10)
    clock.t = 20.0
    bar.update(10)  # 10 steps in 20 s here: 0.5 step/s, 40 left
    assert out.getvalue().splitlines()[1:] == ["t:  60% 60/100 [00:20<01:20,  2.00s/step]"]


def test_messages_go_to_the_stream_between_lines():
    out = Stream(tty=False)
    bar = progress_bar(4, desc="t", stream=out, every=2)
    bar.update(2)
    bar.write("epoch 1: done", file=out)
    bar.update(2)
    lines = out.getvalue().splitlines()
    assert (
        lines[2] == "epoch 1: done"
        and lines[1].startswith("t:  50% 2/4")
        and lines[3].startswith("t: 100% 4/4")
    )


def test_a_terminal_gets_tqdm_itself_with_total_and_initial():
    out = Stream(tty=True)
    bar = progress_bar(24, initial=10, desc="train", stream=out)
    assert isinstance(bar, tqdm) and (bar.total, bar.n, bar.initial) == (24, 10, 10)
    bar.set_postfix(loss="0.5", refresh=False)
    bar.update(1)
    bar.close()
    assert "11/24" in out.getvalue() and "loss=0.5" in out.getvalue()
    assert isinstance(progress_bar(24, desc="train", stream=Stream(tty=False)).fp._wrapped, LogLines)


def test_a_closed_stream_does_not_stop_training():
    out = Stream(tty=False)
    bar = progress_bar(2, desc="t", stream=out, every=1)
    out.close()
    bar.update(1)  # ValueError on a closed stream, swallowed
    bar.close()
    assert bar.n == 1
