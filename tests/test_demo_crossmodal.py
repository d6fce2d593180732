"""`qkv demo cross-modal --quick`: a tiny matcher, three tiny captioners, a tiny grounded
translator with its text-only control and a tiny video QA model with its question-only control,
metrics.json, loadable checkpoints and an offline report with each generated word's attention
and each shown question's attention over its clip's frames."""

import json
import re

import pytest

from qkv.cli.main import main
from qkv.crossmodal import Answerer, Captioner, DataConfig, GroundedTranslator, Matcher, load_pairs
from qkv.crossmodal.answering import load_clips
from qkv.crossmodal.demo import DEMO_STEPS, DemoStep, run_crossmodal_demo
from qkv.crossmodal.demo_steps import DemoContext, DemoSection, demo_config, finished_run, train_or_reuse

pytest.importorskip("matplotlib")


def test_quick_crossmodal_demo_writes_metrics_checkpoints_and_an_offline_report(tmp_path, capsys):
    out = tmp_path / "demo-cross-modal"
    assert main(["demo", "cross-modal", "--quick", "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    metrics = json.loads((out / "metrics.json").read_text())
    assert json.loads(captured.out) == metrics
    assert list(metrics) == ["clip", "captioner", "grounded", "video_qa"]
    clip = metrics["clip"]
    assert list(clip) == ["test", "zero_shot", "train_seconds"] and clip["train_seconds"] > 0
    assert list(clip["test"]) == ["i2t_r1", "t2i_r1", "i2t_r5", "t2i_r5"]
    assert list(clip["zero_shot"]) == ["i2t_r1", "t2i_r1"]
    for recalls in (clip["test"], clip["zero_shot"]):
        assert all(0 <= v <= 1 for v in recalls.values())
    assert (
        clip["test"]["i2t_r1"] <= clip["test"]["i2t_r5"] and clip["test"]["t2i_r1"] <= clip["test"]["t2i_r5"]
    )
    assert list(metrics["captioner"]) == ["en", "fr", "de"]
    for lang, m in metrics["captioner"].items():
        assert list(m) == ["exact_match", "bleu", "attention_correctness", "train_seconds"]
        assert 0 <= m["exact_match"] <= 1 and 0 <= m["bleu"] <= 100 and 0 <= m["attention_correctness"] <= 1
        assert m["train_seconds"] > 0
        captioner = Captioner.load(out / f"captioner-{lang}")
        assert captioner.lang == lang and captioner.config["train"]["max_steps"] == 3
    grounded = metrics["grounded"]
    assert list(grounded) == ["with_image", "text_only", "zero_shot", "train_seconds"]
    assert list(grounded["zero_shot"]) == list(grounded["train_seconds"]) == ["with_image", "text_only"]
    assert all(
        0 <= grounded[k] <= 1 and 0 <= grounded["zero_shot"][k] <= 1 for k in ("with_image", "text_only")
    )
    assert all(s > 0 for s in grounded["train_seconds"].values())
    for key, name, use_image in (("with_image", "grounded", True), ("text_only", "grounded-text", False)):
        translator = GroundedTranslator.load(out / name)
        assert translator.use_image is use_image and translator.config["train"]["max_steps"] == 3
        pairs = load_pairs(DataConfig(**translator.config["data"]), ("test", "zero_shot"))
        assert len(pairs["test"].sources) == len(pairs["zero_shot"].sources) == 16
        # the entry holds the translator's own scores on the test and zero-shot pairs
        assert grounded[key] == round(translator.evaluate(pairs["test"])["exact_match"], 4)
        assert grounded["zero_shot"][key] == round(translator.evaluate(pairs["zero_shot"])["exact_match"], 4)
    _check_video_qa(metrics["video_qa"], out)
    matcher = Matcher.load(out / "clip")
    assert matcher.lang == "en" and matcher.image_shape == (1, 8, 32)
    page = (out / "report.html").read_text()
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert not re.search(r"""src=["'](?!data:image/png;base64,)""", page)  # every image inlined
    figures = sorted((out / "figures").glob("*.png"))
    # similarity + a strip a language + a grounded sentence + a clip per question kind asked
    assert page.count("data:image/png;base64,") == len(figures) == 1 + 3 + 1 + 2
    assert "A --quick run" in page and "Show, Attend and Tell" in page and "text-only control" in page
    assert "question-only control" in page and "which digit comes after the" in page
    assert "source: <i>" in page and "reference: <i>" in page
    err = captured.err
    assert "[1/4] clip: a CLIP-style matcher" in err and "[4/4] video_qa: done in" in err
    assert f"report: {out / 'report.html'}" in err and f"metrics: {out / 'metrics.json'}" in err
    # a finished model of the same config is reused, its training time kept; another config retrains
    assert train_or_reuse(DemoContext(out, quick=True), "clip") == clip["train_seconds"]
    assert "clip: reusing the model" in capsys.readouterr().err
    assert not finished_run(out / "clip", demo_config("clip")) and finished_run(
        out / "clip", demo_config("clip", quick=True)
    )


def _check_video_qa(video: dict, out) -> None:
    """The video QA entry holds both models' own scores on the test clips, per question kind."""
    assert list(video) == ["accuracy", "question_only", "per_kind", "question_only_per_kind", "gold_peak",
                           "frame_accuracy", "train_seconds"]  # fmt: skip
    # the demo asks two kinds of question (counts need many more clips)
    assert list(video["per_kind"]) == list(video["question_only_per_kind"]) == ["position", "after"]
    assert list(video["train_seconds"]) == ["full", "question_only"]
    assert all(s > 0 for s in video["train_seconds"].values())
    full, blind = Answerer.load(out / "video-qa"), Answerer.load(out / "video-qa-question")
    assert (full.variant, blind.variant) == ("full", "question_only")
    assert full.model.config.previous_frame and full.config["train"]["max_steps"] == 3
    assert (
        full.config["data"]["question_kinds"]
        == blind.config["data"]["question_kinds"]
        == ["position", "after"]
    )
    test = load_clips(DataConfig(**full.config["data"]), ("test",))["test"]
    assert len(test.questions) == 16
    scores, control = full.evaluate(test), blind.evaluate(test)
    assert video["accuracy"] == round(scores["accuracy"], 4)
    assert video["question_only"] == round(control["accuracy"], 4)
    assert set(test.kinds()) == {"position", "after"}
    for kind in ("position", "after"):
        assert video["per_kind"][kind] == round(scores[f"accuracy_{kind}"], 4)
        assert video["question_only_per_kind"][kind] == round(control[f"accuracy_{kind}"], 4)
    assert video["gold_peak"] == round(scores["gold_peak"], 4) and 0 <= video["frame_accuracy"] <= 1


def test_a_new_step_is_one_more_entry(tmp_path, capsys):
    def echo(context):
        return DemoSection({"score": 0.5, "quick": context.quick}, "<h2>echo</h2>")

    steps = (DemoStep("echo", "a step that trains nothing", echo),)
    assert run_crossmodal_demo(tmp_path, quick=True, steps=steps) == {"echo": {"score": 0.5, "quick": True}}
    assert "<h2>echo</h2>" in (tmp_path / "report.html").read_text()
    assert "[1/1] echo: a step that trains nothing" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"steps: expected distinct names, got \['clip', 'clip'\]"):
        run_crossmodal_demo(tmp_path, steps=(DEMO_STEPS[0], DEMO_STEPS[0]))


def test_an_interrupted_training_stops_the_demo_with_its_exit_code(tmp_path, capsys, monkeypatch):
    import signal

    from qkv.crossmodal import demo_steps
    from qkv.train.loop import TrainResult

    monkeypatch.setattr(
        demo_steps, "train", lambda *a, **k: TrainResult(interrupted=True, stop_signal=signal.SIGTERM)
    )
    assert main(["demo", "cross-modal", "--quick", "--out", str(tmp_path)]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "qkv: clip: training interrupted, the demo stops" in err and "[2/4]" not in err
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "report.html").exists()
