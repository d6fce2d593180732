"""qkv.translation.data batching: padding layout, every example once, order a pure function of (seed, epoch)."""

from __future__ import annotations

import random

import pytest
import torch

from qkv.translation.data import (
    EncodedPair,
    Example,
    Tokenizer,
    WordTokenizer,
    batches,
    builtin,
    collate,
    encode_pairs,
    num_batches,
    plan_batches,
)

PAD, SOS, EOS = Tokenizer.PAD, Tokenizer.SOS, Tokenizer.EOS


def _pairs(n: int, seed: int = 0) -> list[EncodedPair]:
    rng = random.Random(seed)
    return [
        EncodedPair(
            [rng.randrange(4, 20) for _ in range(rng.randrange(1, 12))],
            [rng.randrange(4, 20) for _ in range(rng.randrange(0, 9))],
        )
        for _ in range(n)
    ]


def test_collate_pads_and_shifts_by_hand():
    pairs = [EncodedPair([5, 6, 7], [8]), EncodedPair([9], [10, 11, 12])]
    b = collate(pairs, [1, 0])
    assert torch.equal(b.src, torch.tensor([[9, 0, 0], [5, 6, 7]]))
    assert torch.equal(b.src_lengths, torch.tensor([1, 3]))
    assert torch.equal(b.tgt_in, torch.tensor([[1, 10, 11, 12], [1, 8, 0, 0]]))
    assert torch.equal(b.tgt_out, torch.tensor([[10, 11, 12, 2], [8, 2, 0, 0]]))
    assert torch.equal(b.tgt_lengths, torch.tensor([4, 2]))
    assert torch.equal(b.index, torch.tensor([1, 0]))
    assert torch.equal(b.src_mask(), torch.tensor([[True, False, False], [True, True, True]]))
    assert b.size == 2 and b.num_tokens == 6
    assert all(t.dtype == torch.long for t in (b.src, b.src_lengths, b.tgt_in, b.tgt_out, b.index))
    assert torch.equal(b.to("cpu").src, b.src)


def test_batches_rebuild_every_pair():
    pairs = _pairs(103)
    for sort_within in (None, 3):
        seen = []
        for b in batches(pairs, batch_size=8, seed=1, sort_within=sort_within):
            for row, i in enumerate(b.index.tolist()):
                src, tgt = pairs[i]
                n = b.src_lengths[row]
                assert b.src[row, :n].tolist() == src and (b.src[row, n:] == PAD).all()
                m = len(tgt) + 1
                assert b.tgt_lengths[row] == m
                assert b.tgt_in[row, :m].tolist() == [SOS, *tgt] and (b.tgt_in[row, m:] == PAD).all()
                assert b.tgt_out[row, :m].tolist() == [*tgt, EOS] and (b.tgt_out[row, m:] == PAD).all()
            assert b.src.shape[1] == int(b.src_lengths.max()) and b.tgt_in.shape[1] == int(
                b.tgt_lengths.max()
            )
            seen += b.index.tolist()
        assert sorted(seen) == list(range(103))  # each example exactly once per epoch
    assert num_batches(103, 8) == len(plan_batches(pairs, batch_size=8)) == 13
    assert num_batches(103, 8, drop_last=True) == len(plan_batches(pairs, batch_size=8, drop_last=True)) == 12


def test_order_is_a_pure_function_of_seed_and_epoch():
    pairs = _pairs(200)
    plan = plan_batches(pairs, batch_size=16, seed=3, epoch=2, sort_within=4)
    random.seed(99)
    torch.manual_seed(99)  # global random state plays no part
    assert plan_batches(pairs, batch_size=16, seed=3, epoch=2, sort_within=4) == plan
    assert plan_batches(pairs, batch_size=16, seed=3, epoch=3, sort_within=4) != plan
    assert plan_batches(pairs, batch_size=16, seed=4, epoch=2, sort_within=4) != plan
    assert plan_batches(pairs, batch_size=16, shuffle=False) == [
        list(range(k, min(k + 16, 200))) for k in range(0, 200, 16)
    ]
    # pinned: the first batch of seed 0, epoch 0 (any change of the shuffling fails here)
    assert plan_batches(pairs, batch_size=4, seed=0)[0] == PINNED_FIRST_BATCH


PINNED_FIRST_BATCH = [116, 172, 0, 62]


def test_resume_mid_epoch_with_start():
    pairs = _pairs(90)
    full = list(batches(pairs, batch_size=8, seed=5, epoch=1, sort_within=2))
    resumed = list(batches(pairs, batch_size=8, seed=5, epoch=1, sort_within=2, start=4))
    assert len(resumed) == len(full) - 4
    for a, b in zip(full[4:], resumed):
        assert torch.equal(a.src, b.src)
        assert torch.equal(a.tgt_out, b.tgt_out)
        assert torch.equal(a.index, b.index)


def test_bucketing_reduces_padding():
    c = builtin("numbers-en-de", size=1500, seed=0)
    src_tok = WordTokenizer.build(c.texts("train", "source"))
    tgt_tok = WordTokenizer.build(c.texts("train", "target"))
    pairs = encode_pairs(c["train"], src_tok, tgt_tok)

    def pad_fraction(sort_within):
        pad = total = 0
        for b in batches(pairs, batch_size=32, seed=0, sort_within=sort_within):
            pad += int((b.src == PAD).sum() + (b.tgt_out == PAD).sum())
            total += b.src.numel() + b.tgt_out.numel()
        return pad / total

    plain, bucketed = pad_fraction(None), pad_fraction(20)
    assert bucketed < 0.5 * plain, (plain, bucketed)


def test_encode_pairs_and_errors():
    tok = WordTokenizer.build(["a b c"])
    pairs = encode_pairs([Example("a b", "c a"), Example("c", "zzz")], tok, tok)
    assert pairs == [EncodedPair([4, 5], [6, 4]), EncodedPair([6], [Tokenizer.UNK])]
    with pytest.raises(ValueError, match=r"examples\[1\]: expected a source with at least one token"):
        encode_pairs([Example("a", "b"), Example(" ", "b")], tok, tok)
    with pytest.raises(ValueError, match="batch_size: expected an int >= 1, got 0"):
        batches(pairs, batch_size=0)
    with pytest.raises(ValueError, match="sort_within: expected an int >= 1, got 0"):
        plan_batches(pairs, batch_size=2, sort_within=0)
    with pytest.raises(ValueError, match="start: expected an int >= 0, got -1"):
        batches(pairs, batch_size=2, start=-1)
    with pytest.raises(ValueError, match=r"indices: expected positions in \[0, 2\), got 5"):
        collate(pairs, [0, 5])
    assert list(batches([], batch_size=4)) == []
