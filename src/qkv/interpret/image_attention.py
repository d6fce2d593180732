"""The self-attention weights of an image transformer's forward pass, exact under fused kernels.

Shape legend: ``N`` images, ``H`` heads, ``T`` tokens, ``C`` channels (see
:mod:`qkv.interpret.patch_grid`).

- qkv's models and Hugging Face models: :func:`qkv.capture` (the weights the kernel's output is
  made of, read from qkv's attention step, or from the Hugging Face model run eager);
- timm's ``VisionTransformer`` (``blocks[i].attn`` with ``qkv``, ``num_heads``, ``scale``,
  whose fused path gives hooks nothing to read): each block's attention is recomputed from its
  own input in the written-out form timm runs when ``fused_attn`` is off::

      q, k, v = qkv(x).split(heads);  A = softmax(q_norm(q) * scale @ k_norm(k)^T)
      out = proj(norm(A @ v))

  and that output replaces the fused one for the duration (equal within floating-point
  tolerance), so ``A`` is the tensor the output is made of, gradients included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

from torch import Tensor, nn

from ..capture import capture

__all__ = ["attention_blocks", "record_attention"]


def attention_blocks(model: nn.Module) -> list[nn.Module]:
    """timm-shaped attention modules (``qkv`` linear, ``num_heads``, ``scale``, ``proj``) inside
    ``model``'s ``blocks``, in order; empty when the model is not timm-shaped."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, (nn.ModuleList, nn.Sequential)):
        return []
    found = [getattr(b, "attn", None) for b in blocks]
    shaped = all(
        isinstance(a, nn.Module) and all(hasattr(a, n) for n in ("qkv", "num_heads", "scale", "proj"))
        for a in found
    )
    return found if found and shaped else []


def _timm_attention(attn: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """timm's ``Attention`` written out: ``x (N, T, C) -> (out (N, T, C), A (N, H, T, T))``."""
    n, t = x.shape[:2]
    heads = attn.num_heads
    qkv = attn.qkv(x).reshape(n, t, 3, heads, -1).permute(2, 0, 3, 1, 4)  # (3, N, H, T, D)
    q, k, v = qkv.unbind(0)
    q_norm, k_norm = getattr(attn, "q_norm", nn.Identity()), getattr(attn, "k_norm", nn.Identity())
    q, k = q_norm(q), k_norm(k)
    weights = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (N, H, T, T)
    mixed = getattr(attn, "attn_drop", nn.Identity())(weights) @ v  # (N, H, T, D)
    out = mixed.transpose(1, 2).reshape(n, t, -1)  # (N, H, T, D) -> (N, T, H*D)
    out = getattr(attn, "norm", nn.Identity())(out)
    out = getattr(attn, "proj_drop", nn.Identity())(attn.proj(out))
    return out, weights


@contextmanager
def _record_timm(blocks: list[nn.Module], detach: bool) -> Iterator[Callable[[], list[Tensor]]]:
    recorded: list[Tensor] = []

    def hook(mod, args, kwargs, output):
        x = args[0] if args else kwargs["x"]
        out, weights = _timm_attention(mod, x)
        recorded.append(weights.detach() if detach else weights)
        return out

    with ExitStack() as stack:
        for attn in blocks:
            stack.callback(attn.register_forward_hook(hook, with_kwargs=True).remove)
        yield lambda: list(recorded)


@contextmanager
def record_attention(model: nn.Module, *, detach: bool = True) -> Iterator[Callable[[], list[Tensor]]]:
    """Record the self-attention weights of ``model``'s forward passes in the ``with`` block.

    Yields a function returning one ``(N, H, T, T)`` per layer in model order (call it after the
    forward pass). ``detach=False`` keeps them in the autograd graph (qkv modules run their
    reference backend for the hooked calls; see :func:`qkv.capture`).

    Raises:
        ValueError: a model with neither qkv/Hugging Face attention nor timm-shaped blocks.
    """
    blocks = attention_blocks(model)
    if blocks:
        with _record_timm(blocks, detach) as layers:
            yield layers
        return
    with capture(model, kinds="encoder", detach=detach) as maps:
        yield lambda: maps.layers("encoder")
