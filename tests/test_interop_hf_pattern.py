"""``qkv.interop.use_pattern``: a sparse pattern on a Hugging Face encoder (BERT with random
weights, tiny config, nothing downloaded) equals the model's eager attention given the dense
equivalent mask (pattern & padding), runs the block-sparse backend, and is removed with its
handle."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

from helpers import assert_error_ratio

transformers = pytest.importorskip("transformers")

import qkv  # noqa: E402
from qkv.interop import hf_implementation, register_hf, use_pattern  # noqa: E402

register_hf()

LENGTH = 768  # 12 x 12 tiles of 64: the window below touches 39% of them (blocksparse's ground)


def _bert(implementation: str = "qkv", positions: int = 1024):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=positions,
    )  # fmt: skip
    model = transformers.BertModel(cfg).eval()
    model.set_attn_implementation(implementation)
    return model


def _batch(length: int = LENGTH) -> dict[str, torch.Tensor]:
    """Two documents; the second ends with 100 padding tokens."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 60, (2, length), generator=gen)
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, length - 100 :] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _dense_additive(pattern, padding: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The equivalent dense mask as eager reads it: (B, 1, T, T), 0 = attend, finfo.min = not."""
    length = padding.shape[1]
    keep = pattern.materialize(length, length) & padding.bool()[:, None, None, :]
    zero = torch.zeros((), dtype=dtype)
    return torch.where(keep, zero, torch.finfo(dtype).min)


def _backends(monkeypatch) -> list[str]:
    ran: list[str] = []
    real = hf_implementation.attention

    def spy(*args, **kwargs):
        res = real(*args, **kwargs)
        ran.append(res.backend)
        return res

    monkeypatch.setattr(hf_implementation, "attention", spy)
    return ran


def test_narrow_window_equals_eager_with_the_dense_mask_in_float64(monkeypatch):
    pattern = qkv.masks.sliding_window(16) | qkv.masks.global_tokens([0])
    ours, eager = _bert("qkv").double(), _bert("eager").double()
    batch = _batch()
    dense = _dense_additive(pattern, batch["attention_mask"], torch.float64)
    ran = _backends(monkeypatch)
    with torch.no_grad():
        with use_pattern(ours, pattern):
            out = ours(**batch).last_hidden_state
        want = eager(input_ids=batch["input_ids"], attention_mask=dense).last_hidden_state
        full = eager(**batch).last_hidden_state
    assert ran == ["blocksparse", "blocksparse"]  # both layers, on the block-sparse kernel
    assert float((out - want).abs().max()) <= 1e-10
    assert float((full - want).abs().max()) > 1e-3  # the window binds: the check is not vacuous


def test_a_window_wider_than_the_document_changes_nothing(request):
    model = _bert("qkv")
    golden = _bert("eager").double()
    eager = _bert("eager")
    batch = _batch(200)
    with torch.no_grad():
        plain = model(**batch).last_hidden_state
        with use_pattern(model, qkv.masks.sliding_window(4096)):
            out = model(**batch).last_hidden_state
        want = golden(**batch).last_hidden_state
        ref = eager(**batch).last_hidden_state
    assert_error_ratio(request, out, want, ref, what="wide window vs eager")
    assert_error_ratio(request, out, want, plain, what="wide window vs no pattern")


def test_the_pattern_is_removed_after_the_context_and_by_remove():
    model = _bert("qkv")
    batch = _batch(300)
    pattern = qkv.masks.sliding_window(8)
    with torch.no_grad():
        before = model(**batch).last_hidden_state
        with use_pattern(model, pattern) as handle:
            inside = model(**batch).last_hidden_state
        after = model(**batch).last_hidden_state
        handle = use_pattern(model, pattern)
        held = model(**batch).last_hidden_state
        handle.remove()
        handle.remove()  # twice: nothing more
        removed = model(**batch).last_hidden_state
    assert handle.modules == ["encoder.layer.0.attention.self", "encoder.layer.1.attention.self"]
    assert float((inside - before).abs().max()) > 1e-3
    assert torch.equal(after, before) and torch.equal(removed, before) and torch.equal(held, inside)
    assert not hf_implementation._PATTERNS


def test_the_pattern_belongs_to_its_model_in_every_thread():
    """A patterned model and an unpatterned copy called from two threads give their
    single-thread results."""
    model = _bert("qkv")
    other = copy.deepcopy(model)
    batch = _batch(300)
    with torch.no_grad():
        plain = other(**batch).last_hidden_state
        with use_pattern(model, qkv.masks.sliding_window(8)):
            patterned = model(**batch).last_hidden_state
            results: dict[str, list[torch.Tensor]] = {"model": [], "other": []}

            def run(name, m):
                with torch.no_grad():
                    for _ in range(3):
                        results[name].append(m(**batch).last_hidden_state)

            threads = [threading.Thread(target=run, args=a) for a in (("model", model), ("other", other))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    assert all(torch.equal(r, patterned) for r in results["model"])
    assert all(torch.equal(r, plain) for r in results["other"])


def test_models_that_cannot_take_a_pattern_are_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"runs attn_implementation='eager'; expected 'qkv'"):
        use_pattern(_bert("eager"), qkv.masks.sliding_window(8))
    with pytest.raises(TypeError, match=r"pattern must be a qkv\.masks\.Mask .* got Tensor"):
        use_pattern(_bert("qkv"), torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"model must be a transformers PreTrainedModel, got Linear"):
        use_pattern(torch.nn.Linear(2, 2), qkv.masks.sliding_window(8))


def test_another_pattern_while_one_is_held_raises_and_sets_nothing():
    model = _bert("qkv")
    held = pytest.raises(ValueError, match=r"already holds the pattern sliding_window\(8\)")
    with use_pattern(model, qkv.masks.sliding_window(8)), held:
        use_pattern(model, qkv.masks.sliding_window(4))
    assert not hf_implementation._PATTERNS


def test_documents_beyond_the_position_embeddings_are_refused_naming_them():
    model = _bert("qkv", positions=64)
    refused = pytest.raises(ValueError, match=r"100 tokens exceed the model's max_position_embeddings=64")
    with use_pattern(model, qkv.masks.sliding_window(8)), refused:
        model(**_batch(100))


def test_an_encoder_mask_reaches_qkv_as_padding_not_a_matrix():
    from transformers.masking_utils import bidirectional_mask_function

    padding = torch.ones(2, 7, dtype=torch.bool)
    padding[1, 5:] = False
    args = {"batch_size": 2, "q_length": 7, "kv_length": 7, "mask_function": bidirectional_mask_function}
    mask = hf_implementation.qkv_mask(**args, attention_mask=padding, allow_is_bidirectional_skip=True)
    assert mask.shape == (2, 1, 1, 7) and torch.equal(mask[:, 0, 0], padding)
    assert hf_implementation.qkv_mask(**args, attention_mask=torch.ones(2, 7, dtype=torch.bool),
                                      allow_is_bidirectional_skip=True) is None  # fmt: skip
    dense = hf_implementation.qkv_mask(**args, attention_mask=padding)  # no skip allowed: sdpa's
    assert dense.shape == (2, 1, 7, 7) and torch.equal(dense, padding[:, None, None, :].expand(2, 1, 7, 7))
