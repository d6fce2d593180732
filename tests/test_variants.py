"""Attention variants of the translation models: normalizers and hard attention in Seq2Seq,
convolution mixers and position kinds in the Transformer; defaults unchanged."""

import math

import pytest
import torch
from safetensors.torch import load_file

import qkv
from qkv.functional import sparsemax
from qkv.models.seq2seq import Seq2Seq, Seq2SeqConfig
from qkv.models.transformer import Transformer, TransformerConfig
from qkv.modules import AdditiveAttention, LuongAttention
from qkv.modules.dynamic_conv import DynamicConv, LightConv
from qkv.train.checkpoint import load_checkpoint
from qkv.translation.config import TranslationTrainConfig, resolve
from qkv.translation.decode import greedy
from qkv.translation.training import _loss, train

V = 12


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one torch thread (and do not fight over a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def seq2seq(normalize="softmax", attention="bahdanau", **kw):
    torch.manual_seed(0)
    cfg = Seq2SeqConfig(
        src_vocab=V, tgt_vocab=V, attention=attention, embed_dim=16, hidden_dim=24, normalize=normalize, **kw
    )
    return Seq2Seq(cfg).eval()


def transformer(**kw):
    torch.manual_seed(0)
    cfg = TransformerConfig(
        src_vocab=V, tgt_vocab=V, d_model=32, num_heads=4, ff_dim=64, encoder_layers=1, decoder_layers=2, **kw
    )
    return Transformer(cfg).eval()


def padded_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, V, (3, 7), generator=g)
    lengths = torch.tensor([7, 4, 2])
    for i, n in enumerate(lengths.tolist()):
        src[i, n:] = 0
    tgt = torch.randint(4, V, (3, 5), generator=g)
    tgt[:, 0] = 1
    return src, lengths, tgt


class Batch:
    """What the training loop's ``_loss`` reads from a batch."""

    def __init__(self, src, lengths, tgt_in, tgt_out):
        self.src, self.src_lengths, self.tgt_in, self.tgt_out = src, lengths, tgt_in, tgt_out


TRAIN = TranslationTrainConfig(teacher_forcing=1.0, label_smoothing=0.0)

SEQ2SEQ_OPTIONS = [
    ("bahdanau", "sparsemax"),
    ("bahdanau", "entmax15"),
    ("bahdanau", "hard"),
    ("bahdanau", "gumbel"),
    ("luong", "sparsemax"),
    ("luong", "hard"),
]
TRANSFORMER_OPTIONS = [
    {"mixer": "lightconv"},
    {"mixer": "dynamicconv"},
    {"mixer": "dynamicconv", "positional": "learned"},
    {"positional": "learned"},
    {"positional": "rope"},
    {"positional": "alibi"},
    {"positional": "t5"},
    {"positional": "none"},
]


def _option_id(opt):
    return ",".join(f"{k}={v}" for k, v in opt.items())


def build(option):
    return seq2seq(option[1], option[0]) if isinstance(option, tuple) else transformer(**option)


def _fixed_batch():
    g = torch.Generator().manual_seed(5)
    src = torch.randint(4, V, (16, 5), generator=g)
    y = src.flip(1)
    tgt_in = torch.cat([torch.ones(16, 1, dtype=torch.long), y], 1)
    tgt_out = torch.cat([y, torch.full((16, 1), 2)], 1)
    return Batch(src, torch.full((16,), 5), tgt_in, tgt_out)


