"""qkv.modules.positional: sinusoidal/learned encodings, RoPE, ALiBi, T5 relative bias, builder."""

from __future__ import annotations

import cmath
import math

import pytest
import torch

import qkv
from qkv.modules import (
    ALiBi,
    LearnedPositionalEncoding,
    MultiHeadAttention,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    T5RelativeBias,
    alibi_bias,
    alibi_slopes,
    apply_rotary,
    positional,
    sinusoidal_table,
    t5_relative_buckets,
)

from helpers import naive_attention

F64 = torch.float64

# ----------------------------------------------------------------------------- sinusoidal


@pytest.mark.parametrize("dim", [6, 7])
def test_sinusoidal_values_match_the_formula_float64(dim):
    base = 10000.0
    table = sinusoidal_table(torch.arange(50), dim, base=base, dtype=F64)
    assert table.shape == (50, dim)
    for pos in range(50):
        for c in range(dim):
            i = c // 2
            angle = pos / base ** (2 * i / dim)
            want = math.sin(angle) if c % 2 == 0 else math.cos(angle)
            assert abs(float(table[pos, c]) - want) < 1e-13, (pos, c)


def test_sinusoidal_module_offset_positions_and_beyond_max_len():
    torch.manual_seed(0)
    pe = SinusoidalPositionalEncoding(8, max_len=16)
    x = torch.randn(2, 12, 8)
    full = pe(x)
    torch.testing.assert_close(full - x, sinusoidal_table(torch.arange(12), 8).expand(2, 12, 8))
    # incremental: the tokens 5.. at offset 5 get the same encodings as in the full pass
    torch.testing.assert_close(pe(x[:, 5:], offset=5), full[:, 5:], rtol=0, atol=0)
    # positions past max_len are computed from the formula, not cut off
    far = pe(x[:, :3], offset=30) - x[:, :3]
    torch.testing.assert_close(far[0], sinusoidal_table(torch.arange(30, 33), 8), rtol=0, atol=1e-6)
    # per-sample positions (B, T)
    pos = torch.tensor([[0, 1, 2], [7, 8, 9]])
    got = pe(x[:, :3], positions=pos) - x[:, :3]
    torch.testing.assert_close(got[1], sinusoidal_table(torch.arange(7, 10), 8), rtol=0, atol=1e-6)
    # float64 inputs get float64 encodings from the formula
    x64 = x.double()
    torch.testing.assert_close(
        pe(x64) - x64, sinusoidal_table(torch.arange(12), 8, dtype=F64).expand(2, 12, 8)
    )


def test_sinusoidal_dropout_only_in_training():
    torch.manual_seed(0)
    pe = SinusoidalPositionalEncoding(8, dropout=0.5)
    x = torch.randn(2, 5, 8)
    pe.eval()
    torch.testing.assert_close(pe(x), x + sinusoidal_table(torch.arange(5), 8), rtol=0, atol=0)
    pe.train()
    assert (pe(x) == 0).any()


def test_learned_offset_and_limits():
    torch.manual_seed(0)
    pe = LearnedPositionalEncoding(4, max_len=10)
    x = torch.randn(2, 6, 4)
    full = pe(x)
    torch.testing.assert_close(full - x, pe.embedding.weight[:6].expand(2, 6, 4))
    torch.testing.assert_close(pe(x[:, 4:], offset=4), full[:, 4:], rtol=0, atol=0)
    full.sum().backward()
    assert torch.equal(pe.embedding.weight.grad[:6], torch.full((6, 4), 2.0))
    assert torch.equal(pe.embedding.weight.grad[6:], torch.zeros(4, 4))
    with pytest.raises(ValueError, match="max_len=10"):
        pe(x, offset=5)


# ----------------------------------------------------------------------------- rotary


