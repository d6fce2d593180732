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
    from qkv.crossmodal import config as crossmodal
    from qkv.models.builders import IMAGE_KINDS, MODEL_KINDS, SPEECH_KINDS
    from qkv.speech import config as speech
    from qkv.vision.config import DATASETS, MODEL_PRESETS

    assert tuple(MODEL_PRESETS) == application.VISION_PRESETS
    assert application.VISION_DATASETS == DATASETS
    assert tuple(crossmodal.MODEL_PRESETS) == application.CROSSMODAL_PRESETS
    assert tuple(crossmodal.DATASETS) == application.CROSSMODAL_DATASETS
    assert tuple(speech.MODEL_PRESETS) == application.SPEECH_PRESETS
    assert tuple(speech.DATASETS) == application.SPEECH_DATASETS
    assert set(application.APPLICATION_OF_KIND) == (
        set(MODEL_KINDS) | set(IMAGE_KINDS) | set(crossmodal.MODEL_KINDS) | set(SPEECH_KINDS)
    )
    assert {k for k, app in application.APPLICATION_OF_KIND.items() if app == "crossmodal"} == set(
        crossmodal.MODEL_KINDS
    )


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
        "pool": "cls", "positions": "learned", "pixel_mean": 0.5, "pixel_std": 0.5, "stem": "patch",
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


# ----------------------------------------------------------------------------- qkv viz --image


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A digits ViT with random weights, saved as training saves it (config, image facts)."""
    import torch

    from qkv.models.builders import build_image_model
    from qkv.train.checkpoint import save_checkpoint
    from qkv.vision import resolve

    cfg = resolve(overrides=["--data.dataset=digits", *TINY[:-1]]).to_dict()
    torch.manual_seed(0)
    model = build_image_model(cfg["model"], image_size=8, channels=1, num_classes=10)
    out = tmp_path_factory.mktemp("viz") / "digits"
    facts = {"image_size": 8, "channels": 1, "classes": list("0123456789")}
    save_checkpoint(out, model=model, step=1, config=cfg, vocab=facts)
    return out


def _payload(html_text: str) -> dict:
    import re

    found = re.search(r'<script type="application/json" id="[^"]+">(.*?)</script>', html_text, re.S)
    return json.loads(found.group(1))


def test_viz_image_index_writes_the_viewer_and_the_methods_figure(capsys, tmp_path, digits_run):
    from qkv.vision import Classifier
    from qkv.vision.config import DataConfig
    from qkv.vision.training import load_splits

    html, png = tmp_path / "v.html", tmp_path / "m.png"
    code, out, err = run(capsys, "viz", "--checkpoint", str(digits_run), "--image", "5",
                         "--method", "rollout,gradcam", "attention", "--out", str(html), "--png", str(png))  # fmt: skip
    assert code == 0, err
    clf = Classifier.load(digits_run)
    test = load_splits(DataConfig(**clf.config["data"]))["test"]
    predicted, probs = clf.predict(test.images[5:6])
    k = int(predicted[0])
    assert (
        f"test image 5: predicted '{k}' ({float(probs[0, k]):.0%}), true class '{int(test.labels[5])}'" in out
    )
    assert "wrote " + str(png) in out and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "1 layers x 2 heads, maps: rollout, gradcam, attention (last layer)" in out
    text = html.read_text()
    assert "http://" not in text and "https://" not in text.replace("https://www.w3.org", "")
    payload = _payload(text)  # the viewer's data: the grid, the attention, the maps of this image
    assert payload["mode"] == "image" and payload["grid"] == {"h": 4, "w": 4} and payload["prefix"] == 1
    assert [m["name"] for m in payload["maps"]] == ["rollout", "gradcam", "attention (last layer)"]


def test_viz_image_file_is_read_resized_and_explained(capsys, tmp_path, digits_run):
    import numpy as np
    from PIL import Image

    from qkv.vision import Classifier
    from qkv.vision.data import read_image

    pixels = np.zeros((32, 32), dtype=np.uint8)
    pixels[8:24, 8:24] = 255  # output pixels 3 and 4 see only the square
    Image.fromarray(pixels).convert("RGB").save(tmp_path / "square.png")
    image = read_image(tmp_path / "square.png", image_size=8, channels=1)
    assert image.shape == (1, 8, 8) and float(image.max()) == 1.0 and float(image[0, 0, 0]) == 0.0
    assert image[0, 3:5, 3:5].tolist() == [[1.0, 1.0], [1.0, 1.0]]
    code, out, err = run(capsys, "viz", "--checkpoint", str(digits_run), "--image", str(tmp_path / "square.png"),
                         "--method", "grad", "--png", str(tmp_path / "g.png"))  # fmt: skip
    assert code == 0, err
    k = int(Classifier.load(digits_run).predict(image[None])[0][0])
    assert f"square.png: predicted '{k}'" in out and not (tmp_path / "attention.html").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--image", "359"], "--image: expected a test image index from 0 to 358 (359 test images of 'digits'), got 359"),
        (["--image", "0", "--method", "cam"], "--method: expected some of attention, rollout, grad, gradcam, ig, got 'cam'"),
        (["--image", "NOTES.txt"], "--image: expected an image file (PNG, JPEG, ...), got "),
        (["--image", "missing.png"], "--image: no such file "),
        (["--image", "0", "--layer", "1", "--png", "x.png"], "--layer: not used with --image"),
        (["--image", "0", "hello"], "SENTENCE: not used with --image"),
        ([], "--image: an image classifier's checkpoint explains an image"),
    ],
)  # fmt: skip
def test_viz_image_errors(capsys, tmp_path, monkeypatch, digits_run, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "NOTES.txt").write_text("not an image")
    argv = [a if a != "NOTES.txt" else str(tmp_path / a) for a in argv]
    if argv == []:
        argv = ["some sentence"]
    code, _, err = run(capsys, "viz", "--checkpoint", str(digits_run), *argv)
    assert code == 2 and message in err, err


def test_viz_image_needs_an_image_classifier(capsys, tmp_path):
    code, _, err = run(capsys, "viz", "--model", "minilm", "--image", "0")
    assert code == 2 and "--image: expected --checkpoint DIR of an image classifier" in err
