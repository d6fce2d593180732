"""``import qkv`` loads the attention library only: no training loop, no application, no CLI,
no Hugging Face interop and none of the heavy optional dependencies; the applications load when
imported by name. Each check runs in a fresh interpreter, where ``sys.modules`` starts empty."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: What ``import qkv`` loads: the library.
LIBRARY = (
    "api",
    "masks",
    "backends",
    "functional",
    "modules",
    "models",
    "capture",
    "explain",
    "interpret",
    "viz",
)
#: What it must not load: the applications, their runs and the training loop beneath them, the
#: commands, interop.
NOT_LOADED = (
    "qkv.train",
    "qkv.parallel",
    "qkv.application",
    "qkv.translation",
    "qkv.vision",
    "qkv.crossmodal",
    "qkv.speech",
    "qkv.number_words",
    "qkv.distributed",
    "qkv.cli",
    "qkv.interop",
    "qkv.examples",
)
#: Optional dependencies that only applications, interop or figures need.
HEAVY = (
    "tqdm",
    "transformers",
    "matplotlib",
    "captum",
    "sacrebleu",
    "tokenizers",
    "safetensors",
    "sklearn",
    "PIL",
    "conllu",
)

# Prints, as JSON, the modules loaded by `import torch` alone and then by `import qkv`.
_PROBE = """
import json, sys
import torch
after_torch = sorted(sys.modules)
import qkv
print(json.dumps({"torch": after_torch, "qkv": sorted(sys.modules),
                  "library": [hasattr(qkv, n) for n in %r]}))
"""


def _fresh(code: str) -> str:
    """stdout of ``code`` run by a new interpreter on this source tree."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def loaded() -> dict:
    return json.loads(_fresh(_PROBE % (LIBRARY,)))


def _under(modules: list[str], package: str) -> list[str]:
    return [m for m in modules if m == package or m.startswith(package + ".")]


def test_import_qkv_loads_the_library(loaded):
    assert loaded["library"] == [True] * len(LIBRARY)


@pytest.mark.parametrize("package", NOT_LOADED)
def test_import_qkv_loads_no_application_nor_training(loaded, package):
    assert _under(loaded["qkv"], package) == []


@pytest.mark.parametrize("dependency", HEAVY)
def test_import_qkv_loads_no_heavy_dependency(loaded, dependency):
    # torch itself may load some (torch.hub imports tqdm when it is installed): qkv adds none
    added = set(loaded["qkv"]) - set(loaded["torch"])
    assert _under(sorted(added), dependency) == []


def test_import_qkv_translation_loads_the_application_and_its_trainer():
    code = (
        "import json, sys\n"
        "import qkv.translation\n"
        "from qkv.translation.data import SPECIALS, WordTokenizer\n"
        "tok = WordTokenizer.build(['a b c'])\n"
        "print(json.dumps({'ids': tok.encode('a b c'), 'specials': len(SPECIALS),\n"
        "                  'train': 'qkv.train.loop' in sys.modules,\n"
        "                  'picture': qkv.translation.translation_picture.__module__}))\n"
    )
    out = json.loads(_fresh(code))
    # four special ids first (<pad> 0, <sos> 1, <eos> 2, <unk> 3), then the words
    assert out == {"ids": [4, 5, 6], "specials": 4, "train": True, "picture": "qkv.translation.pictures"}


# Blocks every optional dependency (an import of any of them raises ImportError, as when it is
# not installed), then runs the commands that need only the core: `pip install qkv` alone.
_CORE_ONLY = """
import sys
for name in %r:
    sys.modules[name] = None
from qkv.cli.main import main
codes = [main(["--help"]), main(["train", "--help"]), main(["explain"]), main(["demo", "--help"]), main(["viz", "--help"]), main(["analyze", "--help"])]
print(codes)
"""
#: What the extras bring (pyproject.toml): none of it is needed by the core commands.
EXTRAS = (*HEAVY, "tomli_w", "num2words", "babel")


def test_the_commands_run_with_the_core_dependencies_alone():
    """With only torch and numpy (``pip install qkv``), every command's help and ``qkv explain``
    work: no extra is imported to build the parser."""
    out = _fresh(_CORE_ONLY % (EXTRAS,))
    assert out.strip().splitlines()[-1] == "[0, 0, 0, 0, 0, 0]"


def test_import_qkv_vision_loads_its_trainer_but_not_translation_nor_the_image_readers():
    code = (
        "import json, sys\n"
        "import qkv.vision\n"
        "print(json.dumps({'train': 'qkv.train.loop' in sys.modules,\n"
        "                  'others': sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'PIL')\n"
        "                                   or m.startswith('qkv.translation')),\n"
        "                  'classifier': qkv.vision.Classifier.__module__}))\n"
    )
    out = json.loads(_fresh(code))
    # scikit-learn and Pillow load when a data set is read, never on import
    assert out == {"train": True, "others": [], "classifier": "qkv.vision.classifier"}