@pytest.mark.parametrize(
    "option",
    SEQ2SEQ_OPTIONS + TRANSFORMER_OPTIONS,
    ids=[f"{a}-{n}" for a, n in SEQ2SEQ_OPTIONS] + [_option_id(o) for o in TRANSFORMER_OPTIONS],
)
def test_each_option_trains_and_decodes(option):
    """A few optimizer steps of the training loop's loss on one batch lower it; decoding runs."""
    m = build(option)
    batch = _fixed_batch()

    def eval_loss() -> float:  # teacher-forced cross entropy in eval mode (hard: the argmax)
        with torch.no_grad():
            logits = m.eval()(batch.src, batch.src_lengths, batch.tgt_in)
        return float(torch.nn.functional.cross_entropy(logits.reshape(-1, V), batch.tgt_out.reshape(-1)))

    before = eval_loss()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    m.train()
    for _ in range(12):
        loss, ntok = _loss(m, batch, TRAIN)
        assert math.isfinite(float(loss.detach())) and ntok == 16 * 6
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.8 * before, (before, after)
    m.eval()
    hyps = greedy(m, batch.src[:4], batch.src_lengths[:4], max_len=7)
    assert len(hyps) == 4 and all(len(h.tokens) <= 7 and math.isfinite(h.score) for h in hyps)
    if hyps[0].attention is not None:
        torch.testing.assert_close(hyps[0].attention.sum(-1), torch.ones(hyps[0].attention.shape[0]))


