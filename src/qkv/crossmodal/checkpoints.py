"""A trained cross-modal model from a run directory: what :class:`~qkv.crossmodal.matcher.Matcher`,
:class:`~qkv.crossmodal.captioner.Captioner` and :class:`~qkv.crossmodal.answerer.Answerer` load."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ..application.run import load_trained
from .captions import CaptionTokenizer

__all__ = ["load_model"]


def load_model(
    checkpoint: str | Path,
    *,
    best: bool,
    kinds: dict[str, Any],
    needs: str,
    what: str,
    build: Callable[[dict[str, Any], dict[str, Any]], tuple[nn.Module, CaptionTokenizer]],
    default_kind: str | None = None,
) -> tuple[nn.Module, CaptionTokenizer, dict[str, Any], dict[str, Any], Path]:
    """The model (its weights restored), tokenizer, run config, data facts and checkpoint path
    of a run directory (its ``best/`` checkpoint when ``best`` and there is one, else the latest).

    Args:
        kinds: the ``[model]`` kinds the caller loads (a missing kind is ``default_kind``).
        needs: a key the stored facts of those kinds hold.
        what: what the caller loads, for the error (``"a captioner's"``).
        build: ``(model table, facts) -> (model, tokenizer)``.

    Raises:
        ValueError: the checkpoint is not of one of ``kinds`` (``checkpoint: '...' is not
            a captioner's (its model kind is 'clip')``).
    """
    ck = load_trained(checkpoint, best=best)
    facts, kind = ck.vocab, ck.config.get("model", {}).get("kind", default_kind)
    if kind not in kinds or not isinstance(facts, dict) or needs not in facts:
        raise ValueError(f"checkpoint: {str(ck.path)!r} is not {what} (its model kind is {kind!r})")
    model, tokenizer = build(ck.config["model"], facts)
    ck.restore(model, rng=False)
    return model, tokenizer, ck.config, facts, ck.path
