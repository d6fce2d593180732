"""The training loop, the translator and the train/translate/evaluate commands on tiny runs."""

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from qkv.application.run_config import parse_override
from qkv.cli.main import main
from qkv.train import TrainConfig
from qkv.train.checkpoint import load_checkpoint
from qkv.train.loop import learning_rate
from qkv.translation import Translator, resolve, resume_config, train


def tiny(model="bahdanau", **train_kw):
    small = (
        {"embed_dim": 16, "hidden_dim": 24}
        if model != "transformer"
        else {"d_model": 32, "num_heads": 2, "ff_dim": 32, "encoder_layers": 1, "decoder_layers": 1}
    )
    return resolve(
        {
            "data": {"corpus": "numbers", "size": 300, "options": {"max_value": 999}},
            "model": small,
            "train": {
                "epochs": 2,
                "batch_size": 32,
                "valid_decode": 10,
                "warmup": 2,
                "threads": 1,
                **train_kw,
            },
        },
        preset=model,
    )


def weights(run):
    return load_file(str(load_checkpoint(run).path / "model.safetensors"))


@pytest.mark.parametrize("model", ["bahdanau", "transformer"])
def test_resume_is_bitwise_exact(tmp_path, model):
    """K steps in one go == K/2 steps, a new process-like restart, K/2 more (CPU, bitwise)."""
    cfg = tiny(model, teacher_forcing=0.7 if model != "transformer" else 1.0)
    full = train(cfg, tmp_path / "full", progress=False)
    half = train(cfg, tmp_path / "half", progress=False, stop_after_steps=5)
    assert half.interrupted and half.step == 5
    torch.manual_seed(1234)  # a different global RNG state: the checkpoint must restore it
    rest = train(cfg, tmp_path / "half", resume=True, progress=False)
    assert rest.step == full.step
    a, b = weights(tmp_path / "full"), weights(tmp_path / "half")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h["train_loss"] for h in rest.history] == [h["train_loss"] for h in full.history]
    assert [h["valid_loss"] for h in rest.history] == [h["valid_loss"] for h in full.history]


def test_keyboard_interrupt_saves_and_resume_continues(tmp_path, monkeypatch):
    import qkv.translation.training as loop

    cfg = tiny()
    calls = {"n": 0}
    real = loop._loss

    def flaky(model, batch, t):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(model, batch, t)

    monkeypatch.setattr(loop, "_loss", flaky)
    r = train(cfg, tmp_path / "run", progress=False)
    assert r.interrupted and r.step == 3
    assert load_checkpoint(tmp_path / "run").step == 3
    monkeypatch.setattr(loop, "_loss", real)
    r2 = train(cfg, tmp_path / "run", resume=True, progress=False)
    assert not r2.interrupted and r2.step > 3


def test_existing_run_is_never_overwritten(tmp_path):
    cfg = tiny(max_steps=2, epochs=1)
    train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(FileExistsError, match="already holds a run; pass --resume"):
        train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(FileNotFoundError, match="--resume: no checkpoint"):
        train(cfg, tmp_path / "other", resume=True, progress=False)


def test_learning_rate_schedule():
    t = TrainConfig(lr=1.0, warmup=10, schedule="cosine", min_lr=0.1)
    assert learning_rate(0, t, 110) == pytest.approx(0.1)
    assert learning_rate(9, t, 110) == pytest.approx(1.0)
    assert learning_rate(60, t, 110) == pytest.approx(0.55)
    assert learning_rate(110, t, 110) == pytest.approx(0.1)
    inverse_sqrt = TrainConfig(lr=1.0, warmup=10, schedule="inverse_sqrt")
    assert learning_rate(50, inverse_sqrt, 110) == pytest.approx((10 / 51) ** 0.5)


