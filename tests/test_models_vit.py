"""The Vision Transformer: shapes, row-major patch order, exact attention maps, bad input, learning;
the convolutional stem against a hand-written float64 reference."""

import pytest
import torch

from qkv.models.builders import build_image_model
from qkv.models.vit import ConvStem, ViT, ViTConfig, sincos2d_table
from qkv.vision.config import VIT_PRESETS


def make(**kw) -> ViT:
    torch.manual_seed(0)
    fields = {"image_size": 8, "patch_size": 2, "dim": 16, "depth": 2, "heads": 4, "mlp_dim": 32} | kw
    return ViT(ViTConfig(**fields)).eval()


@pytest.mark.parametrize("pool", ["cls", "mean"])
@pytest.mark.parametrize("positions", ["learned", "sincos2d"])
def test_shapes_and_grid(pool, positions):
    m = make(pool=pool, positions=positions, channels=3, image_size=12, patch_size=4, num_classes=7)
    assert m.grid == (3, 3) and m.patch_size == 4
    assert m.num_prefix_tokens == (1 if pool == "cls" else 0)
    images = torch.randn(5, 3, 12, 12)
    logits, maps = m(images, need_weights=True)
    assert logits.shape == (5, 7)
    t = 9 + m.num_prefix_tokens
    assert [tuple(w.shape) for w in maps.encoder] == [(5, 4, t, t)] * 2
    torch.testing.assert_close(m(images), logits, rtol=0, atol=0)  # weights change nothing
    for w in maps.encoder:  # rows are distributions
        torch.testing.assert_close(w.sum(-1), torch.ones(5, 4, t))


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_patch_order_is_row_major(pool):
    m = make(pool=pool, image_size=8, patch_size=2)  # grid 4 x 4
    _, w = m.grid
    base = torch.randn(1, 1, 8, 8)
    before = m.tokens(base)
    for r, c, dy, dx in [(0, 0, 0, 0), (0, 3, 1, 0), (2, 1, 0, 1), (3, 2, 1, 1)]:
        changed = base.clone()
        changed[0, 0, r * 2 + dy, c * 2 + dx] += 5.0
        diff = (m.tokens(changed) - before).abs().amax(dim=-1)[0]  # (T,)
        moved = torch.nonzero(diff > 0).flatten().tolist()
        assert moved == [m.num_prefix_tokens + r * w + c]


def test_sincos2d_rows_and_columns():
    table = sincos2d_table(3, 4, 8, dtype=torch.float64)  # (12, 8)
    assert table.shape == (12, 8)
    # tokens in the same grid row share the first half, same column the second half
    torch.testing.assert_close(table[4 + 1, :4], table[4 + 3, :4], rtol=0, atol=0)
    torch.testing.assert_close(table[1 * 4 + 2, 4:], table[2 * 4 + 2, 4:], rtol=0, atol=0)
    assert not torch.equal(table[0, :4], table[4, :4])


def test_attention_maps_equal_the_reference_backend():
    m = make(depth=3)
    inputs = []
    hooks = [b.attn.register_forward_pre_hook(lambda mod, args: inputs.append(args[0])) for b in m.blocks]
    images = torch.randn(4, 1, 8, 8)
    _, maps = m(images, need_weights=True)
    for h in hooks:
        h.remove()
    assert len(inputs) == len(maps.encoder) == 3
    for x, block, weights in zip(inputs, m.blocks, maps.encoder):
        ref = block.attn(x, need_weights=True, backend="reference")
        assert ref.backend == "reference"
        torch.testing.assert_close(weights, ref.weights, rtol=1e-6, atol=1e-7)


