"""Which input tokens matter: attention rollout and flow (Abnar & Zuidema 2020),
gradient-weighted rollout (Chefer et al. 2021), integrated gradients (Sundararajan et al. 2017,
through Captum: ``pip install 'qkv[interpret]'``), and :func:`token_scores` for viewers.

Every method ends in token scores ``(T,)``: rollout-like results are ``(T, T)`` matrices (row
``i``: what reaches output position ``i``) that :func:`token_scores` reduces.

:mod:`qkv.interpret.pictures`: one input's attention ready to show (``qkv viz``,
:class:`AttentionPicture`): a sentence through a pretrained encoder with its token scores
(:func:`sentence_picture`). An application adds its own pictures (a translation model on its
own translation: :func:`qkv.translation.pictures.translation_picture`).
"""

from .flow import flow
from .gradients import grad_rollout, integrated_gradients
from .pictures import AttentionPicture, sentence_picture
from .rollout import layer_matrices, rollout
from .scores import token_scores

__all__ = [
    "AttentionPicture",
    "flow",
    "grad_rollout",
    "integrated_gradients",
    "layer_matrices",
    "rollout",
    "sentence_picture",
    "token_scores",
]
