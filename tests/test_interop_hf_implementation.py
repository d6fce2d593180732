"""``attn_implementation="qkv"``: Hugging Face models with random weights (tiny configs, nothing
downloaded) run every attention call on qkv, and equal ``eager`` and ``sdpa`` under the
error-ratio rule (golden = eager in float64), forward and backward; greedy generation with a
KV cache gives the same tokens."""

from __future__ import annotations

import copy
import itertools
import sys

import pytest
import torch

from helpers import GRAD_FACTOR, assert_error_ratio

transformers = pytest.importorskip("transformers")

from qkv.interop import hf_implementation, register_hf  # noqa: E402

register_hf()


def _ids(vocab: int, batch: int = 2, length: int = 10, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and a right-padded attention mask (sample 1 has 3 padding tokens)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, length - 3 :] = 0
    return ids, mask


def _bert():
    cfg = transformers.BertConfig(
        vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=32,
    )  # fmt: skip
    ids, mask = _ids(60)
    return transformers.BertForMaskedLM(cfg), {"input_ids": ids, "attention_mask": mask}, "logits"


def _gpt2():
    cfg = transformers.GPT2Config(vocab_size=60, n_embd=32, n_layer=2, n_head=4, n_positions=32)
    ids, mask = _ids(60)
    return transformers.GPT2LMHeadModel(cfg), {"input_ids": ids, "attention_mask": mask}, "logits"


def _llama():
    cfg = transformers.LlamaConfig(
        vocab_size=60,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )  # fmt: skip  GQA: 2 key/value heads for 4 query heads; RoPE
    ids, mask = _ids(60)
    return transformers.LlamaForCausalLM(cfg), {"input_ids": ids, "attention_mask": mask}, "logits"


def _mistral():
    cfg = transformers.MistralConfig(
        vocab_size=60,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        sliding_window=4,
    )  # fmt: skip  the window (4) binds on 12 tokens
    ids, mask = _ids(60, length=12)
    return transformers.MistralForCausalLM(cfg), {"input_ids": ids, "attention_mask": mask}, "logits"


def _vit():
    cfg = transformers.ViTConfig(
        image_size=12, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, num_labels=5,
    )  # fmt: skip
    pixels = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    return transformers.ViTForImageClassification(cfg), {"pixel_values": pixels}, "logits"


