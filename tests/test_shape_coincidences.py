"""Shape coincidences: two sizes that happen to be equal (B == H, Tq == Tk, H == Hkv, T == D,
B == Tq) must never let a wrong layout pass silently.

Property tests draw shapes with such coincidences on purpose (every example has at least one)
and compare qkv against a golden written here with explicit Python loops over ``b, h, i``: a
softmax over the allowed keys, in float64. Each mask/bias layout is read by name
(``"B1QK"`` = ``(B, 1, Tq, Tk)``), entry by entry, never by broadcasting, so the golden cannot
share a broadcasting mistake with the code under test. Then the layouts that could mean two
things (a 3-D ``(n, Tq, Tk)`` next to 4-D ``(B, H, T, D)`` logits) must raise ``ValueError``.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qkv
from qkv.api import prepare
from qkv.backends.blocksparse import BlockSparseBackend
from qkv.backends.chunked import ChunkedBackend
from qkv.backends.flex import FlexBackend, flex_available
from qkv.modules import (
    AdditiveAttention,
    ALiBi,
    DotProductAttention,
    KVCache,
    LuongAttention,
    RotaryEmbedding,
    alibi_slopes,
    apply_rotary,
)

F64 = torch.float64
FEW = settings(max_examples=25, deadline=None)
TOL = {"rtol": 1e-9, "atol": 1e-10}

# ----------------------------------------------------------------------------- layouts by name
#
# A layout names each dim of a mask or bias: B = batch index b, H = head h, Q = query i,
# K = key j, 1 = a size-1 dim (index 0).


def layout_shape(layout: str, sizes: dict[str, int]) -> tuple[int, ...]:
    return tuple(1 if c == "1" else sizes[c] for c in layout)


def at(t: torch.Tensor, layout: str, b: int, h: int, i: int, j: int):
    """The entry of ``t`` (laid out as ``layout``) that applies to (batch b, head h, query i, key j)."""
    index = {"B": b, "H": h, "Q": i, "K": j, "1": 0}
    return t[tuple(index[c] for c in layout)]


def random_mask(shape, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=gen) < 0.7  # some rows end up with no key: output 0


def random_bias(shape, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=F64)


# ----------------------------------------------------------------------------- the golden


def golden(q, k, v, *, scale, allowed=None, add=None, kv_head=None):
    """``(out (B, H, Tq, Dv), weights (B, H, Tq, Tk))`` with loops over b, h, i (and j).

    ``allowed(b, h, i, j) -> bool``, ``add(b, h, i, j) -> float`` (both optional); query head
    ``h`` reads key/value head ``kv_head(h)`` (default ``h``). A row with no allowed key gives 0.
    """
    bsz, heads, tq, _ = q.shape
    tk, dv = k.shape[2], v.shape[3]
    out = torch.zeros(bsz, heads, tq, dv, dtype=F64)
    weights = torch.zeros(bsz, heads, tq, tk, dtype=F64)
    for b in range(bsz):
        for h in range(heads):
            g = h if kv_head is None else kv_head(h)
            for i in range(tq):
                keys = [j for j in range(tk) if allowed is None or bool(allowed(b, h, i, j))]
                if not keys:
                    continue
                logits = [
                    float((q[b, h, i].double() * k[b, g, j].double()).sum()) * scale
                    + (0.0 if add is None else float(add(b, h, i, j)))
                    for j in keys
                ]
                top = max(logits)
                e = [math.exp(x - top) for x in logits]
                total = sum(e)
                for j, ej in zip(keys, e):
                    weights[b, h, i, j] = ej / total
                    out[b, h, i] += (ej / total) * v[b, g, j].double()
    return out, weights


# ----------------------------------------------------------------------------- shapes with coincidences

COINCIDENCES = ("B=H", "Tq=Tk", "Tk=D", "Tq=D", "B=Tq", "B=H=Tq=Tk")


@st.composite
def coincident_sizes(draw, names=("B", "H", "Tq", "Tk", "D"), coincidences=COINCIDENCES, high=4):
    """Sizes in 1..high where at least one pair of ``coincidences`` is equal (>= 2)."""
    sizes = {n: draw(st.integers(1, high), label=n) for n in names}
    n = draw(st.integers(2, high), label="coincident size")
    for c in draw(st.lists(st.sampled_from(coincidences), min_size=1, max_size=2, unique=True)):
        for name in c.split("="):
            sizes[name] = n
    return sizes


def qkv_tensors(sizes, gen, dv=None):
    b, h, tq, tk, d = (sizes[n] for n in ("B", "H", "Tq", "Tk", "D"))
    q = torch.randn(b, h, tq, d, generator=gen, dtype=F64)
    k = torch.randn(b, h, tk, d, generator=gen, dtype=F64)
    v = torch.randn(b, h, tk, dv or d, generator=gen, dtype=F64)
    return q, k, v


def layout_sizes(sizes):
    return {"B": sizes["B"], "H": sizes["H"], "Q": sizes["Tq"], "K": sizes["Tk"]}


# Layouts qkv.attention accepts with 4-D (B, H, T, D) inputs: 4-D with each leading dim B|1, H|1,
# and those that cannot be misread (no leading dim other than 1).
MASK_LAYOUTS = ("QK", "1QK", "11QK", "BHQK", "B1QK", "1HQK", "B11K", "1H1K", "BH1K", "BHQ1")
BIAS_LAYOUTS = ("QK", "1QK", "11QK", "BHQK", "B1QK", "1HQK", "B11K", "1H1K", "BH1K")
# flex runs as an instance with 2 x 2 tiles only (each new shape costs eager FlexAttention
# ~0.3 s of tracing on CPU; the named backend is the same code with 64 x 64 tiles).
NAMED_BACKENDS = ("reference", "sdpa", "chunked")


def _small_block_backends():
    """Instances with 2 x 2 tiles, so that a tiny problem spans several blocks (flex included
    when torch has FlexAttention)."""
    out = [ChunkedBackend(q_block=2, kv_block=2)]
    if flex_available():
        out.append(FlexBackend(block_size=(2, 2)))
    return out


# ----------------------------------------------------------------------------- qkv.attention, 4-D


@FEW
@given(
    sizes=coincident_sizes(),
    mask_layout=st.sampled_from((None, *MASK_LAYOUTS)),
    bias_layout=st.sampled_from((None, *BIAS_LAYOUTS)),
    seed=st.integers(0, 2**16),
)
def test_attention_4d_mask_and_bias_layouts_match_golden_on_every_backend(
    sizes, mask_layout, bias_layout, seed
):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = qkv_tensors(sizes, gen)
    ls = layout_sizes(sizes)
    mask = None if mask_layout is None else random_mask(layout_shape(mask_layout, ls), gen)
    bias = None if bias_layout is None else random_bias(layout_shape(bias_layout, ls), gen)
    want_out, want_w = golden(
        q, k, v, scale=1 / math.sqrt(sizes["D"]),
        allowed=None if mask is None else lambda b, h, i, j: at(mask, mask_layout, b, h, i, j),
        add=None if bias is None else lambda b, h, i, j: at(bias, bias_layout, b, h, i, j),
    )  # fmt: skip
    with torch.no_grad():  # flex has no CPU backward
        for name in NAMED_BACKENDS:
            res = qkv.attention(q, k, v, mask=mask, bias=bias, backend=name, need_weights=True)
            assert res.backend == name
            torch.testing.assert_close(res.out, want_out, **TOL, msg=lambda m, n=name: f"{n} out: {m}")
            torch.testing.assert_close(res.weights, want_w, **TOL, msg=lambda m, n=name: f"{n} weights: {m}")
        inputs, restore = prepare(q, k, v, mask=mask, bias=bias)
        for backend in _small_block_backends():
            assert backend.supports(inputs) == []
            got = restore(backend.run(inputs)).out
            torch.testing.assert_close(got, want_out, **TOL, msg=lambda m, n=backend.name: f"{n} 2x2: {m}")


@FEW
@given(
    sizes=coincident_sizes(),
    mask_layout=st.sampled_from(("BHQK", "B1QK", "1HQK", "BH1K")),
    bias_layout=st.sampled_from((None, "BHQK", "B1QK", "1HQK")),
    seed=st.integers(0, 2**16),
)
def test_attention_weights_for_selects_heads_and_rows_not_batches(sizes, mask_layout, bias_layout, seed):
    """``weights_for=(heads, rows)`` indexes dims -3 and -2 of the mask and bias: with B == H or
    B == Tq an index on the wrong axis would still run."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = qkv_tensors(sizes, gen)
    ls = layout_sizes(sizes)
    mask = random_mask(layout_shape(mask_layout, ls), gen)
    bias = None if bias_layout is None else random_bias(layout_shape(bias_layout, ls), gen)
    _, want_w = golden(
        q, k, v, scale=1 / math.sqrt(sizes["D"]),
        allowed=lambda b, h, i, j: at(mask, mask_layout, b, h, i, j),
        add=None if bias is None else lambda b, h, i, j: at(bias, bias_layout, b, h, i, j),
    )  # fmt: skip
    heads = [sizes["H"] - 1, 0]
    rows = list(range(sizes["Tq"]))[::-1][: max(1, sizes["Tq"] - 1)]
    for name in ("reference", "sdpa", "chunked"):
        w = qkv.attention(q, k, v, mask=mask, bias=bias, backend=name, weights_for=(heads, rows)).weights
        torch.testing.assert_close(w, want_w[:, heads][:, :, rows], **TOL, msg=lambda m, n=name: f"{n}: {m}")


