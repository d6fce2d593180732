"""qkv.capture: weights of every attention module, outputs unchanged bitwise."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn

import qkv
from qkv.backends import dispatch
from qkv.capture import CapturedAttention, attention_kind, capture
from qkv.models import BertConfig, BertModel

from helpers import assert_error_ratio, naive_attention

os.environ["HF_HUB_OFFLINE"] = "1"

E, H = 16, 4


class Block(nn.Module):
    def __init__(self, cross: bool = False) -> None:
        super().__init__()
        self.self_attn = qkv.MultiHeadAttention(embed_dim=E, num_heads=H)
        self.cross_attn = qkv.MultiHeadAttention(embed_dim=E, num_heads=H) if cross else None


class Toy(nn.Module):
    """Encoder, decoder and cross MHA, and the three RNN attentions, each called its own way."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.ModuleList([Block(), Block()])
        self.decoder = nn.ModuleList([Block(cross=True)])
        self.bahdanau = qkv.AdditiveAttention(query_dim=E, key_dim=E, hidden_dim=8)
        self.luong = qkv.LuongAttention(score="dot", query_dim=E)
        self.dot = qkv.DotProductAttention()

    def forward(self, src, tgt, lengths):
        pad = torch.arange(src.shape[1]) >= lengths[:, None]  # (B, S), True = padding
        x = src
        for b in self.encoder:
            x = x + b.self_attn(x, key_padding_mask=pad).out
        y = tgt
        caller_weights = []
        for b in self.decoder:
            y = y + b.self_attn(y, mask=qkv.masks.causal()).out
            c = b.cross_attn(y, x, x, key_padding_mask=pad, need_weights=True, average_weights=True)
            y = y + c.out
            caller_weights.append(c.weights)  # (B, T, S), asked by the caller
        ctx = self.bahdanau(y, x, x, valid_lens=lengths).out
        steps = [self.luong(y[:, t], x, valid_lens=lengths) for t in range(y.shape[1])]  # one step each
        d = self.dot(y, x, x, valid_lens=lengths, need_weights=True)
        caller_weights.append(d.weights)
        assert all(s.weights is None for s in steps)  # not asked: none given back
        out = ctx + torch.stack([s.out for s in steps], 1) + d.out
        return out, caller_weights


def _inputs(b=2, s=7, t=5):
    return torch.randn(b, s, E), torch.randn(b, t, E), torch.tensor([7, 4])[:b]


def test_outputs_and_caller_weights_stay_bitwise():
    model = Toy().eval()
    src, tgt, lengths = _inputs()
    with torch.no_grad():
        out, weights = model(src, tgt, lengths)
        with capture(model) as maps:
            out_c, weights_c = model(src, tgt, lengths)
    assert torch.equal(out, out_c)
    assert all(torch.equal(a, b) for a, b in zip(weights, weights_c))
    assert weights_c[0].shape == (2, 5, 7)  # averaged, as the caller asked
    assert list(maps) == [
        "encoder.0.self_attn", "encoder.1.self_attn", "decoder.0.self_attn", "decoder.0.cross_attn",
        "bahdanau", "luong", "dot",
    ]  # fmt: skip
    assert [maps.kind(n) for n in maps] == ["encoder"] * 2 + ["decoder"] + ["cross"] * 4
    assert [len(maps[n]) for n in maps] == [1, 1, 1, 1, 1, 5, 1]
    assert maps["encoder.0.self_attn"][0].shape == (2, H, 7, 7)
    assert maps["bahdanau"][0].shape == (2, 1, 5, 7)
    assert maps["luong"][0].shape == (2, 1, 1, 7)
    # recorded per head; the caller's average is their mean
    torch.testing.assert_close(maps["decoder.0.cross_attn"][0].mean(1), weights[0], rtol=0, atol=0)
    # padding keys get weight 0, rows are distributions
    enc = maps.stack("encoder")
    assert enc.shape == (2, 2, H, 7, 7)
    assert float(enc[:, 1, :, :, 4:].abs().max()) == 0.0
    torch.testing.assert_close(enc.sum(-1), torch.ones(2, 2, H, 7))


