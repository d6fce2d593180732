"""``qkv.interop.use_pattern`` on Hugging Face decoders (GPT-2, Llama with grouped-query heads,
Mistral with its own sliding window; random weights, tiny configs, nothing downloaded): the
prefill equals a float64 dense reference with ``pattern & causal & padding`` (torch's SDPA given
the dense mask; error-ratio rule in float32), a decode step's query row sees exactly the keys
the pattern allows at its position, cached greedy generation equals uncached generation, and
what a decoder cannot run is refused, named."""

from __future__ import annotations

import re

import pytest
import torch

from helpers import assert_error_ratio

transformers = pytest.importorskip("transformers")

import qkv  # noqa: E402
from qkv.interop import hf_implementation, register_hf, use_pattern  # noqa: E402
from qkv.masks import causal, global_tokens, sliding_window  # noqa: E402

register_hf()

LENGTH = 40


def _gpt2():
    return transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            vocab_size=60, n_embd=32, n_layer=2, n_head=4, n_positions=640, initializer_range=0.5
        )
    )


def _llama():
    cfg = transformers.LlamaConfig(
        vocab_size=60,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=640,
        initializer_range=0.5,
    )  # fmt: skip  GQA: 2 key/value heads for 4 query heads
    return transformers.LlamaForCausalLM(cfg)


def _mistral(window: int = 12):
    cfg = transformers.MistralConfig(
        vocab_size=60, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=640, sliding_window=window,
        initializer_range=0.5,
    )  # fmt: skip
    return transformers.MistralForCausalLM(cfg)


FAMILIES = {"gpt2": _gpt2, "llama": _llama, "mistral": _mistral}
PATTERNS = {
    "gpt2": sliding_window(5) | global_tokens([8]),
    "llama": sliding_window(5),
    "mistral": sliding_window(5),  # inside the model's window of 12
}


def _model(family: str, implementation: str, dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    model = FAMILIES[family]().eval().to(dtype)
    model.set_attn_implementation(implementation)
    return model


def _batch(length: int = LENGTH) -> tuple[torch.Tensor, torch.Tensor]:
    """Two prompts; the second is left-padded by 7 tokens (as for generation)."""
    ids = torch.randint(3, 60, (2, length), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, :7] = 0
    return ids, mask


def _dense(pattern, padding: torch.Tensor, window: int | None) -> torch.Tensor:
    """bool (B, 1, T, T): pattern & causal & padding (& the model's window), built densely."""
    length = padding.shape[1]
    keep = pattern.materialize(length, length) & causal().materialize(length, length)
    if window is not None:
        keep = keep & sliding_window(window - 1, 0).materialize(length, length)
    return keep & padding.bool()[:, None, None, :]


def _spy(monkeypatch) -> list:
    calls = []
    real = hf_implementation.attention

    def spy(query, key, value, **kwargs):
        res = real(query, key, value, **kwargs)
        calls.append((query.shape[-2], key.shape[-2], kwargs["mask"], res.backend))
        return res

    monkeypatch.setattr(hf_implementation, "attention", spy)
    return calls


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_prefill_equals_the_float64_dense_reference(request, family):
    pattern, (ids, mask) = PATTERNS[family], _batch()
    window = 12 if family == "mistral" else None
    dense = _dense(pattern, mask, window)
    ours = _model(family, "qkv")
    with torch.no_grad(), use_pattern(ours, pattern):
        impl = ours(input_ids=ids, attention_mask=mask).logits
    with torch.no_grad():  # torch's SDPA given the dense bool mask: float64 golden, float32 eager
        golden = _model(family, "sdpa", torch.float64)(input_ids=ids, attention_mask=dense).logits
        eager = _model(family, "sdpa")(input_ids=ids, attention_mask=dense).logits
        plain = _model(family, "sdpa")(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()  # padding rows attend nothing: compare the real tokens
    assert_error_ratio(request, impl[real], golden[real], eager[real], what=f"{family} prefill")
    assert float((plain - golden)[real].abs().max()) > 1e-3  # the pattern binds


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_decode_step_sees_the_keys_the_pattern_allows_at_its_position(monkeypatch, family):
    pattern, (ids, mask) = PATTERNS[family], _batch()
    window = 12 if family == "mistral" else None
    model = _model(family, "qkv")
    with torch.no_grad(), use_pattern(model, pattern):
        past = model(input_ids=ids, attention_mask=mask, use_cache=True).past_key_values
        calls = _spy(monkeypatch)
        step = torch.tensor([[5], [9]])
        model(input_ids=step, attention_mask=torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], 1),
              past_key_values=past, use_cache=True)  # fmt: skip
    total = LENGTH + 1
    want = _dense(pattern, torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], 1), window)[..., -1:, :]
    assert len(calls) == 2
    for q_len, kv_len, call_mask, _ in calls:
        kv_offset = total - kv_len  # Mistral's sliding cache keeps the last keys only
        assert q_len == 1 and kv_len == (window if window else total)
        got = call_mask.materialize(1, kv_len)
        assert torch.equal(got.expand(2, 1, 1, kv_len), want[..., kv_offset:])
        assert not want[..., :kv_offset].any()  # the keys the cache dropped are outside the window


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_cached_greedy_generation_equals_uncached_under_the_pattern(family):
    pattern, (ids, mask) = PATTERNS[family], _batch(24)
    model = _model(family, "qkv", torch.float64)
    settings = {"attention_mask": mask, "max_new_tokens": 16, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        with use_pattern(model, pattern):
            cached = model.generate(ids, use_cache=True, **settings)
            recomputed = model.generate(ids, use_cache=False, **settings)
        plain = model.generate(ids, use_cache=True, **settings)
    assert cached.shape == (2, 40)
    assert torch.equal(cached, recomputed)
    assert not torch.equal(cached, plain)  # the pattern changed the generated tokens


def test_a_long_prefill_runs_the_block_sparse_kernel_with_masks_linear_in_length(monkeypatch):
    length = 512
    ids = torch.randint(3, 60, (2, length), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, :30] = 0
    model = _model("llama", "qkv")
    calls = _spy(monkeypatch)
    with torch.no_grad(), use_pattern(model, sliding_window(16) | global_tokens([4])):
        model(input_ids=ids, attention_mask=mask)
    assert [backend for *_, backend in calls] == ["blocksparse", "blocksparse"]
    tensors = [t for t in _tensors(calls[0][2])]
    assert tensors and all(t.numel() <= 2 * length for t in tensors)  # padding (B, 1, 1, T), no T x T


def _tensors(mask):
    """The bool tensors inside a combined qkv mask."""
    if isinstance(mask, torch.Tensor):
        yield mask
    for name in ("left", "right", "inner", "base"):
        if hasattr(mask, name):
            yield from _tensors(getattr(mask, name))
    if hasattr(mask, "tensor"):
        yield mask.tensor


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        (qkv.masks.random_blocks(2, 4, seed=0), r"row depends on the sequence length"),
        (~causal(), r"token 0 sees no key at or before it"),
        (qkv.masks.document(torch.zeros(1, 16, dtype=torch.long)), r"at 37 or 80 tokens it raised: document"),
    ],
)
def test_patterns_that_are_not_causal_compatible_are_refused_naming_them(pattern, message):
    model = _model("gpt2", "qkv")
    with pytest.raises(ValueError, match=re.escape(f"use_pattern: {pattern!r} is not causal-compatible")):
        use_pattern(model, pattern)
    with pytest.raises(ValueError, match=message):
        use_pattern(model, pattern)