@pytest.mark.parametrize(
    "option",
    SEQ2SEQ_OPTIONS + TRANSFORMER_OPTIONS,
    ids=[f"{a}-{n}" for a, n in SEQ2SEQ_OPTIONS] + [_option_id(o) for o in TRANSFORMER_OPTIONS],
)
def test_padding_never_leaks_and_step_equals_full_forward(option):
    m = build(option)
    src, lengths, tgt = padded_batch()
    full, maps = m(src, lengths, tgt, need_weights=True)
    garbage = src.clone()
    garbage[1, 4:] = torch.tensor([5, 6, 7])  # real token ids where padding was
    garbage[2, 2:] = 9
    full2, maps2 = m(garbage, lengths, tgt, need_weights=True)
    torch.testing.assert_close(full2, full, rtol=0, atol=1e-6)
    for a, b in zip(maps.cross, maps2.cross):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
        assert (
            float(a[1, ..., 4:].detach().abs().max()) == 0.0
            and float(a[2, ..., 2:].detach().abs().max()) == 0.0
        )
    memory = m.encode(src, lengths)
    state = m.init_state(memory)
    for t in range(tgt.shape[1]):
        logits, state, attn = m.step(tgt[:, t], state, memory)
        torch.testing.assert_close(logits, full[:, t], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(attn.sum(-1), torch.ones(3))


# ----------------------------------------------------------------------------- Seq2Seq normalizers


@pytest.mark.parametrize("normalize", ["hard", "gumbel"])
def test_hard_attention_is_one_hot_argmax_in_eval_and_sampled_in_training(normalize):
    m = seq2seq(normalize)
    src, lengths, tgt = padded_batch()
    _, maps = m(src, lengths, tgt, need_weights=True)
    w = maps.cross[0][:, 0]  # (B, T, S)
    assert set(w.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 5))
    # the argmax of the scores (a softmax twin with the same weights picks the same position)
    soft = seq2seq("softmax")
    soft.load_state_dict(m.state_dict(), strict=False)
    _, soft_maps = soft(src, lengths, tgt, need_weights=True)
    assert torch.equal(w.argmax(-1), soft_maps.cross[0][:, 0].argmax(-1))
    # training samples: still one-hot, but not always the argmax
    m.train()
    torch.manual_seed(3)
    picks = torch.stack([m(src, lengths, tgt, need_weights=True)[1].cross[0][:, 0] for _ in range(8)])
    assert set(picks.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(picks.argmax(-1), w.argmax(-1).expand(8, -1, -1))
    assert float(picks[:, 1, :, 4:].detach().abs().max()) == 0.0  # never a padded position


def test_sparsemax_attention_has_exact_zeros_and_equals_the_functional_op():
    m = seq2seq("sparsemax")
    with torch.no_grad():
        m.attn.score.v.mul_(8.0)  # sharper scores: sparser weights
    src, lengths, tgt = padded_batch()
    memory = m.encode(src, lengths)
    state = m.init_state(memory)
    _, _, w = m.step(tgt[:, 0], state, memory)  # (B, S)
    query = state["h"][:, -1].unsqueeze(1)  # s_0 (B, 1, H)
    logits = m.attn.score(query, memory["states"]).squeeze(1)  # (B, S)
    expect = sparsemax(logits, memory["mask"])
    torch.testing.assert_close(w, expect, rtol=0, atol=1e-6)
    real_zeros = (w == 0) & memory["mask"]
    assert int(real_zeros.sum()) > 0, w
    torch.testing.assert_close(w.sum(-1), torch.ones(3))
    soft = seq2seq("softmax")
    soft.load_state_dict(m.state_dict())
    _, _, w_soft = soft.step(tgt[:, 0], state, memory)
    assert int(((w_soft == 0) & memory["mask"]).sum()) == 0


def test_reinforce_loss_value_and_gradient_reach_the_attention_scores():
    m = seq2seq("hard").train()
    src, lengths, tgt = padded_batch()
    tgt_out = torch.cat([tgt[:, 1:], torch.full((3, 1), 2)], 1)
    tgt_out[2, 3:] = 0  # padding in the targets
    record = {}
    logits = m(src, lengths, tgt, record=record)
    assert set(record) == {"attention_log_prob", "attention_entropy"}
    assert record["attention_log_prob"].shape == (3, 5) and bool((record["attention_log_prob"] <= 0).all())
    aux = m.auxiliary_loss(record, logits, tgt_out)
    # the value by hand: the first batch's baseline is its mean reward; mean over the 13 real tokens
    valid = tgt_out != 0
    reward = torch.log_softmax(logits.detach(), -1).gather(-1, tgt_out.unsqueeze(-1)).squeeze(-1)
    lp, ent = record["attention_log_prob"], record["attention_entropy"]
    expect = -((reward - reward[valid].mean()) * lp)[valid].mean() - 0.01 * ent[valid].mean()
    assert int(valid.sum()) == 13
    torch.testing.assert_close(aux, expect)
    assert float(m.baseline.value) == pytest.approx(float(reward[valid].mean()), rel=1e-6)
    aux.backward()
    for name in ("v", "w_query.weight", "w_key.weight"):
        grad = m.attn.score.get_parameter(name).grad
        assert grad is not None and float(grad.abs().sum()) > 0, name
    assert m.out.weight.grad is None  # the reward is detached: nothing else learns from it
    # the second batch is measured against the moving average of the first
    record = {}
    logits = m(src, lengths, tgt, record=record)
    reward2 = torch.log_softmax(logits.detach(), -1).gather(-1, tgt_out.unsqueeze(-1)).squeeze(-1)[valid]
    expect = -((reward2 - reward[valid].mean()) * record["attention_log_prob"][valid]).mean()
    expect = expect - 0.01 * record["attention_entropy"][valid].mean()
    torch.testing.assert_close(m.auxiliary_loss(record, logits, tgt_out), expect)
    assert float(m.baseline.value) == pytest.approx(
        0.9 * float(reward[valid].mean()) + 0.1 * float(reward2.mean())
    )
    # eval and the other normalizers record nothing
    m.eval()
    record = {}
    m(src, lengths, tgt, record=record)
    assert record == {}
    assert m.auxiliary_loss(record, logits, tgt_out) is None


def _reverse_alignment(normalize: str, reinforce: bool) -> float:
    torch.manual_seed(0)
    vocab, length = 16, 6
    m = Seq2Seq(
        Seq2SeqConfig(
            src_vocab=vocab, tgt_vocab=vocab, attention="bahdanau", embed_dim=16, hidden_dim=32,
            dropout=0.0, normalize=normalize,
        )
    )  # fmt: skip
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(200):
        x = torch.randint(4, vocab, (32, length), generator=g)
        tgt_in = torch.cat([torch.ones(32, 1, dtype=torch.long), x.flip(1)], 1)
        tgt_out = torch.cat([x.flip(1), torch.full((32, 1), 2)], 1)
        record = {}
        logits = m(x, torch.full((32,), length), tgt_in, record=record if reinforce else None)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), tgt_out.reshape(-1))
        if reinforce:
            loss = loss + m.auxiliary_loss(record, logits, tgt_out)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    x = torch.randint(4, vocab, (64, length), generator=g)
    tgt_in = torch.cat([torch.ones(64, 1, dtype=torch.long), x.flip(1)], 1)
    with torch.no_grad():
        _, maps = m(x, torch.full((64,), length), tgt_in, need_weights=True)
    chosen = maps.cross[0][:, 0, :length].argmax(-1)  # (B, T): the attended source position
    return float((chosen == torch.arange(length - 1, -1, -1)).float().mean())