def test_config_overrides_and_errors():
    assert parse_override("--train.lr=1e-3") == (["train", "lr"], 0.001)
    assert parse_override("--data.corpus=numbers-de") == (["data", "corpus"], "numbers-de")
    cfg = resolve(preset="luong", overrides=["--model.luong_score=concat", "--train.epochs=3"])
    assert cfg.model["attention"] == "luong" and cfg.model["luong_score"] == "concat"
    assert cfg.train.epochs == 3
    with pytest.raises(ValueError, match=r"config \[train\]: unknown keys \['lrr'\]"):
        resolve(overrides=["--train.lrr=1"])
    with pytest.raises(ValueError, match=r"unknown keys \['d_model'\]"):
        resolve(preset="bahdanau", overrides=["--model.d_model=3"])
    with pytest.raises(ValueError, match="model: unknown model 'gpt'"):
        resolve(preset="gpt")
    with pytest.raises(ValueError, match=r"config \[train\] epochs: expected an int >= 1, got 0"):
        resolve(overrides=["--train.epochs=0"])
    with pytest.raises(
        ValueError, match=r"config \[data\] tokenizer: expected word \| char \| bpe, got 'bytes'"
    ):
        resolve(overrides=["--data.tokenizer=bytes"])
    with pytest.raises(ValueError, match=r"config \[train\] schedule: expected constant \| cosine"):
        resolve(overrides=["--train.schedule=linear"])
    with pytest.raises(
        ValueError, match=r"config \[train\] teacher_forcing: expected a ratio in \[0, 1\], got 1.5"
    ):
        resolve(overrides=["--train.teacher_forcing=1.5"])


def test_resume_config_applies_safe_overrides_and_refuses_the_rest():
    run = resolve(preset="transformer", overrides=["--model.d_model=32", "--train.epochs=2"]).to_dict()
    cfg, applied = resume_config(
        run, ["--train.epochs=5", "--train.save_every_steps=10", "--model.d_model=32"]
    )
    assert applied == ["train.epochs=5", "train.save_every_steps=10"]  # an unchanged value is no change
    assert (cfg.train.epochs, cfg.train.save_every_steps, cfg.model["d_model"]) == (5, 10, 32)
    assert (
        cfg.model == run["model"] and cfg.data == resolve().data
    )  # validated against the run, not the defaults
    for override, key in [("--train.lr=1", "train.lr"), ("--model.d_model=64", "model.d_model"),
                          ("--data.corpus=dates-fr", "data.corpus")]:  # fmt: skip
        with pytest.raises(ValueError, match=rf"--resume: {re.escape(key)} cannot change in a run under way"):
            resume_config(run, [override])
    with pytest.raises(ValueError, match=r"\[train\] epochs: expected an int >= 1, got 0"):
        resume_config(run, ["--train.epochs=0"])


def test_translator_evaluates_and_aligns(tmp_path):
    cfg = tiny(epochs=1)
    train(cfg, tmp_path / "run", progress=False)
    tr = Translator.load(tmp_path / "run")
    r = tr.translate("4 2")[0]
    assert r.attention is not None and r.attention.shape == (len(r.target_tokens) + 1, 2)
    torch.testing.assert_close(r.attention.sum(-1), torch.ones(r.attention.shape[0]))
    from qkv.translation import load_corpus

    m = tr.evaluate(load_corpus(cfg.data)["test"][:10])
    assert set(m) >= {"n", "exact_match", "bleu", "chrf", "aer"}
    assert 0.0 <= m["exact_match"] <= 1.0 and 0.0 <= m["aer"] <= 1.0


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_train_translate_evaluate_on_a_tsv_file(tmp_path, capsys):
    tsv = tmp_path / "pairs.tsv"
    lines = [f"{a} {b}\t{b} {a}\tCC-BY" for a in "abcdefg" for b in "hijklmn"]
    lines.insert(3, "no tab on this line")
    tsv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    # the command prints the loader's warning as a message (the library warns: test_translation_data_tsv.py)
    code, stdout, err = run(
        capsys, "train", "--data", str(tsv), "--model", "luong", "--out", str(out), "--quiet",
        "--train.epochs=1", "--model.hidden_dim=16", "--model.embed_dim=8", "--data.valid_frac=0.1",
    )  # fmt: skip
    assert code == 0, stdout
    assert re.search(r"^warning: load_tsv: skipped 1 malformed line\(s\) of .*: line 4$", err, re.M), err
    assert "done: step" in stdout
    png = tmp_path / "attention.png"
    code, stdout, _ = run(
        capsys, "translate", "--checkpoint", str(out), "a h", "--beam", "2", "--heatmap", str(png)
    )
    assert code == 0
    assert "source: 0:a 1:h" in stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, stdout, _ = run(capsys, "translate", "--checkpoint", str(out), "a h", "--json", "--beam", "2")
    doc = json.loads(stdout)
    assert doc[0]["source"] == "a h" and isinstance(doc[0]["translation"], str)
    code, stdout, _ = run(capsys, "evaluate", "--checkpoint", str(out), "--split", "test", "--json")
    assert code == 0
    metrics = json.loads(stdout)
    assert {"exact_match", "bleu", "chrf", "n"} <= set(metrics)
    assert "aer" not in metrics  # no gold alignment in a TSV file


