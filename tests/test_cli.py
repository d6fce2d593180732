"""The ``qkv`` command: in-process ``main([...])`` runs, the entry points, clear errors (exit 2)."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import qkv
from qkv.cli.main import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(capsys, *argv: str) -> dict:
    code, out, err = run(capsys, "explain", "--json", *argv)
    assert code == 0, err
    return json.loads(out)


# ----------------------------------------------------------------------------- explain


def test_explain_default_prints_the_seq2seq_steps(capsys):
    code, out, err = run(capsys, "explain")
    assert code == 0
    assert err == ""
    for needle in ("Seq2Seq", "s0", "h1", "1.5000", "3.5000", "0.1192", "0.8808", "2.7616", "3.7616"):
        assert needle in out
    assert out.count("Step ") == 6


def test_explain_json_default(capsys):
    d = run_json(capsys)
    w = [1 / (1 + math.exp(2)), 1 / (1 + math.exp(-2))]
    assert d["scores"] == [1.5, 3.5]
    assert d["weights"] == pytest.approx(w, abs=1e-12)
    assert d["output"] == pytest.approx([w[0] * 1 + w[1] * 3, w[0] * 2 + w[1] * 4], abs=1e-12)
    assert d["inputs"]["query"] == [0.5, 0.5]
    assert [s["name"] for s in d["steps"]][-1] == "output"


@pytest.mark.parametrize("score", ["dot", "scaled_dot", "general", "additive", "gaussian", "cosine"])
def test_explain_every_score(capsys, score):
    d = run_json(capsys, "--score", score)
    assert d["score"] == score
    assert sum(d["weights"]) == pytest.approx(1.0, abs=1e-12)
    assert len(d["output"]) == 2


def test_explain_score_options_change_the_numbers(capsys):
    base = run_json(capsys, "--score", "general")
    assert run_json(capsys, "--score", "general", "--seed", "0")["weights"] == base["weights"]
    assert run_json(capsys, "--score", "general", "--seed", "3")["weights"] != base["weights"]
    g1 = run_json(capsys, "--score", "gaussian")
    g2 = run_json(capsys, "--score", "gaussian", "--sigma", "3")
    assert g2["parameters"]["sigma"] == 3.0
    assert g1["weights"] != g2["weights"]
    c = run_json(capsys, "--score", "cosine", "--temperature", "0.1")
    assert c["parameters"]["temperature"] == 0.1
    a = run_json(capsys, "--score", "additive", "--hidden", "5")
    assert len(a["parameters"]["v"]) == 5
    s = run_json(capsys, "--scale", "0.5")
    assert s["scaled_scores"] == [0.75, 1.75]


def test_explain_custom_vectors_and_negative_numbers(capsys):
    d = run_json(capsys, "--query", "-1,2", "--keys", "1,0;0,1", "--values", "10;20")
    w = [1 / (1 + math.exp(3)), 1 / (1 + math.exp(-3))]
    assert d["scores"] == [-1.0, 2.0]
    assert d["weights"] == pytest.approx(w, abs=1e-12)
    assert d["output"] == pytest.approx([10 * w[0] + 20 * w[1]], abs=1e-12)
    assert run_json(capsys, "--query=-1,2", "--keys", "1,0;0,1", "--values", "10;20") == d
    two = run_json(capsys, "--query", "0.5,0.5;1,0")
    assert len(two["weights"]) == 2
    assert len(two["weights"][0]) == 2


def test_explain_precision(capsys):
    code, out, _ = run(capsys, "explain", "--precision", "2")
    assert code == 0
    assert "0.12" in out
    assert "0.1192" not in out
    _, out6, _ = run(capsys, "explain", "--precision", "6")
    assert "0.119203" in out6


def test_explain_kernel_regression(capsys):
    d = run_json(capsys, "--kernel-regression")
    assert d["output"] == [45.5]
    assert d["weights"] == [0.5, 0.5]
    d = run_json(capsys, "--kernel-regression", "--query", "56.5")
    assert d["output"][0] == pytest.approx(43 / (1 + math.exp(-1)) + 48 / (1 + math.exp(1)), abs=1e-12)
    d = run_json(capsys, "--kernel-regression", "--query", "56,57", "--sigma", "2")
    assert d["output"][1] == 45.5
    code, out, _ = run(capsys, "explain", "--kernel-regression")
    assert code == 0
    assert "45.5000" in out
    assert "0.5000" in out


def test_explain_self_attention(capsys):
    d = run_json(capsys, "--self-attention", "--tokens", "I,love,cats")
    assert d["tokens"] == ["I", "love", "cats"]
    assert len(d["weights"]) == 3
    assert all(sum(row) == pytest.approx(1.0, abs=1e-12) for row in d["weights"])
    names = [s["name"] for s in d["steps"]]
    assert names[:4] == ["x", "W_q", "W_k", "W_v"]
    code, out, _ = run(capsys, "explain", "--self-attention", "--d-model", "3", "--d-k", "2")
    assert code == 0
    assert "sqrt(2)" in out
    assert "Z = A V" in out


def test_explain_pooling_shows_the_article_layer_and_its_trap(capsys):
    d = run_json(capsys, "--pooling", "--length", "5", "--units", "2", "--seed", "3")
    names = [s["name"] for s in d["steps"]]
    assert names == [
        "x",
        "w",
        "bias",
        "query",
        "scores",
        "weights",
        "pool_weights",
        "output",
        "trap_weights",
        "trap",
    ]
    steps = {s["name"]: s["value"] for s in d["steps"]}
    assert len(steps["x"]) == 5 and len(steps["x"][0]) == 2
    assert sum(steps["pool_weights"]) == pytest.approx(1.0, abs=1e-12)
    inference, training, difference = steps["trap"]
    assert inference == pytest.approx(d["output"], abs=1e-12)
    assert [t - i for t, i in zip(training, inference)] == pytest.approx(difference, abs=1e-12)
    assert d["check"]["max_abs_diff"] < 1e-9
    code, out, _ = run(capsys, "explain", "--pooling")
    assert code == 0 and "training (raw scores)" in out and "Q = K = X W" in out


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--pooling", "--sigma", "2"], "--sigma"),
        (["--pooling", "--length", "0"], "--length"),
        (["--units", "3"], "--units"),
        (["--query", "1,x"], "--query"),
        (["--query", ""], "--query"),
        (["--keys", "1,2;3"], "--keys"),
        (["--keys", "1,2;;3,4"], "--keys"),
        (["--keys", "1,2,3"], "--keys"),
        (["--values", "1;2;3"], "--values"),
        (["--values", "nan;1"], "--values"),
        (["--sigma", "0", "--score", "gaussian"], "--sigma"),
        (["--temperature", "abc"], "--temperature"),
        (["--precision", "-1"], "--precision"),
        (["--score", "nope"], "--score"),
        (["--tokens", "a,b"], "--tokens"),
        (["--self-attention", "--score", "dot"], "--score"),
        (["--kernel-regression", "--seed", "1"], "--seed"),
        (["--kernel-regression", "--keys", "1,2;3,4"], "--keys"),
        (["--self-attention", "--kernel-regression"], "--kernel-regression"),
        (["--bogus"], "--bogus"),
    ],
)
def test_explain_bad_input_is_a_clear_error(capsys, argv, option):
    code, out, err = run(capsys, "explain", *argv)
    assert code == 2
    assert out == ""
    assert "qkv: error:" in err
    assert option in err
    assert "Traceback" not in err


# ----------------------------------------------------------------------------- main, demo


def test_version_and_help(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out.strip() == f"qkv {qkv.__version__}"
    code, out, _ = run(capsys, "explain", "--help")
    assert code == 0
    assert "--kernel-regression" in out


def test_no_command_is_an_error(capsys):
    code, _, err = run(capsys)
    assert code == 2
    assert "qkv: error: a command is required" in err


@pytest.fixture
def small_adding_problem(monkeypatch):
    """The demo's comparison at length 30: the same code, a second instead of several."""
    import qkv.examples.adding as adding

    compare = adding.compare_pooling
    monkeypatch.setattr(adding, "compare_pooling", lambda: compare(length=30, steps=200, test_size=200))


