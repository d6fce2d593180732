"""qkv.interpret.match_relevance: relevance through both towers of a CLIP-style matcher.

A hand-built toy whose similarity depends on one patch and one word (every other token's value
vector is exactly zero) has relevance on those two alone; each tower's map equals
grad_rollout's on that tower alone with the pair's similarity as target (error-ratio rule
against float64); pairs never mix; bad input names the argument.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from qkv.interpret import grad_rollout, match_relevance
from qkv.models.clip import CLIP, CLIPConfig

from helpers import GRAD_FACTOR, assert_error_ratio


def tiny_clip(seed: int = 0, **overrides) -> CLIP:
    torch.manual_seed(seed)
    sizes = dict(vocab_size=12, image_size=8, image_width=16, max_words=5, embed_dim=8, patch_size=4,
                 vision_dim=16, vision_depth=2, vision_heads=2, vision_mlp_dim=16,
                 text_dim=16, text_depth=2, text_heads=2, text_mlp_dim=16)  # fmt: skip
    return CLIP(CLIPConfig(**{**sizes, **overrides})).eval()


def one_patch_one_word_toy() -> tuple[CLIP, torch.Tensor, torch.Tensor]:
    """One layer, one head per tower. Layer-norm shifts, value biases, positions and the patch
    embedding's bias are zero; the image is blank (pixel_mean, normalised to 0) but for patch
    (1, 2), the caption's words have zero embeddings but for word 2. So every other token's value
    vector is exactly 0, and ``ds/dA[cls, j] = 0`` there: the similarity depends on patch (1, 2)
    and word 2 alone. (Seed 9: both raise it; relu keeps positive evidence only.)"""
    m = tiny_clip(9, vocab_size=8, max_words=4, embed_dim=8, vision_dim=8, vision_depth=1, vision_heads=1,
                  vision_mlp_dim=8, text_dim=8, text_depth=1, text_heads=1, text_mlp_dim=8)  # fmt: skip
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.LayerNorm):
                mod.bias.zero_()
        for p in m.visual.patch_embed.parameters():
            if p.dim() == 1:
                p.zero_()
        m.visual.pos_embed.zero_()
        m.text.pos_embed.zero_()
        m.visual.cls_token.normal_()
        m.text.cls_token.normal_()
        for block in [*m.visual.blocks, *m.text.blocks]:
            block.attn.v_proj.bias.zero_()
        m.text.embed.weight[:5].zero_()  # ids 0..4 carry nothing; id 5 is the word that counts
    image = torch.full((1, 1, 8, 16), 0.5)
    image[0, 0, 4:8, 8:12] = torch.rand(4, 4, generator=torch.Generator().manual_seed(0))
    return m, image, torch.tensor([[1, 2, 5, 3]])


def test_the_toy_relevance_is_on_its_one_patch_and_its_one_word():
    model, image, tokens = one_patch_one_word_toy()
    patches, words = match_relevance(model, image, tokens)
    assert patches.shape == (1, 2, 4) and words.shape == (1, 4)
    assert float(patches[0, 1, 2]) > 1e-3 and float(words[0, 2]) > 1e-3
    patches[0, 1, 2], words[0, 2] = 0.0, 0.0
    assert torch.count_nonzero(patches) == 0 and torch.count_nonzero(words) == 0  # exactly 0 elsewhere
    with torch.no_grad():
        model.text_proj.weight.neg_()  # t -> -t (no bias): the same patch and word now lower s
    patches, words = match_relevance(model, image, tokens)
    assert torch.count_nonzero(patches) == 0 and torch.count_nonzero(words) == 0


def _tower_relevance(model: CLIP, images, tokens) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pair, each tower by grad_rollout with the other tower's embedding held fixed."""
    patches, words = [], []
    for b in range(len(images)):
        with torch.no_grad():
            v, t = model.encode_image(images[b : b + 1])[0], model.encode_text(tokens[b : b + 1])[0]
        r = grad_rollout(
            model.visual, images[b : b + 1], lambda e, t=t: (nn.functional.normalize(e, dim=-1) @ t).sum()
        )
        patches.append(r[0, 0, 1:].reshape(2, 4))
        r = grad_rollout(model.text, (tokens[b : b + 1], None),
                         lambda e, v=v: (nn.functional.normalize(model.text_proj(e), dim=-1) @ v).sum())  # fmt: skip
        words.append(r[0, 0, 1:])
    return torch.stack(patches), torch.stack(words)


def test_each_tower_is_grad_rollout_with_the_similarity_as_target(request):
    model = tiny_clip(1)
    images = torch.rand(3, 1, 8, 16, generator=torch.Generator().manual_seed(1))
    tokens = torch.tensor([[3, 4, 0, 0], [5, 6, 7, 11], [2, 0, 0, 0]])
    patches, words = match_relevance(model, images, tokens)
    eager = _tower_relevance(model, images, tokens)
    golden = _tower_relevance(copy.deepcopy(model).double(), images.double(), tokens)
    assert float(golden[0].abs().max()) > 1e-3 and float(golden[1].abs().max()) > 1e-3  # not all zero
    assert_error_ratio(request, patches, golden[0], eager[0], factor=GRAD_FACTOR, what="patches")
    assert_error_ratio(request, words, golden[1], eager[1], factor=GRAD_FACTOR, what="words")
    assert torch.equal(words[0, 2:], torch.zeros(2)) and float(words[2, 1:].abs().max()) == 0.0  # padding


def test_pairs_never_mix_and_the_model_is_left_as_it_was():
    model = tiny_clip(2).train()
    model.text.embed.weight.requires_grad_(False)
    images = torch.rand(4, 1, 8, 16, generator=torch.Generator().manual_seed(2))
    tokens = torch.tensor([[3, 4, 0], [5, 6, 7], [2, 0, 0], [9, 9, 10]])
    patches, words = match_relevance(model, images, tokens)
    for b in range(4):
        alone = match_relevance(model, images[b : b + 1], tokens[b : b + 1])
        torch.testing.assert_close(alone.patches[0], patches[b], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(alone.words[0], words[b], rtol=1e-5, atol=1e-7)
    assert model.training and not model.text.embed.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    ("images", "tokens", "error", "message"),
    [
        (
            torch.rand(2, 1, 8, 16),
            torch.tensor([[3, 4]]),
            ValueError,
            r"tokens: expected 2 captions, one per image",
        ),
        (
            torch.rand(1, 8, 16),
            torch.tensor([[3]]),
            ValueError,
            r"images: expected a float tensor \(B, C, H, W\)",
        ),
        (torch.rand(1, 1, 8, 16), torch.tensor([3, 4]), ValueError, r"tokens: expected word ids \(B, T\)"),
    ],
)
def test_bad_input_names_the_argument(images, tokens, error, message):
    with pytest.raises(error, match=message):
        match_relevance(tiny_clip(), images, tokens)


def test_a_model_that_is_not_a_dual_encoder_is_refused():
    with pytest.raises(TypeError, match=r"model: expected a dual encoder .* got Linear without visual"):
        match_relevance(nn.Linear(2, 2), torch.rand(1, 1, 8, 16), torch.tensor([[3]]))
