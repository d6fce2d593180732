"""Models built on qkv's attention, one readable file each."""

from .bert import BertConfig, BertModel, BertOutput, mean_pool

__all__ = ["BertConfig", "BertModel", "BertOutput", "mean_pool"]