# ----------------------------------------------------------------------------- patterns (blocksparse)

PATTERNS = ("causal", "window", "full")
TENSOR_IN_PATTERN = (None, "QK", "BHQK", "B1QK", "1HQK", "B11K")


def _pattern(kind: str, tq: int, tk: int):
    """``(Mask, rule(i, j))``."""
    if kind == "causal":
        off = tk - tq
        return qkv.masks.causal("bottom_right"), lambda i, j: j <= i + off
    if kind == "window":
        return qkv.masks.sliding_window(1), lambda i, j: i - 1 <= j <= i + 1
    return qkv.masks.full(), lambda i, j: True


@FEW
@given(
    sizes=coincident_sizes(),
    kind=st.sampled_from(PATTERNS),
    tensor_layout=st.sampled_from(TENSOR_IN_PATTERN),
    seed=st.integers(0, 2**16),
)
def test_mask_patterns_with_tensor_layouts_match_golden_incl_blocksparse(sizes, kind, tensor_layout, seed):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = qkv_tensors(sizes, gen)
    pattern, rule = _pattern(kind, sizes["Tq"], sizes["Tk"])
    t = None
    if tensor_layout is not None:
        t = random_mask(layout_shape(tensor_layout, layout_sizes(sizes)), gen)
        pattern = pattern & t
    want_out, _ = golden(
        q, k, v, scale=1 / math.sqrt(sizes["D"]),
        allowed=lambda b, h, i, j: rule(i, j) and (t is None or bool(at(t, tensor_layout, b, h, i, j))),
    )  # fmt: skip
    with torch.no_grad():
        for name in ("blocksparse", *NAMED_BACKENDS):
            res = qkv.attention(q, k, v, mask=pattern, backend=name)
            torch.testing.assert_close(res.out, want_out, **TOL, msg=lambda m, n=name: f"{n}: {m}")
        inputs, restore = prepare(q, k, v, mask=pattern)
        for backend in (BlockSparseBackend(q_block=2, kv_block=2), *_small_block_backends()):
            assert backend.supports(inputs) == []
            got = restore(backend.run(inputs)).out
            torch.testing.assert_close(got, want_out, **TOL, msg=lambda m, n=backend.name: f"{n} 2x2: {m}")


