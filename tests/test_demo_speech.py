"""`qkv demo speech --quick`: two tiny recognizers on a few real utterances, metrics.json in its
ranges, both checkpoints, an offline report with the alignments; the install error without synthesizers."""

import json
import shutil

import pytest

from qkv.cli.main import main
from qkv.speech import INSTALL, Recognizer
from qkv.speech.data import cache_key
from qkv.speech.demo import DEMO_RUNS, LAS_RECIPE, TRANSFORMER_RECIPE

needs_synthesizers = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("flite") is None,
    reason=f"espeak-ng and flite are not installed ({INSTALL}; make speech)",
)


@needs_synthesizers
def test_quick_speech_demo_writes_metrics_checkpoints_and_an_offline_report(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("QKV_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo-speech"
    assert main(["demo", "speech", "--quick", "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert printed == metrics
    assert list(metrics) == ["las", "transformer"]
    for m in metrics.values():
        assert list(m) == [
            "wer",
            "cer",
            "monotonic",
            "n",
            "beam",
            "ctc_weight",
            "train_seconds",
            "train_cpu_seconds",
        ]
        for key in ("wer", "cer", "monotonic", "n"):
            assert set(m[key]) == {"heldout_voices", "flite_kal16"}
        assert m["n"] == {"heldout_voices": 6, "flite_kal16": 6}
        assert all(v >= 0 for v in (*m["wer"].values(), *m["cer"].values()))  # WER may pass 1 (insertions)
        assert all(
            6 * v == pytest.approx(round(6 * v), abs=1e-3) and 0 <= v <= 1 for v in m["monotonic"].values()
        )
        assert m["train_seconds"] > 0 and m["train_cpu_seconds"] > 0
    assert [m["beam"] for m in metrics.values()] == [DEMO_RUNS[name][2] for name in metrics] == [4, 1]
    assert (
        [m["ctc_weight"] for m in metrics.values()] == [DEMO_RUNS[name][3] for name in metrics] == [0.0, 0.0]
    )
    # LAS trained on half flite speech with warped filterbanks, the Transformer on the default mix
    # (with its conv2d front);
    # both scored on the same held-out utterances (one cache file per held-out split)
    assert LAS_RECIPE == ["--data.warp=0.1", "--data.flite_share=0.5"]
    cache = tmp_path / "cache" / "speech"
    trains = {cache_key("train", 16, warp=0.1, flite_share=0.5), cache_key("train", 16)}
    assert {p.name for p in cache.glob("train-*")} == trains
    assert len(list(cache.glob("kal16-*"))) == len(list(cache.glob("test-*"))) == 1
    assert "las (additive attention)" in Recognizer.load(out / "las").describe()
    transformer = Recognizer.load(out / "transformer")
    assert transformer.describe().startswith("speech-transformer (1 + 1 blocks, width 16)")
    assert TRANSFORMER_RECIPE == ["--model.front=conv2d"] and transformer.model.config.front == "conv2d"
    page = (out / "report.html").read_text()
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert page.count("data:image/png;base64,") == 3 and "A --quick run" in page
    # a second run reuses both models and keeps their training times
    assert main(["demo", "speech", "--quick", "--out", str(out)]) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again == metrics
    err = capsys.readouterr().err
    assert err.count("reusing the model") == 2 and "[4/4] report" in err


def test_without_synthesizers_the_demo_names_the_install_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("QKV_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    assert main(["demo", "speech", "--quick", "--out", str(tmp_path / "demo")]) == 2
    assert INSTALL in capsys.readouterr().err