def test_demo_examples_runs_the_four_examples(capsys, small_adding_problem):
    code, out, _ = run(capsys, "demo", "--examples")
    assert code == 0
    assert (
        out.index("Seq2Seq")
        < out.index("Self-attention")
        < out.index("Kernel regression")
        < out.index("Attention pooling")
    )
    for needle in (
        "1/4",
        "2/4",
        "3/4",
        "4/4",
        "0.8808",
        "2.7616",
        "45.5000",
        "The adding problem, length 30",
    ):
        assert needle in out
    code, out, _ = run(capsys, "demo", "--examples", "--json")
    assert code == 0
    d = json.loads(out)
    assert list(d) == ["seq2seq", "self_attention", "kernel_regression", "pooling", "adding_problem"]
    assert d["kernel_regression"]["output"] == [45.5]
    models = d["adding_problem"]["models"]
    assert models["fixed"]["mse_inference"] < 0.01 < models["mean"]["mse_inference"]
    assert models["article"]["mismatch"] > 0.1  # trained on raw scores, evaluated with the softmax


def test_every_command_is_one_module():
    """`qkv <name>` is `qkv.cli.<name>`: its `add_parser` registers it and its handler lives there;
    the benchmarks are not a command (they run as `python -m benchmarks.<suite>`)."""
    from qkv.cli.main import COMMANDS, build_parser

    names = [m.__name__.rsplit(".", 1)[-1] for m in COMMANDS]
    assert names == [
        "explain", "train", "translate", "evaluate", "match", "caption", "transcribe", "viz", "analyze", "demo",
    ]  # fmt: skip
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == names
    for module, name in zip(COMMANDS, names):
        handler = sub.choices[name].get_default("handler")
        assert handler is module.run, name