def test_reinforce_learns_the_alignment_that_the_task_loss_alone_cannot():
    """Reversing 6 of 12 symbols: hard attention's scores only learn through REINFORCE."""
    with_reinforce = _reverse_alignment("hard", True)
    without = _reverse_alignment("hard", False)
    assert with_reinforce >= 0.65, with_reinforce
    assert without <= 0.35, without


def test_normalizer_pass_through_of_the_attention_modules():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 5), torch.randn(2, 6, 4), torch.randn(2, 6, 7)
    lens = torch.tensor([6, 3])
    add = AdditiveAttention(query_dim=5, key_dim=4, hidden_dim=8, normalize="sparsemax")
    keep = torch.arange(6) < lens[:, None, None]  # (B, 1, Tk)
    got = add(q, k, v, valid_lens=lens, need_weights=True)
    ref = qkv.attention(q, k, v, score=add.score, mask=keep, normalize="sparsemax", need_weights=True)
    torch.testing.assert_close(got.out, ref.out, rtol=0, atol=0)
    torch.testing.assert_close(got.weights, ref.weights, rtol=0, atol=0)
    # a per-call override; the default is softmax, bitwise as before
    topk = add(q, k, v, valid_lens=lens, need_weights=True, normalize="topk", normalize_kwargs={"k": 2})
    assert ((topk.weights > 0).sum(-1) == 2).all()
    plain = AdditiveAttention(query_dim=5, key_dim=4, hidden_dim=8)
    plain.load_state_dict(add.state_dict())
    ref = qkv.attention(q, k, v, score=plain.score, mask=keep, need_weights=True)
    assert torch.equal(plain(q, k, v, valid_lens=lens, need_weights=True).out, ref.out)
    luong = LuongAttention(score="dot", query_dim=4, normalize="entmax15")
    got = luong(q[..., :4], k, valid_lens=lens, need_weights=True)
    ref = qkv.attention(q[..., :4], k, k, score="dot", mask=keep, normalize="entmax15", need_weights=True)
    torch.testing.assert_close(got.weights, ref.weights, rtol=0, atol=0)
    assert "normalize='entmax15'" in repr(luong) and "normalize" not in repr(plain)
    with pytest.raises(ValueError, match="normalize: unknown normalizer 'soft'"):
        AdditiveAttention(query_dim=5, key_dim=4, hidden_dim=8, normalize="soft")
    with pytest.raises(ValueError, match=r"normalize 'topk' needs parameters \['k'\]"):
        LuongAttention(query_dim=4, normalize="topk")


# ----------------------------------------------------------------------------- Transformer mixers


@pytest.mark.parametrize("mixer", ["lightconv", "dynamicconv"])
def test_convolution_decoder_is_causal(mixer):
    m = transformer(mixer=mixer)
    src, lengths, tgt = padded_batch()
    out = m(src, lengths, tgt)
    for t in range(tgt.shape[1] - 1):
        changed = tgt.clone()
        changed[:, t + 1 :] = (changed[:, t + 1 :] + 3) % (V - 4) + 4  # other later tokens
        out2 = m(src, lengths, changed)
        torch.testing.assert_close(out2[:, : t + 1], out[:, : t + 1], rtol=0, atol=0)
        assert not torch.allclose(out2[:, t + 1], out[:, t + 1])
    _, maps = m(src, lengths, tgt, need_weights=True)
    w = maps.decoder[0]  # (B, H, T, T): the banded convolution matrix, lower triangular
    assert w.shape == (3, 4, 5, 5) and float(w.detach().triu(1).abs().max()) == 0.0
    assert isinstance(m.encoder[0].self_attn, DynamicConv if mixer == "dynamicconv" else LightConv)
    assert isinstance(m.decoder[0].cross_attn, qkv.MultiHeadAttention)


