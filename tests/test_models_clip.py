"""qkv.models.clip: InfoNCE by hand and its symmetry, the temperature clamp, shapes and maps,
bad input, and a tiny model that learns to match 2-digit strips."""

from __future__ import annotations

import math

import pytest
import torch

from qkv.models.builders import CLIP_PRESETS, build_matching_model, matching_config_keys
from qkv.models.clip import CLIP, CLIPConfig, info_nce, info_nce_logits


def _tiny(**kw) -> CLIP:
    fields = {"vocab_size": 14, "image_size": 8, "image_width": 16, "max_words": 4, "embed_dim": 32,
              "vision_dim": 32, "vision_depth": 1, "vision_heads": 2, "vision_mlp_dim": 64,
              "text_dim": 32, "text_depth": 1, "text_heads": 2, "text_mlp_dim": 64} | kw  # fmt: skip
    return CLIP(CLIPConfig(**fields))


def test_info_nce_matches_a_hand_computation():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # logits = 2 * img @ txt^T = [[2, 1.2], [0, 1.6]]
    rows = -math.log(math.exp(2) / (math.exp(2) + math.exp(1.2))) - math.log(
        math.exp(1.6) / (1 + math.exp(1.6))
    )
    cols = -math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(
        math.exp(1.6) / (math.exp(1.2) + math.exp(1.6))
    )
    expected = (rows / 2 + cols / 2) / 2
    assert float(info_nce(img, txt, 2.0)) == pytest.approx(expected, rel=1e-6)
    # symmetric: swapping the towers gives the same loss
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(6, 5, generator=g), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(6, 5, generator=g), dim=-1)
    assert float(info_nce(a, b, 10.0)) == pytest.approx(float(info_nce(b, a, 10.0)), rel=1e-6)
    # with the identity as positives it is the plain loss; duplicates spread the target evenly
    eye = torch.eye(6, dtype=torch.bool)
    assert float(info_nce(a, b, 10.0, eye)) == pytest.approx(float(info_nce(a, b, 10.0)), rel=1e-6)
    logits = torch.zeros(
        2, 2
    )  # two copies of one pair: both positives, uniform logits: loss 0 - log(1/2)*...
    both = torch.ones(2, 2, dtype=torch.bool)
    assert float(info_nce_logits(logits, both)) == pytest.approx(math.log(2), rel=1e-6)


def test_info_nce_bad_input():
    with pytest.raises(ValueError, match=r"text_emb: expected 3 rows, one per image, got 2"):
        info_nce(torch.randn(3, 4), torch.randn(2, 4), 1.0)
    with pytest.raises(ValueError, match=r"positives: expected a \(2, 2\) bool matrix with a True diagonal"):
        info_nce_logits(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.bool))


def test_temperature_starts_at_one_over_0_07_and_is_clamped_at_100():
    model = _tiny()
    assert float(model.scale().detach()) == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)  # exp(10) ~ 22026
    assert float(model.scale().detach()) == pytest.approx(100.0, rel=1e-6)
    x, t = torch.rand(3, 1, 8, 16), torch.randint(2, 14, (3, 2))
    model.loss(x, t).backward()
    assert float(model.logit_scale.grad) == 0.0  # past the clamp the scale gets no gradient
    with torch.no_grad():
        model.logit_scale.fill_(math.log(50.0))
    assert float(model.scale().detach()) == pytest.approx(50.0, rel=1e-6)
    with pytest.raises(
        ValueError, match=r"init_temperature: expected at least 1/max_logit_scale=0.01, got 0.001"
    ):
        _tiny(init_temperature=0.001)


def test_embeddings_are_unit_length_and_maps_cover_both_towers():
    model = _tiny().eval()
    x = torch.rand(3, 1, 8, 16)
    t = torch.tensor([[2, 3, 0, 0], [4, 0, 0, 0], [5, 6, 7, 8]])
    v, t_emb = model.encode_image(x), model.encode_text(t)
    assert torch.allclose(v.norm(dim=-1), torch.ones(3)) and torch.allclose(t_emb.norm(dim=-1), torch.ones(3))
    logits, maps = model(x, t, need_weights=True)
    assert torch.allclose(logits, model.scale() * v @ t_emb.T, atol=1e-5)
    assert maps.image.encoder[0].shape == (3, 2, 1 + 2 * 4, 1 + 2 * 4)  # class token + a 2 x 4 patch grid
    assert maps.text.encoder[0].shape == (3, 2, 5, 5)  # class token + 4 words
    w = maps.text.encoder[0]
    assert torch.allclose(w.sum(-1), torch.ones(3, 2, 5), atol=1e-5)
    assert float(w[1, :, :, 2:].abs().max()) == 0.0  # padding is never attended
    # padding does not change a caption's embedding
    assert torch.allclose(model.encode_text(t[1:2, :1]), t_emb[1:2], atol=1e-5)


