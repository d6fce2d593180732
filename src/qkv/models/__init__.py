"""Models built on qkv's attention, one readable file each."""

from .bert import BertConfig, BertModel, BertOutput, mean_pool
from .builders import MODEL_KINDS, build_model, build_speech_model, config_keys
from .las import LAS, LASConfig
from .speech_transformer import SpeechTransformer, SpeechTransformerConfig
from .vit import ViT, ViTConfig

__all__ = [
    "LAS",
    "MODEL_KINDS",
    "BertConfig",
    "BertModel",
    "BertOutput",
    "LASConfig",
    "SpeechTransformer",
    "SpeechTransformerConfig",
    "ViT",
    "ViTConfig",
    "build_model",
    "build_speech_model",
    "config_keys",
    "mean_pool",
]
