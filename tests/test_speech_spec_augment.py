"""SpecAugment's masks: exactly the drawn bands and frames are zeroed (and nothing else), widths
uniform up to the requested width, padding never touched, the input left as it was, a batch's
masks a pure function of its seed (so a resumed epoch masks as the first pass did), bad
settings refused by name."""

import pytest
import torch

from qkv.speech.config import resolve
from qkv.speech.data import SpokenSet
from qkv.speech.spec_augment import SpecAugment, draw_spans
from qkv.speech.training import SpeechTask
from qkv.speech.vocabulary import WordVocabulary


def _expected_zeros(
    policy: SpecAugment, lengths: list[int], frames: int, bands: int, seed: int
) -> torch.Tensor:
    """The mask the policy must apply, redrawn span by span from the same seed."""
    g, zero = torch.Generator().manual_seed(seed), torch.zeros(len(lengths), frames, bands, dtype=torch.bool)
    for b, length in enumerate(lengths):
        for f0, f in draw_spans(policy.freq_masks, policy.freq_width, bands, g):
            zero[b, :length, f0 : f0 + f] = True
        for t0, t in draw_spans(policy.time_masks, policy.time_width, length, g):
            zero[b, t0 : t0 + t] = True
    return zero


def test_exactly_the_drawn_spans_are_zeroed_and_the_input_is_kept():
    policy = SpecAugment(freq_masks=2, freq_width=5, time_masks=2, time_width=7)
    lengths = [30, 22, 9]
    x = torch.rand(3, 30, 12) + 1.0  # no zero anywhere before masking
    for b, n in enumerate(lengths):
        x[b, n:] = 0.0  # padding
    before = x.clone()
    out = policy(x, torch.tensor(lengths), torch.Generator().manual_seed(5))
    assert torch.equal(x, before)
    zero = _expected_zeros(policy, lengths, 30, 12, seed=5)
    real = (torch.arange(30)[None, :, None] < torch.tensor(lengths)[:, None, None]).expand(-1, -1, 12)
    assert torch.equal(out == 0, zero | ~real)  # masked exactly there (padding stays 0)
    assert torch.equal(out[~zero], x[~zero])  # every other value kept
    assert 0 < int((zero & real).sum()) < int(real.sum())


def test_widths_are_uniform_up_to_the_requested_width_and_stay_inside():
    g = torch.Generator().manual_seed(0)
    spans = draw_spans(4000, 6, 20, g)
    widths = torch.tensor([w for _, w in spans])
    assert widths.min() == 0 and widths.max() == 6
    counts = torch.bincount(widths, minlength=7).float() / len(widths)
    torch.testing.assert_close(counts, torch.full((7,), 1 / 7), atol=0.02, rtol=0)  # 7 equally likely widths
    assert all(s >= 0 and s + w <= 20 for s, w in spans)
    short = draw_spans(500, 50, 9, g)  # a mask never outgrows a short utterance
    assert max(w for _, w in short) == 9 and all(s + w <= 9 for s, w in short)


def test_a_time_mask_of_a_short_utterance_stays_off_its_padding():
    policy = SpecAugment(time_masks=3, time_width=40)
    x = torch.ones(2, 50, 4)
    out = policy(x, torch.tensor([50, 6]), torch.Generator().manual_seed(1))
    assert torch.equal(out[1, 6:], x[1, 6:])


def _task(**train) -> SpeechTask:
    g = torch.Generator().manual_seed(0)
    words = ["one", "two", "three"]
    texts = [" ".join(words[i] for i in torch.randint(0, 3, (2,), generator=g).tolist()) for _ in range(10)]
    spoken = SpokenSet(features=[torch.rand(int(n), 8) + 1 for n in torch.randint(5, 30, (10,), generator=g)],
                       texts=texts, voices=["v"] * 10)  # fmt: skip
    overrides = [f"--train.{k}={v}" for k, v in train.items()]
    cfg = resolve(preset="las", overrides=["--train.batch_size=4", "--data.n_mels=8", *overrides])
    return SpeechTask(cfg, {"train": spoken}, WordVocabulary(words))


def test_a_batch_is_masked_the_same_on_every_pass_and_on_resume():
    task = _task(freq_masks=1, freq_width=3, time_masks=2, time_width=4)
    first = [b[0] for b in task.batches(epoch=1, start=0)]
    again = [b[0] for b in task.batches(epoch=1, start=0)]
    resumed = [b[0] for b in task.batches(epoch=1, start=1)]
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(first[1:], resumed, strict=True):
        assert torch.equal(a, b)
    plain = [b[0] for b in _task().batches(epoch=1, start=0)]
    assert sum(int((p != 0).sum() - (m != 0).sum()) for p, m in zip(plain, first, strict=True)) > 0
    assert not any(torch.equal(a, b) for a, b in zip(first, [b[0] for b in task.batches(2, 0)], strict=True))


def test_bad_settings_are_refused_by_name():
    with pytest.raises(ValueError, match=r"config \[train\] time_width: expected an int >= 0, got -1"):
        resolve(preset="las", overrides=["--train.time_width=-1"])
    with pytest.raises(ValueError, match=r"SpecAugment\.freq_masks: expected an int >= 0, got 1\.5"):
        SpecAugment(freq_masks=1.5)
    with pytest.raises(ValueError, match=r"features, lengths: expected \(B, T, M\) and \(B,\)"):
        SpecAugment(time_masks=1, time_width=2)(torch.zeros(3, 4), torch.tensor([4]), torch.Generator())
