"""Image explanations (qkv.interpret.explain_image): the grid, each method against a hand
computation, exact weights under fused kernels, Hugging Face and timm-shaped models."""

from __future__ import annotations

import pytest
import torch

from image_toys import TimmLike, ToyViT, timm_forward, toy_forward
from qkv.interpret import IMAGE_METHODS, PatchGrid, explain_image

from helpers import assert_error_ratio

# ----------------------------------------------------------------------------- hand computations


def hand_rollout(weights):
    """Abnar & Zuidema with loops: per layer mean over heads, 0.5 A + 0.5 I, rows renormalised,
    multiplied bottom-up. ``weights``: list of (H, T, T) for one image."""
    t = weights[0].shape[-1]
    out = [[float(i == j) for j in range(t)] for i in range(t)]
    for a in weights:
        m = [[0.5 * float(a[:, i, j].mean()) + 0.5 * (i == j) for j in range(t)] for i in range(t)]
        m = [[m[i][j] / sum(m[i]) for j in range(t)] for i in range(t)]
        out = [[sum(m[i][k] * out[k][j] for k in range(t)) for j in range(t)] for i in range(t)]
    return torch.tensor(out, dtype=torch.float64)


def hand_relevance(weights, grads):
    """Chefer et al. with loops: R = I; R <- R + mean_h(relu(g * A)) R. Lists of (H, T, T)."""
    t = weights[0].shape[-1]
    r = [[float(i == j) for j in range(t)] for i in range(t)]
    for a, g in zip(weights, grads):
        h = a.shape[0]
        abar = [
            [sum(max(float(g[x, i, j] * a[x, i, j]), 0.0) for x in range(h)) / h for j in range(t)]
            for i in range(t)
        ]
        r = [[r[i][j] + sum(abar[i][k] * r[k][j] for k in range(t)) for j in range(t)] for i in range(t)]
    return torch.tensor(r, dtype=torch.float64)


def hand_gradcam(tokens, grads, prefix):
    """Grad-CAM with loops on one image's (T, C) tokens and gradients: (h*w,)."""
    t, c = tokens.shape
    patches = range(prefix, t)
    alpha = [sum(float(grads[j, ch]) for j in patches) / len(patches) for ch in range(c)]
    return torch.tensor(
        [max(sum(alpha[ch] * float(tokens[j, ch]) for ch in range(c)), 0.0) for j in patches],
        dtype=torch.float64,
    )


@pytest.fixture
def toy():
    torch.manual_seed(0)
    return ToyViT().double().eval(), torch.randn(2, 3, 6, 6, dtype=torch.float64)  # grid 3x2 of 2x3 patches


# ----------------------------------------------------------------------------- the grid


