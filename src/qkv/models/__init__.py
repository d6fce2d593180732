"""Models built on qkv's attention, one readable file each."""

from .bert import BertConfig, BertModel, BertOutput, mean_pool
from .builders import MODEL_KINDS, build_model, config_keys
from .vit import ViT, ViTConfig

__all__ = [
    "MODEL_KINDS",
    "BertConfig",
    "BertModel",
    "BertOutput",
    "ViT",
    "ViTConfig",
    "build_model",
    "config_keys",
    "mean_pool",
]
