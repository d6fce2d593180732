"""Training a translation model from a config: what ``qkv train`` runs.

:func:`train` turns a config (:func:`qkv.translation.config.resolve`) into the pieces of the
model-agnostic :class:`qkv.train.loop.Trainer`: the corpus and its tokenizers
(:func:`prepare_data`), the model (:func:`qkv.models.builders.build_model`), AdamW, and a
:class:`TranslationTask`, the translation side of the loop: batches of encoded sentence pairs,
teacher-forced token cross entropy (:func:`_loss`), and validation by loss and, for the first
``valid_decode`` validation sentences, greedy exact match.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..application.run import fit_run
from ..models.builders import build_model
from ..parallel.sampler import share_of
from ..train.loop import Trainer, TrainResult
from . import data as qdata
from .config import DataConfig, RunConfig, TranslationTrainConfig
from .decode import decode_limit, longest_repeat
from .translator import decode_examples

__all__ = [
    "TranslationTask",
    "count_parameters",
    "inference_facts",
    "load_corpus",
    "prepare_data",
    "text_format",
    "train",
    "validation_loss",
]

# Batches are drawn from windows of 20 batches sorted by length: ~2% padding instead of ~30%.
_SORT_WITHIN = 20
# Training source words stored for the unknown-word warning of translate (most frequent first).
_MAX_SOURCE_WORDS = 100_000


def load_corpus(d: DataConfig):
    """The corpus of a ``[data]`` table: a built-in name or a TSV path (``reverse``: its second
    column is the source)."""
    name = d.corpus
    if name in qdata.BUILTIN_CORPORA:
        if d.reverse:
            raise ValueError(
                f"data.reverse: only for TSV files; the built-in corpus {name!r} has a fixed direction "
                f"(reversed ones exist, e.g. numbers-en-digits; see {', '.join(qdata.BUILTIN_CORPORA)})"
            )
        return qdata.builtin(name, size=d.size, seed=d.seed, **d.options)
    path = Path(name)
    if not path.exists():
        raise ValueError(
            f"data.corpus: {name!r} is neither a built-in corpus ({', '.join(qdata.BUILTIN_CORPORA)}) "
            "nor an existing file"
        )
    return qdata.load_tsv(
        path,
        lowercase=d.lowercase,
        split_punct=d.split_punct,
        max_len=d.max_len or None,
        valid_frac=d.valid_frac,
        test_frac=d.test_frac,
        seed=d.seed,
        reverse=d.reverse,
    )


def text_format(d: DataConfig, corpus) -> qdata.TextFormat:
    """The text steps of training, stored in every checkpoint: the TSV normalization options,
    and the spacing and case of the training targets as written (to detokenize outputs);
    identity for built-in corpora (their text is used as generated)."""
    if d.corpus in qdata.BUILTIN_CORPORA:
        return qdata.TextFormat()
    return qdata.TextFormat.learn(
        [e.target_text for e in corpus["train"]], lowercase=d.lowercase, split_punct=d.split_punct
    )


def inference_facts(train_examples, train_pairs) -> dict[str, Any]:
    """What translation checks inputs and outputs against, from the training split: the
    repetition limit (one more than the most times a fragment repeats back to back in a
    training target, at least 3), the longest source in tokens, and the source words (the
    ``_MAX_SOURCE_WORDS`` most frequent; ``source_words_complete`` says whether that is all)."""
    counts: dict[str, int] = {}
    for e in train_examples:
        for w in e.source.split():
            counts[w] = counts.get(w, 0) + 1
    words = sorted(counts, key=lambda w: (-counts[w], w))
    return {
        "max_repeats": max(3, longest_repeat(p.tgt for p in train_pairs) + 1),
        "longest_source": max((len(p.src) for p in train_pairs), default=0),
        "source_words": words[:_MAX_SOURCE_WORDS],
        "source_words_complete": len(words) <= _MAX_SOURCE_WORDS,
    }


def count_parameters(model: nn.Module) -> int:
    """The model's parameters (a tensor shared by two layers counted once)."""
    return sum(p.numel() for p in model.parameters())


def prepare_data(cfg: RunConfig):
    """The corpus and the two tokenizers (built on the training split only) of a config."""
    d = cfg.data
    corpus = load_corpus(d)
    train_ex = corpus["train"]
    kw = {"vocab_size": d.bpe_vocab} if d.tokenizer == "bpe" else {}
    src_tok = qdata.build_tokenizer(d.tokenizer, [e.source for e in train_ex], **kw)
    tgt_tok = qdata.build_tokenizer(d.tokenizer, [e.target for e in train_ex], **kw)
    return corpus, src_tok, tgt_tok