def test_bench_is_not_a_command(capsys):
    code, out, err = run(capsys, "bench")
    assert (code, out) == (2, "")
    assert "invalid choice: 'bench'" in err


# ----------------------------------------------------------------------------- entry points


def _console_script() -> list[str]:
    exe = Path(sys.executable).parent / ("qkv.exe" if os.name == "nt" else "qkv")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "qkv"]


@pytest.mark.parametrize("entry", ["console_script", "python_-m_qkv"])
def test_entry_points_in_a_subprocess(entry):
    cmd = _console_script() if entry == "console_script" else [sys.executable, "-m", "qkv"]
    r = subprocess.run([*cmd, "explain", "--json"], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["weights"] == pytest.approx([0.1192, 0.8808], abs=1e-4)
    assert d["output"] == pytest.approx([2.7616, 3.7616], abs=1e-4)
    bad = subprocess.run(
        [*cmd, "explain", "--keys", "1,2;3"], capture_output=True, text=True, timeout=120, check=False
    )
    assert bad.returncode == 2
    assert "qkv: error: argument --keys" in bad.stderr
    assert "Traceback" not in bad.stderr


# ----------------------------------------------------------------------------- the small things


def test_error_message_keeps_every_quote():
    from qkv.cli import error_message

    assert (
        error_message(FileNotFoundError("config: no such file 'x.toml'")) == "config: no such file 'x.toml'"
    )
    assert error_message(KeyError("config: no key 'model'")) == "config: no key 'model'"  # not its repr
    assert error_message(KeyError("model")) == "model"
    assert error_message(KeyError(3)) == "3"
    assert error_message(ValueError('"quoted" at both ends"')) == '"quoted" at both ends"'


@pytest.mark.parametrize(
    "error",
    [
        FileNotFoundError("checkpoint: no such file 'model.safetensors'"),
        KeyError("checkpoint: no key 'vocab' in 'state.json'"),
    ],
)
def test_checkpoint_errors_keep_their_closing_quote(capsys, tmp_path, monkeypatch, error):
    """`qkv viz --checkpoint`: the message ended "... 'model.safetensors" (the strip of
    KeyError's quotes also ate the message's own closing quote)."""
    from qkv.translation.translator import Translator

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(Translator, "load", classmethod(fail))
    code, out, err = run(
        capsys, "viz", "--checkpoint", str(tmp_path), "1 2", "--out", str(tmp_path / "a.html")
    )
    assert (code, out) == (2, "")
    want = error.args[0]
    assert err.strip() == f"qkv: error: --checkpoint: {want}"


def test_train_missing_config_keeps_the_closing_quote(capsys, tmp_path):
    """`qkv train x.toml` printed "no such file 'x.toml" (its closing quote stripped)."""
    missing = tmp_path / "x.toml"
    code, _, err = run(capsys, "train", str(missing))
    assert code == 2
    assert err.strip().endswith(f"no such file {str(missing)!r}")


@pytest.mark.parametrize("argv", [["explain"], ["demo", "--examples"], ["explain", "--json"]])
def test_closed_pipe_ends_quietly(argv):
    """`qkv explain | head -2`: the reader has gone; no BrokenPipeError traceback, no
    "Exception ignored" at exit, the exit code a shell gives a writer whose reader left."""
    read, write = os.pipe()
    os.close(read)  # no reader at all: the first write fails, whatever the pipe buffer holds
    try:
        r = subprocess.run(
            [*_console_script(), *argv],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write)
    assert r.stderr == ""
    assert r.returncode == 141  # 128 + SIGPIPE


def test_demo_help_describes_the_demo(capsys):
    code, out, _ = run(capsys, "demo", "--help")
    assert code == 0
    text = " ".join(out.split())
    for needle in (
        "none, the seq2seq baseline that reads one fixed context vector",
        "bahdanau",
        "transformer",
        "report.html",
        "wrong ones marked",
        "--json print the metrics (what metrics.json holds)",
        "--precision N with --examples: decimals shown",
        "--out DIR output directory (default runs/demo; vision: runs/demo-vision; cross-modal: "
        "runs/demo-cross-modal; speech: runs/demo-speech)",
        "qkv demo speech: Listen, Attend and Spell and a Transformer",
        "qkv demo vision: a Vision Transformer on handwritten digits",
        "a CLIP-style matcher of strips of handwritten digits and their English captions",
        "Show, Attend and Tell captioners in English, French and German",
        "{translation,vision,cross-modal,speech}",
    ):
        assert needle in text, needle
    assert "print the steps as one JSON object instead" not in text  # explain's text, not the demo's


def test_demo_options_of_the_other_mode_are_errors(capsys, small_adding_problem):
    code, out, err = run(capsys, "demo", "--examples", "--quick")
    assert (code, out) == (2, "")
    assert "qkv: error: --quick: not used with --examples" in err
    code, _, err = run(capsys, "demo", "--precision", "2", "--out", "/nonexistent/never")
    assert code == 2
    assert "qkv: error: --precision: only used with --examples" in err
    code, out, _ = run(capsys, "demo", "--examples", "--precision", "2")
    assert code == 0 and "0.88" in out and "0.8808" not in out


def test_explain_shows_bidi_controls_in_labels(capsys):
    """A U+202E in a --tokens label reversed the rest of its row in a terminal: it is written as
    its code point now; --json keeps the exact label (as a \\u escape)."""
    code, out, _ = run(capsys, "explain", "--self-attention", "--tokens", "I,\u202elove,cats")
    assert code == 0
    assert "\u27e8U+202E\u27e9love" in out
    assert "\u202e" not in out
    d = run_json(capsys, "--self-attention", "--tokens", "I,\u202elove,cats")
    assert d["tokens"] == ["I", "\u202elove", "cats"]


# ----------------------------------------------------------------------------- dotted overrides


def test_an_override_value_after_a_space_is_its_value():
    from qkv.cli.overrides import split_overrides

    assert split_overrides(["--train.epochs", "3", "--quiet"]) == (["--quiet"], ["--train.epochs=3"])
    assert split_overrides(["--train.lr", "-1e-3"]) == ([], ["--train.lr=-1e-3"])
    assert split_overrides(["--train.lr", "-.5"]) == ([], ["--train.lr=-.5"])
    # a bare key before an option, a TOML file or nothing is a switch
    assert split_overrides(["--data.reverse", "--quiet"]) == (["--quiet"], ["--data.reverse=true"])
    assert split_overrides(["--data.reverse", "configs/x.toml"]) == (
        ["configs/x.toml"],
        ["--data.reverse=true"],
    )
    assert split_overrides(["cfg.toml", "--data.reverse"]) == (["cfg.toml"], ["--data.reverse=true"])
    assert split_overrides(["--data.reverse", "false"]) == ([], ["--data.reverse=false"])
    assert split_overrides(["--train.epochs=3", "4"]) == (["4"], ["--train.epochs=3"])


@pytest.mark.parametrize(
    "spaced",
    [
        ["--train.epochs", "3", "--model.hidden_dim", "48"],
        ["--model.hidden_dim", "48", "--train.epochs", "3", "--data.reverse"],
    ],
)
def test_train_reads_an_override_with_a_space_as_with_an_equals_sign(capsys, spaced):
    joined = ["--train.epochs=3", "--model.hidden_dim=48"] + (
        ["--data.reverse"] if "--data.reverse" in spaced else []
    )
    code, want, _ = run(capsys, "train", "--model", "bahdanau", *joined, "--show-config")
    assert code == 0
    code, got, err = run(capsys, "train", "--model", "bahdanau", *spaced, "--show-config")
    assert code == 0, err
    assert got == want
    assert "epochs = 3\n" in got and "hidden_dim = 48\n" in got
