"""Which input tokens matter: attention rollout and flow (Abnar & Zuidema 2020),
gradient-weighted rollout (Chefer et al. 2021), integrated gradients (Sundararajan et al. 2017,
through Captum: ``pip install 'qkv[interpret]'``), and :func:`token_scores` for viewers.

Images (:func:`explain_image`): the same methods, and Grad-CAM, on an image transformer (qkv's
ViT, Hugging Face's, timm's), as maps over the pixels and the patch grid, the grid and the class
token read from the model (:mod:`qkv.interpret.patch_grid`).

Image-text matching (:func:`match_relevance`): which patches and which words made a CLIP-style
similarity high, gradient-weighted relevance through both towers (:mod:`qkv.interpret.matching`).

Every text method ends in token scores ``(T,)``: rollout-like results are ``(T, T)`` matrices (row
``i``: what reaches output position ``i``) that :func:`token_scores` reduces.

:mod:`qkv.interpret.pictures`: one input's attention ready to show (``qkv viz``,
:class:`AttentionPicture`): a sentence through a pretrained encoder with its token scores
(:func:`sentence_picture`). An application adds its own pictures (a translation model on its
own translation: :func:`qkv.translation.pictures.translation_picture`).

Syntax (:mod:`qkv.interpret.syntax`, Clark et al. 2019): :func:`analyze_syntax` measures, on a
dependency treebank read by :func:`read_conllu` (``pip install 'qkv[syntax]'``), which heads of
a BERT attend from each dependent to its head, per relation, against fixed-offset baselines with
bootstrap intervals, and the attention probes' UAS; :func:`syntax_figure` draws heads x
relations; :func:`save_syntax_page` writes one sentence's viewer page, its gold arcs above the
head view and each relation's best heads marked (:mod:`qkv.interpret.syntax_page`).
"""

from .flow import flow
from .gradients import grad_rollout, gradient_relevance, integrated_gradients
from .image import IMAGE_METHODS, ImageExplanation, explain_image
from .matching import MatchRelevance, match_relevance
from .patch_grid import PatchGrid, patch_grid
from .pictures import AttentionPicture, sentence_picture
from .rollout import layer_matrices, rollout
from .scores import token_scores
from .syntax import SyntaxReport, analyze_syntax, syntax_figure
from .syntax_page import save_syntax_page
from .treebank import Sentence, read_conllu

__all__ = [
    "IMAGE_METHODS",
    "AttentionPicture",
    "ImageExplanation",
    "MatchRelevance",
    "PatchGrid",
    "Sentence",
    "SyntaxReport",
    "analyze_syntax",
    "explain_image",
    "flow",
    "grad_rollout",
    "gradient_relevance",
    "integrated_gradients",
    "layer_matrices",
    "match_relevance",
    "patch_grid",
    "read_conllu",
    "rollout",
    "save_syntax_page",
    "sentence_picture",
    "syntax_figure",
    "token_scores",
]
