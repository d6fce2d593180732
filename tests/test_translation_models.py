"""Translation models: padding never leaks, decoding agrees with itself, tiny tasks are learned."""

import pytest
import torch

from qkv.functional.local import local_attention, local_centers
from qkv.models.seq2seq import ATTENTIONS, Seq2Seq, Seq2SeqConfig
from qkv.models.transformer import Transformer, TransformerConfig
from qkv.modules import sinusoidal_table
from qkv.translation.decode import beam_search, greedy

from helpers import naive_attention

V = 12


def make(kind: str, **kw):
    torch.manual_seed(0)
    if kind == "transformer":
        m = Transformer(TransformerConfig(src_vocab=V, tgt_vocab=V, d_model=32, num_heads=4, ff_dim=64, **kw))
    else:
        att, _, rnn = kind.partition(":")
        m = Seq2Seq(
            Seq2SeqConfig(
                src_vocab=V, tgt_vocab=V, attention=att, rnn=rnn or "gru", embed_dim=16, hidden_dim=24, **kw
            )
        )
    return m.eval()


KINDS = [*ATTENTIONS, "bahdanau:lstm", "luong-local:lstm", "transformer"]


def padded_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, V, (3, 7), generator=g)
    lengths = torch.tensor([7, 4, 2])
    for i, n in enumerate(lengths.tolist()):
        src[i, n:] = 0
    tgt = torch.randint(4, V, (3, 5), generator=g)
    tgt[:, 0] = 1
    return src, lengths, tgt


@pytest.mark.parametrize("kind", KINDS)
def test_padding_tokens_never_change_outputs(kind):
    m = make(kind)
    src, lengths, tgt = padded_batch()
    out = m(src, lengths, tgt, need_weights=True)
    garbage = src.clone()
    garbage[1, 4:] = torch.tensor([5, 6, 7])  # real token ids where padding was
    garbage[2, 2:] = 9
    out2 = m(garbage, lengths, tgt, need_weights=True)
    torch.testing.assert_close(out2[0], out[0], rtol=0, atol=1e-6)
    for a, b in zip(out[1].cross, out2[1].cross):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
        # no weight on padded source positions, rows sum to at most 1
        assert float(a[1, ..., 4:].detach().abs().max()) == 0.0
        assert float(a[2, ..., 2:].detach().abs().max()) == 0.0


@pytest.mark.parametrize("kind", KINDS)
def test_batched_decoding_equals_one_sentence_at_a_time(kind):
    m = make(kind)
    src, lengths, _ = padded_batch(1)
    batched = greedy(m, src, lengths, max_len=6)
    for i in range(3):
        n = int(lengths[i])
        single = greedy(m, src[i : i + 1, :n], lengths[i : i + 1], max_len=6)[0]
        assert single.tokens == batched[i].tokens
        assert single.score == pytest.approx(batched[i].score, abs=1e-5)
        if single.attention is not None:
            torch.testing.assert_close(single.attention, batched[i].attention, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["none", "bahdanau", "luong", "transformer"])
@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_of_one_is_greedy(kind, alpha):
    m = make(kind)
    src, lengths, _ = padded_batch(2)
    g = greedy(m, src, lengths, max_len=8)
    b = beam_search(m, src, lengths, beam=1, alpha=alpha, max_len=8)
    assert [h.tokens for h in b] == [h.tokens for h in g]
    for x, y in zip(b, g):
        assert x.score == pytest.approx(y.score, abs=1e-5)


def _sequence_logprob(m, src, lengths, tokens):
    """log p(tokens + <eos> | src) by teacher forcing, float64 sum."""
    tgt_in = torch.tensor([[1, *tokens]])
    logits = m(src, lengths, tgt_in)
    logp = torch.log_softmax(logits.double(), -1)[0]
    target = [*tokens, 2]
    return float(sum(logp[i, t].detach() for i, t in enumerate(target)))