def test_cli_errors_are_clear(tmp_path, capsys):
    code, _, err = run(capsys, "train", "--data", str(tmp_path / "missing.tsv"), "--out", str(tmp_path / "r"))
    assert code == 2 and "is neither a built-in corpus" in err
    code, _, err = run(capsys, "translate", "--checkpoint", str(tmp_path / "nope"), "x")
    assert code == 2 and "--checkpoint: " in err
    code, _, err = run(capsys, "train", "--train.bogus=1", "--out", str(tmp_path / "r"))
    assert code == 2 and "unknown keys ['bogus']" in err


def test_pickle_offered_as_checkpoint_is_refused(tmp_path, capsys):
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(pickle.dumps(Evil()))
    code, _, err = run(capsys, "translate", "--checkpoint", str(run_dir), "x")
    assert code == 2
    assert "no checkpoint found" in err
    code, _, err = run(capsys, "translate", "--checkpoint", str(run_dir / "checkpoint.pt"), "x")
    assert code == 2 and "checkpoint.pt: expected a run or ckpt-* directory" in err
    assert not marker.exists()


def test_validation_decoding_limit_counts_target_tokens_not_words():
    from qkv.translation.data import Example, build_tokenizer
    from qkv.translation.training import _max_len

    examples = [Example("a b", "quatre vingt dix")]
    chars = build_tokenizer("char", [e.target for e in examples])
    words = build_tokenizer("word", [e.target for e in examples])
    cfg = tiny()
    assert _max_len(cfg, examples, chars) == 2 * len("quatre vingt dix") + 10
    assert _max_len(cfg, examples, words) == 2 * 3 + 10
    assert _max_len(tiny(max_decode_len=7), examples, chars) == 7


def test_cli_resume_takes_the_runs_config_and_safe_overrides(tmp_path, capsys):
    out = str(tmp_path / "run")
    common = ["--data.size=200", "--train.valid_decode=2", "--model.hidden_dim=8", "--model.embed_dim=8"]
    code, _, _ = run(capsys, "train", "--out", out, "--quiet", "--train.epochs=1", *common)
    assert code == 0
    code, shown, _ = run(capsys, "train", "--out", out, "--resume", "--show-config", "--train.epochs=2")
    assert code == 0 and "hidden_dim = 8\n" in shown and "epochs = 2\n" in shown  # the run's config
    code, stdout, err = run(capsys, "train", "--out", out, "--resume", "--quiet", "--train.epochs=2")
    assert code == 0 and "resuming with train.epochs=2" in err and "done: step" in stdout
    assert load_checkpoint(out).config["train"]["epochs"] == 2
    assert len(load_checkpoint(out).state["history"]) == 2
    code, _, err = run(capsys, "train", "--out", out, "--resume", "--model.hidden_dim=16")
    assert code == 2 and "model.hidden_dim cannot change in a run under way (the run has 8, got 16)" in err