def _clip():
    text = {"vocab_size": 60, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 16}  # fmt: skip
    vision = {"image_size": 12, "patch_size": 4, "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 4}  # fmt: skip
    cfg = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    ids, mask = _ids(60)
    pixels = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    inputs = {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}
    return transformers.CLIPModel(cfg), inputs, "logits_per_image"


def _t5():
    cfg = transformers.T5Config(
        vocab_size=60,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
    )  # fmt: skip  relative position bias: qkv's bias=
    ids, mask = _ids(60)
    dec = _ids(60, length=6, seed=4)[0]
    inputs = {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec}
    return transformers.T5ForConditionalGeneration(cfg), inputs, "logits"


FAMILIES = {
    "bert": _bert,
    "gpt2": _gpt2,
    "llama": _llama,
    "mistral": _mistral,
    "vit": _vit,
    "clip": _clip,
    "t5": _t5,
}
ATTENTION_CALLS = {"bert": 2, "gpt2": 2, "llama": 2, "mistral": 2, "vit": 2, "clip": 4, "t5": 6}


def _variants(family: str):
    """The same random weights as ``qkv``, ``eager`` and ``sdpa`` float32 models and the eager
    float64 golden, with their inputs and the output to compare."""
    torch.manual_seed(0)
    base, inputs, field = FAMILIES[family]()
    base.eval()
    models = {}
    for name in ("qkv", "eager", "sdpa", "golden"):
        model = copy.deepcopy(base)
        model.set_attn_implementation("eager" if name == "golden" else name)
        models[name] = model.double() if name == "golden" else model
    return models, inputs, field


def _run(model, inputs, field):
    if next(model.parameters()).dtype == torch.float64:
        inputs = {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}
    return getattr(model(**inputs), field)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_forward_equals_eager_and_sdpa(request, family, monkeypatch):
    models, inputs, field = _variants(family)
    calls = []
    real = hf_implementation.attention
    monkeypatch.setattr(hf_implementation, "attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        out = {name: _run(model, inputs, field) for name, model in models.items()}
    assert len(calls) == ATTENTION_CALLS[family]  # every attention call of the model ran on qkv
    assert_error_ratio(request, out["qkv"], out["golden"], out["eager"], what=f"{family} vs eager")
    assert_error_ratio(request, out["qkv"], out["golden"], out["sdpa"], what=f"{family} vs sdpa")


@pytest.mark.parametrize("family", ["bert", "llama", "t5"])
def test_backward_equals_eager_and_sdpa(request, family):
    models, inputs, field = _variants(family)
    grads = {}
    for name, model in models.items():
        model.zero_grad()
        out = _run(model, inputs, field)
        weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
        (out * weight).sum().backward()
        grads[name] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    for other in ("eager", "sdpa"):
        assert_error_ratio(
            request,
            grads["qkv"],
            grads["golden"],
            grads[other],
            factor=GRAD_FACTOR,
            what=f"{family} grads vs {other}",
        )


@pytest.mark.parametrize("family", ["gpt2", "llama", "mistral"])
def test_greedy_generation_with_a_kv_cache_gives_the_same_tokens(family):
    models, inputs, _ = _variants(family)
    prompt = inputs["input_ids"][:1, :5]
    tokens = {}
    for name in ("qkv", "eager", "sdpa"):
        tokens[name] = models[name].generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False, pad_token_id=0
        )
    assert tokens["qkv"].shape == (1, 17)
    assert torch.equal(tokens["qkv"], tokens["eager"]) and torch.equal(tokens["qkv"], tokens["sdpa"])


def test_output_attentions_are_eager_weights(request):
    models, inputs, _ = _variants("llama")
    with torch.no_grad():
        ours = models["qkv"](**inputs, output_attentions=True).attentions
        eager = models["eager"](**inputs, output_attentions=True).attentions
        golden = models["golden"](**inputs, output_attentions=True).attentions
    assert len(ours) == 2 and ours[0].shape == (2, 4, 10, 10)
    valid = inputs["attention_mask"].bool()[:, None, :, None]  # rows of real tokens
    for a, e, g in zip(ours, eager, golden):
        assert_error_ratio(request, a * valid, g * valid, e * valid, what="weights")


def test_real_minilm_equals_eager(request):
    from qkv.interop import minilm_path

    path = str(minilm_path())
    ours = transformers.AutoModel.from_pretrained(path, attn_implementation="qkv").eval()
    eager = transformers.AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    golden = copy.deepcopy(eager).double()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    batch = tok(["attention is all you need", "a short one"], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = {
            n: m(**batch).last_hidden_state for n, m in (("qkv", ours), ("eager", eager), ("golden", golden))
        }
    assert ours.config._attn_implementation == "qkv"
    assert_error_ratio(request, out["qkv"], out["golden"], out["eager"], what="minilm")


def test_registering_twice_is_harmless():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    register_hf()
    register_hf()
    assert AttentionInterface._global_mapping["qkv"] is hf_implementation.qkv_attention_forward
    assert AttentionMaskInterface._global_mapping["qkv"] is hf_implementation.qkv_mask


def test_features_qkv_cannot_express_raise_naming_them():
    cfg = transformers.Gemma2Config(
        vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, attn_logit_softcapping=50.0,
    )  # fmt: skip
    gemma = transformers.Gemma2ForCausalLM(cfg).eval()
    gemma.set_attn_implementation("qkv")
    with pytest.raises(NotImplementedError, match=r"Gemma2Attention uses attention logit soft-capping"):
        gemma(input_ids=torch.randint(0, 40, (1, 4)))
    q = torch.randn(1, 2, 4, 8)
    module = torch.nn.Module()
    lens = torch.tensor([0, 4])
    with pytest.raises(NotImplementedError, match=r"packed variable-length sequences \(cu_seq_lens_q"):
        hf_implementation.qkv_attention_forward(module, q, q, q, None, cu_seq_lens_q=lens, cu_seq_lens_k=lens)
    with pytest.raises(TypeError, match=r"attention_mask: expected a bool or float tensor, got torch\.int64"):
        hf_implementation.qkv_attention_forward(module, q, q, q, torch.ones(1, 1, 4, 4, dtype=torch.long))


def test_float_masks_and_is_causal_convert_exactly():
    """A float mask (``-inf`` and ``finfo.min`` entries), a bool mask and ``is_causal`` give
    torch's SDPA results with the same arguments."""
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, 4, 5, 8, generator=gen) for _ in range(3))
    module = torch.nn.Module()
    keep = torch.rand(2, 1, 5, 5, generator=gen) > 0.3
    keep[..., 0] = True
    floats = torch.where(keep, torch.randn(2, 1, 5, 5, generator=gen), float("-inf"))
    floats[0, 0, 1, 2] = torch.finfo(torch.float32).min
    sdpa = torch.nn.functional.scaled_dot_product_attention
    for mask, causal in ((keep, False), (floats, False), (None, True)):
        out, weights = hf_implementation.qkv_attention_forward(
            module, q, k, v, mask, scaling=0.3, is_causal=causal
        )
        want = sdpa(q, k, v, attn_mask=mask, is_causal=causal, scale=0.3).transpose(1, 2)
        assert weights is None
        torch.testing.assert_close(out, want, rtol=0, atol=1e-6)


