"""qkv.capture walks a model's module tree once: the walk is kept per model until the tree
changes (qkv._module_tree), and what is captured is the same with and without it."""

from __future__ import annotations

import copy
import gc
import importlib
import os
import weakref

import pytest
import torch
from torch import nn

import qkv
from qkv._module_tree import TreeCache, tree_signature
from qkv.capture import capture
from qkv.models import BertConfig, BertModel

os.environ["HF_HUB_OFFLINE"] = "1"
capture_module = importlib.import_module("qkv.capture")  # the module (qkv.capture is the function)


# ----------------------------------------------------------------------------- the signature


def _stack(n: int = 2) -> nn.Module:
    torch.manual_seed(n)
    model = nn.Module()
    model.layers = nn.ModuleList([qkv.MultiHeadAttention(embed_dim=8, num_heads=2) for _ in range(n)])
    model.norm = nn.LayerNorm(8)
    return model


def test_signature_changes_exactly_when_the_tree_does():
    model = _stack()
    same = tree_signature(model)
    assert tree_signature(model) == same  # nothing changed
    model.norm.weight.data.add_(1.0)  # parameters are not the tree
    model.extra_attribute = 3
    assert tree_signature(model) == same
    changes = [
        lambda m: m.layers.__setitem__(0, qkv.MultiHeadAttention(embed_dim=8, num_heads=2)),  # replaced
        lambda m: m.layers.append(qkv.MultiHeadAttention(embed_dim=8, num_heads=2)),  # added
        lambda m: m.layers.__delitem__(1),  # removed (ModuleList rebuilds its dict)
        lambda m: (m.register_module("renamed", m.norm), delattr(m, "norm")),  # renamed
        lambda m: m.layers.insert(0, m.layers[1]),  # moved: the same modules in another order
        lambda m: m.layers[0].register_module("inner", nn.Identity()),  # a grandchild added
    ]
    for change in changes:
        model = _stack()
        before = tree_signature(model)
        change(model)
        assert tree_signature(model) != before


def test_a_freed_module_never_matches_one_allocated_after_it():
    """The signature holds weak references: a module freed and another one at its address (ids
    reused) is a change, and the signature keeps no module alive."""
    model = _stack()
    before = tree_signature(model)
    gone = weakref.ref(model.layers[1])
    model.layers[1] = nn.Identity()
    gc.collect()
    assert gone() is None  # the stored signature did not keep the old layer alive
    for _ in range(50):  # whatever address the new module takes, the old reference is dead
        model.layers[1] = qkv.MultiHeadAttention(embed_dim=8, num_heads=2)
        assert tree_signature(model) != before


def test_tree_cache_walks_once_per_tree_and_forgets_dead_models():
    cache = TreeCache(lambda m: len(list(m.modules())))
    model = _stack()
    count = len(list(model.modules()))
    assert cache.get(model) == cache.get(model) == count and cache.walks == 1
    model.layers.append(nn.Identity())
    assert cache.get(model) == count + 1 and cache.walks == 2
    dead = weakref.ref(model)
    del model
    gc.collect()
    assert dead() is None and len(cache._entries) == 0


# ----------------------------------------------------------------------------- qkv's modules


def _small_bert(layers: int = 3):
    torch.manual_seed(5)
    cfg = BertConfig(
        vocab_size=50, hidden_size=32, num_layers=layers, num_heads=4, intermediate_size=64, max_position=16
    )
    return BertModel(cfg).eval(), torch.randint(0, 50, (2, 12))


def _captured(model, ids, **kwargs):
    with torch.no_grad(), capture(model, **kwargs) as maps:
        out = model(ids)
    return out, maps