@pytest.mark.parametrize("kind", ["bahdanau", "transformer"])
def test_beam_scores_are_the_model_log_probabilities_and_beat_greedy(kind):
    m = make(kind)
    src, lengths, _ = padded_batch(3)
    for i in range(3):
        s, n = src[i : i + 1, : int(lengths[i])], lengths[i : i + 1]
        g = greedy(m, s, n, max_len=8)[0]
        b = beam_search(m, s, n, beam=4, alpha=0.0, max_len=8)[0]
        if len(b.tokens) < 8:
            assert b.score == pytest.approx(_sequence_logprob(m, s, n, b.tokens), abs=1e-5)
        if len(g.tokens) < 8:
            assert b.score >= g.score - 1e-9  # beam search never finds a worse finished sentence


def test_transformer_step_equals_full_forward():
    m = make("transformer")
    src, lengths, tgt = padded_batch()
    full = m(src, lengths, tgt)
    memory = m.encode(src, lengths)
    state = m.init_state(memory)
    for t in range(tgt.shape[1]):
        logits, state, attn = m.step(tgt[:, t], state, memory)
        torch.testing.assert_close(logits, full[:, t], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(attn.sum(-1), torch.ones(3))


def test_transformer_positions_are_the_sinusoidal_table():
    """The Transformer adds qkv's one sinusoidal table (its formula is tested in test_positional)."""
    cfg = TransformerConfig(src_vocab=8, tgt_vocab=8, d_model=16, num_heads=2, ff_dim=32, max_len=50)
    pe = Transformer(cfg).positions
    assert torch.equal(pe, sinusoidal_table(torch.arange(50), 16))
    p, i = 37, 3
    angle = torch.tensor(p / 10000 ** (2 * i / 16), dtype=torch.float64)
    assert float(pe[p, 2 * i]) == pytest.approx(torch.sin(angle).item(), abs=1e-6)
    assert float(pe[p, 2 * i + 1]) == pytest.approx(torch.cos(angle).item(), abs=1e-6)


@pytest.fixture
def one_thread():
    """Tiny models run fastest (and steadiest on a busy machine) on one torch thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("kind", ["bahdanau", "luong", "luong-local", "transformer"])
def test_tiny_reverse_task_is_learned(kind):
    """Reversing 4 symbols needs the alignment: attention learns it in a few hundred steps."""
    torch.manual_seed(0)
    if kind == "transformer":
        m = Transformer(
            TransformerConfig(src_vocab=8, tgt_vocab=8, d_model=32, num_heads=2, ff_dim=64, dropout=0.0)
        )
    else:
        m = Seq2Seq(
            Seq2SeqConfig(
                src_vocab=8,
                tgt_vocab=8,
                attention=kind,
                embed_dim=16,
                hidden_dim=32,
                dropout=0.0,
                local_mode="m",
                window=4,
            )
        )
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(250):
        x = torch.randint(4, 8, (32, 4), generator=g)
        y = x.flip(1)
        tgt_in = torch.cat([torch.ones(32, 1, dtype=torch.long), y], 1)
        tgt_out = torch.cat([y, torch.full((32, 1), 2)], 1)
        logits = m(x, torch.full((32,), 4), tgt_in)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 8), tgt_out.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    x = torch.randint(4, 8, (64, 4), generator=g)
    hyps = greedy(m, x, torch.full((64,), 4), max_len=6)
    acc = sum(h.tokens == x[i].flip(0).tolist() for i, h in enumerate(hyps)) / 64
    assert acc >= 0.9, f"{kind} reversed only {acc:.2f} of the test sequences"


def test_bahdanau_projects_the_source_once_per_sentence(monkeypatch):
    """``W_k h_j`` is made once in ``encode`` (one call of ``w_key`` per forward, not one per
    target step), and the logits, weights and gradients equal the steps that score the
    unprojected source states, float64."""
    m = make("bahdanau").double().train()
    src, lengths, tgt = padded_batch()
    calls = []
    m.attn.score.w_key.register_forward_hook(lambda *a: calls.append(1))
    torch.manual_seed(1)
    logits, maps = m(src, lengths, tgt, need_weights=True)
    grads = torch.autograd.grad(logits.sin().sum(), list(m.parameters()), allow_unused=True)
    assert len(calls) == 1 and tgt.shape[1] > 1
    original = m.attn.forward

    def unprojected(queries, keys, values, *, keys_projected, **kw):
        assert keys_projected and keys.shape[-1] == m.config.hidden_dim
        return original(queries, values, values, **kw)  # the values are the source states

    monkeypatch.setattr(m.attn, "forward", unprojected)
    torch.manual_seed(1)  # the same dropout draws
    ref, ref_maps = m(src, lengths, tgt, need_weights=True)
    ref_grads = torch.autograd.grad(ref.sin().sum(), list(m.parameters()), allow_unused=True)
    torch.testing.assert_close(logits, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(maps.cross[0], ref_maps.cross[0], rtol=0, atol=1e-12)
    for a, b in zip(grads, ref_grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- local attention


def test_local_m_with_a_wide_window_is_global_attention():
    torch.manual_seed(0)
    q, k, v = (
        torch.randn(2, 3, 4, dtype=torch.float64),
        torch.randn(2, 5, 4, dtype=torch.float64),
        torch.randn(2, 5, 6, dtype=torch.float64),
    )
    center = local_centers("m", query_len=3, source_lengths=torch.tensor([5, 5])).double()
    r = local_attention(q, k, v, center=center, window=10, gaussian=False)
    golden, _ = naive_attention(q, k, v, score="dot")
    torch.testing.assert_close(r.out, golden, rtol=1e-12, atol=1e-12)


def test_local_p_window_and_gaussian_by_hand():
    torch.manual_seed(1)
    q, k, v = (
        torch.randn(1, 1, 4, dtype=torch.float64),
        torch.randn(1, 9, 4, dtype=torch.float64),
        torch.randn(1, 9, 2, dtype=torch.float64),
    )
    p, D = 4.3, 2
    r = local_attention(q, k, v, center=torch.tensor([[p]], dtype=torch.float64), window=D)
    s = torch.arange(9, dtype=torch.float64)
    inside = (s - p).abs() <= D  # positions 3, 4, 5, 6
    assert inside.nonzero().flatten().tolist() == [3, 4, 5, 6]
    logits = (q @ k.transpose(1, 2))[0, 0]
    soft = torch.zeros(9, dtype=torch.float64)
    soft[inside] = torch.softmax(logits[inside], 0)
    expect = soft * torch.exp(-((s - p) ** 2) / (2 * (D / 2) ** 2))
    torch.testing.assert_close(r.weights[0, 0], expect, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(r.out[0, 0], expect @ v[0], rtol=1e-12, atol=1e-12)


def test_local_attention_gradcheck_reaches_the_predicted_position():
    torch.manual_seed(2)
    q = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 6, 2, dtype=torch.float64, requires_grad=True)
    c = torch.tensor([[1.3, 2.6], [3.2, 4.1]], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True] * 6, [True] * 5 + [False]])
    assert torch.autograd.gradcheck(
        lambda q, k, v, c: local_attention(q, k, v, center=c, window=2, mask=mask).out, (q, k, v, c)
    )


def test_local_attention_errors():
    q, k, v = torch.randn(1, 2, 3), torch.randn(1, 4, 3), torch.randn(1, 4, 3)
    with pytest.raises(ValueError, match="window: expected an int >= 0"):
        local_attention(q, k, v, center=torch.zeros(1, 2), window=-1)
    with pytest.raises(ValueError, match=r"center: expected shape \(B, Tq\)"):
        local_attention(q, k, v, center=torch.zeros(2), window=1)
    with pytest.raises(ValueError, match="mode: expected 'm' or 'p'"):
        local_centers("x", query_len=2, source_lengths=torch.tensor([3]))


def test_model_config_errors():
    with pytest.raises(ValueError, match="attention: expected one of none, bahdanau"):
        Seq2SeqConfig(src_vocab=5, tgt_vocab=5, attention="bogus")
    with pytest.raises(ValueError, match="d_model: expected a multiple of num_heads=3"):
        TransformerConfig(src_vocab=5, tgt_vocab=5, d_model=32, num_heads=3)
    with pytest.raises(ValueError, match="teacher_forcing: the Transformer trains with full teacher forcing"):
        make("transformer")(*padded_batch(), teacher_forcing=0.5)
    with pytest.raises(ValueError, match=r"src_lengths: expected values in \[1, 7\]"):
        make("bahdanau")(padded_batch()[0], torch.tensor([7, 0, 2]), padded_batch()[2])