def _rotary_by_complex(x: torch.Tensor, positions: list[int], base: float) -> torch.Tensor:
    """The paper's definition, interleaved pairs as complex numbers times e^{i m theta_j}."""
    out = torch.empty_like(x)
    d = x.shape[-1]
    for t, m in enumerate(positions):
        for j in range(d // 2):
            theta = base ** (-2 * j / d)
            z = complex(float(x[..., t, 2 * j]), float(x[..., t, 2 * j + 1])) * cmath.exp(1j * m * theta)
            out[..., t, 2 * j], out[..., t, 2 * j + 1] = z.real, z.imag
    return out


def test_rotary_matches_the_complex_definition_and_half_layout_is_a_permutation():
    torch.manual_seed(0)
    d, base = 8, 100.0
    x = torch.randn(5, d, dtype=F64)
    want = _rotary_by_complex(x, [3, 4, 5, 6, 7], base)
    inter = RotaryEmbedding(d, base=base, interleaved=True)
    torch.testing.assert_close(inter.rotate(x, offset=3), want, rtol=0, atol=1e-12)
    cos, sin = inter.cos_sin(torch.arange(3, 8), dtype=F64)
    torch.testing.assert_close(apply_rotary(x, cos, sin, interleaved=True), want, rtol=0, atol=1e-12)
    # the half layout rotates pairs (x_i, x_{i+D/2}): the same map up to a feature permutation
    perm = torch.tensor([0, 2, 4, 6, 1, 3, 5, 7])  # interleaved index of half-layout feature
    half = RotaryEmbedding(d, base=base)
    torch.testing.assert_close(half.rotate(x[:, perm], offset=3), want[:, perm], rtol=0, atol=1e-12)
    cos, sin = half.cos_sin(torch.arange(3, 8), dtype=F64)
    torch.testing.assert_close(apply_rotary(x[:, perm], cos, sin), want[:, perm], rtol=0, atol=1e-12)


@pytest.mark.parametrize("interleaved", [False, True])
def test_rotary_logits_depend_only_on_relative_position(interleaved):
    torch.manual_seed(0)
    rope = RotaryEmbedding(16, interleaved=interleaved)
    q = torch.randn(1, 2, 6, 16, dtype=F64)
    k = torch.randn(1, 2, 6, 16, dtype=F64)
    qp, kp = torch.tensor([0, 3, 5, 9, 2, 7]), torch.tensor([1, 1, 4, 8, 0, 6])
    base = rope.rotate(q, positions=qp) @ rope.rotate(k, positions=kp).transpose(-1, -2)
    for shift in (1, 17, 1000):
        shifted = rope.rotate(q, positions=qp + shift) @ rope.rotate(k, positions=kp + shift).transpose(
            -1, -2
        )
        torch.testing.assert_close(shifted, base, rtol=0, atol=1e-10)
    # and they do depend on it: moving the keys alone changes them
    moved = rope.rotate(q, positions=qp) @ rope.rotate(k, positions=kp + 1).transpose(-1, -2)
    assert (moved - base).abs().max() > 1e-3


def test_rotary_preserves_norms_and_position_zero_is_identity():
    torch.manual_seed(0)
    rope = RotaryEmbedding(8)
    x = torch.randn(2, 3, 5, 8, dtype=F64)
    y = rope.rotate(x, offset=123456)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=0, atol=1e-12)
    z = rope.rotate(x[:, :, :1], offset=0)
    torch.testing.assert_close(z, x[:, :, :1], rtol=0, atol=0)
    # offset (sliced from the cached table, grown past its first 256 rows) == explicit positions
    for off in (4, 300, 1000):
        by_pos = rope.rotate(x, positions=torch.arange(off, off + 5))
        torch.testing.assert_close(rope.rotate(x, offset=off), by_pos, rtol=0, atol=0)
        torch.testing.assert_close(rope.rotate(x.float(), offset=off), by_pos.float(), rtol=0, atol=1e-6)
    # (B, T) positions per sample
    per = rope.rotate(x, positions=torch.stack([torch.arange(5), torch.arange(4, 9)]))
    torch.testing.assert_close(per[1], rope.rotate(x, offset=4)[1])
    torch.testing.assert_close(per[0], rope.rotate(x)[0])
    # forward rotates q and k alike
    fq, fk = rope(x, 2 * x, offset=1)
    torch.testing.assert_close(fk, 2 * fq)