def test_qkv_model_is_walked_once_and_maps_equal_the_uncached_walk():
    model, ids = _small_bert()
    walks = capture_module._WALKS.walks
    first_out, first = _captured(model, ids)
    _, second = _captured(model, ids, layers=[0, -1], heads=[1])
    assert capture_module._WALKS.walks == walks + 1  # the second entry read the walk
    capture_module._WALKS.clear()
    fresh_out, fresh = _captured(model, ids)
    assert list(first) == list(fresh) and len(first) == 3
    for a, b in zip(first.layers(), fresh.layers(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(first_out.last_hidden_state, fresh_out.last_hidden_state)
    names = list(first)
    assert list(second) == [names[0], names[-1]]
    assert torch.equal(second.layers()[1], first.layers()[-1][:, [1]])
    with torch.no_grad():
        plain = model(ids, need_weights=True)
    for ours, theirs in zip(first.layers(), plain.attentions.encoder, strict=True):
        assert torch.equal(ours, theirs)  # bitwise the model's own weights


def test_qkv_model_changed_between_captures_is_walked_again():
    model, ids = _small_bert()
    _captured(model, ids)
    walks = capture_module._WALKS.walks
    torch.manual_seed(9)
    new_layer = copy.deepcopy(model.layers[1])
    for p in new_layer.parameters():
        p.data.normal_()
    model.layers[1] = new_layer  # replaced: its attention module is another object
    model.layers.append(copy.deepcopy(new_layer))  # and one more layer
    out, maps = _captured(model, ids)
    assert capture_module._WALKS.walks == walks + 1
    with torch.no_grad():
        plain = model(ids, need_weights=True)
    assert len(maps) == len(plain.attentions.encoder) == 4
    for ours, theirs in zip(maps.layers(), plain.attentions.encoder, strict=True):
        assert torch.equal(ours, theirs)
    assert torch.equal(out.last_hidden_state, plain.last_hidden_state)


def test_a_captured_model_is_freed_with_its_walk():
    model, ids = _small_bert(layers=1)
    _captured(model, ids)
    dead = weakref.ref(model)
    del model
    gc.collect()
    assert dead() is None


# ----------------------------------------------------------------------------- Hugging Face


def _hf_bert(layers: int = 2):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(6)
    cfg = transformers.BertConfig(
        vocab_size=60, hidden_size=16, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=32, max_position_embeddings=20, attn_implementation="sdpa",
    )  # fmt: skip
    return transformers.BertModel(cfg).eval()


def _hf_inputs():
    torch.manual_seed(1)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, 6:] = 0
    return {"input_ids": torch.randint(0, 60, (2, 9)), "attention_mask": mask}


def _output_attentions(model, inputs):
    """The model's own maps: ``attn_implementation="qkv"`` with ``output_attentions=True``."""
    before = model.config._attn_implementation
    qkv.interop.register_hf()
    model.set_attn_implementation("qkv")
    try:
        with torch.no_grad():
            return model(**inputs, output_attentions=True)
    finally:
        model.set_attn_implementation(before)


def _hf_captured(model, inputs, **kwargs):
    with torch.no_grad(), capture(model, **kwargs) as maps:
        out = model(**inputs)
    return out, maps


def test_hf_model_is_walked_and_switched_once(monkeypatch):
    from qkv.interop import hf_attention

    model, inputs = _hf_bert(), _hf_inputs()
    switches = []
    real = model.set_attn_implementation
    monkeypatch.setattr(model, "set_attn_implementation", lambda impl: switches.append(impl) or real(impl))
    walks = hf_attention._WALKS.walks
    out, maps = _hf_captured(model, inputs)
    again, maps_again = _hf_captured(model, inputs)
    assert hf_attention._WALKS.walks == walks + 1  # the second entry read the walk
    assert switches == ["qkv"]  # the second switch replayed the first one's settings
    assert model.config._attn_implementation == "sdpa"
    ref = _output_attentions(model, inputs)
    assert torch.equal(out.last_hidden_state, ref.last_hidden_state)
    assert torch.equal(again.last_hidden_state, ref.last_hidden_state)
    for a, b, want in zip(maps.layers(), maps_again.layers(), ref.attentions, strict=True):
        assert torch.equal(a, want) and torch.equal(b, want)
    hf_attention._WALKS.clear()  # without the cache: the same maps, bitwise
    fresh_out, fresh = _hf_captured(model, inputs)
    assert torch.equal(fresh_out.last_hidden_state, out.last_hidden_state)
    for a, b in zip(fresh.layers(), maps.layers(), strict=True):
        assert torch.equal(a, b)


def test_hf_model_switched_by_its_user_between_captures_is_switched_again(monkeypatch):
    """A config's implementation is a setting, not the tree: read on each entry, and restored to
    what it was then."""
    model, inputs = _hf_bert(), _hf_inputs()
    _hf_captured(model, inputs)
    model.set_attn_implementation("eager")
    switches = []
    real = model.set_attn_implementation
    monkeypatch.setattr(model, "set_attn_implementation", lambda impl: switches.append(impl) or real(impl))
    out, maps = _hf_captured(model, inputs)
    assert switches == ["qkv"] and model.config._attn_implementation == "eager"
    ref = _output_attentions(model, inputs)
    assert torch.equal(out.last_hidden_state, ref.last_hidden_state)
    for a, want in zip(maps.layers(), ref.attentions, strict=True):
        assert torch.equal(a, want)


@pytest.mark.parametrize("change", ["replace", "add"])
def test_hf_model_changed_between_captures_is_walked_again_and_captured_right(change):
    from qkv.interop import hf_attention

    model, inputs = _hf_bert(), _hf_inputs()
    _hf_captured(model, inputs)
    walks = hf_attention._WALKS.walks
    torch.manual_seed(3)
    layer = type(model.encoder.layer[1])(model.config).eval()  # a new layer on the model's config
    if change == "replace":
        model.encoder.layer[1] = layer
    else:
        model.encoder.layer.append(layer)
    out, maps = _hf_captured(model, inputs)
    assert hf_attention._WALKS.walks == walks + 1
    ref = _output_attentions(model, inputs)
    names = [f"encoder.layer.{i}.attention.self" for i in range(len(model.encoder.layer))]
    assert list(maps) == names
    assert torch.equal(out.last_hidden_state, ref.last_hidden_state)
    for a, want in zip(maps.layers(), ref.attentions, strict=True):
        assert torch.equal(a, want)
    old = maps.layers()[1]
    _, one = _hf_captured(model, inputs, layers=1, heads=[2])  # the new layer, its head 2 alone
    assert torch.equal(one.layers()[0], old[:, [2]])


def test_hf_layer_copied_with_its_own_config_is_switched_and_restored():
    """A layer made with ``copy.deepcopy`` reads its own copy of the config, which
    ``set_attn_implementation`` never reaches: capture switches it too, records its map, and
    restores its setting on exit."""
    model, inputs = _hf_bert(), _hf_inputs()
    model.encoder.layer[1] = copy.deepcopy(model.encoder.layer[0])
    own = model.encoder.layer[1].attention.self.config
    assert own is not model.config
    out, maps = _hf_captured(model, inputs)
    assert own._attn_implementation == "sdpa" and model.config._attn_implementation == "sdpa"
    assert len(maps.layers()) == 2
    for m in model.modules():  # the reference: every config, the copied one included, on eager
        if getattr(m, "config", None) is not None:
            m.config._attn_implementation = "eager"
    with torch.no_grad():
        ref = model(**inputs, output_attentions=True)
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, rtol=1e-5, atol=1e-6)
    for a, want in zip(maps.layers(), ref.attentions, strict=True):
        torch.testing.assert_close(a, want, rtol=1e-5, atol=1e-6)
