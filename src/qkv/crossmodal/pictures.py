"""One image's caption with each word's cross-attention, ready to show (``qkv viz`` on a
captioner's checkpoint): the viewer's cross-modal page (:func:`qkv.viz.save_crossmodal_html`)
and one overlay per word (:func:`qkv.viz.image_word_maps`).

The caption is decoded (beam search, :meth:`qkv.crossmodal.Captioner.caption`), then the
decoder is run teacher-forced on it once more to read every map: a
:class:`~qkv.models.captioner.CaptionTransformer` gives each layer's cross-attention per head
``(L, heads, n, N)``; Show, Attend and Tell its one additive attention ``(1, 1, n, N)``. Row
``i`` is the step that wrote word ``i``, so the last layer's mean over heads is the caption's
own ``attention``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..models.captioner import CaptionTransformer
from .captioner import Caption, Captioner
from .images import check_images

__all__ = ["CaptionPicture", "caption_picture", "word_attention"]


@dataclass
class CaptionPicture:
    """What the cross-modal page and the word overlays show.

    Attributes:
        image: ``(C, H, W)`` in [0, 1].
        caption: the :class:`~qkv.crossmodal.Caption` decoded.
        attention: ``(L, heads, n, N)``, each word's weights over the ``N`` patches.
        grid: the patch grid ``(h, w)``.
        title: what the picture shows.
    """

    image: Tensor
    caption: Caption
    attention: Tensor
    grid: tuple[int, int]
    title: str

    @property
    def words(self) -> list[str]:
        return self.caption.words

    def word_maps(self) -> Tensor:
        """``(n, h, w)``: each word's attention as the caption reports it (the last layer's
        mean over heads), on the patch grid."""
        return self.attention[-1].mean(0).unflatten(-1, self.grid)


@torch.no_grad()
def word_attention(captioner: Captioner, image: Tensor, tokens: list[int]) -> Tensor:
    """``(L, heads, n, N)``: the cross-attention of each of the ``n`` words ``tokens`` (ids, no
    ``<start>``/``<end>``) on ``image (C, H, W)``, teacher-forced (module docstring)."""
    model, cfg = captioner.model, captioner.model.config
    x = check_images(image, captioner.image_shape)  # (1, C, H, W)
    words_in = torch.tensor([[cfg.start_id, *tokens]], dtype=torch.long)  # (1, n + 1)
    if isinstance(model, CaptionTransformer):
        _, maps = model.decode(words_in, model.encode(x)["features"])
        return torch.stack([w[0, :, : len(tokens)] for w in maps.cross])  # L x (heads, n, N)
    _, attention = model(x, words_in)  # (1, n + 1, N)
    return attention[0, : len(tokens)][None, None]  # (1, 1, n, N)


def caption_picture(
    captioner: Captioner, image: Tensor, *, beam: int = 3, name: str = "image"
) -> CaptionPicture:
    """The caption of ``image (C, H, W)`` by beam search of ``beam`` and every cross-attention
    map of its words.

    Raises:
        ValueError: an image of the wrong shape, a bad ``beam``.
    """
    x = check_images(image, captioner.image_shape)[0]  # (C, H, W)
    caption = captioner.caption(x, beam=beam)[0]
    tokens = [captioner.tokenizer.ids[w] for w in caption.words]
    attention = word_attention(captioner, x, tokens)
    layers, heads = attention.shape[:2]
    shape = f"{layers} layers x {heads} heads" if heads > 1 or layers > 1 else "one map"
    title = f"{name}: {caption.text!r} ({type(captioner.model).__name__}, {shape})"
    return CaptionPicture(x, caption, attention, tuple(captioner.model.grid), title)
