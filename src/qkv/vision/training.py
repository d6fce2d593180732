"""Training an image classifier from a config: what ``qkv train --model vit`` runs.

:func:`train` turns a config (:func:`qkv.vision.config.resolve`) into the pieces of the
model-agnostic :class:`qkv.train.loop.Trainer`: the splits of the data set (:func:`load_splits`),
the model (:func:`qkv.models.builders.build_image_model`), AdamW, and a
:class:`ClassificationTask`: shuffled batches of images (optionally shifted by a few pixels),
cross entropy, and validation by loss and accuracy.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..application.run import fit_run
from ..models.builders import build_image_model
from ..parallel.sampler import Share, share_of
from ..train.loop import Trainer, TrainResult
from .config import DATASETS, DataConfig, RunConfig
from .data import Images, load_digits, load_fashion_mnist, load_image_folder, random_shifts, split
from .located import located_digits

__all__ = ["ClassificationTask", "image_facts", "load_splits", "predict_logits", "train"]

_LOCATED_SIZE = 8000  # located-digits training canvases when data.size is 0


def _located_splits(d: DataConfig) -> dict[str, Images]:
    """Canvases drawn from disjoint splits of the digits: no test canvas shows a training digit."""
    digits = split(load_digits(), valid_frac=d.valid_frac, test_frac=d.test_frac, seed=d.seed)
    n_train = d.size or _LOCATED_SIZE
    sizes = {"train": n_train, "valid": round(n_train * d.valid_frac), "test": round(n_train * d.test_frac)}
    out = {}
    for offset, (name, n) in enumerate(sizes.items()):
        images, labels, _ = located_digits(n, seed=d.seed * 3 + offset, canvas=d.canvas, digits=digits[name])
        out[name] = Images(images, labels, digits[name].classes)
    return out


def load_splits(d: DataConfig) -> dict[str, Images]:
    """``{"train", "valid", "test"}`` of a ``[data]`` table (the same config, the same splits).

    Fashion-MNIST keeps its own 10,000 test images; valid is cut from its training images.
    """
    if d.dataset == "located-digits":
        return _located_splits(d)
    if d.dataset == "fashion-mnist":
        train_set = load_fashion_mnist("train")
        if d.size:
            train_set = train_set.subset(torch.arange(min(d.size, len(train_set))))
        splits = split(train_set, valid_frac=d.valid_frac, test_frac=0.0, seed=d.seed)
        return {**splits, "test": load_fashion_mnist("test")}
    if d.dataset == "digits":
        data = load_digits()
    elif Path(d.dataset).is_dir():
        data = load_image_folder(d.dataset, image_size=d.image_size, channels=d.channels)
    else:
        raise ValueError(f"data.dataset: expected {', '.join(DATASETS)} or a folder of class subfolders, "
                         f"got {d.dataset!r}")  # fmt: skip
    return split(data, valid_frac=d.valid_frac, test_frac=d.test_frac, seed=d.seed)


def image_facts(data: Images) -> dict[str, Any]:
    """What a checkpoint stores about its images: the size, the channels and the class names."""
    return {"image_size": data.image_size, "channels": data.channels, "classes": list(data.classes)}


@torch.no_grad()
def predict_logits(model: nn.Module, images: Tensor, *, batch_size: int = 512) -> Tensor:
    """The model's logits ``(N, K)`` in eval mode, ``batch_size`` images at a time."""
    was = model.training
    model.eval()
    logits = [model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)] or [model(images)]
    model.train(was)
    return torch.cat(logits)


