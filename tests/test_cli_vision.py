"""`qkv train --model vit` and `qkv evaluate` of an image classifier; the application mapping."""

from __future__ import annotations

import json
import tomllib

import pytest

from qkv.cli import application
from qkv.cli.main import main

TINY = [
    "--model.dim=16",
    "--model.depth=1",
    "--model.heads=2",
    "--model.mlp_dim=32",
    "--train.save_every_minutes=0",
]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_mapping_names_every_vision_preset_and_data_set():
    from qkv.models.builders import IMAGE_KINDS, MODEL_KINDS
    from qkv.vision.config import DATASETS, MODEL_PRESETS

    assert tuple(MODEL_PRESETS) == application.VISION_PRESETS
    assert application.VISION_DATASETS == DATASETS
    assert set(application.APPLICATION_OF_KIND) == set(MODEL_KINDS) | set(IMAGE_KINDS)


def test_the_application_of_train_arguments(tmp_path):
    of = application.of_train_args
    assert of("vit", {}, None) == "vision" and of("vit-located", {}, "numbers") == "vision"
    assert of("bahdanau", {}, "digits") == "translation"  # the preset decides
    assert of(None, {"model": {"kind": "vit"}}, None) == "vision"
    assert of(None, {"model": {"preset": "transformer"}}, "digits") == "translation"
    assert of(None, {}, "fashion-mnist") == "vision" and of(None, {}, str(tmp_path)) == "vision"
    assert of(None, {}, "numbers") == "translation" and of(None, {}, None) == "translation"


def test_show_config_of_a_vit(capsys):
    code, out, _ = run(
        capsys, "train", "--model", "vit", "--data", "located-digits", "--model.dim=48", "--show-config"
    )
    assert code == 0
    tables = tomllib.loads(out)
    assert tables["data"]["dataset"] == "located-digits"
    assert tables["model"] == {
        "kind": "vit", "patch_size": 4, "dim": 48, "depth": 4, "heads": 4, "mlp_dim": 128, "dropout": 0.0,
        "pool": "cls", "positions": "learned", "pixel_mean": 0.5, "pixel_std": 0.5,
    }  # fmt: skip
    assert tables["train"]["label_smoothing"] == 0.1


def test_train_then_evaluate_a_vit_on_digits(capsys, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = run(
        capsys, "train", "--model", "vit", "--data", "digits", "--out", str(out), "--quiet",
        "--train.max_steps=4", *TINY,
    )  # fmt: skip
    assert code == 0, err
    assert "model: vit, " in err and "1,258 training images of 10 classes, 8x8" in err
    assert stdout.startswith("done: step 4, best valid loss ") and "valid accuracy" in stdout
    code, stdout, _ = run(capsys, "evaluate", "--checkpoint", str(out), "--json")
    assert code == 0
    result = json.loads(stdout)
    assert result["split"] == "test" and result["n"] == 359
    confusion = result["confusion"]
    assert len(confusion) == 10 and all(len(row) == 10 for row in confusion)
    assert sum(map(sum, confusion)) == 359
    assert result["accuracy"] == round(sum(confusion[i][i] for i in range(10)) / 359, 4)
    code, stdout, _ = run(capsys, "evaluate", "--checkpoint", str(out), "--split", "valid", "--limit", "50")
    assert code == 0
    lines = stdout.splitlines()
    assert lines[1] == "valid: 50 images" and lines[2].startswith("  accuracy  ")
    assert len(lines) == 4 + 10  # model, split, accuracy, header, one row per class
    code, _, err = run(capsys, "evaluate", "--checkpoint", str(out), "--split", "test_long")
    assert code == 2 and "--split: expected train, valid or test for an image classifier" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--data", "no-such-data-set"],
            "data.dataset: expected digits, fashion-mnist, located-digits or a folder",
        ),
        (
            ["--data", "digits", "--model.patch_size=3"],
            "image_size: expected a multiple of patch_size=3, got 8",
        ),
        (
            ["--data", "digits", "--model.image_size=8"],
            "config [model] (kind='vit'): unknown keys ['image_size']",
        ),
    ],
)
def test_vision_train_errors_are_user_errors(capsys, tmp_path, argv, message):
    code, _, err = run(
        capsys, "train", "--model", "vit", *argv, "--out", str(tmp_path / "r"), "--quiet", *TINY
    )
    assert code == 2
    assert message in err and "Traceback" not in err


def test_resume_of_a_vit_run_continues_it(capsys, tmp_path):
    out = str(tmp_path / "run")
    common = ["--out", out, "--quiet", *TINY]
    code, _, err = run(capsys, "train", "--model", "vit", "--data", "digits", "--train.max_steps=2", *common)
    assert code == 0, err
    code, stdout, err = run(capsys, "train", "--resume", "--train.max_steps=4", *common[:3])
    assert code == 0, err
    assert "resuming with train.max_steps=4" in err and stdout.startswith("done: step 4,")
    code, _, err = run(capsys, "train", "--resume", "--model.dim=64", *common[:3])
    assert code == 2 and "--resume: model.dim cannot change in a run under way" in err
