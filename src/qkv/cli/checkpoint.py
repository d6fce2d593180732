"""The arguments of a trained translator, shared by ``qkv translate`` and ``qkv evaluate``:
``--checkpoint DIR`` (a run directory of ``qkv train``), ``--beam K`` and ``--alpha A``."""

from __future__ import annotations

import argparse

from . import USER_ERRORS, CommandError, error_message

__all__ = ["add_checkpoint_options", "load_translator"]


def add_checkpoint_options(p: argparse.ArgumentParser) -> None:
    """Add ``--checkpoint`` (required), ``--beam`` and ``--alpha`` to ``p``."""
    p.add_argument("--checkpoint", required=True, help="a run directory of qkv train")
    p.add_argument("--beam", type=int, default=1, help="beam size (1 = greedy)")
    p.add_argument("--alpha", type=float, default=1.0, help="length normalization exponent of beam search")


def load_translator(path: str):
    """The :class:`~qkv.translation.translator.Translator` saved in ``path``; a missing or
    unreadable run is a :class:`CommandError` naming ``--checkpoint``."""
    from ..translation.translator import Translator

    try:
        return Translator.load(path)
    except USER_ERRORS as e:
        raise CommandError(f"--checkpoint: {error_message(e)}") from None
