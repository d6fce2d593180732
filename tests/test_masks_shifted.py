"""``qkv.masks.shifted``: a pattern read at global positions equals the matching rows and
columns of the pattern at the full length (``torch.equal``), and its block layout is exact for
bands and a legal superset/subset otherwise."""

from __future__ import annotations

import pytest
import torch

import qkv
from qkv.masks import causal, global_tokens, random_blocks, shifted, sliding_window
from qkv.masks.core import reduce_dense

PATTERNS = [
    causal("top_left"),
    causal("bottom_right"),
    sliding_window(3),
    sliding_window(2, 1) | global_tokens([0, 5]),
    ~sliding_window(2) & causal("top_left"),
    random_blocks(2, 4, seed=0),
    qkv.masks.dilated(2, 3),
]
CALLS = [(0, 0, 9, 9), (7, 0, 1, 8), (8, 3, 5, 10), (16, 0, 16, 32), (5, 2, 1, 4), (12, 4, 3, 20)]


@pytest.mark.parametrize("pattern", PATTERNS, ids=repr)
@pytest.mark.parametrize(("q_offset", "kv_offset", "q_len", "kv_len"), CALLS)
def test_a_shifted_pattern_is_the_window_of_the_full_pattern(pattern, q_offset, kv_offset, q_len, kv_len):
    moved = shifted(pattern, q_offset=q_offset, kv_offset=kv_offset)
    full = pattern.materialize(q_offset + q_len, kv_offset + kv_len)[..., q_offset:, kv_offset:]
    got = moved.materialize(q_len, kv_len)
    assert torch.equal(got, full.expand_as(got))
    for q_block, kv_block in [(1, 1), (4, 4), (8, 2)]:
        layout = moved.block_layout(q_len, kv_len, q_block, kv_block)
        exact_any, exact_all = reduce_dense(got, q_len, kv_len, q_block, kv_block)
        assert not (exact_any & ~layout.any).any()  # never misses an allowed tile
        assert not (layout.all & ~exact_all).any()  # never skips a needed in-tile mask
        if q_block == kv_block == 1 or repr(pattern).startswith(("sliding_window", "causal")):  # a band:
            assert torch.equal(layout.any, exact_any) and torch.equal(layout.all, exact_all)


def test_shifted_causal_is_bottom_right_and_plain_causal_at_zero():
    assert torch.equal(
        shifted(causal("top_left"), q_offset=6, kv_offset=0).materialize(2, 8),
        causal("bottom_right").materialize(2, 8),
    )
    assert shifted(causal("top_left"), q_offset=3, kv_offset=3).is_plain_causal(5, 5)
    assert shifted(sliding_window(2), q_offset=0, kv_offset=0) is not None


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"shifted: q_offset"):
        shifted(causal(), q_offset=-1, kv_offset=0)
    with pytest.raises(TypeError, match=r"shifted: mask must be a qkv.masks pattern"):
        shifted(torch.ones(2, 2, dtype=torch.bool), q_offset=1, kv_offset=0)
