"""Test helpers: an independent float64 attention written with loops, and the error-ratio rule.

The naive implementation shares no code with qkv: it is the golden every backend is held to.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# ----------------------------------------------------------------------------- golden math


def naive_score(name: str, q: Tensor, k: Tensor, **p) -> Tensor:
    """Scores for one (Tq, D) x (Tk, D) pair, entry by entry."""
    tq, tk = q.shape[0], k.shape[0]
    out = torch.empty(tq, tk, dtype=q.dtype)
    for i in range(tq):
        for j in range(tk):
            qi, kj = q[i], k[j]
            if name in ("dot", "scaled_dot"):
                s = (qi * kj).sum()
            elif name == "general":
                s = qi @ p["weight"] @ kj
            elif name == "additive":
                s = p["v"] @ torch.tanh(p["w_query"] @ qi + p["w_key"] @ kj)
            elif name == "gaussian":
                s = -((qi - kj) ** 2).sum() / (2 * p.get("sigma", 1.0) ** 2)
            elif name == "cosine":
                s = (qi @ kj) / (max(qi.norm(), 1e-8) * max(kj.norm(), 1e-8)) / p.get("temperature", 1.0)
            else:
                raise ValueError(name)
            out[i, j] = s
    return out


def naive_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    /,
    *,
    score: str = "scaled_dot",
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    scale: float | None = None,
    **params,
) -> tuple[Tensor, Tensor]:
    """(out, weights) for (..., Tq, D) inputs; fully masked rows are zeros. Differentiable."""
    lead = q.shape[:-2]
    tq, tk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    if scale is None:
        scale = 1 / math.sqrt(d) if score == "scaled_dot" else 1.0
    full_shape = (*lead, tq, tk)
    m = torch.ones(full_shape, dtype=torch.bool) if mask is None else mask.expand(full_shape)
    b = None if bias is None else bias.expand(full_shape)
    n_lead = math.prod(lead)
    qf, kf, vf = (t.reshape(n_lead, t.shape[-2], t.shape[-1]) for t in (q, k, v))
    mf = m.reshape(n_lead, tq, tk)
    bf = None if b is None else b.reshape(n_lead, tq, tk)
    outs, weights = [], []
    for n in range(qf.shape[0]):
        logits = naive_score(score, qf[n], kf[n], **params) * scale
        if bf is not None:
            logits = logits + bf[n]
        rows_o, rows_w = [], []
        for i in range(tq):
            allowed = mf[n, i]
            if not bool(allowed.any()):
                rows_w.append(torch.zeros(tk, dtype=q.dtype))
                rows_o.append(torch.zeros(v.shape[-1], dtype=q.dtype))
                continue
            li = logits[i][allowed]
            e = torch.exp(li - li.max().detach())
            w = torch.zeros(tk, dtype=q.dtype).masked_scatter(allowed, e / e.sum())
            rows_w.append(w)
            rows_o.append((w[allowed, None] * vf[n][allowed]).sum(0))
        outs.append(torch.stack(rows_o) if tq else torch.zeros(0, v.shape[-1], dtype=q.dtype))
        weights.append(torch.stack(rows_w) if tq else torch.zeros(0, tk, dtype=q.dtype))
    out = torch.stack(outs).reshape(*lead, tq, v.shape[-1])
    w = torch.stack(weights).reshape(full_shape)
    return out, w


# ----------------------------------------------------------------------------- error ratio

OUT_FACTOR = 2.0
GRAD_FACTOR = 3.0


def floor_for(golden: Tensor, dtype: torch.dtype) -> float:
    """A few ulps of the golden's magnitude in ``dtype``."""
    scale = float(golden.abs().max()) if golden.numel() else 0.0
    return 8 * torch.finfo(dtype).eps * max(scale, 1.0)


def error_ratio(impl: Tensor, golden: Tensor, eager: Tensor, dtype: torch.dtype | None = None) -> float:
    """``maxabs(impl - golden) / (maxabs(eager - golden) + floor)``; inf if impl has new NaNs."""
    dtype = dtype or impl.dtype
    impl64, golden64, eager64 = (t.detach().to(torch.float64) for t in (impl, golden, eager))
    if torch.isnan(impl64).any() and not torch.isnan(golden64).any():
        return math.inf
    if impl64.numel() == 0:
        return 0.0
    err_impl = float((impl64 - golden64).abs().max())
    err_eager = float((eager64 - golden64).abs().max())
    return err_impl / (err_eager + floor_for(golden64, dtype))


def assert_error_ratio(request, impl, golden, eager, *, factor=OUT_FACTOR, what="out", dtype=None):
    """Assert the rule and record the ratio (the run prints the worst one)."""
    r = error_ratio(impl, golden, eager, dtype)
    if request is not None:
        request.node.user_properties.append(("error_ratio", r))
    assert r <= factor, f"{what}: error ratio {r:.3f} > {factor} (impl vs golden, relative to eager)"
    return r


# ----------------------------------------------------------------------------- masking invariants


def assert_garbage_changes_nothing(q, k, v, *, where, garbage, **attention_kwargs):
    """Outputs and all gradients are bitwise equal when ``garbage`` replaces keys and values
    at ``where`` (an index into (B, H, Tk)) that the mask hides from every query."""
    import qkv

    def run(k, v):
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        r = qkv.attention(qq, kk, vv, **attention_kwargs)
        return r.out, torch.autograd.grad(r.out.sum(), (qq, kk, vv))

    clean_out, clean_grads = run(k, v)
    k2, v2 = k.clone(), v.clone()
    k2[where] = garbage
    v2[where] = garbage
    dirty_out, dirty_grads = run(k2, v2)
    assert torch.equal(clean_out, dirty_out)
    for a, b in zip(clean_grads, dirty_grads):
        assert torch.equal(a, b)
