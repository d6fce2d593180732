"""qkv.speech data: voice splits that hold out whole voices, determinism, the cache, and the
install command when a synthesizer is missing."""

import shutil

import pytest
import torch

from qkv.speech.config import resolve
from qkv.speech.data import cache_key, spoken_numbers, utterances, voice_splits
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


def test_vtlp_and_flite_share_change_only_what_they_name():
    plain, warped = utterances("train", 400, seed=2), utterances("train", 400, seed=2, warp=0.1)
    assert {u.warp for u in plain} == {1.0}
    warps = [u.warp for u in warped]
    assert 0.9 <= min(warps) < 0.92 and 1.08 < max(warps) <= 1.1 and len(set(warps)) > 100
    # the warp comes from its own stream: every other draw is the same
    assert [(u.text, u.voice, u.speed, u.pitch, u.tempo, u.seed) for u in warped] == [
        (u.text, u.voice, u.speed, u.pitch, u.tempo, u.seed) for u in plain
    ]
    assert {u.warp for u in utterances("kal16", 50, warp=0.1)} == {1.0}  # only training is warped
    share = sum(u.voice.engine == "flite" for u in utterances("train", 2000, flite_share=0.5)) / 2000
    assert abs(share - 0.5) < 0.03
    assert sum(u.voice.engine == "flite" for u in plain) / 400 == pytest.approx(0.25, abs=0.05)
    with pytest.raises(ValueError, match=r"warp: expected a largest warp deviation in \[0, 0.5\), got 0.7"):
        utterances("train", 2, warp=0.7)
    with pytest.raises(ValueError, match=r"flite_share: expected a share in \[0, 1\], got 2"):
        utterances("train", 2, flite_share=2)


def test_cache_keys_differ_by_recipe_and_only_for_training():
    base = cache_key("train", 2000)
    assert base == "train-26f84a49244bd205.pt"  # the key before warp and flite_share existed
    keys = {base, cache_key("train", 2000, warp=0.1), cache_key("train", 2000, warp=0.05),
            cache_key("train", 2000, flite_share=0.5), cache_key("train", 2000, warp=0.1, flite_share=0.5)}  # fmt: skip
    assert len(keys) == 5
    for split in ("valid", "test", "kal16"):  # held-out splits are never perturbed: one file each
        assert cache_key(split, 200, warp=0.1, flite_share=0.5) == cache_key(split, 200)
    assert resolve(overrides=["--data.warp=0.1", "--data.flite_share=0.5"]).data.warp == 0.1
    with pytest.raises(ValueError, match=r"warp.*a number in \[0, 0.5\).*0.5"):
        resolve(overrides=["--data.warp=0.5"])
    with pytest.raises(ValueError, match=r"flite_share.*a number in \[0, 1\].*-1"):
        resolve(overrides=["--data.flite_share=-1"])


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


@needs_synth
def test_a_warped_utterance_is_the_same_audio_through_a_warped_filterbank(tmp_path):
    plain = spoken_numbers("train", 3, cache_dir=tmp_path, seed=4)
    warped = spoken_numbers("train", 3, cache_dir=tmp_path, seed=4, warp=0.1)
    assert len(list(tmp_path.iterdir())) == 2 and warped.texts == plain.texts
    for a, b in zip(plain.features, warped.features, strict=True):
        assert a.shape == b.shape and not torch.equal(a, b)  # same frames, other filters
