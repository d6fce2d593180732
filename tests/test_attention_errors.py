"""Bad input gets a clear error naming the argument, what was expected and what came."""

from __future__ import annotations

import pytest
import torch

import qkv


def _qkv(tq=3, tk=4, d=8):
    return torch.randn(2, 2, tq, d), torch.randn(2, 2, tk, d), torch.randn(2, 2, tk, d)


def test_head_dim_mismatch():
    q, k, v = _qkv()
    with pytest.raises(
        ValueError, match=r"key: score 'scaled_dot' needs the feature dim D of query \(8\) and key \(5\)"
    ):
        qkv.attention(q, k[..., :5], v)


def test_batch_mismatch():
    q, k, v = _qkv()
    with pytest.raises(
        ValueError, match=r"key: leading \(batch, head\) dims \(1, 2\) differ from query's \(2, 2\)"
    ):
        qkv.attention(q, k[:1], v[:1])


def test_value_length_mismatch():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"value: expected Tk = 4 rows"):
        qkv.attention(q, k, v[:, :, :3])


def test_dim_count_mismatch():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"key: expected 4 dims like query"):
        qkv.attention(q, k[0], v[0])


def test_dtype_mismatch():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match=r"key: expected dtype torch.float32 like query, got torch.float64"):
        qkv.attention(q, k.double(), v)


def test_integer_inputs():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match=r"query: expected a floating-point tensor, got dtype torch.int64"):
        qkv.attention(q.long(), k, v)


def test_not_a_tensor():
    _, k, v = _qkv()
    with pytest.raises(TypeError, match=r"query: expected a torch.Tensor, got list"):
        qkv.attention([[1.0]], k, v)


def test_device_mismatch():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"key: expected device cpu like query, got meta"):
        qkv.attention(q, k.to("meta"), v)
    with pytest.raises(ValueError, match=r"mask: expected device cpu like query, got meta"):
        qkv.attention(q, k, v, mask=torch.ones(3, 4, dtype=torch.bool, device="meta"))


def test_non_bool_masks():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match=r"mask: expected dtype torch.bool.*got torch.int64.*mask.bool\(\)"):
        qkv.attention(q, k, v, mask=torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(TypeError, match=r"mask: expected dtype torch.bool.*got torch.float32.*bias="):
        qkv.attention(q, k, v, mask=torch.zeros(3, 4))
    with pytest.raises(TypeError, match=r"mask: expected a bool tensor or a qkv.masks.Mask, got list"):
        qkv.attention(q, k, v, mask=[[True]])


def test_mask_not_broadcastable():
    q, k, v = _qkv()
    with pytest.raises(
        ValueError, match=r"mask: shape \(3, 5\) is not broadcastable to the scores' shape .* \(2, 2, 3, 4\)"
    ):
        qkv.attention(q, k, v, mask=torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"mask: shape \(3, 2, 3, 4\)"):  # would grow the batch
        qkv.attention(q, k, v, mask=torch.ones(3, 2, 3, 4, dtype=torch.bool))


def test_bad_bias():
    q, k, v = _qkv()
    with pytest.raises(
        TypeError, match=r"bias: expected a float tensor \(additive; masks go to mask=\), got torch.bool"
    ):
        qkv.attention(q, k, v, bias=torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"bias: shape \(4, 4\) is not broadcastable"):
        qkv.attention(q, k, v, bias=torch.zeros(4, 4))


def test_unknown_names_list_the_valid_ones():
    q, k, v = _qkv()
    with pytest.raises(
        ValueError,
        match=r"score: unknown score 'mlp'; valid names: dot, scaled_dot, general, additive, gaussian, cosine",
    ):
        qkv.attention(q, k, v, score="mlp")
    with pytest.raises(ValueError, match=r"backend: unknown name 'fast'; valid names: auto, reference, sdpa"):
        qkv.attention(q, k, v, backend="fast")


def test_score_parameters():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"score 'general' needs parameters \['weight'\]"):
        qkv.attention(q, k, v, score="general")
    with pytest.raises(ValueError, match=r"score_kwargs: \['sigma'\] are not parameters of score 'dot'"):
        qkv.attention(q, k, v, score="dot", score_kwargs={"sigma": 2.0})
    with pytest.raises(
        ValueError, match=r"general score: weight must have shape \(Dq, Dk\) = \(8, 8\), got \(8, 3\)"
    ):
        qkv.attention(q, k, v, score="general", score_kwargs={"weight": torch.randn(8, 3)})


def test_bad_scale_and_dropout():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match=r"scale: expected a finite number, got nan"):
        qkv.attention(q, k, v, scale=float("nan"))
    with pytest.raises(ValueError, match=r"dropout_p: expected a number in \[0, 1\), got 1.5"):
        qkv.attention(q, k, v, dropout_p=1.5)


def test_too_few_dims():
    with pytest.raises(
        ValueError, match=r"query: expected shape \(..., T, D\) with at least 2 dims, got \(4,\)"
    ):
        qkv.attention(torch.randn(4), torch.randn(4), torch.randn(4))