def test_bad_images_and_captions_name_what_was_expected():
    model = _tiny()
    with pytest.raises(ValueError, match=r"images: expected 1 channel\(s\) \(B, C, H, W\), got 3"):
        model.encode_image(torch.rand(2, 3, 8, 16))
    with pytest.raises(ValueError, match=r"images: expected 8x16 pixels \(B, C, H, W\), got 8x8"):
        model.encode_image(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"tokens: expected every caption to hold a word"):
        model.encode_text(torch.tensor([[2, 3], [0, 0]]))
    with pytest.raises(ValueError, match=r"tokens: expected 1 to max_words=4 words, got 5"):
        model.encode_text(torch.ones(1, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"tokens: expected ids in \[0, 14\), got 1..99"):
        model.encode_text(torch.tensor([[1, 99]]))


def test_builder_keys_and_preset():
    assert "image_width" not in matching_config_keys("clip") and "patch_size" in matching_config_keys("clip")
    model = build_matching_model(CLIP_PRESETS["clip-strips"], vocab_size=20, image_size=8, image_width=32,
                                 channels=1, max_words=12, pad_id=0)  # fmt: skip
    assert model.visual.grid == (2, 8)
    with pytest.raises(ValueError, match=r"model: unknown key\(s\) vocab_size for kind 'clip'"):
        build_matching_model({"vocab_size": 3}, vocab_size=20, image_size=8, image_width=32, channels=1)


def test_a_tiny_model_learns_to_match_digits_to_their_names():
    """One handwritten digit against the ten digit names: image->text R@1 goes from chance
    (0.1) to at least 0.8 on the training images in 60 steps (0.93 measured)."""
    pytest.importorskip("sklearn")
    from qkv.crossmodal.data import digit_strips

    torch.manual_seed(0)
    strips = digit_strips(1500, seed=0, lang="digits", split="train")
    keep = [i for i, c in enumerate(strips.captions) if len(c.split()) == 1][:256]
    images = strips.images[keep][..., :8]  # the first slot
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    tokens = torch.tensor([[names.index(strips.captions[i]) + 2] for i in keep])
    model = _tiny(dropout=0.0, image_width=8, max_words=2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        b = torch.randperm(len(keep), generator=g)[:64]
        loss = model.loss(images[b], tokens[b], tokens[b] == tokens[b].T)  # same name = a match
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        sim = model.encode_image(images) @ model.encode_text(torch.arange(2, 12)[:, None]).T
    assert float((sim.argmax(1) == tokens[:, 0] - 2).float().mean()) >= 0.8


def test_info_nce_rows_over_shares_weighted_by_size_is_info_nce():
    """open_clip's local loss: each share's rows against every pair; the size-weighted mean of
    the shares (5 and 4 of 9 pairs, repeated captions) is the batch's InfoNCE (float64)."""
    from qkv.models.clip import info_nce, info_nce_rows

    g = torch.Generator().manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(9, 6, generator=g, dtype=torch.float64), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(9, 6, generator=g, dtype=torch.float64), dim=-1)
    ids = torch.tensor([0, 1, 2, 1, 3, 4, 0, 5, 6])
    positives = ids[:, None] == ids[None, :]
    whole = info_nce(v, t, 7.5, positives)
    parts = [(s, info_nce_rows(v[s], t[s], v, t, 7.5, positives[s])) for s in (slice(0, 5), slice(5, 9))]
    weighted = sum(loss * (s.stop - s.start) for s, loss in parts) / 9
    assert abs(float(weighted - whole)) <= 1e-12
    assert abs(float(info_nce_rows(v, t, v, t, 7.5, positives) - whole)) <= 1e-12