# ----------------------------------------------------------------------------- qkv.attention, 3-D


@FEW
@given(
    sizes=coincident_sizes(names=("B", "Tq", "Tk", "D"), coincidences=("B=Tq", "Tq=Tk", "Tk=D", "B=Tk")),
    mask_layout=st.sampled_from(("BQK", "QK", "1QK", "B1K")),
    seed=st.integers(0, 2**16),
)
def test_attention_3d_inputs_keep_a_3d_mask_per_sample(sizes, mask_layout, seed):
    """With one-head ``(B, T, D)`` inputs a ``(B, Tq, Tk)`` mask can only be per sample."""
    gen = torch.Generator().manual_seed(seed)
    sizes = dict(sizes, H=1)
    q, k, v = (t[:, 0] for t in qkv_tensors(sizes, gen))  # (B, T, D)
    mask = random_mask(layout_shape(mask_layout, layout_sizes(sizes)), gen)
    want_out, want_w = golden(
        q[:, None], k[:, None], v[:, None], scale=1 / math.sqrt(sizes["D"]),
        allowed=lambda b, h, i, j: at(mask, mask_layout, b, h, i, j),
    )  # fmt: skip
    for name in ("reference", "sdpa", "chunked"):
        res = qkv.attention(q, k, v, mask=mask, backend=name, need_weights=True)
        torch.testing.assert_close(res.out, want_out[:, 0], **TOL, msg=lambda m, n=name: f"{n}: {m}")
        torch.testing.assert_close(res.weights, want_w[:, 0], **TOL, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("backend", ["reference", "sdpa", "chunked"])
def test_attention_3d_inputs_pattern_holding_a_3d_mask_is_per_sample_or_refused(backend):
    """``Mask & (B, Tq, Tk) tensor`` with ``(B, T, D)`` inputs: either per sample (as the bare
    tensor) or a ValueError, the same on every backend; never another sample's mask."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 4, generator=gen, dtype=F64) for _ in range(3))
    m = torch.ones(2, 3, 3, dtype=torch.bool)
    m[0, :, 1:] = False  # sample 0 sees key 0 only, sample 1 sees every key
    want = qkv.attention(q, k, v, mask=m, backend="reference").out
    try:
        got = qkv.attention(q, k, v, mask=qkv.masks.full() & m, backend=backend).out
    except ValueError:
        return
    torch.testing.assert_close(got, want, **TOL)


# ----------------------------------------------------------------------------- refused layouts


def _bhtd(b=2, h=2, t=3, d=4):
    gen = torch.Generator().manual_seed(1)
    return tuple(torch.randn(b, h, t, d, generator=gen, dtype=F64) for _ in range(3))


@pytest.mark.parametrize("n", ["B", "H", "B=H"])
@pytest.mark.parametrize("what", ["mask", "bias"])
def test_attention_4d_inputs_refuse_a_3d_mask_or_bias_with_n_above_1(n, what):
    """``(n, Tq, Tk)`` next to ``(B, H, T, D)`` logits: per sample or per head? Refused."""
    b, h = {"B": (2, 3), "H": (3, 2), "B=H": (2, 2)}[n]
    q, k, v = _bhtd(b, h)
    size = 2
    t = torch.ones(size, 3, 3, dtype=torch.bool) if what == "mask" else torch.zeros(size, 3, 3, dtype=F64)
    with pytest.raises(ValueError, match=what):
        qkv.attention(q, k, v, **{what: t})
    # the unambiguous spellings of the same tensor are accepted and give numbers
    lead = (size, 1) if n != "H" else (1, size)
    out = qkv.attention(q, k, v, **{what: t.reshape(*lead, 3, 3)}).out
    want, _ = golden(q, k, v, scale=0.5)  # an all-True mask / zero bias changes nothing
    torch.testing.assert_close(out, want, **TOL)


def test_attention_4d_inputs_refuse_a_pattern_holding_a_3d_tensor():
    """``qkv.masks.causal() & (n, Tq, Tk)`` is the same ambiguity behind a Mask (today: read
    as per head, whatever the caller meant)."""
    q, k, v = _bhtd(2, 2)
    m = torch.ones(2, 3, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="mask"):
        qkv.attention(q, k, v, mask=qkv.masks.causal() & m, backend="reference")


def _mha(heads=2, kv_heads=None, e=8):
    torch.manual_seed(0)
    return qkv.MultiHeadAttention(embed_dim=e, num_heads=heads, num_kv_heads=kv_heads).double().eval()


@pytest.mark.parametrize("entry", ["mask", "cache", "gqa"])
def test_multihead_refuses_a_3d_mask_when_batch_equals_heads(entry):
    """MultiHeadAttention ``mask=(B, Tq, Tk)`` with ``B == num_heads``: refused, on every path."""
    mha = _mha(heads=2, kv_heads=1 if entry == "gqa" else None)
    x = torch.randn(2, 3, 8, dtype=F64)
    m = torch.ones(2, 3, 3, dtype=torch.bool)
    m[0, :, 1:] = False
    kwargs = {"cache": KVCache()} if entry == "cache" else {}
    with pytest.raises(ValueError, match="mask"):
        mha(x, mask=m, **kwargs)
    # the per-sample spelling runs and equals the loop golden
    res = mha(x, mask=m[:, None], need_weights=True)
    want_out, want_w = _mha_golden(mha, x, x, allowed=lambda b, h, i, j: bool(m[b, i, j]))
    torch.testing.assert_close(res.out, want_out, **TOL)
    torch.testing.assert_close(res.weights, want_w, **TOL)


def test_multihead_refuses_a_pattern_holding_a_3d_mask():
    mha = _mha(heads=2)
    x = torch.randn(2, 3, 8, dtype=F64)
    with pytest.raises(ValueError, match="mask"):
        mha(x, mask=qkv.masks.full() & torch.ones(2, 3, 3, dtype=torch.bool))


def test_multihead_refuses_a_3d_bias_tensor_when_batch_equals_heads():
    """A ``(B, Tq, Tk)`` bias tensor with ``B == num_heads`` is as ambiguous as the mask."""
    mha = _mha(heads=2)
    x = torch.randn(2, 3, 8, dtype=F64)
    bias = torch.randn(2, 3, 3, dtype=F64)
    with pytest.raises(ValueError, match="bias"):
        mha(x, bias=bias)
    res = mha(x, bias=bias[:, None], need_weights=True)  # per sample, spelled out
    want_out, want_w = _mha_golden(mha, x, x, add=lambda b, h, i, j: float(bias[b, i, j]))
    torch.testing.assert_close(res.out, want_out, **TOL)
    torch.testing.assert_close(res.weights, want_w, **TOL)


# ----------------------------------------------------------------------------- MultiHeadAttention


def _mha_golden(mha, x_q, x_kv, *, allowed=None, add=None):
    """Project with the module's own weights, then loop: ``(out (B, Tq, E), weights (B, H, Tq, Tk))``."""
    bsz, tq, e = x_q.shape
    tk = x_kv.shape[1]
    heads, kv_heads, dh = mha.num_heads, mha.num_kv_heads, mha.head_dim
    with torch.no_grad():
        q = (x_q @ mha.q_proj.weight.T + mha.q_proj.bias).view(bsz, tq, heads, dh).transpose(1, 2)
        k = (x_kv @ mha.k_proj.weight.T + mha.k_proj.bias).view(bsz, tk, kv_heads, dh).transpose(1, 2)
        v = (x_kv @ mha.v_proj.weight.T + mha.v_proj.bias).view(bsz, tk, kv_heads, dh).transpose(1, 2)
        group = heads // kv_heads
        o, w = golden(
            q, k, v, scale=1 / math.sqrt(dh), allowed=allowed, add=add, kv_head=lambda h: h // group
        )
        out = o.transpose(1, 2).reshape(bsz, tq, e) @ mha.out_proj.weight.T + mha.out_proj.bias
    return out, w


MHA_MASK_LAYOUTS = (None, "QK", "1QK", "B1QK", "1HQK", "BHQK")
MHA_BIAS = (None, "B1QK", "1HQK", "BHQK", "QK", "alibi")


@st.composite
def mha_sizes(draw):
    sizes = draw(
        coincident_sizes(
            names=("B", "H", "Tq", "Tk", "D"),
            coincidences=("B=H", "Tq=Tk", "Tq=D", "Tk=D", "B=Tq", "B=H=Tq=Tk"),
            high=3,
        )
    )
    h = sizes["H"]
    divisors = [d for d in range(1, h + 1) if h % d == 0]
    # H == Hkv (plain multi-head) half of the time, else a proper divisor (GQA / MQA)
    sizes["Hkv"] = draw(st.sampled_from([h, h, *divisors]))
    return sizes


@FEW
@given(
    sizes=mha_sizes(),
    mask_layout=st.sampled_from(MHA_MASK_LAYOUTS),
    bias_kind=st.sampled_from(MHA_BIAS),
    padding=st.booleans(),
    backend=st.sampled_from(("auto", "reference", "sdpa", "chunked")),
    seed=st.integers(0, 2**16),
)
def test_multihead_masks_padding_bias_and_gqa_match_golden(
    sizes, mask_layout, bias_kind, padding, backend, seed
):
    b, h, tq, tk, dh, hkv = (sizes[n] for n in ("B", "H", "Tq", "Tk", "D", "Hkv"))
    e = h * dh
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mha = qkv.MultiHeadAttention(embed_dim=e, num_heads=h, num_kv_heads=hkv, backend=backend).double().eval()
    with torch.no_grad():  # non-zero projection biases, so a mix-up of heads shows
        for p in (mha.q_proj.bias, mha.k_proj.bias, mha.v_proj.bias, mha.out_proj.bias):
            p.copy_(torch.randn(p.shape, generator=gen, dtype=F64))
    x_q = torch.randn(b, tq, e, generator=gen, dtype=F64)
    x_kv = torch.randn(b, tk, e, generator=gen, dtype=F64)
    ls = layout_sizes(sizes)
    mask = None if mask_layout is None else random_mask(layout_shape(mask_layout, ls), gen)
    pad = (torch.rand(b, tk, generator=gen) < 0.3) if padding else None  # True = padding
    kwargs = {}
    if mask is not None:
        kwargs["mask"] = mask
    if pad is not None:
        kwargs["key_padding_mask"] = pad
    add = None
    if bias_kind == "alibi":  # a position-bias module: (H, Tq, Tk) inside, per head
        kwargs["bias"] = ALiBi(h, causal=False).double()
        slopes = alibi_slopes(h, dtype=F64)
        add = lambda b_, h_, i, j: -float(slopes[h_]) * abs(i - j)  # noqa: E731
    elif bias_kind is not None:
        bias = random_bias(layout_shape(bias_kind, ls), gen)
        kwargs["bias"] = bias
        add = lambda b_, h_, i, j: float(at(bias, bias_kind, b_, h_, i, j))  # noqa: E731

    def allowed(b_, h_, i, j):
        ok = mask is None or bool(at(mask, mask_layout, b_, h_, i, j))
        return ok and (pad is None or not bool(pad[b_, j]))

    res = mha(x_q, x_kv, x_kv, need_weights=True, **kwargs)
    want_out, want_w = _mha_golden(mha, x_q, x_kv, allowed=allowed, add=add)
    torch.testing.assert_close(res.out, want_out, **TOL)
    torch.testing.assert_close(res.weights, want_w, **TOL)


# ----------------------------------------------------------------------------- d2l modules, valid_lens

D2L_KINDS = ("dot", "dot_unscaled", "additive", "luong_general", "luong_dot", "luong_concat")


def _d2l_module(kind: str, dq: int, dk: int, gen: torch.Generator):
    torch.manual_seed(int(torch.randint(0, 2**16, (1,), generator=gen)))
    if kind == "dot":
        return DotProductAttention()
    if kind == "dot_unscaled":
        return DotProductAttention(scaled=False)
    if kind == "additive":
        return AdditiveAttention(query_dim=dq, key_dim=dk, hidden_dim=3).double()
    score = kind.split("_")[1]
    return LuongAttention(score=score, query_dim=dq, key_dim=dk if score != "dot" else dq).double()


def _d2l_score(kind: str, module, q, k) -> float:
    """One entry of the score, written out (q (Dq,), k (Dk,))."""
    if kind == "dot":
        return float(q @ k) / math.sqrt(q.shape[0])
    if kind in ("dot_unscaled", "luong_dot"):
        return float(q @ k)
    s = module.score
    if kind == "luong_general":
        return float(q @ s.weight @ k)
    return float(s.v @ torch.tanh(s.w_query.weight @ q + s.w_key.weight @ k))  # additive / concat


@FEW
@given(
    sizes=coincident_sizes(
        names=("B", "Tq", "Tk", "D"), coincidences=("B=Tq", "Tq=Tk", "B=Tk", "Tk=D", "B=D", "B=Tq=Tk")
    ),
    kind=st.sampled_from(D2L_KINDS),
    per_query=st.booleans(),
    one_step=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_d2l_modules_valid_lens_match_golden(sizes, kind, per_query, one_step, seed):
    """valid_lens ``(B,)`` or ``(B, Tq)`` (key ``j`` visible when ``j < len``), with B == Tq etc."""
    gen = torch.Generator().manual_seed(seed)
    b, tq, tk, d = (sizes[n] for n in ("B", "Tq", "Tk", "D"))
    luong = kind.startswith("luong")
    one_step = one_step and luong and not per_query  # a (B, Dq) query: Luong's decoder step
    tq = 1 if one_step else tq
    dk = d if kind.startswith("dot") or kind == "luong_dot" else d + 1
    module = _d2l_module(kind, d, dk, gen).eval()
    q = torch.randn(b, tq, d, generator=gen, dtype=F64)
    keys = torch.randn(b, tk, dk, generator=gen, dtype=F64)
    values = torch.randn(b, tk, 2, generator=gen, dtype=F64)
    lens = torch.randint(0, tk + 1, (b, tq) if per_query else (b,), generator=gen)

    out = torch.zeros(b, tq, 2, dtype=F64)
    weights = torch.zeros(b, tq, tk, dtype=F64)
    with torch.no_grad():
        for bb in range(b):
            for i in range(tq):
                n = int(lens[bb, i] if per_query else lens[bb])
                if n == 0:
                    continue  # no key: zeros
                logits = [_d2l_score(kind, module, q[bb, i], keys[bb, j]) for j in range(n)]
                top = max(logits)
                e = [math.exp(x - top) for x in logits]
                for j in range(n):
                    weights[bb, i, j] = e[j] / sum(e)
                    out[bb, i] += weights[bb, i, j] * values[bb, j]
        if luong:
            query = q[:, 0] if one_step else q
            res = module(query, keys, values, valid_lens=lens, need_weights=True)
        else:
            res = module(q, keys, values, valid_lens=lens, need_weights=True)
    if one_step:
        out, weights = out[:, 0], weights[:, 0]
    torch.testing.assert_close(res.out, out, **TOL)
    torch.testing.assert_close(res.weights, weights, **TOL)


@pytest.mark.parametrize("mask_shape", ["BQK", "B1K"])
def test_d2l_extra_per_sample_mask_combines_with_valid_lens(mask_shape):
    """``mask=`` (broadcastable to ``(B, Tq, Tk)``) ANDed with ``valid_lens`` stays per sample."""
    gen = torch.Generator().manual_seed(3)
    b = tq = tk = d = 3  # B == Tq == Tk == D
    q, keys, values = (torch.randn(b, t, d, generator=gen, dtype=F64) for t in (tq, tk, tk))
    lens = torch.tensor([3, 2, 1])
    m = random_mask((b, tq, tk) if mask_shape == "BQK" else (b, 1, tk), gen)
    m[:, :, 0] = True
    layout = "BQK" if mask_shape == "BQK" else "B1K"
    res = DotProductAttention()(q, keys, values, valid_lens=lens, mask=m, need_weights=True)
    want_out, want_w = golden(
        q[:, None], keys[:, None], values[:, None], scale=1 / math.sqrt(d),
        allowed=lambda bb, h, i, j: j < int(lens[bb]) and bool(at(m, layout, bb, h, i, j)),
    )  # fmt: skip
    torch.testing.assert_close(res.out, want_out[:, 0], **TOL)
    torch.testing.assert_close(res.weights, want_w[:, 0], **TOL)


# ----------------------------------------------------------------------------- positions (RoPE)


@FEW
@given(
    sizes=coincident_sizes(names=("B", "H", "T", "D"), coincidences=("B=H", "B=T", "T=D", "H=T")),
    seed=st.integers(0, 2**16),
)
def test_rotary_per_sample_positions_match_golden(sizes, seed):
    """``rotate(x (B, H, T, D), positions=(B, T))`` rotates sample b by its own positions."""
    gen = torch.Generator().manual_seed(seed)
    b, h, t = sizes["B"], sizes["H"], sizes["T"]
    d = 2 * sizes["D"]  # even
    x = torch.randn(b, h, t, d, generator=gen, dtype=F64)
    pos = torch.randint(0, 50, (b, t), generator=gen)
    got = RotaryEmbedding(d).rotate(x, positions=pos)
    want = torch.empty_like(x)
    half = d // 2
    for bb in range(b):
        for hh in range(h):
            for tt in range(t):
                for p in range(half):  # pairs (x_p, x_{p + D/2}), angle pos * base^(-2p/D)
                    theta = int(pos[bb, tt]) * 10000.0 ** (-2 * p / d)
                    a, c = float(x[bb, hh, tt, p]), float(x[bb, hh, tt, p + half])
                    want[bb, hh, tt, p] = a * math.cos(theta) - c * math.sin(theta)
                    want[bb, hh, tt, p + half] = c * math.cos(theta) + a * math.sin(theta)
    torch.testing.assert_close(got, want, **TOL)


def test_apply_rotary_refuses_3d_cos_sin_on_4d_inputs():
    """``cos (B, T, D)`` next to ``x (B, H, T, D)`` (Hugging Face's layout before its
    unsqueeze) would be read as per head when B == H: refused; ``(B, 1, T, D)`` is per sample."""
    rope = RotaryEmbedding(4)
    x = torch.randn(2, 2, 3, 4, dtype=F64)
    cos, sin = rope.cos_sin(torch.tensor([[0, 1, 2], [5, 6, 7]]), dtype=F64)  # (B, 1, T, D)
    with pytest.raises(ValueError, match="cos"):
        apply_rotary(x, cos[:, 0], sin[:, 0])
    want = rope.rotate(x, positions=torch.tensor([[0, 1, 2], [5, 6, 7]]))
    torch.testing.assert_close(apply_rotary(x, cos, sin), want, **TOL)


# ----------------------------------------------------------------------------- capture


def test_capture_of_unbatched_multihead_records_heads_not_batch():
    """An unbatched ``(T, E)`` call of the torch drop-in returns per-head weights ``(H, Tq, Tk)``;
    capture must record ``(1, H, Tq, Tk)``, not read the heads as a batch."""
    torch.manual_seed(0)
    mha = qkv.TorchMultiheadAttention(8, 2).double().eval()
    model = torch.nn.Sequential()
    model.add_module("self_attn", mha)
    x = torch.randn(3, 8, dtype=F64)
    with qkv.capture(model) as maps:
        _, w = mha(x, x, x, average_attn_weights=False)
    rec = maps["self_attn"][0]
    assert tuple(rec.shape) == (1, 2, 3, 3)
    torch.testing.assert_close(rec[0], w, **TOL)


@pytest.mark.parametrize("backend", ["reference", "sdpa", "chunked", "auto"])
def test_one_dim_key_mask_means_every_query(backend):
    """A (Tk,) mask is the same for every query, sample and head (it used to crash)."""
    q, k = torch.randn(2, 2, 3, 4), torch.randn(2, 2, 5, 4)
    keep = torch.tensor([True, True, False, True, False])
    got = qkv.attention(q, k, k, mask=keep, backend=backend, need_weights=True)
    ref = qkv.attention(q, k, k, mask=keep.expand(3, 5), backend="reference", need_weights=True)
    torch.testing.assert_close(got.weights, ref.weights)
    assert torch.all(got.weights[..., ~keep] == 0)
