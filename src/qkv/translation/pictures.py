"""A translation model's attention on one sentence, ready to show (``qkv viz --checkpoint``).

:func:`translation_picture`: the sentence is translated greedily, then the model is run
teacher-forced on its own output to collect every attention map: encoder and decoder
self-attention and cross-attention for a Transformer, cross-attention only for an RNN. Each
target position is the decoder step that emits that token, the last one ``<eos>``; so the
cross-attention rows are :class:`qkv.translation.Translation`'s ``attention``. The result is a
:class:`qkv.interpret.pictures.AttentionPicture`, drawn by :mod:`qkv.viz` like any other.
"""

from __future__ import annotations

import torch

from ..interpret.pictures import AttentionPicture, short_title
from ..viz import visible_text
from .data.tokenize import Tokenizer
from .decode import greedy

__all__ = ["translation_picture"]


def translation_picture(translator, sentence: str) -> AttentionPicture:
    """Every attention map of a translation model on ``sentence`` and its own greedy
    translation (see the module docstring).

    Args:
        translator: a :class:`qkv.translation.Translator` (e.g. ``Translator.load(run)``).
        sentence: the source text.

    Returns:
        :class:`AttentionPicture` with ``tokens = {"source": S tokens, "target": T + 1 tokens}``
        (the translation, then ``<eos>``) and the maps of each kind, each layer ``(1, H, T + 1,
        S)`` for cross-attention; ``notes`` holds ``"translation: ..."``.

    Raises:
        ValueError: the model has no attention (a fixed-context decoder).
    """
    tr = translator
    ids = tr.src_tok.encode(sentence) or [Tokenizer.UNK]
    src = torch.tensor([ids], dtype=torch.long)  # (1, S)
    lengths = torch.tensor([len(ids)], dtype=torch.long)  # (1,)
    tr.model.eval()
    hyp = greedy(tr.model, src, lengths, max_len=tr.max_len([sentence]))[0]
    text = " ".join(tr.tgt_tok.decode(hyp.tokens).split())
    tgt_in = torch.tensor([[Tokenizer.SOS, *hyp.tokens]], dtype=torch.long)  # (1, T + 1)
    with torch.no_grad():
        _, maps = tr.model(src, lengths, tgt_in, need_weights=True)
    if not maps.kinds():
        raise ValueError(
            f"this model ({tr.config['model'].get('attention', 'none')}) has no attention to show: "
            "its decoder reads one fixed context vector"
        )
    source_tokens = tr.src_tok.tokens(sentence)
    if len(source_tokens) != len(ids):  # words the vocabulary lacks show as <unk>
        source_tokens = [tr.src_tok.id_to_token(i) for i in ids]
    target_tokens = [*(tr.tgt_tok.id_to_token(i) for i in hyp.tokens), "<eos>"]
    parts = [
        f"{kind} {len(layers)}x{layers[0].shape[1]}" for kind, layers in maps.kinds().items()
    ]  # layers x heads of each kind
    kind = tr.config["model"].get("attention") or tr.config["model"].get("kind", "model")
    return AttentionPicture(
        maps=maps,
        tokens={"source": source_tokens, "target": target_tokens},
        title=f"{kind}: {short_title(sentence)} -> {short_title(text)}",
        summary=(
            f"{', '.join(parts)} (layers x heads), {len(source_tokens)} source x "
            f"{len(target_tokens)} target tokens"
        ),
        notes=[f"translation: {visible_text(text)}"],
    )