def test_rotary_float32_large_positions_stay_accurate():
    rope = RotaryEmbedding(8)
    x = torch.randn(1, 1, 2, 8, dtype=F64)
    gold = rope.rotate(x, offset=100000)
    got = rope.rotate(x.float(), offset=100000)
    assert float((got.double() - gold).abs().max()) < 1e-5


def test_gradcheck_apply_rotary_float64():
    torch.manual_seed(0)
    rope = RotaryEmbedding(6)
    cos, sin = rope.cos_sin(torch.arange(3), dtype=F64)
    x = torch.randn(2, 3, 6, dtype=F64, requires_grad=True)
    c, s = cos.clone().requires_grad_(), sin.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, e: apply_rotary(a, b, e), (x, c, s))
    assert torch.autograd.gradcheck(lambda a, b, e: apply_rotary(a, b, e, interleaved=True), (x, c, s))


# ----------------------------------------------------------------------------- ALiBi


def test_alibi_slopes_match_the_paper():
    eight = [1 / 2**k for k in range(1, 9)]
    torch.testing.assert_close(alibi_slopes(8, dtype=F64), torch.tensor(eight, dtype=F64), rtol=0, atol=0)
    # 12 heads: the 8 slopes of 8 heads, then every other slope of 16 heads (2^-0.5, 2^-1.5, ...)
    twelve = [*eight, 2**-0.5, 2**-1.5, 2**-2.5, 2**-3.5]
    torch.testing.assert_close(
        alibi_slopes(12, dtype=F64), torch.tensor(twelve, dtype=F64), rtol=0, atol=1e-15
    )
    torch.testing.assert_close(
        alibi_slopes(6, dtype=F64), torch.tensor([2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3], dtype=F64)
    )
    assert alibi_slopes(1).tolist() == [2**-8]
    assert alibi_slopes(16, dtype=F64)[0] == 2**-0.5


def test_alibi_bias_values_alignment_and_symmetry():
    b = alibi_bias(2, 3, 3, dtype=F64)  # slopes 1/16, 1/256
    want0 = -torch.tensor([[0, -1, -2], [1, 0, -1], [2, 1, 0]], dtype=F64) / 16
    torch.testing.assert_close(b[0], want0, rtol=0, atol=0)
    torch.testing.assert_close(b[1], want0 / 16, rtol=0, atol=0)
    # one query over 5 keys (KV-cache decoding) is the last row of the square bias
    torch.testing.assert_close(alibi_bias(4, 1, 5), alibi_bias(4, 5, 5)[:, -1:], rtol=0, atol=0)
    torch.testing.assert_close(alibi_bias(4, 2, 5, q_offset=0), alibi_bias(4, 5, 5)[:, :2], rtol=0, atol=0)
    sym = alibi_bias(4, 5, 5, causal=False)
    torch.testing.assert_close(sym, sym.transpose(-1, -2), rtol=0, atol=0)
    assert (sym <= 0).all()
    mod = ALiBi(4)
    torch.testing.assert_close(mod(5), alibi_bias(4, 5, 5), rtol=0, atol=0)
    torch.testing.assert_close(mod.from_positions(torch.tensor([7]), torch.arange(3, 8)), mod(1, 5))


