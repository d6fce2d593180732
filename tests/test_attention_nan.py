"""One rule for NaN on every backend: it propagates as in eager PyTorch, except from masked-out
positions (those never change the result)."""

from __future__ import annotations

import pytest
import torch

import qkv

BACKENDS = ["reference", "sdpa", "chunked", "blocksparse", "flex", "auto"]


def _masks():
    return {
        "none": None,
        "causal": qkv.masks.causal(),
        "window": qkv.masks.sliding_window(3),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mask_name", ["none", "causal", "window"])
@pytest.mark.parametrize("t", [1, 4, 64, 300])
def test_nan_in_a_query_row_gives_a_nan_row(backend, mask_name, t):
    mask = _masks()[mask_name]
    if backend == "blocksparse" and mask is None:
        pytest.skip("blocksparse runs patterns only")
    g = torch.Generator().manual_seed(t)
    q, k, v = (torch.randn(2, 2, t, 8, generator=g) for _ in range(3))
    row = t // 2
    q[1, 0, row, 3] = float("nan")
    out = qkv.attention(q, k, v, mask=mask, backend=backend).out
    assert torch.isnan(out[1, 0, row]).all(), f"{backend}: the NaN row became {out[1, 0, row]}"
    nan_rows = torch.isnan(out).any(dim=-1)
    assert int(nan_rows.sum()) == 1, f"{backend}: NaN leaked into {int(nan_rows.sum()) - 1} other rows"


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_in_an_attended_key_reaches_exactly_the_rows_that_attend_it(backend):
    t = 16
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, t, 8, generator=g) for _ in range(3))
    k[0, 0, 5, 0] = float("nan")
    out = qkv.attention(q, k, v, mask=qkv.masks.causal(), backend=backend).out
    nan_rows = torch.isnan(out[0, 0]).any(dim=-1)
    expected = torch.arange(t) >= 5  # causal: rows 5.. attend key 5
    assert torch.equal(nan_rows, expected)


@pytest.mark.parametrize("backend", ["reference", "sdpa", "chunked", "auto"])
def test_nan_query_row_with_no_key_stays_zero(backend):
    q, k, v = torch.randn(1, 1, 3, 4), torch.randn(1, 1, 5, 4), torch.randn(1, 1, 5, 4)
    q[0, 0, 1, 0] = float("nan")
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1] = False  # row 1 attends nothing: its output is 0 whatever its query holds
    out = qkv.attention(q, k, v, mask=mask, backend=backend).out
    assert torch.equal(out[0, 0, 1], torch.zeros(4))
    assert not torch.isnan(out).any()


@pytest.mark.parametrize("where", ["query", "key"])
def test_zero_feature_dim_is_a_clear_error(where):
    q, k, v = torch.randn(1, 1, 3, 4), torch.randn(1, 1, 5, 4), torch.randn(1, 1, 5, 4)
    if where == "query":
        q, k = q[..., :0], k[..., :0]
    else:
        k = k[..., :0]
    with pytest.raises(ValueError, match=rf"{where}: expected a feature dim D >= 1"):
        qkv.attention(q, k, v)
