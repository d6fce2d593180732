"""`qkv demo vision --quick`: two tiny ViTs, the localisation scores, metrics.json and an offline report."""

import json

from qkv.cli.main import main
from qkv.interpret import IMAGE_METHODS
from qkv.vision import Classifier
from qkv.vision.localization import METRICS


def test_quick_vision_demo_writes_metrics_checkpoints_and_an_offline_report(tmp_path, capsys):
    out = tmp_path / "demo-vision"
    assert main(["demo", "vision", "--quick", "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert printed == metrics
    assert list(metrics) == ["vit", "located", "localization"]
    for key, size in (("vit", 8), ("located", 32)):
        assert 0 <= metrics[key]["test"]["accuracy"] <= 1 and metrics[key]["train_seconds"] > 0
        assert Classifier.load(out / ("digits" if key == "vit" else "located")).image_size == size
    digits = Classifier.load(out / "digits")
    scores = metrics["localization"]
    assert set(scores) <= {*IMAGE_METHODS, "random"} and {
        "attention",
        "rollout",
        "grad",
        "gradcam",
        "random",
    } <= set(scores)
    for s in scores.values():
        assert list(s) == list(METRICS)
        assert s["pointing"] * 8 == round(s["pointing"] * 8, 2)  # 8 canvases: a multiple of 1/8
        assert all(0 <= s[k] <= 1 for k in METRICS)
    page = (out / "report.html").read_text()
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert page.count("data:image/png;base64,") == 2 and "A --quick run" in page
    assert digits.describe().startswith("vit, ")
    # a second run reuses both models (nothing retrained) and keeps their training times
    assert main(["demo", "vision", "--quick", "--out", str(out)]) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["vit"] == metrics["vit"] and again["located"] == metrics["located"]
    err = capsys.readouterr().err
    assert "reusing the model" in err and "next: `qkv demo vision`" not in err  # only after translation