def test_alibi_attention_equals_the_papers_key_position_form():
    """Under a causal mask, -m (i - j) and the paper's implementation m * j differ by a constant per
    row, so the softmax (and the output) is the same."""
    torch.manual_seed(0)
    h, t = 4, 6
    q, k, v = (torch.randn(2, h, t, 8, dtype=F64) for _ in range(3))
    slopes = alibi_slopes(h, dtype=F64)
    paper = slopes[:, None, None] * torch.arange(t, dtype=F64)  # (H, 1, Tk)
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    ours = qkv.attention(q, k, v, bias=alibi_bias(h, t, t, dtype=F64)[None], mask=qkv.masks.causal())
    ref, _ = naive_attention(q, k, v, bias=paper.expand(h, t, t), mask=causal)
    torch.testing.assert_close(ours.out, ref, rtol=0, atol=1e-12)


def test_gradcheck_attention_with_alibi_and_t5_bias_float64():
    torch.manual_seed(0)
    h, t = 2, 4
    q, k, v = (torch.randn(1, h, t, 4, dtype=F64, requires_grad=True) for _ in range(3))
    bias = alibi_bias(h, t, t, dtype=F64)[None]  # (1, H, Tq, Tk): per head

    def f(q, k, v):
        return qkv.attention(q, k, v, bias=bias, mask=qkv.masks.causal(), backend="reference").out

    assert torch.autograd.gradcheck(f, (q, k, v))
    t5 = T5RelativeBias(h, num_buckets=8, max_distance=16).double()
    w = t5.embedding.weight.detach().clone().requires_grad_()

    def g(w):
        b = torch.nn.functional.embedding(
            t5_relative_buckets(
                torch.arange(t)[None] - torch.arange(t)[:, None], num_buckets=8, max_distance=16
            ),
            w,
        ).permute(2, 0, 1)[None]  # (1, H, Tq, Tk)
        return qkv.attention(q.detach(), k.detach(), v.detach(), bias=b).out

    assert torch.autograd.gradcheck(g, (w,))


# ----------------------------------------------------------------------------- T5


# distance d = i - j (key at or before the query) -> bucket, num_buckets=32, max_distance=128:
# d < 8 exact; then 8 + floor(2 log2(d / 8)) capped at 15. Keys after the query: +16 (bidirectional).
T5_TABLE = {0: 0, 1: 1, 7: 7, 8: 8, 11: 8, 12: 9, 15: 9, 16: 10, 22: 10, 23: 11, 32: 12, 45: 12, 46: 13,
            64: 14, 90: 14, 91: 15, 127: 15, 128: 15, 5000: 15}  # fmt: skip


def test_t5_buckets_hand_table():
    d = torch.tensor(list(T5_TABLE))
    want = torch.tensor(list(T5_TABLE.values()))
    assert torch.equal(t5_relative_buckets(-d), want)  # key before the query: j - i = -d
    after = torch.where(d > 0, want + 16, want)
    assert torch.equal(t5_relative_buckets(d), after)
    # unidirectional: 32 buckets for the past (exact below 16), keys after the query -> 0
    uni = t5_relative_buckets(torch.tensor([-3, -15, -16, -127, 5, 100]), bidirectional=False)
    assert uni.tolist() == [3, 15, 16, 31, 0, 0]


def test_t5_buckets_match_transformers():
    t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    rel = torch.arange(-300, 301)
    for bidirectional in (True, False):
        for nb, md in ((32, 128), (16, 64), (8, 20)):
            theirs = t5.T5Attention._relative_position_bucket(
                rel, bidirectional=bidirectional, num_buckets=nb, max_distance=md
            )
            ours = t5_relative_buckets(rel, num_buckets=nb, max_distance=md, bidirectional=bidirectional)
            assert torch.equal(ours, theirs), (bidirectional, nb, md)


def test_t5_relative_bias_module():
    torch.manual_seed(0)
    m = T5RelativeBias(3, num_buckets=8, max_distance=16)
    b = m(4, 6)  # bottom-right: queries at positions 2..5
    assert b.shape == (3, 4, 6)
    w = m.embedding.weight
    for i in range(4):
        for j in range(6):
            bucket = int(t5_relative_buckets(torch.tensor(j - (i + 2)), num_buckets=8, max_distance=16))
            torch.testing.assert_close(b[:, i, j], w[bucket])
    shifted = m.from_positions(torch.arange(12, 16), torch.arange(10, 16))
    torch.testing.assert_close(shifted, b, rtol=0, atol=0)