def test_a_pattern_wider_than_the_models_own_window_is_refused():
    model = _model("mistral", "qkv")
    with pytest.raises(ValueError, match=r"conflicts with the model's own sliding window \(config\.sliding_window=12\): "
                       r"it lets token 12 see token 0"):  # fmt: skip
        use_pattern(model, sliding_window(5) | global_tokens([0]))
    with pytest.raises(ValueError, match=r"token 12 see token 0"):
        use_pattern(model, sliding_window(12))
    use_pattern(model, sliding_window(11)).remove()  # exactly the window: accepted


def _static_steps(model, ids, mask, steps: int, max_cache_len: int = 48) -> torch.Tensor:
    """Logits (B, T + steps, V) of a prefill over ``ids`` into a ``StaticCache`` of
    ``max_cache_len`` slots, then one token per step (the tokens of ``steps``)."""
    cache = transformers.StaticCache(config=model.config, max_cache_len=max_cache_len)
    out = model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True)
    logits = [out.logits]
    for token in steps:
        mask = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], 1)
        out = model(input_ids=token, attention_mask=mask, past_key_values=cache, use_cache=True)
        logits.append(out.logits)
    return torch.cat(logits, 1)


def test_a_static_cache_equals_the_float64_dense_reference(request, monkeypatch):
    """Prefill and decode steps into a StaticCache: queries at the cache's filled length, every
    key of its 48 slots handed over, the slots not filled yet masked; equal to torch's SDPA over
    the whole sequence given the dense pattern & causal & padding."""
    pattern, (ids, mask) = PATTERNS["llama"], _batch(20)
    steps = [torch.tensor([[5], [9]]), torch.tensor([[17], [4]]), torch.tensor([[33], [41]])]
    model = _model("llama", "qkv")
    calls = _spy(monkeypatch)
    with torch.no_grad(), use_pattern(model, pattern):
        impl = _static_steps(model, ids, mask, steps)
    assert [(q, k) for q, k, _, _ in calls] == [(20, 48)] * 2 + [(1, 48)] * 6
    full_ids = torch.cat([ids, *steps], 1)
    full_mask = torch.cat([mask, torch.ones(2, len(steps), dtype=mask.dtype)], 1)
    dense = _dense(pattern, full_mask, None)
    with torch.no_grad():  # torch's SDPA given the dense bool mask: float64 golden, float32 eager
        golden = _model("llama", "sdpa", torch.float64)(input_ids=full_ids, attention_mask=dense).logits
        eager = _model("llama", "sdpa")(input_ids=full_ids, attention_mask=dense).logits
    real = full_mask.bool()
    assert_error_ratio(request, impl[real], golden[real], eager[real], what="static cache")


def test_static_cache_generation_equals_dynamic_cache_generation_under_the_pattern():
    pattern, (ids, mask) = PATTERNS["gpt2"], _batch(24)  # a window and a global token
    model = _model("llama", "qkv", torch.float64)
    model.generation_config.eos_token_id = None  # 16 new tokens in every row
    settings = {"attention_mask": mask, "max_new_tokens": 16, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        with use_pattern(model, pattern):
            dynamic = model.generate(ids, **settings)
            static = model.generate(ids, cache_implementation="static", **settings)
        plain = model.generate(ids, cache_implementation="static", **settings)
    assert static.shape == (2, 40)
    assert torch.equal(static, dynamic)
    assert not torch.equal(static, plain)  # the pattern changed the generated tokens


def test_a_prepared_4d_mask_is_refused_naming_it():
    """A 4-D mask made by the caller holds no positions to place the pattern at."""
    model = _model("llama", "qkv")
    ids, mask = _batch(12)
    dense = _dense(causal(), mask, None)
    with (
        use_pattern(model, sliding_window(4)),
        pytest.raises(NotImplementedError, match=r"a 4-D attention_mask prepared by the caller"),
    ):
        model(input_ids=ids, attention_mask=dense)
