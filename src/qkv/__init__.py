"""qkv: every classic attention mechanism behind one Query-Key-Value interface.

``import qkv`` loads the attention library: :mod:`qkv.api` (``qkv.attention``), :mod:`qkv.masks`,
:mod:`qkv.backends`, :mod:`qkv.functional`, :mod:`qkv.modules`, :mod:`qkv.models`,
:func:`qkv.capture`, :mod:`qkv.explain`, :mod:`qkv.interpret` and :mod:`qkv.viz`, and none of
their optional dependencies. The rest is imported by name when used, like ``torch.distributed``:
the applications (``import qkv.translation``), the training loop beneath them
(``import qkv.train``) and the Hugging Face interop (``import qkv.interop``).

>>> import torch, qkv
>>> q, k, v = torch.randn(2, 8, 5, 16), torch.randn(2, 8, 7, 16), torch.randn(2, 8, 7, 16)
>>> r = qkv.attention(q, k, v, mask=qkv.masks.causal("bottom_right"), need_weights=True)
>>> r.out.shape, r.weights.shape, r.backend
(torch.Size([2, 8, 5, 16]), torch.Size([2, 8, 5, 7]), 'reference')
"""

# functional first: it defines the scores and normalizers the backends import.
from . import functional  # isort: skip
from . import api, backends, explain, interpret, masks, models, modules, viz
from ._types import AttentionMaps, AttentionOutput
from .api import attention, dispatch_report, scaled_dot_product_attention
from .backends import BackendNotSupportedError, MemoryPlanError
from .capture import capture
from .modules import (
    AdaptiveSpanAttention,
    AdditiveAttention,
    AdditiveScore,
    AttentionPooling,
    CapsuleRouting,
    CosineScore,
    DotProductAttention,
    DynamicConv,
    GaussianScore,
    GeneralScore,
    HardAttention,
    KVCache,
    LightConv,
    LuongAttention,
    MultiHeadAttention,
    NadarayaWatson,
    RotaryEmbedding,
    TorchMultiheadAttention,
)

__version__ = "0.1.0"

__all__ = [
    "AdaptiveSpanAttention",
    "AdditiveAttention",
    "AdditiveScore",
    "AttentionMaps",
    "AttentionOutput",
    "AttentionPooling",
    "BackendNotSupportedError",
    "CapsuleRouting",
    "CosineScore",
    "DotProductAttention",
    "DynamicConv",
    "GaussianScore",
    "GeneralScore",
    "HardAttention",
    "KVCache",
    "LightConv",
    "LuongAttention",
    "MemoryPlanError",
    "MultiHeadAttention",
    "NadarayaWatson",
    "RotaryEmbedding",
    "TorchMultiheadAttention",
    "__version__",
    "api",
    "attention",
    "backends",
    "capture",
    "dispatch_report",
    "explain",
    "functional",
    "interpret",
    "masks",
    "models",
    "modules",
    "scaled_dot_product_attention",
    "viz",
]