# ----------------------------------------------------------------------------- builder


def test_positional_builder_kinds_and_roles():
    assert positional("none") is None
    cases = {
        "sinusoidal": (SinusoidalPositionalEncoding, "input"),
        "learned": (LearnedPositionalEncoding, "input"),
        "rope": (RotaryEmbedding, "rotary"),
        "alibi": (ALiBi, "bias"),
        "t5": (T5RelativeBias, "bias"),
    }
    for kind, (cls, role) in cases.items():
        m = positional(kind, dim=16, num_heads=4, causal=False)
        assert isinstance(m, cls) and m.role == role
    assert positional("rope", dim=16, num_heads=4).head_dim == 4
    assert positional("t5", num_heads=2, causal=True).bidirectional is False
    # the module a "rotary"/"bias" role names plugs into MultiHeadAttention
    torch.manual_seed(0)
    mha = MultiHeadAttention(embed_dim=16, num_heads=4, rotary=positional("rope", dim=16, num_heads=4))
    x = torch.randn(1, 5, 16)
    out = mha(x, bias=positional("alibi", num_heads=4), mask=qkv.masks.causal()).out
    assert out.shape == (1, 5, 16) and torch.isfinite(out).all()


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="kind: unknown positional kind 'xpos'; valid kinds: sinusoidal"):
        positional("xpos")
    with pytest.raises(ValueError, match="num_heads: positional\\('rope'\\) needs num_heads"):
        positional("rope", dim=16)
    with pytest.raises(ValueError, match="dim: expected a multiple of num_heads=3"):
        positional("rope", dim=16, num_heads=3)
    with pytest.raises(ValueError, match="head_dim: expected an even int"):
        RotaryEmbedding(7)
    with pytest.raises(ValueError, match="base: expected a finite number > 1"):
        RotaryEmbedding(8, base=1.0)
    with pytest.raises(ValueError, match="dropout: expected a number in"):
        SinusoidalPositionalEncoding(8, dropout=1.0)
    with pytest.raises(ValueError, match="offset: expected an int >= 0, got -1"):
        RotaryEmbedding(8).rotate(torch.randn(1, 1, 2, 8), offset=-1)
    with pytest.raises(TypeError, match="positions: expected an integer tensor"):
        RotaryEmbedding(8).rotate(torch.randn(1, 1, 2, 8), positions=torch.zeros(2))
    with pytest.raises(ValueError, match="positions: expected shape"):
        RotaryEmbedding(8).rotate(torch.randn(1, 1, 2, 8), positions=torch.arange(3))
    with pytest.raises(ValueError, match="offset: give either offset or positions"):
        SinusoidalPositionalEncoding(8)(torch.randn(1, 2, 8), offset=1, positions=torch.arange(2))
    with pytest.raises(ValueError, match=r"x: expected shape \(B, T, E=8\)"):
        SinusoidalPositionalEncoding(8)(torch.randn(1, 2, 6))
    with pytest.raises(ValueError, match=r"x: expected shape \(B, H, T, D=8\)"):
        RotaryEmbedding(8).rotate(torch.randn(1, 1, 2, 6))
    with pytest.raises(ValueError, match="x: expected an even feature dim"):
        apply_rotary(torch.randn(2, 3), torch.ones(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="num_heads: expected a positive int, got 0"):
        alibi_slopes(0)
    with pytest.raises(ValueError, match="num_buckets: expected an even int"):
        T5RelativeBias(2, num_buckets=9)
    with pytest.raises(ValueError, match="max_distance: expected an int > 8"):
        T5RelativeBias(2, num_buckets=32, max_distance=8)
    with pytest.raises(TypeError, match="q_positions: expected a 1-D integer tensor"):
        ALiBi(2).from_positions(torch.zeros(3), torch.arange(3))