class ClassificationTask:
    """The image side of the :class:`~qkv.train.loop.Trainer`: batches of a seeded permutation
    of the training images (a pure function of ``(seed, epoch)``; with ``augment_shift`` each
    batch shifted by its own seeded draw), cross entropy, and validation by loss and accuracy;
    :meth:`shard` gives the task of one rank of a data-parallel run.

    Raises:
        ValueError: the training split is empty.
    """

    count_unit = "image"

    def __init__(self, cfg: RunConfig, splits: dict[str, Images]):
        self.cfg = cfg
        self.train_set, self.valid_set = splits["train"], splits["valid"]
        if not len(self.train_set):
            raise ValueError(
                f"data: the training split of {cfg.data.dataset!r} is empty; nothing to train on"
            )
        self.batch_size = cfg.train.batch_size
        self.batches_per_epoch = -(-len(self.train_set) // self.batch_size)
        self.rank, self.world = 0, 1

    def shard(self, rank: int, world: int) -> ClassificationTask:
        """This task on rank ``rank`` of ``world``: batches of ``world x batch_size`` images
        (shifted as one), each cut by :func:`~qkv.parallel.sampler.share_of`; its batches are
        :class:`~qkv.parallel.sampler.Share` objects."""
        sharded = copy.copy(self)
        sharded.rank, sharded.world = rank, world
        sharded.batch_size = self.batch_size * world
        sharded.batches_per_epoch = -(-len(self.train_set) // sharded.batch_size)
        return sharded

    def batches(self, epoch: int, start: int) -> Iterator[tuple[Tensor, Tensor] | Share]:
        seed, shift = self.cfg.train.seed, self.cfg.data.augment_shift
        order = torch.randperm(
            len(self.train_set), generator=torch.Generator().manual_seed(seed * 100_003 + epoch)
        )
        for b in range(start, self.batches_per_epoch):
            index = order[b * self.batch_size : (b + 1) * self.batch_size]
            images = self.train_set.images[index]
            if shift:
                g = torch.Generator().manual_seed((seed * 100_003 + epoch) * 100_003 + b)
                images = random_shifts(images, max_shift=shift, generator=g)
            if self.world == 1:
                yield images, self.train_set.labels[index]
                continue
            share = share_of(range(len(index)), self.rank, self.world)
            yield share._replace(batch=(images[share.batch], self.train_set.labels[index][share.batch]))

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, int]:
        images, labels = batch
        loss = nn.functional.cross_entropy(
            model(images), labels, label_smoothing=self.cfg.train.label_smoothing
        )
        return loss, int(labels.shape[0])

    def validate(self, model: nn.Module) -> dict[str, float | None]:
        if not len(self.valid_set):
            return {"valid_loss": None}
        logits = predict_logits(model, self.valid_set.images)
        labels = self.valid_set.labels
        return {
            "valid_loss": float(nn.functional.cross_entropy(logits, labels)),
            "valid_accuracy": float((logits.argmax(-1) == labels).float().mean()),
        }


def train(cfg: RunConfig | None, out_dir: str | Path, **options: Any) -> TrainResult:
    """Train the image classifier a config describes (:func:`qkv.vision.config.resolve`): the
    data set's splits, the model, AdamW and a :class:`ClassificationTask` in a
    :class:`~qkv.train.loop.Trainer`. ``options``: ``resume``, ``progress``, ``stream``,
    ``stop_after_steps``, ``announce`` (the parameters, the training images and their classes),
    as :func:`qkv.application.run.fit_run` says."""
    return fit_run(cfg, out_dir, _trainer, config_type=RunConfig, **options)


def _trainer(cfg: RunConfig, ckpt, *, out: Path, progress: bool, stream, announce: bool) -> Trainer:
    """Data, model, optimizer and task of a config, in a Trainer (a resumed run's ``ckpt``
    restores it after)."""
    splits = load_splits(cfg.data)
    task = ClassificationTask(cfg, splits)
    facts = image_facts(splits["train"])
    model = build_image_model(cfg.model, image_size=facts["image_size"], channels=facts["channels"],
                              num_classes=len(facts["classes"]))  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    if announce:
        params = sum(p.numel() for p in model.parameters())
        print(f"model: vit, {params:,} parameters; {len(splits['train']):,} training images of "
              f"{len(facts['classes'])} classes, {facts['image_size']}x{facts['image_size']}", file=stream)  # fmt: skip
    return Trainer(model, opt, task, config=cfg.train, out_dir=out, run_config=cfg.to_dict(),
                   vocab=facts, desc="train vit", progress=progress, stream=stream)  # fmt: skip
