"""`qkv demo --quick`: the whole pipeline end to end (train, evaluate, heatmaps, report)."""

import json

from qkv.cli.main import main


def test_quick_demo_writes_metrics_heatmaps_and_an_offline_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["none", "bahdanau", "transformer"]
    for name, entry in metrics.items():
        for split in ("test", "test_long"):
            m = entry[split]
            assert 0.0 <= m["exact_match"] <= 1.0 and 0.0 <= m["bleu"] <= 100.0 and 0.0 <= m["chrf"] <= 100.0
            assert ("aer" in m) == (name != "none")
        assert entry["train_seconds"] > 0 and entry["parameters"] > 0
    html = (out / "report.html").read_text()
    assert "http://" not in html and "https://" not in html  # opens offline
    assert html.count("data:image/png;base64,") == len(list((out / "heatmaps").glob("*.png"))) >= 2
    assert "[1/3] none: training" in err and "evaluating transformer on test_long" in err
    # a second run reuses the finished models
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert "already trained" in capsys.readouterr().err
