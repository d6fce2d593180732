"""The Vision Transformer: shapes, row-major patch order, exact attention maps, bad input, learning."""

import pytest
import torch

from qkv.models.builders import build_image_model
from qkv.models.vit import ViT, ViTConfig, sincos2d_table
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


def test_tiny_vit_learns_where_the_bright_patch_is(one_thread):
    # class = the quadrant holding a bright 2x2 blob: attention must find the blob's patch
    g = torch.Generator().manual_seed(0)
    n = 192
    labels = torch.randint(0, 4, (n,), generator=g)
    images = torch.rand(n, 1, 8, 8, generator=g) * 0.3
    for i, q in enumerate(labels.tolist()):
        y = (q // 2) * 4 + int(torch.randint(0, 3, (1,), generator=g))
        x = (q % 2) * 4 + int(torch.randint(0, 3, (1,), generator=g))
        images[i, 0, y : y + 2, x : x + 2] += 1.0
    m = make(num_classes=4).train()
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
