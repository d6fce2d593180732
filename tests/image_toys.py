"""Tiny image transformers for the image-explanation tests, and their forward passes written out.

- :class:`ToyViT`: a patch embedding, a class token, residual blocks of
  :class:`qkv.MultiHeadAttention` (no norms), a head on the class token; it declares its grid as
  qkv's ViT does (``patch_size``, ``grid``, ``num_prefix_tokens``).
- :class:`TimmLike`: timm's ``VisionTransformer`` layout (``patch_embed.patch_size``,
  ``num_prefix_tokens``, ``global_pool``, ``blocks[i].attn`` with ``qkv``/``num_heads``/``scale``)
  whose attention runs fused SDPA, as timm's does: hooks on a softmax see nothing.

``toy_forward`` and ``timm_forward`` run the same weights with the attention written out in
float64, keeping every layer's weights and the tokens each attention reads, with their graph.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import qkv


class ToyViT(nn.Module):
    def __init__(
        self, *, channels=3, dim=8, heads=2, layers=2, patch=(2, 3), grid=(3, 2), classes=4, backend="auto"
    ):
        super().__init__()
        self.patch_size, self.grid, self.num_prefix_tokens = patch, grid, 1
        self.embed = nn.Conv2d(channels, dim, kernel_size=patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.attns = nn.ModuleList(qkv.MultiHeadAttention(dim, heads, backend=backend) for _ in range(layers))
        self.head = nn.Linear(dim, classes)

    def forward(self, images: Tensor) -> Tensor:
        x = self.embed(images).flatten(2).transpose(1, 2)  # (N, D, h, w) -> (N, h*w, D)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)  # (N, 1 + h*w, D)
        for attn in self.attns:
            x = x + attn(x).out
        return self.head(x[:, 0])


def toy_forward(model: ToyViT, images: Tensor):
    """``(logits, [A_l (N, H, T, T)], [tokens each attention reads (N, T, D)])`` in float64."""
    p = {k: v.double() for k, v in model.state_dict().items()}
    x = F.conv2d(
        images.double().requires_grad_(), p["embed.weight"], p["embed.bias"], stride=model.patch_size
    )
    x = torch.cat([p["cls"].expand(x.shape[0], -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
    weights, reads = [], []
    for i, attn in enumerate(model.attns):
        reads.append(x)
        w = {n: p[f"attns.{i}.{n}"] for n in ("q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias")}
        w |= {
            n: p[f"attns.{i}.{n}"]
            for n in ("v_proj.weight", "v_proj.bias", "out_proj.weight", "out_proj.bias")
        }
        out, a = _written_attention(x, w, attn.num_heads)
        weights.append(a)
        x = x + out
    return x[:, 0] @ p["head.weight"].T + p["head.bias"], weights, reads


def _written_attention(x: Tensor, w: dict, heads: int) -> tuple[Tensor, Tensor]:
    n, t, d = x.shape

    def split(y):  # (N, T, D) -> (N, H, T, D/H)
        return y.reshape(n, t, heads, d // heads).transpose(1, 2)

    q = split(x @ w["q_proj.weight"].T + w["q_proj.bias"])
    k = split(x @ w["k_proj.weight"].T + w["k_proj.bias"])
    v = split(x @ w["v_proj.weight"].T + w["v_proj.bias"])
    a = (q @ k.transpose(-1, -2) / math.sqrt(d // heads)).softmax(dim=-1)  # (N, H, T, T)
    out = (a @ v).transpose(1, 2).reshape(n, t, d)
    return out @ w["out_proj.weight"].T + w["out_proj.bias"], a


class _PatchEmbed(nn.Module):
    def __init__(self, channels, dim, patch, grid):
        super().__init__()
        self.patch_size, self.grid_size = patch, grid
        self.proj = nn.Conv2d(channels, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, h*w, D)


class _Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.num_heads, self.head_dim, self.scale = heads, dim // heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm, self.k_norm = nn.LayerNorm(dim // heads), nn.Identity()
        self.attn_drop, self.proj_drop = nn.Dropout(0.0), nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v)  # fused: no weights
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(n, t, d)))


class _Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.attn, self.norm2 = nn.LayerNorm(dim), _Attention(dim, heads), nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TimmLike(nn.Module):
    def __init__(
        self,
        *,
        channels=3,
        dim=8,
        heads=2,
        layers=2,
        patch=(4, 2),
        grid=(2, 3),
        registers=2,
        classes=5,
        pool="token",
    ):
        super().__init__()
        self.patch_embed = _PatchEmbed(channels, dim, patch, grid)
        self.num_prefix_tokens, self.global_pool = 1 + registers, pool
        self.cls_token = nn.Parameter(torch.randn(1, 1 + registers, dim))
        self.pos_embed = nn.Parameter(0.5 * torch.randn(1, 1 + registers + grid[0] * grid[1], dim))
        self.blocks = nn.Sequential(*(_Block(dim, heads) for _ in range(layers)))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, images):
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        pooled = x[:, self.num_prefix_tokens :].mean(dim=1) if self.global_pool == "avg" else x[:, 0]
        return self.head(pooled)


def timm_forward(model: TimmLike, images: Tensor):
    """``(logits, [A_l (N, H, T, T)])`` of a float64 copy of ``model``, attention written out."""
    m = _double(model)
    x = m.patch_embed(images.double())
    x = torch.cat([m.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + m.pos_embed
    weights = []
    for blk in m.blocks:
        h = blk.norm1(x)
        n, t, d = h.shape
        a = blk.attn
        q, k, v = a.qkv(h).reshape(n, t, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        w = (a.q_norm(q) @ a.k_norm(k).transpose(-1, -2) * a.scale).softmax(dim=-1)
        weights.append(w)
        x = x + a.proj((w @ v).transpose(1, 2).reshape(n, t, d))
        x = x + blk.mlp(blk.norm2(x))
    x = m.norm(x)
    pooled = x[:, m.num_prefix_tokens :].mean(dim=1) if m.global_pool == "avg" else x[:, 0]
    return m.head(pooled), weights


def _double(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).double()
