"""Training a speech recognizer from a config: what ``qkv train --model las`` (or
``--model speech-transformer``) runs.

:func:`train` turns a config (:func:`qkv.speech.config.resolve`) into the pieces of the
model-agnostic :class:`qkv.train.loop.Trainer`: the spoken numbers of each split
(:func:`load_splits`), the model (:func:`qkv.models.builders.build_speech_model`), AdamW, and a
:class:`SpeechTask`: shuffled batches of padded log-mel features and word targets, the
teacher-forced cross-entropy, validation by loss and greedy word error rate on voices never
trained on.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..application.run import fit_run
from ..models.builders import build_speech_model
from ..models.speech_transformer import SpeechTransformerConfig
from ..train.loop import Trainer, TrainResult
from .config import DataConfig, RunConfig
from .data import SpokenSet, spoken_numbers
from .decode import greedy
from .metrics import error_rates
from .vocabulary import WordVocabulary, number_vocabulary

__all__ = [
    "SpeechTask",
    "build_from_facts",
    "describe_model",
    "load_splits",
    "pad_features",
    "speech_facts",
    "train",
]


def load_splits(d: DataConfig, splits: Sequence[str] = ("train", "valid")) -> dict[str, SpokenSet]:
    """The spoken numbers of a ``[data]`` table's splits (generated once, then read from the cache)."""
    sizes = {"train": d.train_size, "valid": d.valid_size, "test": d.test_size, "kal16": d.test_size}
    return {s: spoken_numbers(s, sizes[s], seed=d.seed, split_seed=d.split_seed, max_number=d.max_number,
                              n_mels=d.n_mels, warp=d.warp, flite_share=d.flite_share, cache_dir=d.cache_dir or None)
            for s in splits}  # fmt: skip


def speech_facts(d: DataConfig) -> dict[str, Any]:
    """What a checkpoint stores about its data: the feature size and the output words."""
    return {"n_mels": d.n_mels, "words": number_vocabulary(d.max_number), "units": "words"}


def build_from_facts(model_cfg: dict[str, Any], facts: dict[str, Any]) -> tuple[nn.Module, WordVocabulary]:
    """The model of a ``[model]`` table and the vocabulary of the stored facts."""
    vocab = WordVocabulary(facts["words"])
    return build_speech_model(model_cfg, n_mels=facts["n_mels"], vocab_size=len(vocab)), vocab


def describe_model(model_cfg: dict[str, Any]) -> str:
    """A ``[model]`` table in words: ``"las (additive attention)"``, ``"speech-transformer (3 + 2 blocks, width 96)"``."""
    if model_cfg.get("kind", "las") == "las":
        return f"las ({model_cfg.get('attention', 'additive')} attention)"
    m = {**asdict(SpeechTransformerConfig(n_mels=1, vocab_size=4)), **model_cfg}
    return f"speech-transformer ({m['encoder_layers']} + {m['decoder_layers']} blocks, width {m['d_model']})"