def test_without_transformers_the_extra_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"pip install 'qkv\[interop\]'"):
        register_hf()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("b", "h", "tq", "tk", "d", "dv"), [(2, 12, 16, 16, 32, 32), (1, 3, 1, 7, 5, 9), (3, 2, 9, 1024, 8, 4)]
)
def test_plain_weights_first_is_bitwise_the_general_path(dtype, b, h, tq, tk, d, dv):
    """An unmasked, unbiased call that keeps every weight runs a handful of ops
    (``hf_weights_first``): bitwise what ``attention_from_weights`` gives, weights and output, for
    transformers' (B, H, T, D) views, with or without a scale; anything less plain is declined."""
    from qkv.api.weights_first import attention_from_weights
    from qkv.interop.hf_weights_first import plain_weights_first

    g = torch.Generator().manual_seed(tk)
    q = torch.randn(b, tq, h, d, generator=g, dtype=dtype).transpose(1, 2)  # (B, H, Tq, D), a view
    k = torch.randn(b, tk, h, d, generator=g, dtype=dtype).transpose(1, 2)
    v = torch.randn(b, h, tk, dv, generator=g, dtype=dtype)
    for scale in (None, 0.125, 1.0, 3):
        out, weights = plain_weights_first(q, k, v, scale)
        ref = attention_from_weights(q, k, v, scale=scale)
        assert torch.equal(weights, ref.weights) and torch.equal(out, ref.out)
    assert (weights.sum(-1) - 1).abs().max() < 1e-6  # rows sum to one
    long_k, long_v = (torch.zeros(b, h, 1025, t.shape[-1], dtype=dtype) for t in (k, v))
    declined = [
        (q[:, :1], k, v, None),  # grouped-query: fewer query heads than key heads here
        (q, k[:, :1], v[:, :1], None),  # grouped-query key/value heads
        (q.half(), k.half(), v.half(), None),  # computed in float32: the general path casts
        (q, k, v, float("nan")),  # a bad scale: the general path reports it
        (q, long_k, long_v, None),  # past one key block of the weights pass
        (q, k, v[:, :, :-1] if tk > 1 else v[:, :, :0], None),  # values of another length
    ]
    for args in declined:
        assert plain_weights_first(*args) is None
    with torch.enable_grad():
        assert plain_weights_first(q.requires_grad_(), k, v, None) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_plain_weights_first_with_masks_is_bitwise_the_general_path(dtype):
    """A padded call (bool key-padding mask, True = takes part), a float additive mask (finite
    entries, ``finfo.min`` and ``-inf``), both, and rows left no key: ``hf_weights_first`` is
    bitwise ``attention_from_weights`` (what the general path runs with ``_mask_and_bias``'s
    mask and bias), NaN in keys no row attends changes nothing; masks that grow the logits, of
    another dtype or a position bias are declined."""
    from qkv.api.weights_first import attention_from_weights
    from qkv.interop.hf_weights_first import plain_weights_first
    from qkv.masks.torch_masks import split_float_mask

    g = torch.Generator().manual_seed(3)
    b, h, t, d = 3, 4, 9, 8
    q, k, v = (torch.randn(b, t, h, d, generator=g, dtype=dtype).transpose(1, 2) for _ in range(3))
    lengths = torch.tensor([9, 4, 0])  # sample 2 fully padded: its rows have no key
    padding = (torch.arange(t) < lengths[:, None])[:, None, None, :]  # (B, 1, 1, Tk)
    additive = torch.randn(b, 1, t, t, generator=g, dtype=dtype)
    additive[0, 0, 2, 5] = torch.finfo(dtype).min
    additive[1, 0, :, 1::2] = float("-inf")
    additive[0, 0, 3, :] = float("-inf")  # a row the additive mask closes
    cases = [(padding, None), (padding[:2], None)]
    for float_mask, pad in ((additive, None), (additive, padding)):
        keep, bias = split_float_mask(float_mask)  # as qkv_attention_forward hands them over
        keep = keep if pad is None else keep & pad
        cases.append((None if bool(keep.all()) else keep, bias))
    dirty_k, dirty_v = k.clone(), v.clone()
    dirty_k[1, :, 5], dirty_v[1, :, 5] = float("inf"), float("nan")  # a key no row of sample 1 attends
    for (mask, bias), (kk, vv) in itertools.product(cases, ((k, v), (dirty_k, v), (k, dirty_v))):
        qq, kk, vv = (x[: mask.shape[0]] if mask is not None else x for x in (q, kk, vv))
        for _ in range(2):  # the second call reads the kept mask
            out, weights = plain_weights_first(qq, kk, vv, 0.3, mask, bias)
            ref = attention_from_weights(qq, kk, vv, mask=mask, bias=bias, scale=0.3)
            assert torch.equal(weights, ref.weights) and torch.equal(out, ref.out)
        assert not out.isnan().any() and not weights.isnan().any()
    assert torch.equal(weights[2], torch.zeros_like(weights[2]))  # no key: 0, as the general path
    declined = [
        (padding.expand(b, h, 2 * t, t), None),  # grows the logits
        (padding.float(), None),  # not a bool mask
        (None, additive.float() if dtype == torch.float64 else additive.double()),  # another dtype
        (padding[:, 0], None),  # 3-D
    ]
    for mask, bias in declined:
        assert plain_weights_first(q, k, v, None, mask, bias) is None


