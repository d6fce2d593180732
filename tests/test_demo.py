"""`qkv demo --quick`: the whole pipeline end to end (train, evaluate, heatmaps, report)."""

import html as html_module
import json
import re
import struct

import pytest

from qkv.cli.main import main


def test_quick_demo_writes_metrics_heatmaps_and_an_offline_report(tmp_path, capfd):
    capsys = capfd  # the models train in child processes: their lines reach the file descriptor
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
    from qkv.cli.demo import NEXT_HINT

    assert err.rstrip().splitlines()[-2:] == NEXT_HINT.splitlines()  # the last lines name the other demos
    assert "qkv demo vision" in NEXT_HINT and "runs/demo-vision/report.html" in NEXT_HINT
    assert "qkv demo cross-modal" in NEXT_HINT and "runs/demo-cross-modal/report.html" in NEXT_HINT
    for name in metrics:  # each epoch line names its model (they train side by side)
        assert re.search(rf"^{name}: epoch 1: train loss \d", err, re.M), name
    # each model's output on the test examples, right or wrong as the exact match says
    from qkv.translation.demo import demo_config, example_rows
    from qkv.translation.training import load_corpus

    corpus = load_corpus(demo_config("none", quick=True).data)
    rows = example_rows(out, list(metrics), corpus)
    assert len(rows) == 8 and [r["split"] for r in rows] == ["test"] * 4 + ["test_long"] * 4
    assert len({r["source"] for r in rows}) == 8  # no input twice
    table = html[html.index("<h2>Test examples</h2>") :]
    assert "<th>input</th><th>reference</th><th>none</th><th>bahdanau</th><th>transformer</th>" in table
    marks = re.findall(r"<td class='(right|wrong)'", table)
    assert marks == ["right" if r["outputs"][m]["right"] else "wrong" for r in rows for m in metrics]
    for r in rows:
        assert all(o["right"] == (o["text"].split() == r["reference"].split()) for o in r["outputs"].values())
        for o in r["outputs"].values():
            assert f"</span> {html_module.escape(o['text']) or '<i>(empty)</i>'}</td>" in table
    # the heatmaps are shown at their size in inches, so their 11 pt labels read as 11 pt
    figures = re.findall(r'<img alt="[^"]*" style="width: ([\d.]+)in" src="data:image/png;base64,', html)
    pngs = sorted((out / "heatmaps").glob("*.png"))
    assert len(figures) == len(pngs)
    widths = sorted(struct.unpack(">I", p.read_bytes()[16:20])[0] / 150 for p in pngs)
    assert sorted(float(w) for w in figures) == pytest.approx(widths, abs=0.01)
    assert "max-width: 28rem" not in html  # the old report shrank every figure to 28rem
    # a second run reuses the finished models
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert "already trained" in capsys.readouterr().err


def test_report_shows_each_models_output_and_marks_the_wrong_ones():
    from qkv.translation.demo import _examples_html

    rows = [
        {
            "split": "test",
            "source": "3 4",
            "reference": "vier und dreißig",
            "outputs": {
                "none": {"text": "vier und dreißig", "right": True},
                "bahdanau": {"text": "vier und dreißig", "right": True},
            },
        },
        {
            "split": "test_long",
            "source": "4 7 5 1 0 7 4 6 0",
            "reference": "vier hundert fünf und siebzig millionen",
            "outputs": {
                "none": {"text": "vier hundert <fünf> & siebzig", "right": False},
                "bahdanau": {"text": "vier hundert fünf und siebzig millionen", "right": True},
            },
        },
    ]
    page = _examples_html(rows, ["none", "bahdanau"])
    assert "<th>input</th><th>reference</th><th>none</th><th>bahdanau</th>" in page
    cells = re.findall(
        r"<td class='(right|wrong)'[^>]*><span class='mark'>(&#10003;|&#10007;)</span> (.*?)</td>", page
    )
    assert cells == [
        ("right", "&#10003;", "vier und dreißig"),
        ("right", "&#10003;", "vier und dreißig"),
        ("wrong", "&#10007;", "vier hundert &lt;fünf&gt; &amp; siebzig"),  # escaped, marked
        ("right", "&#10003;", "vier hundert fünf und siebzig millionen"),
    ]
    assert (
        page.index("Held-out test inputs")
        < page.index("3 4")
        < page.index("The longest inputs")
        < page.index("4 7 5 1")
    )
    counts = re.findall(r"<td>(\d) of (\d) right</td>", page)
    assert counts == [("1", "1"), ("1", "1"), ("0", "1"), ("1", "1")]


def test_epoch_lines_of_runs_side_by_side_name_their_model():
    import io

    from qkv.translation.demo import _Lines

    sink = io.StringIO()
    lines = _Lines(sink, "bahdanau")
    for part in ("epoch 1: train loss 0.5", "000\n", "epoch 2: a\nepoch 3: b\n", "", "step 9\n\n"):
        lines.write(part)
    assert sink.getvalue() == (
        "bahdanau: epoch 1: train loss 0.5000\nbahdanau: epoch 2: a\nbahdanau: epoch 3: b\nbahdanau: step 9\n\n"
    )
    assert not lines.isatty()