def pad_features(features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """``(B, T, M)`` zero-padded features and their lengths ``(B,)``."""
    lengths = torch.tensor([len(f) for f in features], dtype=torch.long)
    return nn.utils.rnn.pad_sequence(list(features), batch_first=True), lengths


def transcribe_features(model: nn.Module, vocab: WordVocabulary, features: Sequence[Tensor], *,
                        batch_size: int = 64, max_len: int = 32) -> list[str]:  # fmt: skip
    """Greedy transcripts of features, in eval mode, ``batch_size`` at a time."""
    was = model.training
    model.eval()
    texts = []
    for i in range(0, len(features), batch_size):
        x, lengths = pad_features(features[i : i + batch_size])
        texts += [vocab.decode(h.tokens) for h in greedy(model, x, lengths, max_len=max_len)]
    model.train(was)
    return texts


class SpeechTask:
    """The speech side of the :class:`~qkv.train.loop.Trainer`: batches of a seeded permutation
    of the training utterances (a pure function of ``(seed, epoch)``), masked by SpecAugment if
    ``[train]`` asks (:mod:`qkv.speech.spec_augment`), the model's own ``loss``
    (the cross-entropy of the next word; the Transformer may mix in CTC), validation by loss and
    greedy WER."""

    count_unit = "word"

    def __init__(self, cfg: RunConfig, splits: dict[str, SpokenSet], vocab: WordVocabulary):
        self.cfg, self.vocab = cfg, vocab
        self.batch_size = cfg.train.batch_size
        self.train_set, self.valid = splits["train"], splits.get("valid")
        self.batches_per_epoch = -(-len(self.train_set) // self.batch_size)
        self.augment = cfg.train.spec_augment

    def batches(self, epoch: int, start: int) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
        g = torch.Generator().manual_seed(self.cfg.train.seed * 100_003 + epoch)
        order = torch.randperm(len(self.train_set), generator=g).tolist()
        for b in range(start, self.batches_per_epoch):
            index = order[b * self.batch_size : (b + 1) * self.batch_size]
            x, lengths = pad_features([self.train_set.features[i] for i in index])
            if self.augment.enabled:  # masks a pure function of (seed, epoch, batch), as the order is
                x = self.augment(x, lengths, torch.Generator().manual_seed(g.initial_seed() * 1_000_003 + b))
            yield (x, lengths, *self.vocab.encode([self.train_set.texts[i] for i in index]))

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor, Tensor, Tensor]) -> tuple[Tensor, int]:
        x, lengths, tgt_in, tgt_out = batch
        return model.loss(x, lengths, tgt_in, tgt_out), int((tgt_out != 0).sum())

    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict[str, float | None]:
        if self.valid is None or not len(self.valid):
            return {"valid_loss": None}
        was = model.training
        model.eval()
        total, count = 0.0, 0
        for i in range(0, len(self.valid), 64):
            x, lengths = pad_features(self.valid.features[i : i + 64])
            loss, n = self.loss(model, (x, lengths, *self.vocab.encode(self.valid.texts[i : i + 64])))
            total, count = total + float(loss) * n, count + n
        model.train(was)
        hyps = transcribe_features(model, self.vocab, self.valid.features)
        return {"valid_loss": total / count, "valid_wer": error_rates(self.valid.texts, hyps)["wer"]}


def train(cfg: RunConfig | None, out_dir: str | Path, **options: Any) -> TrainResult:
    """Train the recognizer a config describes (:func:`qkv.speech.config.resolve`): the spoken
    numbers, the model, AdamW and a :class:`SpeechTask` in a :class:`~qkv.train.loop.Trainer`.
    ``options``: ``resume``, ``progress``, ``stream``, ``stop_after_steps``, ``announce``, as
    :func:`qkv.application.run.fit_run` says."""
    return fit_run(cfg, out_dir, _trainer, config_type=RunConfig, **options)


def _trainer(cfg: RunConfig, ckpt, *, out: Path, progress: bool, stream, announce: bool) -> Trainer:
    """Data, model, optimizer and task of a config, in a Trainer (a resumed run's ``ckpt``
    restores it after)."""
    splits = load_splits(cfg.data)
    facts = speech_facts(cfg.data)
    model, vocab = build_from_facts(cfg.model, facts)
    task = SpeechTask(cfg, splits, vocab)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    if announce:
        params = sum(p.numel() for p in model.parameters())
        print(f"model: {describe_model(cfg.model)}, {params:,} parameters; "
              f"{len(splits['train']):,} training utterances, {len(vocab) - 3} words", file=stream)  # fmt: skip
    return Trainer(model, opt, task, config=cfg.train, out_dir=out, run_config=cfg.to_dict(),
                   vocab=facts, desc=f"train {cfg.model.get('kind', 'las')}", progress=progress, stream=stream)  # fmt: skip
