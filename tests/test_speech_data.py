"""qkv.speech data: voice splits that hold out whole voices, determinism, the cache, and the
install command when a synthesizer is missing."""

import shutil

import pytest
import torch

from qkv.speech.data import spoken_numbers, utterances, voice_splits
from qkv.speech.synthesizers import INSTALL, SynthesizerMissing, Voice, synthesize

needs_synth = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("flite") is None,
    reason=f"espeak-ng and flite are not installed ({INSTALL}; make speech)",
)


def test_splits_hold_out_whole_voices():
    s = voice_splits(0)
    train, valid, test = set(s["train"]), set(s["valid"]), set(s["test"])
    assert not train & valid and not train & test and not valid & test
    assert s["kal16"] == [Voice("flite", "kal16")]
    assert all(v.name not in ("kal16", "kal") for v in train)
    assert len(test) == 10 and len(valid) == 5 and len(train) == 105 - 15 + 3
    assert voice_splits(1)["test"] != s["test"]
    for split in ("train", "test", "kal16"):
        plan = utterances(split, 200, seed=3)
        assert plan == utterances(split, 200, seed=3)
        assert {u.voice for u in plan} <= set(s[split])
    assert {u.tempo for u in utterances("test", 50)} == {1.0}
    assert {(u.speed, u.pitch) for u in utterances("kal16", 20)} == {(1.0, 50)}


def test_missing_synthesizer_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SynthesizerMissing, match="apt-get install -y espeak-ng flite"):
        synthesize("one", Voice("espeak-ng", "en-us+m1"))
    with pytest.raises(SynthesizerMissing, match="'flite' not found on PATH"):
        spoken_numbers("kal16", 2, cache_dir=tmp_path)


@needs_synth
def test_spoken_numbers_are_generated_once_and_cached(tmp_path):
    a = spoken_numbers("kal16", 6, cache_dir=tmp_path, seed=1)
    assert len(a) == 6 and len(list(tmp_path.iterdir())) == 1
    assert all(f.shape[1] == 40 and 30 < f.shape[0] < 400 for f in a.features)
    for f in a.features:  # each band normalised over time
        torch.testing.assert_close(f.mean(0), torch.zeros(40), atol=1e-4, rtol=0)
    b = spoken_numbers("kal16", 6, cache_dir=tmp_path, seed=1)
    assert b.texts == a.texts and all(torch.equal(x, y) for x, y in zip(a.features, b.features, strict=True))
    assert a.texts == [u.text for u in utterances("kal16", 6, seed=1)]