def _loss(model: nn.Module, batch, t: TranslationTrainConfig) -> tuple[Tensor, int]:
    """Token cross entropy, plus the model's auxiliary loss when it has one.

    A model with an ``auxiliary_loss(record, logits, targets)`` method (e.g. the REINFORCE
    term of hard attention in :class:`qkv.models.seq2seq.Seq2Seq`) is called with a ``record``
    dict its forward fills; a term it returns (not None) is added to the loss.
    """
    record: dict[str, Tensor] = {}
    extra = {"record": record} if hasattr(model, "auxiliary_loss") else {}
    logits = model(
        batch.src, batch.src_lengths, batch.tgt_in, teacher_forcing=float(t.teacher_forcing), **extra
    )
    ntok = int((batch.tgt_out != 0).sum())
    loss = nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        batch.tgt_out.reshape(-1),
        ignore_index=0,
        label_smoothing=float(t.label_smoothing),
    )
    if record:
        aux = model.auxiliary_loss(record, logits, batch.tgt_out)
        if aux is not None:
            loss = loss + aux
    return loss, ntok


@torch.no_grad()
def validation_loss(model: nn.Module, pairs, *, batch_size: int) -> float | None:
    """Mean teacher-forced cross entropy per target token (no dropout, no label smoothing);
    None when ``pairs`` hold no target token (an empty validation split has no loss, not 0)."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    for b in qdata.batches(pairs, batch_size=batch_size, shuffle=False, seed=0):
        logits = model(b.src, b.src_lengths, b.tgt_in)
        total += float(
            nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(),
                b.tgt_out.reshape(-1),
                ignore_index=0,
                reduction="sum",
            )
        )
        count += int((b.tgt_out != 0).sum())
    model.train(was)
    return total / count if count else None


def _max_len(cfg: RunConfig, examples, tgt_tok) -> int:
    """The decoding limit of validation: :func:`~qkv.translation.decode.decode_limit` from the
    references (``max_decode_len``, else 2 x the longest target in the target tokenizer's
    tokens + 10)."""
    references = [len(tgt_tok.encode(e.target)) for e in examples]
    return decode_limit(cfg.train.max_decode_len, references=references)


def _valid_exact_match(model, examples, src_tok, tgt_tok, cfg) -> float:
    hyps = decode_examples(
        model, examples, src_tok, tgt_tok, beam=1, batch_size=128, max_len=_max_len(cfg, examples, tgt_tok)
    )
    good = sum(h == " ".join(e.target.split()) for h, e in zip(hyps, examples))
    return good / max(len(examples), 1)


def _check_splits(d: DataConfig, corpus) -> None:
    """Refuse an empty training split; warn about an empty validation split."""
    sizes = {k: len(corpus[k]) for k in ("train", "valid", "test")}
    counts = f"{sizes['train']} train, {sizes['valid']} valid, {sizes['test']} test"
    if not sizes["train"]:
        raise ValueError(
            f"data: the training split of {d.corpus!r} is empty ({counts} pairs); nothing to train on. "
            "Use more pairs, or lower data.valid_frac and data.test_frac"
        )
    if not sizes["valid"]:
        warnings.warn(
            f"data: the validation split of {d.corpus!r} is empty ({counts} pairs, "
            f"valid_frac={d.valid_frac}): no validation loss (reported as n/a), no early stopping, "
            "no best/ checkpoint. Use more pairs or a larger data.valid_frac",
            qdata.DataWarning,
            stacklevel=5,  # the caller of train()
        )


class TranslationTask:
    """The translation side of the :class:`~qkv.train.loop.Trainer`: shuffled length-sorted
    batches of encoded pairs, the loss of :func:`_loss`, and validation by
    :func:`validation_loss` and (``valid_decode`` > 0) greedy exact match. :meth:`shard` gives
    the task of one rank of a data-parallel run.

    Raises:
        ValueError: the training split is empty. An empty validation split is a
            :class:`~qkv.translation.data.DataWarning`: the run trains, its validation loss is None ("n/a"),
            and there is no early stopping and no ``best/`` checkpoint.
    """

    count_unit = "target tok"

    def __init__(self, cfg: RunConfig, corpus, src_tok, tgt_tok):
        self.cfg = cfg
        self.src_tok, self.tgt_tok = src_tok, tgt_tok
        _check_splits(cfg.data, corpus)
        self.train_pairs = qdata.encode_pairs(corpus["train"], src_tok, tgt_tok)
        self.valid_pairs = qdata.encode_pairs(corpus["valid"], src_tok, tgt_tok)
        self.valid_examples = corpus["valid"][: cfg.train.valid_decode]
        self.batch_size = cfg.train.batch_size
        self.batches_per_epoch = qdata.num_batches(len(self.train_pairs), self.batch_size)
        self.rank, self.world = 0, 1

    def shard(self, rank: int, world: int) -> TranslationTask:
        """This task on rank ``rank`` of ``world``: the plan of batches of ``world x batch_size``
        pairs (shuffled, bucketed), each cut by :func:`~qkv.parallel.sampler.share_of`; its
        batches are :class:`~qkv.parallel.sampler.Share` objects."""
        sharded = copy.copy(self)
        sharded.rank, sharded.world = rank, world
        sharded.batches_per_epoch = qdata.num_batches(len(self.train_pairs), self.batch_size * world)
        return sharded

    def batches(self, epoch: int, start: int):
        if self.world == 1:
            return qdata.batches(
                self.train_pairs, batch_size=self.batch_size, shuffle=True, seed=self.cfg.train.seed,
                epoch=epoch, sort_within=_SORT_WITHIN, start=start,
            )  # fmt: skip
        plan = qdata.plan_batches(
            self.train_pairs, batch_size=self.batch_size * self.world, shuffle=True,
            seed=self.cfg.train.seed, epoch=epoch, sort_within=_SORT_WITHIN,
        )  # fmt: skip
        shares = (share_of(rows, self.rank, self.world) for rows in plan[start:])
        return (s._replace(batch=qdata.collate(self.train_pairs, s.batch)) for s in shares)

    def loss(self, model: nn.Module, batch) -> tuple[Tensor, int]:
        return _loss(model, batch, self.cfg.train)  # looked up at call time: tests replace _loss

    def validate(self, model: nn.Module) -> dict[str, float | None]:
        metrics = {"valid_loss": validation_loss(model, self.valid_pairs, batch_size=self.batch_size * 2)}
        if self.cfg.train.valid_decode and self.valid_examples:
            metrics["valid_exact_match"] = _valid_exact_match(
                model, self.valid_examples, self.src_tok, self.tgt_tok, self.cfg
            )
        return metrics


def train(cfg: RunConfig | None, out_dir: str | Path, **options: Any) -> TrainResult:
    """Train the model a config describes (:func:`qkv.translation.config.resolve`): the corpus,
    its tokenizers (when resuming, the run's own), the model, AdamW and a :class:`TranslationTask`
    in a :class:`~qkv.train.loop.Trainer`. ``options``: ``resume``, ``progress``, ``stream``,
    ``stop_after_steps``, ``announce`` (the parameter count, the training pairs, the vocabulary
    sizes), as :func:`qkv.application.run.fit_run` says."""
    return fit_run(cfg, out_dir, _trainer, config_type=RunConfig, **options)


def _trainer(cfg: RunConfig, ckpt, *, out: Path, progress: bool, stream, announce: bool) -> Trainer:
    """Data, model, optimizer and task of a config, in a Trainer (``ckpt``: the tokenizers and
    facts of the run resumed)."""
    t = cfg.train
    corpus, src_tok, tgt_tok = prepare_data(cfg)
    if ckpt is not None:  # the vocabularies the model was built with
        src_tok = qdata.tokenizer_from_dict(ckpt.vocab["source"])
        tgt_tok = qdata.tokenizer_from_dict(ckpt.vocab["target"])
    task = TranslationTask(cfg, corpus, src_tok, tgt_tok)
    model = build_model(cfg.model, src_vocab=len(src_tok), tgt_vocab=len(tgt_tok))
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    vocab = {"source": src_tok.to_dict(), "target": tgt_tok.to_dict()}
    if ckpt is not None:
        vocab.update(text=ckpt.vocab["text"], inference=ckpt.vocab["inference"])
    else:
        facts = inference_facts(corpus["train"], task.train_pairs)
        vocab.update(text=text_format(cfg.data, corpus).to_dict(), inference={**facts, "max_decode_len": t.max_decode_len})  # fmt: skip
    name = cfg.model.get("attention", cfg.model.get("kind"))
    if announce:
        print(
            f"model: {name}, {count_parameters(model):,} parameters; {len(task.train_pairs):,} training pairs, "
            f"vocabularies of {len(src_tok):,} source and {len(tgt_tok):,} target tokens",
            file=stream,
        )
    return Trainer(
        model, opt, task, config=t, out_dir=out, run_config=cfg.to_dict(), vocab=vocab,
        desc=f"train {name}", progress=progress, stream=stream,
    )  # fmt: skip
