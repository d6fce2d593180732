"""Interop: pretrained BERT weights and tokenizers in qkv, attention capture from
``transformers`` models (the optional libraries are imported when used: ``pip install
'qkv[interop]'``), and ``swap_attention``, qkv's attention inside models written against
``torch.nn.MultiheadAttention``; ``register_hf``, qkv as a ``transformers`` attention
implementation (``attn_implementation="qkv"``); ``use_pattern``, a sparse pattern on a
pretrained encoder's or decoder's self-attention."""

from .hf import HFTokenizer, TokenBatch, bert_config_from_hf, load_bert, minilm_path, state_dict_from_hf
from .hf_implementation import register_hf
from .hf_pattern import PatternHandle, use_pattern
from .torch_nn import SwapReport, swap_attention

__all__ = [
    "HFTokenizer",
    "PatternHandle",
    "SwapReport",
    "TokenBatch",
    "bert_config_from_hf",
    "load_bert",
    "minilm_path",
    "register_hf",
    "state_dict_from_hf",
    "swap_attention",
    "use_pattern",
]
