"""The split of training and its applications: a model-agnostic Trainer, one decoding-length
rule, the layering (qkv.train never imports qkv.application nor an application), no leftover of
the old paths, and the size budgets (train/ within 800 lines, no function body over 60)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

import qkv.application
import qkv.models
import qkv.train
import qkv.translation
from qkv.train import TrainConfig, Trainer, load_checkpoint
from qkv.translation import Translator, decode_limit
from qkv.translation.data import build_tokenizer

SRC = Path(__file__).resolve().parents[1] / "src" / "qkv"

# ----------------------------------------------------------------------------- the Trainer


class Regression:
    """A task that is not translation: linear regression on fixed random data."""

    count_unit = "example"

    def __init__(self, n: int = 64, batch_size: int = 8):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5])
        self.batch_size = batch_size
        self.batches_per_epoch = n // batch_size

    def batches(self, epoch, start):
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(epoch))
        for i in range(start, self.batches_per_epoch):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield self.x[idx], self.y[idx]

    def loss(self, model, batch):
        x, y = batch
        return F.mse_loss(model(x).squeeze(-1), y), len(y)

    @torch.no_grad()
    def validate(self, model):
        return {"valid_loss": float(F.mse_loss(model(self.x).squeeze(-1), self.y)), "valid_r": 0.5}


def _fit(out, *, stop=None, resume=False, patience=0):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.1), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    config = TrainConfig(epochs=3, lr=0.05, warmup=0, patience=patience)
    trainer = Trainer(model, opt, Regression(), config=config, out_dir=out, run_config={"task": "regression"})
    if resume:
        trainer.restore(load_checkpoint(out))
    return trainer.fit(stop_after_steps=stop), model


def test_trainer_trains_any_task_and_resumes_exactly(tmp_path):
    full, model = _fit(tmp_path / "full")
    assert full.step == 24 and len(full.history) == 3 and not full.interrupted
    assert full.history[-1]["valid_loss"] < full.history[0]["valid_loss"]
    assert full.history[0]["valid_r"] == 0.5  # extra validation metrics are recorded
    assert (tmp_path / "full" / "best").is_dir()
    half, _ = _fit(tmp_path / "half", stop=11)
    assert half.interrupted and half.step == 11
    torch.manual_seed(99)  # the checkpoint restores the RNG
    rest, resumed = _fit(tmp_path / "half", resume=True)
    assert rest.step == 24
    assert [h["train_loss"] for h in rest.history] == [h["train_loss"] for h in full.history]
    for a, b in zip(model.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_resume_in_a_later_epoch_is_exact_after_validation_decoding(tmp_path):
    """Validation decoding switches the model to eval mode; the next epoch trains with dropout
    again, so a run resumed in epoch 2 matches an uninterrupted one."""
    from qkv.translation import resolve, train

    cfg = resolve(
        {
            "data": {"corpus": "numbers", "size": 300, "options": {"max_value": 999}},
            "model": {"embed_dim": 16, "hidden_dim": 24, "dropout": 0.3},
            "train": {"epochs": 2, "batch_size": 32, "valid_decode": 10, "warmup": 2, "threads": 1},
        },
        preset="bahdanau",
    )
    full = train(cfg, tmp_path / "full", progress=False)
    half = train(cfg, tmp_path / "half", progress=False, stop_after_steps=12)  # 9 batches an epoch
    assert half.interrupted and len(half.history) == 1
    rest = train(cfg, tmp_path / "half", resume=True, progress=False)
    assert [h["train_loss"] for h in rest.history] == [h["train_loss"] for h in full.history]
    a, b = (
        load_file(str(load_checkpoint(tmp_path / run).path / "model.safetensors")) for run in ("full", "half")
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_trainer_prints_epochs_and_stops_early(tmp_path, capsys):
    class Worse(Regression):
        def validate(self, model):
            return {"valid_loss": 1.0}

    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    config = TrainConfig(epochs=5, patience=2, warmup=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    trainer = Trainer(model, opt, Worse(), config=config, out_dir=tmp_path, run_config={}, progress=True)
    result = trainer.fit()
    err = capsys.readouterr().err
    assert result.stopped_early and len(result.history) == 3  # best at 1, then 2 epochs without
    assert "epoch 1: train loss" in err and "example/s" in err
    assert "early stopping: no better validation loss for 2 epochs" in err
    assert load_checkpoint(tmp_path).state["stopped_early"] is True


# ----------------------------------------------------------------------------- decoding length


def test_one_decoding_length_rule():
    assert decode_limit(7, references=[50]) == 7  # the setting wins
    assert decode_limit(0, references=[3, 5]) == 2 * 5 + 10  # validation: from the references
    assert decode_limit(None, references=[]) == 2 * 10 + 10
    assert decode_limit(0, sources=[4, 2]) == 3 * 4 + 10  # translation: from the sources
    assert decode_limit(0) == 3 * 16 + 10
    words = build_tokenizer("word", ["a b c d"])
    tr = Translator(None, words, words, {}, inference={"max_decode_len": 0})  # inference reads no [train]
    assert tr.max_len(["a b c", "d"]) == decode_limit(0, sources=[3, 1]) == 19
    tr.inference["max_decode_len"] = 5
    assert tr.max_len(["a b c"]) == 5


# ----------------------------------------------------------------------------- layering


def _imports(path: Path) -> set[str]:
    """The modules a file imports statically, resolved to absolute names."""
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            out.add(".".join(p for p in (base, node.module or "") if p))
    return out


@pytest.mark.parametrize("layer", ["train", "application", "models", "interpret", "viz"])
def test_lower_layers_never_import_an_application(layer):
    above = (
        "qkv.translation",
        "qkv.vision",
        "qkv.cli",
        *(("qkv.application",) if layer != "application" else ()),
    )
    for path in sorted((SRC / layer).glob("*.py")):
        bad = {m for m in _imports(path) if m == "qkv" or m.startswith(above)}
        assert not bad, f"{path.name} imports {bad}"


# ----------------------------------------------------------------------------- no old paths


@pytest.mark.parametrize(
    "old", ["qkv.train.translator", "qkv.train.decode", "qkv.train.metrics", "qkv.train.demo"]
)
def test_the_old_translation_modules_of_train_are_gone(old):
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(old)


@pytest.mark.parametrize("name", ["bleu", "train", "load_corpus", "DEFAULTS", "MODEL_PRESETS", "resolve"])
def test_train_holds_no_translation_names(name):
    assert not hasattr(qkv.train, name)
    assert not hasattr(qkv.train.loop, name)


@pytest.mark.parametrize(
    "name",
    ["RunConfig", "SAFE_ON_RESUME", "fit_run", "open_run", "load_trained", "load_toml", "parse_override"],
)
def test_the_run_of_an_application_lives_in_application_not_train(name):
    assert hasattr(qkv.application, name)
    for module in (qkv.train, qkv.train.config, qkv.train.loop, qkv.train.checkpoint):
        assert not hasattr(module, name), f"{module.__name__}.{name}"


# ----------------------------------------------------------------------------- size budgets

ARGPARSE_DECLARATIONS = {"add_parser", "add_parsers", "build_parser"}
MAX_BODY_LINES = 60


def _body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """The lines of a function's body, its docstring excluded."""
    body = fn.body
    if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and len(body) > 1:
        body = body[1:]
    return body[-1].end_lineno - body[0].lineno + 1


def test_the_trainer_stays_within_its_budget():
    lines = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in (SRC / "train").glob("*.py")}
    assert sum(lines.values()) <= 800, lines
    assert lines["checkpoint.py"] <= 300, lines


def test_no_function_body_is_over_60_lines():
    over = {}
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                or node.name in ARGPARSE_DECLARATIONS
            ):
                continue
            if (n := _body_lines(node)) > MAX_BODY_LINES:
                over[f"{path.relative_to(SRC).as_posix()}:{node.name}"] = n
    assert not over, f"function bodies over {MAX_BODY_LINES} lines: {over}"