def test_bad_input_names_the_argument():
    m = make()
    with pytest.raises(ValueError, match=r"images: expected 1 channel\(s\).*got 3"):
        m(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"images: expected 8x8 pixels.*got 9x8"):
        m(torch.randn(2, 1, 9, 8))
    with pytest.raises(ValueError, match=r"images: expected a 4-D tensor"):
        m(torch.randn(1, 8, 8))
    with pytest.raises(ValueError, match=r"image_size: expected a multiple of patch_size=3, got 8"):
        ViTConfig(image_size=8, patch_size=3)
    with pytest.raises(ValueError, match=r"pool: expected one of cls, mean, got 'max'"):
        ViTConfig(image_size=8, patch_size=2, pool="max")
    with pytest.raises(ValueError, match=r"dim: expected a multiple of heads=4, got 10"):
        ViTConfig(image_size=8, patch_size=2, dim=10)
    with pytest.raises(ValueError, match=r"stem: expected one of patch, conv, got 'hybrid'"):
        ViTConfig(image_size=8, patch_size=2, stem="hybrid")
    for patch in (1, 3, 6):
        with pytest.raises(ValueError, match=rf"patch_size: stem=.conv. needs a power of 2 .*{patch}"):
            ViTConfig(image_size=12, patch_size=patch, stem="conv")


def test_presets_build():
    sizes = {"vit-digits": (8, (4, 4)), "vit-fashion-mnist": (28, (7, 7)), "vit-located": (32, (8, 8))}
    assert set(sizes) == set(VIT_PRESETS)
    for name, (size, grid) in sizes.items():
        model = build_image_model(VIT_PRESETS[name], image_size=size, channels=1, num_classes=10)
        assert isinstance(model, ViT) and model.grid == grid, name
        assert model(torch.zeros(2, 1, size, size)).shape == (2, 10)
    with pytest.raises(ValueError, match=r"model: unknown key\(s\) image_size for kind 'vit'"):
        build_image_model({"image_size": 8}, image_size=8, channels=1, num_classes=10)


