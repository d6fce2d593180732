"""Hugging Face interop: pretrained BERT weights and tokenizers in qkv, attention capture from
``transformers`` models. The optional libraries are imported when used
(``pip install 'qkv[interop]'``)."""

from .hf import HFTokenizer, TokenBatch, bert_config_from_hf, load_bert, minilm_path, state_dict_from_hf

__all__ = [
    "HFTokenizer",
    "TokenBatch",
    "bert_config_from_hf",
    "load_bert",
    "minilm_path",
    "state_dict_from_hf",
]