def test_position_kinds_change_what_the_model_sees():
    """Without positions the encoder is permutation equivariant; every kind breaks that."""
    src = torch.tensor([[4, 5, 6, 7, 8]])
    order = torch.tensor([1, 0, 2, 4, 3])  # not a reversal: symmetric ALiBi cannot tell those
    lengths = torch.tensor([5])
    for kind in ("none", "sinusoidal", "learned", "rope", "alibi", "t5"):
        m = transformer(positional=kind, dropout=0.0)
        if kind == "learned":
            with torch.no_grad():
                m.src_positions.embedding.weight.normal_()
        a = m.encode(src, lengths)["states"]
        b = m.encode(src[:, order], lengths)["states"]
        same = torch.allclose(a[:, order], b, atol=1e-5)
        assert same == (kind == "none"), kind


def test_position_state_dict_keys():
    def extra(**kw):
        base = set(transformer().state_dict())
        return sorted(set(transformer(**kw).state_dict()) - base), sorted(
            base - set(transformer(**kw).state_dict())
        )

    assert extra(positional="rope") == ([], [])
    assert extra(positional="alibi") == ([], [])
    assert extra(positional="t5") == (["dec_bias.embedding.weight", "enc_bias.embedding.weight"], [])
    assert extra(positional="learned") == (
        ["src_positions.embedding.weight", "tgt_positions.embedding.weight"],
        [],
    )


# ----------------------------------------------------------------------------- defaults and config


# The state_dict keys of the default models before these options existed.
S2S_KEYS = [
    "encoder.embed.weight", "encoder.rnn.weight_ih_l0", "encoder.rnn.weight_hh_l0", "encoder.rnn.bias_ih_l0",
    "encoder.rnn.bias_hh_l0", "encoder.rnn.weight_ih_l0_reverse", "encoder.rnn.weight_hh_l0_reverse",
    "encoder.rnn.bias_ih_l0_reverse", "encoder.rnn.bias_hh_l0_reverse", "bridge_h.weight", "bridge_h.bias",
    "embed.weight", "cells.0.weight_ih", "cells.0.weight_hh", "cells.0.bias_ih", "cells.0.bias_hh",
    "attn.score.v", "attn.score.w_query.weight", "attn.score.w_key.weight", "out.weight", "out.bias",
]  # fmt: skip
_ATTN = [f"{p}_proj.{w}" for p in "qkv" for w in ("weight", "bias")] + ["out_proj.weight", "out_proj.bias"]
TRANSFORMER_KEYS = (
    ["tgt_embed.weight", "src_embed.weight"]
    + [f"encoder.0.norm{i}.{w}" for i in (1, 2) for w in ("weight", "bias")]
    + [f"encoder.0.self_attn.{k}" for k in _ATTN]
    + [f"encoder.0.ff.{i}.{w}" for i in (0, 3) for w in ("weight", "bias")]
    + [f"decoder.0.norm{i}.{w}" for i in (1, 2, 3) for w in ("weight", "bias")]
    + [f"decoder.0.self_attn.{k}" for k in _ATTN]
    + [f"decoder.0.cross_attn.{k}" for k in _ATTN]
    + [f"decoder.0.ff.{i}.{w}" for i in (0, 3) for w in ("weight", "bias")]
    + ["enc_norm.weight", "enc_norm.bias", "dec_norm.weight", "dec_norm.bias", "out.weight"]
)


