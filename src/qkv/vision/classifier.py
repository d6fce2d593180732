"""A trained image classifier loaded from a run directory: predict, evaluate, explain."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..application.run import load_trained
from ..interpret.image import ImageExplanation, explain_image
from ..interpret.image_attention import record_attention
from ..models.builders import build_image_model
from .training import predict_logits

__all__ = ["Classifier", "Evaluation"]


@dataclass(frozen=True)
class Evaluation:
    """What :meth:`Classifier.evaluate` measures.

    Attributes:
        n: images evaluated.
        accuracy: the fraction classified right.
        confusion: ``(K, K)`` int64, ``confusion[true, predicted]`` counts.
        classes: the class names, by label.
    """

    n: int
    accuracy: float
    confusion: Tensor
    classes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"n", "accuracy", "classes", "confusion": [[...], ...]}``."""
        return {"n": self.n, "accuracy": self.accuracy, "classes": list(self.classes),
                "confusion": self.confusion.tolist()}  # fmt: skip


class Classifier:
    """An image model with its image facts (size, channels, class names), loaded from a run
    directory by :meth:`load` (its ``best/`` checkpoint when there is one, else the latest).

    Attributes:
        model: the model, in eval mode.
        config: the run's config (``data``, ``model``, ``train`` tables).
        classes: the class names, by label.
        image_size, channels: what :meth:`predict` expects, ``(N, channels, image_size, image_size)``.
        path: the checkpoint directory it was loaded from.
    """

    def __init__(
        self, model: nn.Module, config: dict[str, Any], facts: dict[str, Any], *, path: Path | None = None
    ):
        self.model, self.config, self.path = model.eval(), config, path
        self.classes = tuple(facts["classes"])
        self.image_size, self.channels = int(facts["image_size"]), int(facts["channels"])

    @classmethod
    def load(cls, checkpoint: str | Path, *, best: bool = True) -> Classifier:
        """The classifier of a ``qkv train --model vit`` run directory (or of one checkpoint)."""
        ck = load_trained(checkpoint, best=best)
        facts = ck.vocab
        if not isinstance(facts, dict) or "classes" not in facts:
            raise ValueError(
                f"checkpoint: {str(ck.path)!r} is not an image classifier's (no image facts stored)"
            )
        model = build_image_model(ck.config["model"], image_size=facts["image_size"], channels=facts["channels"],
                                  num_classes=len(facts["classes"]))  # fmt: skip
        ck.restore(model, rng=False)
        return cls(model, ck.config, facts, path=ck.path)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def describe(self) -> str:
        """``"vit, 12,345 parameters, 10 classes, 8x8 images"``."""
        kind = self.config.get("model", {}).get("kind", "vit")
        return (f"{kind}, {self.num_parameters:,} parameters, {len(self.classes)} classes, "
                f"{self.image_size}x{self.image_size} images")  # fmt: skip

    def predict(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Labels ``(N,)`` int64 and class probabilities ``(N, K)`` of ``images (N, C, H, W)``
        (float in [0, 1], as in training).

        Raises:
            ValueError: ``images`` is not ``(N, channels, image_size, image_size)``.
        """
        probs = torch.softmax(predict_logits(self.model, images.float()), dim=-1)  # (N, K)
        return probs.argmax(dim=-1), probs

    def evaluate(self, images: Tensor, labels: Tensor) -> Evaluation:
        """Accuracy and the confusion matrix on ``images (N, C, H, W)`` with true ``labels (N,)``."""
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"labels: expected shape ({images.shape[0]},) (one per image), got {tuple(labels.shape)}"
            )
        k = len(self.classes)
        predicted, _ = self.predict(images)
        confusion = torch.bincount(labels.long() * k + predicted, minlength=k * k).reshape(k, k)
        n = int(labels.shape[0])
        accuracy = float((predicted == labels).float().mean()) if n else 0.0
        return Evaluation(n=n, accuracy=accuracy, confusion=confusion, classes=self.classes)

    def check_images(self, images: object) -> Tensor:
        """``images`` as float ``(N, channels, image_size, image_size)`` (one ``(C, H, W)`` image: N = 1)."""
        want = f"(N, {self.channels}, {self.image_size}, {self.image_size})"
        if not isinstance(images, Tensor) or images.dim() not in (3, 4):
            got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images: expected a tensor {want} or one image (C, H, W), got {got}")
        x = images.float() if images.dim() == 4 else images.float().unsqueeze(0)
        if tuple(x.shape[1:]) != (self.channels, self.image_size, self.image_size):
            raise ValueError(f"images: expected {want}, got {tuple(images.shape)}")
        return x

    def explain(
        self, images: Tensor, method: str = "rollout", target=None, *, steps: int = 32
    ) -> ImageExplanation:
        """Which pixels decided the class of ``images``: :func:`qkv.interpret.explain_image` on
        this model.

        Args:
            images: ``(N, channels, image_size, image_size)`` (or one ``(C, H, W)`` image), float
                in [0, 1] as :meth:`predict` takes them.
            method: ``"attention"``, ``"rollout"`` (the default), ``"grad"``, ``"gradcam"`` or ``"ig"``
                (:data:`qkv.interpret.IMAGE_METHODS`).
            target: the class ``grad``, ``gradcam`` and ``ig`` explain: ``None`` (the predicted
                class), one class, or one per image.
            steps: integration points of ``ig``.

        Returns:
            the :class:`~qkv.interpret.ImageExplanation`: ``pixels (N, H, W)``, ``patches (N, h, w)``.

        Raises:
            ValueError: images of another shape, an unknown method, a bad target.
            ImportError: ``ig`` without Captum.
        """
        return explain_image(self.model, self.check_images(images), method=method, target=target, steps=steps)

    def attention(self, images: Tensor) -> list[Tensor]:
        """Every layer's self-attention on ``images`` (as :meth:`explain` takes them): one
        ``(N, heads, T, T)`` per layer, ``T`` = the class token + the patches, exact weights."""
        x = self.check_images(images)
        with torch.no_grad(), record_attention(self.model) as layers:
            self.model(x)
        return layers()