def test_padded_and_additive_masks_take_the_plain_path_and_position_bias_does_not(monkeypatch):
    """``_attend`` runs ``hf_weights_first`` for a bool mask and for a float attention mask's
    additive part, and the general path for a position bias (T5's), a pattern and dropout in
    training."""
    from qkv.interop import hf_weights_first

    taken = []
    plain = hf_weights_first.plain_weights_first
    monkeypatch.setattr(
        hf_implementation, "plain_weights_first", lambda *a: taken.append(plain(*a) is not None) or plain(*a)
    )
    module = torch.nn.Module().eval()
    q, k, v = (torch.randn(2, 3, 5, 4) for _ in range(3))
    padding = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])[:, None, None, :]
    floats = torch.zeros(2, 1, 5, 5).masked_fill(~padding, torch.finfo(torch.float32).min)
    for mask in (padding, floats):
        hf_implementation.qkv_attention_forward(module, q, k, v, mask, output_attentions=True)
    assert taken == [True, True]
    general = [
        dict(attention_mask=padding, position_bias=torch.randn(1, 3, 5, 5)),
        dict(attention_mask=None, is_causal=True),  # a causal pattern
    ]
    for kwargs in general:
        hf_implementation.qkv_attention_forward(module, q, k, v, output_attentions=True, **kwargs)
    module.train()
    hf_implementation.qkv_attention_forward(module, q, k, v, padding, dropout=0.1, output_attentions=True)
    assert taken == [True, True]


def test_plain_weights_first_reads_a_mask_changed_in_place_again():
    """What the plain path keeps of the last mask (its complement, its empty rows) follows the
    tensor's version counter: a mask changed in place between calls is read again."""
    from qkv.api.weights_first import attention_from_weights
    from qkv.interop.hf_weights_first import plain_weights_first

    q, k, v = (torch.randn(2, 3, 6, 4, generator=torch.Generator().manual_seed(i)) for i in range(3))
    padding = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    padding[1, ..., 4:] = False
    for change in (None, (0, 2), (1, 0), (0, slice(None))):  # the last one closes sample 0 entirely
        if change is not None:
            padding[change[0], ..., change[1]] = False
        out, weights = plain_weights_first(q, k, v, None, padding)
        ref = attention_from_weights(q, k, v, mask=padding)
        assert torch.equal(weights, ref.weights) and torch.equal(out, ref.out)
    assert torch.equal(weights[0], torch.zeros_like(weights[0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_plain_weights_of_some_heads_are_those_of_every_head(dtype):
    """``plain_weights``: the weights of the chosen heads alone are bitwise those heads' rows of
    ``plain_weights_first`` (unmasked, padded, with closed keys not finite), and equal
    ``qkv.attention``'s weights pass for them; per-head masks and bad heads are declined."""
    from qkv.api.attention import attention
    from qkv.interop.hf_weights_first import plain_weights, plain_weights_first

    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 7, 4, 8, generator=g, dtype=dtype).transpose(1, 2) for _ in range(3))
    padding = torch.tensor([[True] * 7, [True] * 3 + [False] * 4])[:, None, None, :]
    dirty = k.clone()
    dirty[1, :, 5] = float("nan")
    for kk, mask, heads in itertools.product((k, dirty), (None, padding), ((0,), (1, 2), (3, 0))):
        if mask is None and kk is dirty:
            continue
        weights = plain_weights(q, kk, 0.25, heads, mask)
        _, every = plain_weights_first(q, kk, v, 0.25, mask)
        assert torch.equal(weights, every[:, list(heads)])
        ref = attention(q, kk, v, mask=mask, scale=0.25, need_weights=True, weights_for=(list(heads), None))
        torch.testing.assert_close(weights, ref.weights, rtol=0, atol=1e-6)
    for heads, mask in (((4,), None), ((), None), ((-1,), None), ((0,), padding.expand(2, 4, 1, 7))):
        assert plain_weights(q, k, None, heads, mask) is None
