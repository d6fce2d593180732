"""Vision, an application of the qkv library: image data, a training recipe for the Vision
Transformer (:class:`qkv.models.vit.ViT`) and a classifier loaded from its checkpoint. Imported
only when used (``import qkv.vision``; ``import qkv`` does not load it).

- :mod:`qkv.vision.data`: scikit-learn's 8x8 digits, Fashion-MNIST (Debian's
  ``dataset-fashion-mnist``), a folder of class subfolders; seeded splits; random shifts.
- :mod:`qkv.vision.located`: :func:`located_digits`, a digit at a known spot among distractor
  strokes (images, labels and the digit's pixel boxes), for judging explanations.
- :mod:`qkv.vision.config`: the run config (:class:`RunConfig`: ``[data]``, ``[model]``,
  ``[train]``), model presets, :func:`resolve` and :func:`resume_config`.
- :mod:`qkv.vision.training`: :func:`train` (what ``qkv train --model vit`` runs) builds the
  splits, the model and a :class:`ClassificationTask` and runs :class:`qkv.train.loop.Trainer`.
- :mod:`qkv.vision.classifier`: :class:`Classifier`, a trained model loaded from a checkpoint:
  predict, evaluate (accuracy and the confusion matrix).

The layers: :mod:`qkv.vision` builds on :mod:`qkv.train` and the library; none of those imports it.
"""

from .classifier import Classifier, Evaluation
from .config import DATASETS, MODEL_PRESETS, DataConfig, RunConfig, VisionTrainConfig, resolve, resume_config
from .data import (
    ImageDataWarning,
    Images,
    load_digits,
    load_fashion_mnist,
    load_image_folder,
    random_shifts,
    split,
)
from .located import located_digits
from .training import ClassificationTask, load_splits, train

__all__ = [
    "DATASETS",
    "MODEL_PRESETS",
    "ClassificationTask",
    "Classifier",
    "DataConfig",
    "Evaluation",
    "ImageDataWarning",
    "Images",
    "RunConfig",
    "VisionTrainConfig",
    "load_digits",
    "load_fashion_mnist",
    "load_image_folder",
    "load_splits",
    "located_digits",
    "random_shifts",
    "resolve",
    "resume_config",
    "split",
    "train",
]
