"""qkv.speech end to end on a few real utterances: qkv train --model las, qkv evaluate --json,
qkv transcribe (WAV files at 22.05 kHz and 8 kHz, a file that is not audio), Recognizer.load,
--ctc-weight refused by name."""

import json
import shutil
import subprocess

import pytest
import torch

from qkv.cli.application import of_checkpoint, of_train_args
from qkv.cli.main import main
from qkv.speech import INSTALL, Recognizer

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("flite") is None,
    reason=f"espeak-ng and flite are not installed ({INSTALL}; make speech)",
)

TINY = ["--model.listener_dim=8", "--model.speller_dim=16", "--model.attention_dim=8", "--model.embed_dim=8"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("speech")
    out = root / "las"
    code = main(["train", "--model", "las", "--data", "spoken-numbers", "--out", str(out), "--quiet",
                 f"--data.cache_dir={root / 'cache'}", "--data.train_size=12", "--data.valid_size=3",
                 "--data.test_size=3", "--train.max_steps=2", "--train.batch_size=6", *TINY])  # fmt: skip
    assert code == 0
    return out


def test_the_application_tables_name_speech(run):
    assert of_train_args("las-location", {}, None) == "speech"
    assert of_train_args(None, {}, "spoken-numbers") == "speech"
    assert of_checkpoint(run) == "speech"


def test_evaluate_reports_both_held_out_splits(run, capsys):
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["wer"]) == set(result["cer"]) == {"heldout_voices", "flite_kal16"}
    assert result["n"] == {"heldout_voices": 3, "flite_kal16": 3}
    assert all(v >= 0.0 for v in result["wer"].values())


def test_ctc_weight_is_refused_by_name_out_of_range_or_without_a_ctc_head(run, capsys):
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(run), "--beam", "2", "--ctc-weight", "1.5"]) == 2
    assert "--ctc-weight: expected a float in [0, 1], got 1.5" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(run), "--beam", "2", "--ctc-weight", "0.5"]) == 2
    assert "ctc_weight: LAS has no CTC head" in capsys.readouterr().err
    assert main(["transcribe", "--checkpoint", str(run), "--ctc-weight", "-1", "x.wav"]) == 2
    assert "--ctc-weight: expected a float in [0, 1], got -1.0" in capsys.readouterr().err


def test_transcribe_wav_files_at_any_rate(run, tmp_path, capsys):
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(a), "forty two"], check=True)  # 22050 Hz
    subprocess.run(["flite", "-voice", "kal", "-t", "seven", "-o", str(b)], check=True)  # 8000 Hz
    capsys.readouterr()
    assert main(["transcribe", "--checkpoint", str(run), "--json", str(a), str(b)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in rows] == [str(a), str(b)]
    assert all(r["stop"] in ("eos", "limit") for r in rows)
    rec = Recognizer.load(run)
    t = rec.transcribe([a])[0]
    assert t.attention.shape[0] == len(t.text.split()) + (t.stop == "eos")
    assert t.frames_per_state == 6
    with pytest.raises(ValueError, match="sample_rate: expected the rate"):
        rec.transcribe([t.attention[0]])


def test_transcribe_refuses_a_file_that_is_not_audio(run, tmp_path, capsys):
    bad = tmp_path / "notes.wav"
    bad.write_text("hello")
    assert main(["transcribe", "--checkpoint", str(run), str(bad)]) == 2
    assert "notes.wav' is not a PCM WAV file" in capsys.readouterr().err


def test_resume_is_exact(run, tmp_path):
    from qkv.speech import resolve, train
    from qkv.train.checkpoint import load_checkpoint

    cache = f"--data.cache_dir={run.parent / 'cache'}"  # the module's utterances, already generated
    cfg = resolve(overrides=[cache, "--data.train_size=12", "--data.valid_size=3", "--train.epochs=2",
                             "--train.batch_size=4", *TINY])  # fmt: skip
    straight = train(cfg, tmp_path / "straight", progress=False)
    train(cfg, tmp_path / "halves", progress=False, stop_after_steps=4)  # mid second epoch
    resumed = train(None, tmp_path / "halves", resume=True, progress=False)
    assert resumed.step == straight.step == 6
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "halves")
    for name in a.model_state:
        assert torch.equal(a.model_state[name], b.model_state[name]), name
    assert [h["train_loss"] for h in straight.history] == [h["train_loss"] for h in resumed.history]
