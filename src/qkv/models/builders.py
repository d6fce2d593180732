"""Model builders: a translation model from the ``[model]`` table of a training config.

The table names a ``kind`` and any fields of that kind's config dataclass except the ones the
data decides (the vocabulary sizes and the padding id)::

    >>> model = build_model({"kind": "seq2seq", "attention": "luong"}, src_vocab=50, tgt_vocab=60)
    >>> sorted(config_keys("transformer"))[:3]
    ['d_model', 'decoder_layers', 'dropout']

:data:`MODEL_KINDS` is the one place that maps a kind to its model class and config
dataclass; the config validation of :mod:`qkv.train.config` reads its keys from here, so a
field added to a config dataclass is a valid ``[model]`` key at once.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from .seq2seq import Seq2Seq, Seq2SeqConfig
from .transformer import Transformer, TransformerConfig

__all__ = ["KIND_NAMES", "MODEL_KINDS", "build_model", "config_keys"]

#: ``kind`` -> (model class, config dataclass).
MODEL_KINDS: dict[str, tuple[type[nn.Module], type]] = {
    "seq2seq": (Seq2Seq, Seq2SeqConfig),
    "transformer": (Transformer, TransformerConfig),
}

#: The kinds in words, for error messages: ``'seq2seq' or 'transformer'``.
KIND_NAMES = " or ".join(map(repr, MODEL_KINDS))

# Config fields the data decides, never the [model] table.
_FROM_DATA = frozenset({"src_vocab", "tgt_vocab", "pad_id"})


def _check_kind(kind: object) -> str:
    if kind not in MODEL_KINDS:
        raise ValueError(f"model.kind: expected {KIND_NAMES}, got {kind!r}")
    return str(kind)


def config_keys(kind: str) -> frozenset[str]:
    """The valid keys of a ``[model]`` table of this kind: ``kind`` and the fields of its config
    dataclass but the vocabulary sizes and the padding id."""
    _, config_cls = MODEL_KINDS[_check_kind(kind)]
    return frozenset({"kind"} | {f.name for f in dataclasses.fields(config_cls)} - _FROM_DATA)


def build_model(model_cfg: dict[str, Any], *, src_vocab: int, tgt_vocab: int) -> nn.Module:
    """A :class:`Seq2Seq` or :class:`Transformer` from the ``[model]`` table (``kind`` defaults
    to ``"seq2seq"``)."""
    kind = _check_kind(model_cfg.get("kind", "seq2seq"))
    model_cls, config_cls = MODEL_KINDS[kind]
    fields = {k: v for k, v in model_cfg.items() if k != "kind"}
    return model_cls(config_cls(src_vocab=src_vocab, tgt_vocab=tgt_vocab, **fields))
