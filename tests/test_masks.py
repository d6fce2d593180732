"""qkv.masks: each helper equals its brute-force definition; combinations; conversions; errors."""

from __future__ import annotations

import pytest
import torch

import qkv
from qkv import masks


def drawn(text: str) -> torch.Tensor:
    return torch.tensor([[c == "x" for c in row.split()] for row in text.strip().splitlines()])


def test_causal_square_and_both_alignments():
    assert torch.equal(masks.causal().materialize(3, 3)[0, 0], drawn("x . .\nx x .\nx x x"))
    top_left = """
        x . . .
        x x . .
    """
    bottom_right = """
        x x x .
        x x x x
    """
    assert torch.equal(masks.causal("top_left").materialize(2, 4)[0, 0], drawn(top_left))
    assert torch.equal(masks.causal("bottom_right").materialize(2, 4)[0, 0], drawn(bottom_right))
    # Tq > Tk: bottom-right leaves the first queries with nothing to attend
    assert torch.equal(masks.causal("bottom_right").materialize(3, 2)[0, 0], drawn(". .\nx .\nx x"))
    assert torch.equal(masks.causal("top_left").materialize(3, 2)[0, 0], drawn("x .\nx x\nx x"))


def test_causal_matches_brute_force():
    for tq, tk in [(1, 1), (4, 4), (3, 7), (7, 3)]:
        for align, off in (("top_left", 0), ("bottom_right", tk - tq)):
            m = masks.causal(align).materialize(tq, tk)[0, 0]
            brute = torch.tensor([[j <= i + off for j in range(tk)] for i in range(tq)])
            assert torch.equal(m, brute)


def test_causal_ambiguous_raises():
    with pytest.raises(ValueError, match=r"Tq=2 != Tk=4.*alignment="):
        masks.causal().materialize(2, 4)
    q, k = torch.randn(2, 8), torch.randn(4, 8)
    with pytest.raises(ValueError, match="ambiguous"):
        qkv.attention(q, k, k, mask=masks.causal())
    with pytest.raises(ValueError, match="alignment must be"):
        masks.causal("top")


def test_from_lengths_one_and_two_dims():
    lens = torch.tensor([3, 0, 5])
    m = masks.from_lengths(lens, 5)
    assert m.shape == (3, 1, 1, 5)
    brute = torch.tensor([[j < n for j in range(5)] for n in lens.tolist()])
    assert torch.equal(m[:, 0, 0], brute)
    lens2 = torch.tensor([[1, 2], [4, 0]])
    m2 = masks.from_lengths(lens2, 4)
    assert m2.shape == (2, 1, 2, 4)
    for b in range(2):
        for i in range(2):
            assert m2[b, 0, i].tolist() == [j < int(lens2[b, i]) for j in range(4)]


def test_from_lengths_errors():
    with pytest.raises(TypeError, match=r"valid_lens must be an integer tensor, got torch\.float32"):
        masks.from_lengths(torch.tensor([1.0]), 3)
    with pytest.raises(ValueError, match=r"valid_lens must be \(B,\) or \(B, Tq\)"):
        masks.from_lengths(torch.zeros(1, 1, 1, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="valid_lens must be >= 0"):
        masks.from_lengths(torch.tensor([-1]), 3)


def test_key_padding_converts_torch_convention():
    pad = torch.tensor([[False, False, True], [False, True, True]])  # True = padding
    m = masks.key_padding(pad)
    assert m.shape == (2, 1, 1, 3)
    assert torch.equal(m[:, 0, 0], ~pad)
    with pytest.raises(TypeError, match=r"key_padding_mask: expected dtype torch\.bool"):
        masks.key_padding(pad.long())
    with pytest.raises(ValueError, match=r"key_padding_mask: expected shape \(B, Tk\)"):
        masks.key_padding(pad[None])


def test_combinations_with_masks_and_tensors():
    c = masks.causal()
    pad = masks.from_lengths(torch.tensor([2, 4]), 4)
    dense_c = c.materialize(4, 4)
    for combined in (c & pad, pad & c):
        assert torch.equal(masks.materialize(combined, 4, 4), dense_c & pad)
    for combined in (c | pad, pad | c):
        assert torch.equal(masks.materialize(combined, 4, 4), dense_c | pad)
    assert torch.equal((~c).materialize(4, 4), ~dense_c)
    assert torch.equal((c & masks.full()).materialize(4, 4), dense_c)
    # mask_mod form agrees with the dense form, index by index
    fn = (c & pad).mask_mod(4, 4)
    for b in range(2):
        for i in range(4):
            for j in range(4):
                got = fn(torch.tensor(b), torch.tensor(0), torch.tensor(i), torch.tensor(j))
                assert bool(got) == bool(dense_c[0, 0, i, j] and pad[b, 0, 0, j])


def test_combined_mask_in_attention_equals_dense():
    q, k, v = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 8)
    lens = torch.tensor([2, 4])
    lazy = masks.causal() & masks.from_lengths(lens, 4)
    dense = masks.causal().materialize(4, 4) & masks.from_lengths(lens, 4)
    # same backend for both: the lazy mask must mean exactly the dense one
    a = qkv.attention(q, k, v, mask=lazy, need_weights=True, backend="reference")
    b = qkv.attention(q, k, v, mask=dense, need_weights=True, backend="reference")
    assert torch.equal(a.out, b.out)
    assert torch.equal(a.weights, b.weights)


def test_to_string():
    assert masks.to_string(masks.causal(), 3, 3) == "x . .\nx x .\nx x x"
    assert masks.to_string(masks.causal("bottom_right"), 2, 3, attend="#", ignore="-") == "# # -\n# # #"


def test_tensor_mask_must_fit_lengths():
    with pytest.raises(ValueError, match=r"does not fit \(Tq, Tk\) = \(4, 4\)"):
        masks.materialize(masks.causal() & torch.ones(3, 3, dtype=torch.bool), 4, 4)