def test_defaults_are_unchanged():
    s2s = Seq2Seq(Seq2SeqConfig(src_vocab=V, tgt_vocab=V, embed_dim=8, hidden_dim=8))
    assert list(s2s.state_dict()) == S2S_KEYS
    tf = Transformer(
        TransformerConfig(
            src_vocab=V, tgt_vocab=V, d_model=16, num_heads=2, ff_dim=16, encoder_layers=1, decoder_layers=1
        )
    )
    assert list(tf.state_dict()) == TRANSFORMER_KEYS
    cfg = resolve(preset="bahdanau")
    assert set(cfg.model) == {"kind", "attention"}
    assert "mixer" not in resolve(preset="transformer").model
    # the default model's loss is the plain token cross entropy
    m = seq2seq().train()
    batch = _fixed_batch()
    torch.manual_seed(7)
    loss, _ = _loss(m, batch, TRAIN)
    torch.manual_seed(7)
    logits = m(batch.src, batch.src_lengths, batch.tgt_in)
    plain = torch.nn.functional.cross_entropy(
        logits.reshape(-1, V), batch.tgt_out.reshape(-1), ignore_index=0
    )
    assert torch.equal(loss, plain)


def test_hard_attention_trains_through_the_loop_and_resumes_exactly(tmp_path):
    cfg = resolve(
        {
            "data": {"corpus": "numbers", "size": 200, "options": {"max_value": 999}},
            "model": {"embed_dim": 8, "hidden_dim": 16, "normalize": "hard"},
            "train": {"epochs": 1, "batch_size": 32, "valid_decode": 5, "warmup": 2, "threads": 1},
        },
        preset="bahdanau",
    )
    full = train(cfg, tmp_path / "full", progress=False)
    half = train(cfg, tmp_path / "half", progress=False, stop_after_steps=2)
    torch.manual_seed(99)
    rest = train(cfg, tmp_path / "half", resume=True, progress=False)
    assert rest.step == full.step > 2
    assert [h["train_loss"] for h in rest.history] == [h["train_loss"] for h in full.history]
    a, b = (
        load_file(str(load_checkpoint(tmp_path / run).path / "model.safetensors")) for run in ("full", "half")
    )
    assert a.keys() == b.keys() and "baseline.value" in a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert half.interrupted and int(a["baseline.steps"]) == full.step


def test_config_errors():
    with pytest.raises(ValueError, match="normalize: attention='luong-local' supports only 'softmax'"):
        Seq2SeqConfig(src_vocab=5, tgt_vocab=5, attention="luong-local", normalize="sparsemax")
    with pytest.raises(
        ValueError, match="normalize: expected one of softmax, sparsemax, entmax15, hard, gumbel"
    ):
        Seq2SeqConfig(src_vocab=5, tgt_vocab=5, normalize="soft")
    with pytest.raises(ValueError, match="gumbel_tau: expected a finite number > 0, got 0"):
        Seq2SeqConfig(src_vocab=5, tgt_vocab=5, normalize="gumbel", gumbel_tau=0)
    with pytest.raises(ValueError, match=r"baseline_decay: expected a number in \[0, 1\), got 1.0"):
        Seq2SeqConfig(src_vocab=5, tgt_vocab=5, baseline_decay=1.0)
    with pytest.raises(ValueError, match="mixer: expected one of attention, lightconv, dynamicconv"):
        TransformerConfig(src_vocab=5, tgt_vocab=5, mixer="conv")
    with pytest.raises(ValueError, match="positional: 'rope' acts on self-attention logits"):
        TransformerConfig(src_vocab=5, tgt_vocab=5, mixer="dynamicconv", positional="rope")
    with pytest.raises(ValueError, match="positional: expected one of sinusoidal, learned, rope"):
        TransformerConfig(src_vocab=5, tgt_vocab=5, positional="relative")
    cfg = resolve(preset="transformer", overrides=["--model.mixer=dynamicconv", "--model.kernel_size=5"])
    assert cfg.model["mixer"] == "dynamicconv" and cfg.model["kernel_size"] == 5
    cfg = resolve(preset="bahdanau", overrides=["--model.normalize=hard", "--model.entropy_weight=0.02"])
    assert cfg.model["normalize"] == "hard"