@pytest.fixture
def one_thread():
    """One torch thread: on a shared 2-core machine two threads spin and run ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_tiny_vit_learns_where_the_bright_patch_is(one_thread, stem):
    # class = the quadrant holding a bright 2x2 blob: attention must find the blob's patch
    g = torch.Generator().manual_seed(0)
    n = 192
    labels = torch.randint(0, 4, (n,), generator=g)
    images = torch.rand(n, 1, 8, 8, generator=g) * 0.3
    for i, q in enumerate(labels.tolist()):
        y = (q // 2) * 4 + int(torch.randint(0, 3, (1,), generator=g))
        x = (q % 2) * 4 + int(torch.randint(0, 3, (1,), generator=g))
        images[i, 0, y : y + 2, x : x + 2] += 1.0
    m = make(num_classes=4, stem=stem).train()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for _ in range(80):
        loss = torch.nn.functional.cross_entropy(m(images[:128]), labels[:128])
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        accuracy = (m(images[128:]).argmax(-1) == labels[128:]).float().mean().item()
    assert accuracy >= 0.9, accuracy


# ----------------------------------------------------------------------------- the convolutional stem


def test_conv_stem_layers_shapes_and_grid():
    m = make(image_size=16, image_width=24, patch_size=4, dim=16, stem="conv", num_classes=3)  # 2 halvings
    convs = [layer for layer in m.patch_embed.modules() if isinstance(layer, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (1, 8, (3, 3), (2, 2)), (8, 16, (3, 3), (2, 2)), (16, 16, (1, 1), (1, 1))]  # fmt: skip
    assert m.grid == (4, 6) and m.patch_size == 4 and m.num_prefix_tokens == 1
    images = torch.rand(5, 1, 16, 24)
    assert m.patch_embed((images - 0.5) / 0.5).shape == (5, 24, 16)  # (B, N, E)
    logits, maps = m(images, need_weights=True)
    assert logits.shape == (5, 3) and [tuple(w.shape) for w in maps.encoder] == [(5, 4, 25, 25)] * 2
    eight = make(image_size=32, patch_size=8, dim=32, heads=4, stem="conv").patch_embed
    widths = [c.out_channels for c in eight.modules() if isinstance(c, torch.nn.Conv2d)]
    assert widths == [8, 16, 32, 32]  # E/4, E/2, E, then the 1x1 to E


def test_patch_stem_state_dict_is_unchanged():
    # checkpoints written before the stem option (no "stem" key) load as the patch stem
    m = make()
    stem_keys = {k for k in m.state_dict() if k.startswith("patch_embed.")}
    assert stem_keys == {"patch_embed.proj.weight", "patch_embed.proj.bias"}
    fields = {k: v for k, v in m.config.to_dict().items() if k not in ("kind", "stem")}
    assert ViT(ViTConfig(**fields)).config.stem == "patch"


def test_conv_stem_receptive_field_on_the_grid():
    # a pixel at (y, x) reaches token (i, j) iff 4i-3 <= y <= 4i+3 and 4j-3 <= x <= 4j+3
    # (two 3x3 stride-2 convolutions, padding 1): the first pixel (4r, 4c) of a patch reaches its
    # own token only; any other pixel also reaches a neighbour's (but on the last row or column)
    m = make(image_size=16, patch_size=4, dim=16, stem="conv")
    base = torch.rand(1, 1, 16, 16)
    before = m.tokens(base)
    for y, x in [(0, 0), (12, 8), (5, 9), (6, 7), (15, 3), (13, 13)]:
        changed = base.clone()
        changed[0, 0, y, x] += 5.0
        diff = (m.tokens(changed) - before).abs().amax(dim=-1)[0, 1:]  # (N,) the patch tokens
        moved = set(torch.nonzero(diff > 0).flatten().tolist())
        reach = {i * 4 + j for i in range(4) for j in range(4) if abs(y - 4 * i) <= 3 and abs(x - 4 * j) <= 3}
        assert moved == reach, (y, x)
        assert (y // 4) * 4 + x // 4 in moved
        if y % 4 == 0 and x % 4 == 0:
            assert moved == {(y // 4) * 4 + x // 4}


def _conv_by_hand(x, weight, bias, stride, padding):
    """A convolution written as im2col: every output pixel is one dot product, in float64."""
    b, _, height, width = x.shape
    out_c, _, k, _ = weight.shape
    x = torch.nn.functional.pad(x, (padding,) * 4)
    oh, ow = (height + 2 * padding - k) // stride + 1, (width + 2 * padding - k) // stride + 1
    out = torch.zeros(b, out_c, oh, ow, dtype=x.dtype)
    for i in range(oh):
        for j in range(ow):
            window = x[:, :, i * stride : i * stride + k, j * stride : j * stride + k]  # (B, C, k, k)
            out[:, :, i, j] = window.flatten(1) @ weight.flatten(1).T
    return out if bias is None else out + bias[None, :, None, None]


def _stem_by_hand(stem, x, training):
    layers = list(stem.convs)
    for conv, norm in zip(layers[0::3], layers[1::3], strict=True):
        x = _conv_by_hand(x, conv.weight, None, 2, 1)
        if training:  # batch statistics, the biased variance
            mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)
        else:
            mean, var = norm.running_mean, norm.running_var
        x = (x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + norm.eps)
        x = (x * norm.weight[:, None, None] + norm.bias[:, None, None]).clamp(min=0)
    x = _conv_by_hand(x, stem.proj.weight, stem.proj.bias, 1, 0)  # (B, E, h, w)
    return x.flatten(2).transpose(1, 2)


@pytest.mark.parametrize("training", [False, True])
def test_conv_stem_equals_a_hand_written_reference_in_float64(training):
    torch.manual_seed(1)
    cfg = ViTConfig(image_size=12, image_width=8, patch_size=4, channels=2, dim=8, heads=2, stem="conv")
    stem = ConvStem(cfg).double()
    for norm in (m for m in stem.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # non-trivial norms
        torch.nn.init.uniform_(norm.weight, 0.5, 1.5)
        torch.nn.init.uniform_(norm.bias, -0.5, 0.5)
        norm.running_mean.uniform_(-0.3, 0.3)
        norm.running_var.uniform_(0.5, 2.0)
    stem.train(training)
    x = torch.randn(3, 2, 12, 8, dtype=torch.float64)
    got = stem(x)
    assert got.shape == (3, 3 * 2, 8)  # (B, N = 3 x 2, E)
    torch.testing.assert_close(got, _stem_by_hand(stem, x, training), rtol=1e-12, atol=1e-12)
    stem.eval()
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(stem, (x[:1],), eps=1e-6, atol=1e-7)


def test_conv_stem_in_eval_keeps_the_images_of_a_batch_apart():
    m = make(image_size=8, patch_size=4, stem="conv")
    images = torch.rand(4, 1, 8, 8)
    other = images.clone()
    other[2] = torch.rand(1, 8, 8)
    same = [0, 1, 3]
    torch.testing.assert_close(m(other)[same], m(images)[same], rtol=0, atol=0)
