"""Progress display with a fake stream and a fake clock."""

from __future__ import annotations

import io

import pytest
import torch

from qkv.train import Progress
from qkv.train.progress import _value_text


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


def test_log_mode_prints_a_line_at_most_every_log_interval():
    out, clock = Stream(tty=False), Clock()
    with Progress(100, desc="train", stream=out, clock=clock) as bar:
        for i in range(100):
            clock.t = i + 1.0  # one step per second
            bar.update(loss=2.0 - i / 100)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    # the first step, then every 10 s (t = 11, 21, ..., 91), then the summary
    assert len(lines) == 11
    assert lines[0] == "train: 1% 1/100 step [00:01<01:39, 1.00 step/s] loss=2"
    assert lines[1] == "train: 11% 11/100 step [00:11<01:29, 1.00 step/s] loss=1.9"
    assert lines[9].startswith("train: 91% 91/100 step [01:31<00:09, ")
    assert lines[-1] == "train: done 100/100 step in 01:40 (1.00 step/s) loss=1.01"


def test_tty_mode_redraws_one_line_at_most_every_min_interval():
    out, clock = Stream(tty=True), Clock()
    bar = Progress(50, desc="eval", unit="batch", stream=out, clock=clock, width=200)
    for i in range(50):
        clock.t = 0.1 * (i + 1)
        bar.update(acc=0.5)
    text = out.getvalue()
    assert "\n" not in text  # one line, redrawn in place
    frames = text.split("\r")[1:]
    # draws at t = 0.1 (first), then every 0.5 s: 0.6, 1.1, ..., 4.6, then the final one at 5.0
    assert len(frames) == 11
    assert (
        frames[0].rstrip()
        == "eval:   2%|                    | 1/50 batch [00:00<00:05, 10.00 batch/s] acc=0.5"
    )
    assert (
        frames[5]
        .rstrip()
        .startswith("eval:  52%|##########          | 26/50 batch [00:03<00:02, 10.00 batch/s]")
    )
    assert frames[-1] == "eval: 100%|####################| 50/50 batch [00:05<00:00, 10.00 batch/s] acc=0.5"
    bar.close()
    tail = out.getvalue()[len(text) :]
    assert (
        tail
        == "\r" + " " * len(frames[-1]) + "\r" + "eval: done 50/50 batch in 00:05 (10.00 batch/s) acc=0.5\n"
    )


def test_write_prints_above_the_bar_and_redraws_it():
    out, clock = Stream(tty=True), Clock()
    bar = Progress(10, desc="t", stream=out, clock=clock, width=200)
    clock.t = 1.0
    bar.update(3)
    drawn = bar.line()
    before = out.getvalue()
    bar.write("checkpoint saved")
    after = out.getvalue()[len(before) :]
    assert after == "\r" + " " * len(drawn) + "\r" + "checkpoint saved\n" + "\r" + drawn
    log = Stream(tty=False)
    p = Progress(10, desc="t", stream=log, clock=clock)
    p.write("hello")
    assert log.getvalue() == "hello\n"


def test_shorter_frames_erase_the_previous_one():
    out, clock = Stream(tty=True), Clock()
    bar = Progress(None, desc="x", stream=out, clock=clock, width=200, min_interval=0)
    clock.t = 1.0
    bar.update(note="a long note")
    first = out.getvalue()
    clock.t = 2.0
    bar.update(note="b")
    second = out.getvalue()[len(first) :]
    assert len(second) == len(first)  # padded with spaces over the longer frame
    assert second.rstrip() == "\rx: 2 step [00:02, 1.00 step/s] note=b"


def test_unknown_total_slow_rates_and_stopped_runs():
    out, clock = Stream(tty=False), Clock()
    with Progress(None, desc="gen", unit="sentence", stream=out, clock=clock) as bar:
        clock.t = 4.0
        bar.update(2)
    assert out.getvalue().splitlines() == [
        "gen: 2 sentence [00:04, 2.00 s/sentence]",
        "gen: done 2 sentence in 00:04 (2.00 s/sentence)",
    ]
    out = Stream(tty=False)

    def interrupted_run():
        with Progress(10, desc="t", stream=out, clock=clock) as bar:
            clock.t = 6.0
            bar.update(1)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted_run()
    assert out.getvalue().splitlines()[-1] == "t: stopped at 1/10 step in 00:02 (2.00 s/step)"


def test_close_is_idempotent_and_disable_prints_nothing():
    out, clock = Stream(tty=False), Clock()
    bar = Progress(2, desc="t", stream=out, clock=clock)
    bar.update(2)
    bar.close()
    bar.close()
    bar.update(1)
    assert len(out.getvalue().splitlines()) == 2
    quiet = Stream(tty=True)
    with Progress(5, desc="t", stream=quiet, clock=clock, disable=True) as bar:
        bar.update(5, loss=1.0)
        bar.write("x")
    assert quiet.getvalue() == ""
    assert bar.n == 5


def test_long_lines_are_cut_to_the_terminal_width():
    out, clock = Stream(tty=True), Clock()
    bar = Progress(10, desc="t", stream=out, clock=clock, width=40)
    clock.t = 1.0
    bar.update(1, note="x" * 100)
    assert len(out.getvalue()) == 1 + 39


def test_field_values_are_compact():
    assert _value_text(12345.6) == "12.3k"
    assert _value_text(3_200_000) == "3.2M"
    assert _value_text(2.314159) == "2.314"
    assert _value_text(0.000123) == "1.230e-04"
    assert _value_text(42) == "42"
    assert _value_text(torch.tensor(0.5)) == "0.5"
    assert _value_text(float("nan")) == "nan"
    assert _value_text("warmup") == "warmup"
    assert _value_text(True) == "True"


def test_bad_arguments():
    with pytest.raises(ValueError, match="total: expected an int >= 0 or None, got -1"):
        Progress(-1, desc="t")
    with pytest.raises(ValueError, match=r"min_interval: expected a number of seconds >= 0, got -0\.5"):
        Progress(1, desc="t", min_interval=-0.5)
    bar = Progress(1, desc="t", stream=Stream(tty=False))
    with pytest.raises(ValueError, match="n: expected an int >= 0, got -1"):
        bar.update(-1)


def test_terminal_bar_is_tqdm_and_shares_the_terminal_with_tqdm_writes():
    from tqdm import tqdm

    out, clock = Stream(tty=True), Clock()
    bar = Progress(10, desc="t", stream=out, clock=clock, width=200)
    clock.t = 1.0
    bar.update(3)
    drawn = bar.line()
    before = out.getvalue()
    tqdm.write("from elsewhere", file=out)  # any tqdm user's message: the bar moves below it
    after = out.getvalue()[len(before) :]
    assert after == "\r" + " " * len(drawn) + "\r" + "from elsewhere\n" + "\r" + drawn
    bar.close()


def test_quiet_log_mode_writes_plain_lines_only():
    out, clock = Stream(tty=False), Clock()
    with Progress(4, desc="t", stream=out, clock=clock, log_interval=2) as bar:
        for i in range(4):
            clock.t = i + 1.0
            bar.update(loss=1.0)
        bar.write("note")
    text = out.getvalue()
    assert bar._bar is None  # no tqdm bar: nothing redraws in place
    assert "\r" not in text and "\x1b" not in text
    assert text.splitlines() == [
        "t: 25% 1/4 step [00:01<00:03, 1.00 step/s] loss=1",
        "t: 75% 3/4 step [00:03<00:01, 1.00 step/s] loss=1",
        "note",
        "t: done 4/4 step in 00:04 (1.00 step/s) loss=1",
    ]