def test_grid_maps_each_patch_to_its_pixels_row_by_row():
    grid = PatchGrid(h=3, w=2, patch=(2, 3), prefix=2, query=0)
    tokens = torch.tensor([-1.0, -1.0, *range(6)])  # prefix, then patch k = (k // w, k % w)
    pixels = grid.to_pixels(grid.patches(tokens))
    assert pixels.shape == (6, 6)
    want = torch.tensor([[(y // 2) * 2 + x // 3 for x in range(6)] for y in range(6)], dtype=pixels.dtype)
    assert torch.equal(pixels, want)
    assert torch.equal(grid.pool(pixels), 6 * grid.patches(tokens))  # 6 pixels per patch


def test_hand_made_attention_lands_on_the_bright_patch_pixels():
    # One head whose class token attends by brightness: q(cls) = (s, 0), k(patch) = (brightness, 0).
    model = ToyViT(channels=1, dim=2, heads=1, layers=1, patch=(2, 3), grid=(3, 2)).double().eval()
    with torch.no_grad():
        model.embed.weight.fill_(1.0), model.embed.bias.zero_()  # each patch's brightness on both dims
        model.embed.weight[1].zero_()  # dim 1 of a patch: 0
        model.cls.copy_(torch.tensor([[[0.0, 1.0]]], dtype=torch.float64))
        attn = model.attns[0]
        for lin in (attn.q_proj, attn.k_proj):
            lin.weight.zero_(), lin.bias.zero_()
        attn.q_proj.weight[0, 1] = 4.0
        attn.k_proj.weight[0, 0] = 1.0
    images = torch.zeros(1, 1, 6, 6, dtype=torch.float64)
    images[0, 0, 4:6, 3:6] = 1.0  # patch (2, 1): rows 4-5, columns 3-5
    exp = explain_image(model, images, method="attention")
    brightness = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 6.0], dtype=torch.float64)  # patch sums, row by row
    scores = torch.cat([torch.zeros(1, dtype=torch.float64), 4.0 * brightness / 2**0.5])  # cls.k = 0
    want = scores.softmax(0)[1:].reshape(3, 2)
    torch.testing.assert_close(exp.heads[0, 0, 0], want, rtol=1e-12, atol=1e-12)
    assert exp.pixels[0, 4:6, 3:6].min() > 0.9 and exp.pixels[0].argmax() == 4 * 6 + 3
    assert float(exp.pixels[0].sum() - exp.pixels[0, 4:6, 3:6].sum()) == pytest.approx(
        6 * float(want.sum() - want[2, 1])
    )


def test_generic_model_grid_from_its_conv_and_tokens(toy):
    model, images = toy

    class Plain(torch.nn.Module):  # no declared grid: the Conv2d patch embedding and the tokens
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    exp = explain_image(Plain(model), images, method="rollout")
    assert exp.grid == PatchGrid(h=3, w=2, patch=(2, 3), prefix=1, query=0)
    torch.testing.assert_close(exp.patches, explain_image(model, images, method="rollout").patches)


# ----------------------------------------------------------------------------- each method by hand


def test_rollout_equals_hand_computation(toy):
    model, images = toy
    _, weights, _ = toy_forward(model, images)
    exp = explain_image(model, images, method="rollout")
    for b in range(2):
        want = hand_rollout([w[b].detach() for w in weights])[0, 1:].reshape(3, 2)
        torch.testing.assert_close(exp.patches[b], want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(exp.pixels[b], want.repeat_interleave(2, 0).repeat_interleave(3, 1))


def test_grad_relevance_equals_hand_computation(toy):
    model, images = toy
    logits, weights, _ = toy_forward(model, images)
    grads = torch.autograd.grad(logits[:, 3].sum(), weights)
    exp = explain_image(model, images, method="grad", target=3)
    assert exp.target.tolist() == [3, 3]
    for b in range(2):
        want = hand_relevance([w[b].detach() for w in weights], [g[b] for g in grads])[0, 1:].reshape(3, 2)
        torch.testing.assert_close(exp.patches[b], want, rtol=1e-10, atol=1e-12)
    assert exp.patches.abs().sum() > 0


def test_gradcam_equals_hand_computation_in_float64(toy):
    model, images = toy
    logits, _, reads = toy_forward(model, images)
    target = logits.argmax(-1)
    (g,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), reads[-1])
    exp = explain_image(model, images, method="gradcam")
    assert torch.equal(exp.target, target)
    for b in range(2):
        want = hand_gradcam(reads[-1][b].detach(), g[b], prefix=1).reshape(3, 2)
        torch.testing.assert_close(exp.patches[b], want, rtol=1e-10, atol=1e-12)


def test_gradcam_finds_the_one_patch_the_decision_depends_on():
    torch.manual_seed(1)
    model = ToyViT(channels=2, dim=2, heads=1, layers=1, patch=(2, 2), grid=(3, 4), classes=2).double().eval()
    with torch.no_grad():
        model.embed.weight.zero_(), model.embed.bias.zero_()
        model.embed.weight[0, 0].fill_(0.25), model.embed.weight[1, 1].fill_(0.25)  # mean red, mean green
        model.attns[0].out_proj.weight.zero_(), model.attns[0].out_proj.bias.zero_()

    decisive = 1 + 6  # token of patch (1, 2)

    class OnePatch(torch.nn.Module):  # logits: +- the red of patch (1, 2) after the block
        def __init__(self):
            super().__init__()
            self.vit = model
            self.patch_size, self.grid, self.num_prefix_tokens = model.patch_size, model.grid, 1

        def forward(self, x):
            tok = self.vit.embed(x).flatten(2).transpose(1, 2)
            tok = torch.cat([self.vit.cls.expand(x.shape[0], -1, -1), tok], dim=1)
            tok = tok + self.vit.attns[0](tok).out
            return torch.stack([tok[:, decisive, 0], -tok[:, decisive, 0]], dim=1)

    images = 0.3 * torch.rand(3, 2, 6, 8, dtype=torch.float64)
    images[:, 0, 2:4, 4:6] += 1.0  # patch (1, 2): red
    images[:, 1, 0:2, 0:2] += 5.0  # a distractor, much brighter, in green
    exp = explain_image(OnePatch(), images, method="gradcam", target=0)
    assert [divmod(int(i), 4) for i in exp.patches.flatten(1).argmax(1)] == [(1, 2)] * 3
    ig = explain_image(OnePatch(), images, method="ig", target=0)
    assert [divmod(int(i), 4) for i in ig.patches.flatten(1).argmax(1)] == [(1, 2)] * 3
    assert ig.pixels[:, 2:4, 4:6].sum() == pytest.approx(float(ig.pixels.sum()), rel=1e-6)  # only its pixels


def test_ig_is_complete_and_sums_pixels_into_patches(toy):
    model, images = toy
    exp = explain_image(model, images, method="ig", target=1, steps=64)
    logits = model(images)
    gap = logits[:, 1] - model(torch.zeros_like(images))[:, 1]
    torch.testing.assert_close(exp.pixels.sum(dim=(1, 2)), gap.detach(), rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(
        exp.patches, exp.pixels.unflatten(2, (2, 3)).unflatten(1, (3, 2)).sum(dim=(2, 4))
    )


# ----------------------------------------------------------------------------- exact under fused kernels


@pytest.mark.parametrize("backend", ["sdpa", "reference"])
def test_captured_weights_under_fused_sdpa_equal_the_reference(request, backend):
    torch.manual_seed(2)
    model = ToyViT(backend=backend).eval()
    images = torch.randn(2, 3, 6, 6)
    _, golden, _ = toy_forward(model, images)
    eager_model = ToyViT(backend="reference").eval()
    eager_model.load_state_dict(model.state_dict())
    eager = explain_image(eager_model, images, method="attention").heads
    impl = explain_image(model, images, method="attention").heads
    golden = torch.stack([w.detach() for w in golden], dim=1)[..., 0, 1:].unflatten(
        -1, (3, 2)
    )  # (N, L, H, h, w)
    assert_error_ratio(request, impl, golden, eager, what="weights")
    grads = explain_image(model, images, method="grad").patches
    assert_error_ratio(
        request,
        grads,
        explain_image(model.double(), images.double(), method="grad").patches,
        explain_image(eager_model, images, method="grad").patches,
        what="grad",
    )


# ----------------------------------------------------------------------------- timm-shaped models


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_timm_shaped_model_fused_attention_registers_and_pooling(pool):
    torch.manual_seed(3)
    model = TimmLike(pool=pool).double().eval()
    images = torch.randn(2, 3, 8, 6, dtype=torch.float64)  # grid 2x3 of 4x2 patches, 2 registers
    logits, weights = timm_forward(model, images)
    exp = explain_image(model, images, method="attention")
    assert exp.grid == PatchGrid(h=2, w=3, patch=(4, 2), prefix=3, query=None if pool == "avg" else 0)
    stacked = torch.stack([w.detach() for w in weights], dim=1)  # (N, L, H, T, T)
    rows = stacked[..., 3:, 3:].mean(-2) if pool == "avg" else stacked[..., 0, 3:]
    torch.testing.assert_close(exp.heads, rows.unflatten(-1, (2, 3)), rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(logits[:, 2].sum(), weights)
    rel = explain_image(model, images, method="grad", target=2)
    for b in range(2):
        r = hand_relevance([w[b].detach() for w in weights], [g[b] for g in grads])
        want = r[3:, 3:].mean(0) if pool == "avg" else r[0, 3:]
        torch.testing.assert_close(rel.patches[b], want.reshape(2, 3), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(model(images), logits)  # the hooks are gone, outputs as before


def test_real_timm_vision_transformer():
    timm = pytest.importorskip("timm")
    torch.manual_seed(4)
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, num_classes=5, reg_tokens=2
    ).eval()
    images = torch.randn(2, 3, 16, 16)
    exp = explain_image(model, images, method="attention")
    assert exp.grid == PatchGrid(h=4, w=4, patch=(4, 4), prefix=3, query=0)
    reference = []  # timm's written-out path hands its softmax to attn_drop: the reference weights
    for blk in model.blocks:
        blk.attn.fused_attn = False
        blk.attn.attn_drop.register_forward_hook(lambda mod, args, out: reference.append(out.detach()))
    logits = model(images)
    want = torch.stack(reference, dim=1)[..., 0, 3:].unflatten(-1, (4, 4))  # (N, L, H, h, w)
    torch.testing.assert_close(exp.heads, want, rtol=1e-5, atol=1e-6)
    assert torch.equal(explain_image(model, images, method="gradcam").target, logits.argmax(-1))
    for method in IMAGE_METHODS:
        assert explain_image(model, images, method=method).pixels.shape == (2, 16, 16)


# ----------------------------------------------------------------------------- Hugging Face ViTs


def _hf(cls_name, implementation):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        image_size=12,
        patch_size=4,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
        attn_implementation=implementation,
    )
    torch.manual_seed(5)
    return getattr(transformers, cls_name)(config).eval()


def test_hf_vit_maps_equal_output_attentions_eager():
    model = _hf("ViTForImageClassification", "sdpa")
    eager = _hf("ViTForImageClassification", "eager")
    eager.load_state_dict(model.state_dict())
    images = torch.randn(2, 3, 12, 12)
    out = eager(images, output_attentions=True)
    weights = list(out.attentions)  # each (N, H, T, T), in the graph
    exp = explain_image(model, images, method="attention")
    assert model.config._attn_implementation == "sdpa"  # switched back after capture
    assert exp.grid == PatchGrid(h=3, w=3, patch=(4, 4), prefix=1, query=0)
    want = torch.stack([w.detach() for w in weights], dim=1)[..., 0, 1:].unflatten(-1, (3, 3))
    torch.testing.assert_close(exp.heads, want, rtol=1e-5, atol=1e-6)
    target = out.logits.argmax(-1)
    grads = torch.autograd.grad(out.logits.gather(1, target[:, None]).sum(), weights)
    rel = explain_image(model, images, method="grad")
    assert torch.equal(rel.target, target)
    for b in range(2):
        r = hand_relevance([w[b].detach().double() for w in weights], [g[b].double() for g in grads])
        torch.testing.assert_close(rel.patches[b].double(), r[0, 1:].reshape(3, 3), rtol=1e-4, atol=1e-6)
    for method in IMAGE_METHODS:
        exp = explain_image(model, images, method=method)
        assert exp.pixels.shape == (2, 12, 12) and exp.patches.shape == (2, 3, 3)
        assert torch.isfinite(exp.pixels).all() and exp.pixels.abs().sum() > 0


def test_hf_vit_model_without_logits_takes_a_score_function():
    model = _hf("ViTModel", "sdpa")
    images = torch.randn(1, 3, 12, 12)
    assert explain_image(model, images, method="rollout").patches.shape == (1, 3, 3)
    with pytest.raises(ValueError, match=r"no \(N, classes\) logits.*target="):
        explain_image(model, images, method="grad")
    exp = explain_image(model, images, method="gradcam", target=lambda out: out.pooler_output.sum(-1))
    assert exp.target is None and exp.patches.shape == (1, 3, 3) and exp.patches.sum() > 0


def test_pytorch_grad_cam_parity_with_the_right_reshape_transform():
    pytest.importorskip("pytorch_grad_cam")
    import numpy as np
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = _hf("ViTForImageClassification", "eager")
    images = torch.randn(2, 3, 12, 12)

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, x):
            return self.m(x).logits

    def reshape_transform(tokens):  # drop [CLS], (N, 9, C) -> (N, C, 3, 3)
        return tokens[:, 1:].reshape(tokens.shape[0], 3, 3, -1).permute(0, 3, 1, 2)

    layer = model.vit.encoder.layer[-1].layernorm_before  # what the last attention reads
    cam = GradCAM(model=Logits(), target_layers=[layer], reshape_transform=reshape_transform)
    theirs = cam(input_tensor=images, targets=[ClassifierOutputTarget(1)] * 2)  # (N, 12, 12), scaled
    ours = explain_image(model, images, method="gradcam", target=1).patches.numpy()
    np.testing.assert_allclose(theirs, scale_cam_image(ours, (12, 12)), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- bad input


def test_clear_errors(toy):
    model, images = toy
    with pytest.raises(
        ValueError, match="method: expected one of attention, rollout, grad, gradcam, ig, got 'lime'"
    ):
        explain_image(model, images, method="lime")
    with pytest.raises(ValueError, match=r"images: size 6x7 is not divisible by the patch size 2x3"):
        explain_image(model, torch.randn(1, 3, 6, 7, dtype=torch.float64))
    with pytest.raises(
        ValueError, match=r"gives a 4x2 patch grid; the model's grid is 3x2 \(images of 6x6\)"
    ):
        explain_image(model, torch.randn(1, 3, 8, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"images: expected a float tensor \(N, C, H, W\)"):
        explain_image(model, torch.zeros(1, 3, 6, 6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"images: ToyViT takes 3-channel images, got 1 channels"):
        explain_image(model, torch.randn(1, 1, 6, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"target: expected classes in \[0, 4\), got \[7, 7\]"):
        explain_image(model, images, method="grad", target=7)
    with pytest.raises(ValueError, match="cannot find the patch grid of Linear"):
        explain_image(torch.nn.Linear(6, 2), images)


# ----------------------------------------------------------------------------- qkv's ViT


@pytest.mark.parametrize("stem", ["patch", "conv"])
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_qkv_vit_maps_equal_its_own_weights(pool, stem):
    # with the convolutional stem the grid the explainers see is the stem's output grid
    from qkv.models.vit import ViT, ViTConfig

    torch.manual_seed(6)
    cfg = ViTConfig(image_size=8, patch_size=2, dim=16, depth=2, heads=2, mlp_dim=32, pool=pool, stem=stem)
    model = ViT(cfg).eval()
    images = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        _, maps = model(images, need_weights=True)
    weights = torch.stack(maps.encoder, dim=1)  # (N, L, H, T, T)
    prefix = 1 if pool == "cls" else 0
    exp = explain_image(model, images, method="attention")
    assert exp.grid == PatchGrid(h=4, w=4, patch=(2, 2), prefix=prefix, query=0 if prefix else None)
    rows = weights[..., 0, 1:] if prefix else weights.mean(dim=-2)
    torch.testing.assert_close(exp.heads, rows.unflatten(-1, (4, 4)), rtol=1e-5, atol=1e-6)
    rolled = explain_image(model, images, method="rollout").patches
    for b in range(2):
        r = hand_rollout([w[b].double() for w in maps.encoder])
        want = r[0, 1:] if prefix else r.mean(0)
        torch.testing.assert_close(rolled[b].double(), want.reshape(4, 4), rtol=1e-5, atol=1e-6)
    for method in IMAGE_METHODS:
        exp = explain_image(model, images, method=method)
        assert exp.pixels.shape == (2, 8, 8) and torch.isfinite(exp.pixels).all()
        assert exp.patches.shape == (2, 4, 4) and exp.grid.patch == (2, 2)