def test_captured_weights_equal_float64_golden(record_property):
    torch.manual_seed(3)
    mha = qkv.MultiHeadAttention(embed_dim=E, num_heads=H).double().eval()
    x = torch.randn(2, 6, E, dtype=torch.float64)
    pad = torch.tensor([[False] * 6, [False] * 3 + [True] * 3])
    with torch.no_grad(), capture(mha) as maps:
        mha(x, key_padding_mask=pad)
        q = mha.q_proj(x).view(2, 6, H, E // H).transpose(1, 2)  # (B, H, T, Dh)
        k = mha.k_proj(x).view(2, 6, H, E // H).transpose(1, 2)
        _, golden = naive_attention(q, k, k, mask=~pad[:, None, None, :])
    got = maps[""][0]
    err = float((got - golden).abs().max())
    record_property("capture_vs_golden_maxabs", err)
    assert err <= 1e-12


def test_step_by_step_calls_merge_along_queries():
    torch.manual_seed(4)
    mha = qkv.MultiHeadAttention(embed_dim=E, num_heads=H).eval()
    x = torch.randn(1, 5, E)
    with torch.no_grad():
        full = mha(x, mask=qkv.masks.causal(), need_weights=True).weights  # (1, H, 5, 5)
        with capture(mha) as maps:
            for t in range(5):  # a cached decoder: one query, the prefix as keys
                mha(x[:, t : t + 1], x[:, : t + 1])
    merged = maps.merged("")
    assert merged.shape == (1, H, 5, 5)
    torch.testing.assert_close(merged, full, rtol=0, atol=1e-6)
    assert float(merged.triu(1).abs().max()) == 0.0  # the causal matrix, zeros where padded
    # a prompt first, then single steps, also merges
    with torch.no_grad(), capture(mha) as maps:
        mha(x[:, :3], mask=qkv.masks.causal())
        mha(x[:, 3:4], x[:, :4])
    torch.testing.assert_close(maps.merged("")[:, :, :4, :4], full[:, :, :4, :4], rtol=0, atol=1e-6)


def test_gqa_kv_cache_decoding_is_captured_bitwise():
    torch.manual_seed(7)
    mha = qkv.MultiHeadAttention(embed_dim=E, num_heads=H, num_kv_heads=2).eval()
    x = torch.randn(2, 6, E)

    def decode():
        cache = qkv.modules.KVCache()
        outs = [mha(x[:, :2], cache=cache).out]  # a prompt of 2 tokens, then one token a step
        outs += [mha(x[:, t : t + 1], cache=cache).out for t in range(2, 6)]
        return torch.cat(outs, dim=1)

    with torch.no_grad():
        plain = decode()
        with capture(mha) as maps:
            captured = decode()
        full = mha(x, mask=qkv.masks.causal(), need_weights=True).weights  # (B, H, 6, 6)
    assert torch.equal(plain, captured)
    assert [tuple(w.shape) for w in maps[""]] == [(2, H, 2, 2)] + [(2, H, 1, t) for t in range(3, 7)]
    torch.testing.assert_close(maps.merged(""), full, rtol=0, atol=1e-6)


def test_several_full_passes_need_a_call_index():
    model = Toy().eval()
    src, tgt, lengths = _inputs()
    with torch.no_grad(), capture(model, kinds="encoder") as maps:
        model(src, tgt, lengths)
        model(src[:1], tgt[:1], lengths[:1])
    with pytest.raises(ValueError, match="called 2 times with Tq > 1"):
        maps.layers()
    assert maps.stack(call=-1).shape == (2, 1, H, 7, 7)
    assert maps.stack(call=0).shape == (2, 2, H, 7, 7)
    with pytest.raises(IndexError, match="call: expected an int in"):
        maps.merged("encoder.0.self_attn", call=2)
    maps.clear()
    assert len(maps) == 0 and maps.to_maps().kinds() == {}
    with pytest.raises(KeyError, match="no weights recorded"):
        maps["encoder.0.self_attn"]


def test_to_maps_groups_kinds_and_stack_refuses_mixed_shapes():
    model = Toy().eval()
    src, tgt, lengths = _inputs()
    with torch.no_grad(), capture(model) as maps:
        model(src, tgt, lengths)
    am = maps.to_maps()
    assert isinstance(am, qkv.AttentionMaps)
    assert [t.shape for t in am.encoder] == [(2, H, 7, 7)] * 2
    assert [t.shape for t in am.decoder] == [(2, H, 5, 5)]
    assert [t.shape for t in am.cross] == [(2, H, 5, 7), (2, 1, 5, 7), (2, 1, 5, 7), (2, 1, 5, 7)]
    with pytest.raises(ValueError, match="cannot stack layers of different shapes"):
        maps.stack()
    with pytest.raises(ValueError, match="kind: expected one of encoder, decoder, cross"):
        maps.layers("self")
    assert "encoder.0.self_attn [encoder]: 1 x (2, 4, 7, 7)" in repr(maps)


def test_kinds_and_heads_select_what_is_hooked():
    model = Toy().eval()
    src, tgt, lengths = _inputs()
    with torch.no_grad(), capture(model, kinds=["cross"], heads=[1, 3]) as maps:
        assert not model.encoder[0].self_attn.attend._forward_pre_hooks  # not hooked at all
        assert model.decoder[0].cross_attn.attend._forward_pre_hooks  # the one hook point
        model(src, tgt, lengths)
    with torch.no_grad(), capture(model, kinds="cross") as every_head:
        model(src, tgt, lengths)
    assert list(maps) == ["decoder.0.cross_attn", "bahdanau", "luong", "dot"]
    assert maps["bahdanau"][0].shape == (2, 1, 5, 7)  # one head: recorded whole
    assert torch.equal(maps["decoder.0.cross_attn"][0], every_head["decoder.0.cross_attn"][0][:, [1, 3]])


def test_heads_out_of_range_fail_at_the_call():
    model = Toy().eval()
    with (
        pytest.raises(ValueError, match=r"heads: 'encoder.0.self_attn' has 4 heads, got heads=\[4\]"),
        torch.no_grad(),
        capture(model, heads=4),
    ):
        model(*_inputs())


def test_bad_arguments():
    with pytest.raises(TypeError, match=r"model: expected a torch\.nn\.Module"), capture("model"):
        pass
    with pytest.raises(ValueError, match="holds no qkv attention module"), capture(nn.Linear(2, 2)):
        pass
    for kwargs, match in (
        ({"kinds": ["self"]}, "kinds: expected a non-empty subset of encoder, decoder, cross"),
        ({"heads": [-1]}, "heads: expected a non-negative int"),
        ({"kinds": "decoder"}, "kinds: no attention module of kinds"),
    ):
        with (
            pytest.raises(ValueError, match=match),
            capture(qkv.MultiHeadAttention(embed_dim=E, num_heads=H), **kwargs),
        ):
            pass


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _no_hooks(model):
    return _hooks(model) == 0


def _dispatch_settings() -> dict:
    return {
        k: v
        for k, v in vars(dispatch).items()
        if not k.startswith("__") and isinstance(v, (bool, int, float, str))
    }


def test_hooks_and_dispatch_restored_on_exceptions():
    model = Toy().eval()
    saved = _dispatch_settings()

    def run_then_fail():
        with capture(model):
            model(*_inputs())
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_then_fail()
    assert _no_hooks(model)
    assert saved == _dispatch_settings()

    class Failing(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = qkv.MultiHeadAttention(embed_dim=E, num_heads=H)

        def forward(self, x):
            self.attn(x, x[:, :1, :1])  # a bad key: fails inside the hooked call
            return x

    failing = Failing()
    with pytest.raises(ValueError, match="key: expected shape"), capture(failing):
        failing(torch.randn(1, 3, E))
    assert _no_hooks(failing)
    assert saved == _dispatch_settings()


def test_detach_false_keeps_weights_in_the_graph():
    model = Toy()
    src, tgt, lengths = _inputs()
    with capture(model, kinds="encoder", detach=False) as maps:
        assert model.encoder[0].self_attn.backend == "auto"  # the reference runs per call, nothing is swapped
        out, _ = model(src, tgt, lengths)
    w = maps["encoder.1.self_attn"][0]
    assert w.requires_grad
    (g,) = torch.autograd.grad(out.sum(), w)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert model.encoder[0].self_attn.backend == "auto"
    with capture(model, kinds="encoder") as maps:
        model(src, tgt, lengths)
    assert not maps["encoder.1.self_attn"][0].requires_grad


def test_attention_kind_rules():
    assert attention_kind("encoder.layers.0.self_attn") == "encoder"
    assert attention_kind("decoder.layers.0.self_attn") == "decoder"
    assert attention_kind("decoder.layers.0.cross_attn") == "cross"
    assert attention_kind("decoder.layers.0.encoder_attn") == "cross"
    assert attention_kind("decoder.layers.0.multihead_attn") == "cross"  # torch's TransformerDecoderLayer
    assert attention_kind("layers.3.attention") == "encoder"
    assert attention_kind("attn", rnn=True) == "cross"
    assert attention_kind("decoder.self_attn", rnn=True) == "decoder"


def test_bert_capture_is_bitwise_and_equals_need_weights():
    torch.manual_seed(5)
    cfg = BertConfig(
        vocab_size=50, hidden_size=32, num_layers=3, num_heads=4, intermediate_size=64, max_position=16
    )
    model = BertModel(cfg).eval()
    ids = torch.randint(0, 50, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 8:] = 0
    with torch.no_grad():
        plain = model(ids, mask, output_hidden_states=True)
        with capture(model) as maps:
            captured = model(ids, mask, output_hidden_states=True)
        asked = model(ids, mask, need_weights=True)
    assert all(torch.equal(a, b) for a, b in zip(plain.hidden_states, captured.hidden_states))
    assert captured.attentions is None
    assert isinstance(maps, CapturedAttention) and list(maps) == [f"layers.{i}.attention" for i in range(3)]
    torch.testing.assert_close(maps.stack(), torch.stack(asked.attentions.encoder), rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- Hugging Face


@pytest.fixture(scope="module")
def hf_bert(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(6)
    cfg = transformers.BertConfig(
        vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=32, max_position_embeddings=20, attn_implementation="sdpa",
    )  # fmt: skip
    return transformers.BertModel(cfg).eval()


def test_hf_capture_equals_output_attentions_and_restores_sdpa(request, hf_bert):
    """Capture runs the model on qkv's implementation; every weight is kept, so each call's
    output is computed from them (weights @ V): bitwise what attn_implementation="qkv" gives
    with output_attentions=True, the uncaptured kernel's output within the error-ratio rule, as
    are the maps and outputs against eager (golden: eager in float64)."""
    ids = torch.randint(0, 60, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, 6:] = 0
    assert hf_bert.config._attn_implementation == "sdpa"
    hooks = _hooks(hf_bert)
    golden = copy.deepcopy(hf_bert).double()
    golden.set_attn_implementation("eager")
    with torch.no_grad():
        with capture(hf_bert) as maps:
            assert hf_bert.config._attn_implementation == "qkv"
            out = hf_bert(input_ids=ids, attention_mask=mask)
        assert hf_bert.config._attn_implementation == "sdpa"
        assert _hooks(hf_bert) == hooks
        sdpa_out = hf_bert(input_ids=ids, attention_mask=mask)
        gold = golden(input_ids=ids, attention_mask=mask, output_attentions=True)
        hf_bert.set_attn_implementation("qkv")
        try:
            asked = hf_bert(input_ids=ids, attention_mask=mask, output_attentions=True)
            fused = hf_bert(input_ids=ids, attention_mask=mask)  # no weights: qkv's fused kernel
        finally:
            hf_bert.set_attn_implementation("sdpa")
        assert torch.equal(out.last_hidden_state, asked.last_hidden_state)  # both from their weights
        hf_bert.set_attn_implementation("eager")
        try:
            ref = hf_bert(input_ids=ids, attention_mask=mask, output_attentions=True)
        finally:
            hf_bert.set_attn_implementation("sdpa")
    assert_error_ratio(request, fused.last_hidden_state, gold.last_hidden_state, ref.last_hidden_state)
    assert list(maps) == ["encoder.layer.0.attention.self", "encoder.layer.1.attention.self"]
    for ours, eager, want in zip(maps.layers(), ref.attentions, gold.attentions, strict=True):
        assert_error_ratio(request, ours, want, eager, what="maps")
    assert_error_ratio(request, out.last_hidden_state, gold.last_hidden_state, ref.last_hidden_state)
    torch.testing.assert_close(out.last_hidden_state, sdpa_out.last_hidden_state, rtol=0, atol=1e-5)
    assert out.attentions is None  # the caller did not ask


def test_hf_capture_of_a_model_without_attention_backend_support_runs_eager():
    """A model that does not declare it runs registered attention functions (T5) is captured
    on eager attention, bitwise the eager model, as before."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.T5Config(
        vocab_size=40, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2,
    )  # fmt: skip
    t5 = transformers.T5Model(cfg).eval()
    src, tgt = torch.randint(0, 40, (1, 6)), torch.randint(0, 40, (1, 4))
    with torch.no_grad():
        with capture(t5) as maps:
            assert t5.config._attn_implementation == "eager"
            out = t5(input_ids=src, decoder_input_ids=tgt)
        t5.set_attn_implementation("eager")
        ref = t5(input_ids=src, decoder_input_ids=tgt, output_attentions=True)
    assert torch.equal(out.last_hidden_state, ref.last_hidden_state)
    assert torch.equal(maps.to_maps().encoder[0], ref.encoder_attentions[0])


def test_hf_capture_restores_on_exception_and_checks_kinds(hf_bert):
    hooks = _hooks(hf_bert)  # transformers keeps hooks of its own once output_attentions was used
    with pytest.raises(RuntimeError, match="boom"), capture(hf_bert):
        raise RuntimeError("boom")
    assert hf_bert.config._attn_implementation == "sdpa"
    assert _hooks(hf_bert) == hooks
    with (
        pytest.raises(ValueError, match="kinds: no attention module of kinds"),
        capture(hf_bert, kinds="cross"),
    ):
        pass


def test_hf_capture_equals_qkv_capture_of_the_same_weights(hf_bert, tmp_path):
    import shutil

    from qkv.interop import load_bert, minilm_path

    hf_bert.save_pretrained(tmp_path)
    shutil.copy(minilm_path() / "tokenizer.json", tmp_path / "tokenizer.json")
    model, _ = load_bert(tmp_path)
    ids = torch.randint(0, 60, (1, 10))
    with torch.no_grad(), capture(hf_bert) as theirs, capture(model) as ours:
        hf_bert(input_ids=ids)
        model(ids)
    torch.testing.assert_close(ours.stack(), theirs.stack(), rtol=0, atol=1e-6)


def test_hf_encoder_decoder_kinds():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BartConfig(
        vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32,
    )  # fmt: skip
    bart = transformers.BartModel(cfg).eval()
    src, tgt = torch.randint(4, 40, (1, 7)), torch.randint(4, 40, (1, 5))
    with torch.no_grad(), capture(bart) as maps:
        bart(input_ids=src, decoder_input_ids=tgt)
    am = maps.to_maps()
    assert [t.shape for t in am.encoder] == [(1, 2, 7, 7)]
    assert [t.shape for t in am.decoder] == [(1, 2, 5, 5)] * 2
    assert [t.shape for t in am.cross] == [(1, 2, 5, 7)] * 2
    assert float(am.decoder[0][0, :, 0, 1:].abs().max()) == 0.0  # causal


def test_capture_on_the_translation_models_equals_their_own_maps():
    from qkv.models.seq2seq import Seq2Seq, Seq2SeqConfig
    from qkv.models.transformer import Transformer, TransformerConfig

    torch.manual_seed(8)
    src, lengths, tgt = torch.randint(4, 20, (2, 7)), torch.tensor([7, 5]), torch.randint(4, 20, (2, 6))
    transformer = Transformer(TransformerConfig(src_vocab=20, tgt_vocab=20, d_model=16, ff_dim=32)).eval()
    with torch.no_grad():
        logits, own = transformer(src, lengths, tgt, need_weights=True)
        with capture(transformer) as maps:
            captured = transformer(src, lengths, tgt)
    assert torch.equal(captured, transformer(src, lengths, tgt))
    got = maps.to_maps()
    for kind in ("encoder", "decoder", "cross"):
        assert len(getattr(got, kind)) == 2
        for a, b in zip(getattr(got, kind), getattr(own, kind)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    for attention in ("bahdanau", "luong"):
        cfg = Seq2SeqConfig(src_vocab=20, tgt_vocab=20, attention=attention, embed_dim=8, hidden_dim=16)
        rnn = Seq2Seq(cfg).eval()
        with torch.no_grad():
            logits, own = rnn(src, lengths, tgt, need_weights=True)
            with capture(rnn) as maps:
                logits_c, _ = rnn(src, lengths, tgt, need_weights=True)
        assert torch.equal(logits, logits_c)
        assert list(maps) == ["attn"] and maps.kind("attn") == "cross"
        assert torch.equal(maps.to_maps().cross[0], own.cross[0])  # (B, 1, T, S): six steps joined


# ----------------------------------------------------------------------------- layers=


def _small_bert():
    torch.manual_seed(5)
    cfg = BertConfig(
        vocab_size=50, hidden_size=32, num_layers=3, num_heads=4, intermediate_size=64, max_position=16
    )
    return BertModel(cfg).eval(), torch.randint(0, 50, (2, 12))


def test_layers_choose_modules_by_index_name_and_prefix_and_leave_the_others_unhooked():
    model, ids = _small_bert()
    with torch.no_grad():
        plain = model(ids, output_hidden_states=True)
        with capture(model) as every:
            model(ids)
        for layers, want in [
            ([0, -1], ["layers.0.attention", "layers.2.attention"]),
            ("layers.1.attention", ["layers.1.attention"]),
            ("layers.1", ["layers.1.attention"]),  # a dotted prefix
            ([2, "layers.0"], ["layers.0.attention", "layers.2.attention"]),  # model order
            (1, ["layers.1.attention"]),
        ]:
            with capture(model, layers=layers) as maps:
                hooked = [n for n, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]
                out = model(ids, output_hidden_states=True)
            assert list(maps) == want
            assert hooked == [f"{n}.attend" for n in want]  # the other modules pay nothing
            assert all(torch.equal(maps[n][0], every[n][0]) for n in want)
            assert all(torch.equal(a, b) for a, b in zip(out.hidden_states, plain.hidden_states))
    assert _no_hooks(model)


@pytest.mark.parametrize(
    ("layers", "error", "message"),
    [
        ("layers.7", ValueError, r"layers: no attention module named 'layers.7' or under it; the modules are "
         r"0: layers.0.attention, 1: layers.1.attention, 2: layers.2.attention"),
        ([3], ValueError, r"layers: index 3 is out of range for 3 modules \(0: layers.0.attention"),
        ([-4], ValueError, r"layers: index -4 is out of range"),
        ([], ValueError, r"layers: expected at least one index or name, got none; the modules are 0: "),
        ([1.0], TypeError, r"layers: expected ints \(indices\) or strs \(names\), got float 1.0"),
        ([True], TypeError, r"layers: expected ints \(indices\) or strs \(names\), got bool True"),
    ],
)  # fmt: skip
def test_unknown_layers_name_the_modules_there_are(layers, error, message):
    model, _ = _small_bert()
    with pytest.raises(error, match=message), capture(model, layers=layers):
        pass
    assert _no_hooks(model)


def test_hf_capture_of_one_layer_and_one_head_equals_the_full_capture(hf_bert):
    """One layer: only its module is hooked and asked for weights; heads: the weights pass
    computes those heads alone, unless the caller asks for every weight itself."""
    ids = torch.randint(0, 60, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, 6:] = 0
    before = {n: len(m._forward_hooks) for n, m in hf_bert.named_modules()}
    with torch.no_grad():
        with capture(hf_bert) as every:
            full = hf_bert(input_ids=ids, attention_mask=mask)
        with capture(hf_bert, layers="encoder.layer.1", heads=[3, 1]) as one:
            hooked = [n for n, m in hf_bert.named_modules() if len(m._forward_hooks) > before[n]]
            out = hf_bert(input_ids=ids, attention_mask=mask)
            asked = hf_bert(input_ids=ids, attention_mask=mask, output_attentions=True)
        hf_bert.set_attn_implementation("qkv")
        try:
            fused = hf_bert(input_ids=ids, attention_mask=mask)  # no weights: qkv's fused kernel
        finally:
            hf_bert.set_attn_implementation("sdpa")
    assert hf_bert.config._attn_implementation == "sdpa"
    assert hooked == ["encoder.layer.1.attention.self"]
    assert list(one) == ["encoder.layer.1.attention.self"] and len(one["encoder.layer.1.attention.self"]) == 2
    want = every["encoder.layer.1.attention.self"][0][:, [3, 1]]
    for got in one["encoder.layer.1.attention.self"]:  # heads alone, then from every weight
        torch.testing.assert_close(got, want, rtol=0, atol=1e-7)
    # Some heads: the fused kernel runs, as without capture; every head: the output is computed
    # from the weights, equal within tolerance.
    assert torch.equal(out.last_hidden_state, fused.last_hidden_state)
    torch.testing.assert_close(full.last_hidden_state, fused.last_hidden_state, rtol=0, atol=1e-5)
    assert [a.shape[1] for a in asked.attentions] == [4, 4]  # the caller's weights stay whole
    assert torch.equal(asked.attentions[1], every["encoder.layer.1.attention.self"][0])


@pytest.mark.parametrize("grad_mode", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hf_capture_of_a_padded_batch_is_bitwise_eager(hf_bert, dtype, grad_mode):
    """A padded batch (samples of different lengths) runs the plain weights-first path with its
    key-padding mask: outputs and every map bitwise ``transformers``' eager attention with
    ``output_attentions=True``. A fully padded sample has rows with no key: qkv gives them 0
    (eager a uniform average over the padding); the other samples stay bitwise eager. Under
    ``no_grad`` and ``inference_mode`` alike."""
    model = copy.deepcopy(hf_bert).to(dtype)
    ids = torch.randint(0, 60, (4, 9), generator=torch.Generator().manual_seed(2))
    mask = (torch.arange(9) < torch.tensor([9, 5, 2, 0])[:, None]).long()
    with grad_mode():  # under inference_mode the mask keeps no version counter
        model.set_attn_implementation("eager")
        ref = model(input_ids=ids, attention_mask=mask, output_attentions=True)
        model.set_attn_implementation("sdpa")
        with capture(model) as maps:
            out = model(input_ids=ids, attention_mask=mask)
    assert model.config._attn_implementation == "sdpa"
    assert torch.equal(out.last_hidden_state[:3], ref.last_hidden_state[:3])
    for ours, eager in zip(maps.layers(), ref.attentions, strict=True):
        assert torch.equal(ours[:3], eager[:3])
        assert torch.equal(ours[3], torch.zeros_like(ours[3]))  # no key to attend: 0
        assert torch.equal(eager[3], torch.full_like(eager[3], 1 / 9))  # eager: uniform over the padding


@pytest.mark.parametrize("heads", [0, [1, 2], [3, 1]])
def test_hf_capture_of_some_heads_is_bitwise_eager_for_them(hf_bert, heads):
    """Some heads of a padded batch: their maps are bitwise eager's for those heads (the plain
    weights of those heads alone), the output bitwise the model's on attn_implementation="qkv"
    without capture (the same fused call)."""
    from qkv.interop import register_hf

    register_hf()
    ids = torch.randint(0, 60, (3, 9), generator=torch.Generator().manual_seed(4))
    mask = (torch.arange(9) < torch.tensor([9, 6, 3])[:, None]).long()
    with torch.no_grad():
        hf_bert.set_attn_implementation("eager")
        ref = hf_bert(input_ids=ids, attention_mask=mask, output_attentions=True)
        hf_bert.set_attn_implementation("qkv")
        fused = hf_bert(input_ids=ids, attention_mask=mask)
        hf_bert.set_attn_implementation("sdpa")
        with capture(hf_bert, heads=heads) as maps:
            out = hf_bert(input_ids=ids, attention_mask=mask)
    chosen = [heads] if isinstance(heads, int) else heads
    assert torch.equal(out.last_hidden_state, fused.last_hidden_state)
    for ours, eager in zip(maps.layers(), ref.attentions, strict=True):
        assert torch.equal(ours, eager[:, chosen])


def test_hf_capture_of_some_heads_on_minilm_matches_eager_layer_by_layer(request):
    """On all-MiniLM-L6-v2 (a padded batch) the chosen heads' maps are eager's ops on each
    layer's inputs, over those heads alone (a product over fewer heads may round differently),
    and later layers read the fused kernel's outputs (as without capture): the maps follow
    eager's under the error-ratio rule (golden: the model in float64)."""
    transformers = pytest.importorskip("transformers")
    from qkv.interop import minilm_path

    path = str(minilm_path())
    model = transformers.AutoModel.from_pretrained(path).eval()
    golden = transformers.AutoModel.from_pretrained(path, attn_implementation="eager").eval().double()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    batch = tok(["attention maps of a padded batch", "short"], padding=True, return_tensors="pt")
    heads = [3, 1]
    with torch.no_grad():
        model.set_attn_implementation("eager")
        ref = model(**batch, output_attentions=True).attentions
        model.set_attn_implementation("sdpa")
        gold = golden(**batch, output_attentions=True).attentions
        with capture(model, heads=heads) as maps:
            model(**batch)
    ours = maps.layers()
    assert len(ours) == len(ref) == 6
    valid = batch["attention_mask"].bool()[:, None, :, None]  # rows of real tokens
    for a, e, g in zip(ours, ref, gold, strict=True):
        assert_error_ratio(request, a * valid, g[:, heads] * valid, e[:, heads] * valid, what="weights")
