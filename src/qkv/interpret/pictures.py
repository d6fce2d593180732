"""One input's attention, ready to show (:class:`AttentionPicture`): the maps of a model on one
input with their tokens, a title and a one-line summary. Here: a pretrained encoder on a sentence,
with token scores; an application adds its own (the translation one is
:func:`qkv.translation.pictures.translation_picture`). ``qkv viz`` writes these as the HTML viewer
(:func:`qkv.viz.save_html`) or a figure (:mod:`qkv.viz.heatmap`); the functions here compute,
they draw and write nothing.

Sentence (:func:`sentence_picture`): the encoder self-attention ``(L, H, T, T)`` over the
tokenizer's tokens (``[CLS]`` and ``[SEP]`` included) and token scores, each normalized by its
largest absolute value (:func:`qkv.interpret.token_scores`):

- ``rollout``: attention rollout (Abnar & Zuidema 2020), the mean over all output rows with
  each row's own token left out (what the other tokens mix into the mean-pooled embedding).
  It reads the attention alone and explains no output: on MiniLM nearly all of it goes to
  ``[CLS]`` (most heads park their attention there), so it is not the default;
- ``grad_rollout`` (the default): gradient-weighted rollout (Chefer et al. 2021) of the target
  ``y`` below, scored the same way: each map weighted by how much it moves ``y``;
- ``integrated_gradients``: integrated gradients (Sundararajan et al. 2017, Captum, ``pip
  install 'qkv[interpret]'``) of ``y`` with respect to the word embeddings; baseline: every word
  replaced by ``[PAD]``, ``[CLS]``/``[SEP]`` kept.

Target ``y`` of one sentence: its mean-pooled embedding ``e(x)`` measured along its own
direction, ``y = <e(x), e0 / |e0|>`` with ``e0`` the embedding of the sentence, held fixed
(``y = |e0|`` at the sentence; the gradient there is that of the norm). Of a pair ``A B``: the
cosine similarity ``cos(e(A), e(B))``, explained over A's tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .._types import AttentionMaps

__all__ = ["DEFAULT_METHODS", "SCORE_METHODS", "AttentionPicture", "sentence_picture", "short_title"]

#: The token-score methods of :func:`sentence_picture`, in the order they are computed.
SCORE_METHODS = ("rollout", "grad_rollout", "integrated_gradients")
#: What :func:`sentence_picture` (and ``qkv viz --model``) scores by default.
DEFAULT_METHODS = ("grad_rollout",)
# methods that explain a target (the embedding or a similarity); rollout reads the attention only
_EXPLAINING = ("grad_rollout", "integrated_gradients")
_TITLE_CHARS = 80


@dataclass
class AttentionPicture:
    """One input's attention (batch of one), its tokens and token scores, described.

    Attributes:
        maps: the attention maps, each layer ``(1, H, Tq, Tk)``.
        tokens: the tokens of a self-attention input (``list[str]``), or ``{"source": [...],
            "target": [...]}`` for a translation.
        title: the input (shortened), for a viewer or figure title.
        summary: one line: which maps, of how many layers, heads and tokens.
        scores: token-score method -> one score per token (see :data:`SCORE_METHODS`).
        notes: lines worth telling the user (a cut input, a similarity, the translation, the
            scores as text).
    """

    maps: AttentionMaps
    tokens: list[str] | dict[str, list[str]]
    title: str
    summary: str
    scores: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def short_title(text: str) -> str:
    """``text`` on one line (runs of whitespace made one space), cut to 80 characters with
    ``...`` when longer: a piece of a picture's title."""
    text = " ".join(text.split())
    return text if len(text) <= _TITLE_CHARS else text[: _TITLE_CHARS - 3] + "..."


def sentence_picture(
    model,
    tokenizer,
    sentence: str,
    *,
    other: str | None = None,
    methods: Sequence[str] = DEFAULT_METHODS,
    ig_steps: int = 32,
    name: str = "BERT",
    check_maps: Callable[[AttentionMaps], None] | None = None,
) -> AttentionPicture:
    """The encoder self-attention of ``model`` on ``sentence``, with token scores (see the
    module docstring).

    Args:
        model: a :class:`qkv.models.BertModel` (e.g. from :func:`qkv.interop.load_bert`).
        tokenizer: its tokenizer (:class:`qkv.interop.HFTokenizer`).
        sentence: the text to show.
        other: a second sentence: the scores then explain the cosine similarity of the two
            (printed in ``notes``); the maps stay those of ``sentence``.
        methods: token scores to compute, some of :data:`SCORE_METHODS` (may be empty;
            default :data:`DEFAULT_METHODS`).
        ig_steps: integration points of ``integrated_gradients``.
        name: the model's name in the title.
        check_maps: called with the maps before the (slower) scores are computed, e.g. to
            check a layer or head index; what it raises propagates.

    Returns:
        :class:`AttentionPicture` with ``maps.encoder`` = L x ``(1, H, T, T)`` and ``tokens``
        the ``T`` tokens.

    Raises:
        ValueError: a method not in :data:`SCORE_METHODS`.
        ImportError: ``integrated_gradients`` without Captum.
    """
    import torch

    from ..models.bert import mean_pool

    unknown = [m for m in methods if m not in SCORE_METHODS]
    if unknown:
        raise ValueError(f"methods: unknown {unknown}; expected some of {', '.join(SCORE_METHODS)}")
    batch = tokenizer([sentence])
    tokens = batch.tokens_of(0)
    notes = []
    if len(tokens) >= tokenizer.max_length:
        notes.append(f"note: the model reads at most {tokenizer.max_length} tokens; longer text is cut there")
    with torch.no_grad():
        out = model(**batch.model_inputs(), need_weights=True)
        own = mean_pool(out.last_hidden_state, batch.attention_mask)[0]  # (E,)
    maps = out.attentions
    if check_maps is not None:
        check_maps(maps)
    target, what, target_notes = _sentence_target(model, tokenizer, own, other)
    notes.extend(target_notes)
    scores = {
        method: _token_scores(method, model, batch, maps, target, pad_id=tokenizer.pad_id, ig_steps=ig_steps)
        for method in dict.fromkeys(methods)
    }
    notes.extend(_score_notes(tokens, scores, what))
    n_layers, n_heads = len(maps.encoder), maps.encoder[0].shape[1]
    title = f"{name}: {short_title(sentence)}"
    if other is not None:
        title += f"  (vs. {short_title(other)})"
    return AttentionPicture(
        maps=maps,
        tokens=tokens,
        title=title,
        summary=f"encoder self-attention, {n_layers} layers x {n_heads} heads x {len(tokens)} tokens",
        scores=scores,
        notes=notes,
    )


def _sentence_target(model, tokenizer, own, other: str | None) -> tuple[Callable, str, list[str]]:
    """``(target, what, notes)``: the ``y`` the gradient methods explain (see the module
    docstring) as a function of mean-pooled embeddings ``(N, E) -> (N,)``, what it is in words,
    and the notes it brings (the similarity of a pair). ``own``: the sentence's pooled ``(E,)``."""
    import torch.nn.functional as F

    if other is None:
        direction = own / own.norm().clamp_min(1e-12)  # (E,), held fixed

        def along_own(pooled):  # (N, E) -> (N,)
            return pooled @ direction

        return along_own, "the sentence embedding along its own direction", []
    reference = model.encode([other], tokenizer=tokenizer)[0]  # (E,), unit norm

    def similarity(pooled):  # (N, E) -> (N,)
        return F.normalize(pooled, dim=-1) @ reference

    notes = [f"cosine similarity: {float(similarity(own[None])[0]):.4f}"]
    return similarity, "the cosine similarity of the two sentences", notes


def _token_scores(
    method: str, model, batch, maps: AttentionMaps, target: Callable, *, pad_id: int, ig_steps: int
) -> list[float]:
    """One score per token of ``batch``'s only text by ``method`` (one of :data:`SCORE_METHODS`),
    normalized by :func:`qkv.interpret.token_scores`; ``target`` maps pooled embeddings
    ``(N, E)`` to the ``y (N,)`` the gradient methods explain."""
    import torch

    from ..models.bert import mean_pool
    from .gradients import grad_rollout, integrated_gradients
    from .rollout import rollout
    from .scores import token_scores

    mask, inputs = batch.attention_mask, batch.model_inputs()  # mask (1, T)
    if method == "rollout":
        relevance = rollout(maps)[0]  # (B, T, T) -> (T, T)
        s = token_scores(relevance, exclude_self=True)
    elif method == "grad_rollout":
        relevance = grad_rollout(model, inputs, lambda o: target(mean_pool(o.last_hidden_state, mask))[0])[
            0
        ]  # (T, T)
        s = token_scores(relevance, exclude_self=True)
    else:  # integrated gradients over the word embeddings, from every word made [PAD]
        words = model.embeddings.word(batch.input_ids).detach()  # (1, T, E)
        special = torch.tensor([t in ("[CLS]", "[SEP]") for t in batch.tokens_of(0)])  # (T,)
        pad = torch.full_like(batch.input_ids, pad_id).where(~special, batch.input_ids)
        baseline = model.embeddings.word(pad).detach()  # (1, T, E)

        def model_fn(x):  # (N, T, E) -> (N,)
            m = mask.expand(x.shape[0], -1)  # (N, T)
            return target(mean_pool(model(inputs_embeds=x, attention_mask=m).last_hidden_state, m))

        s = token_scores(integrated_gradients(model_fn, words, baseline, steps=ig_steps)[0])
    return [float(v) for v in s]


def _score_notes(tokens: list[str], scores: dict[str, list[float]], what: str) -> list[str]:
    """The scores as text: a header, one row per method, then what each method scores (rollout
    reads the attention alone; only the gradient methods explain ``what``). Bidi control
    characters in tokens are written as code points (:func:`qkv.viz.visible_text`)."""
    from ..viz import visible_text

    if not scores:
        return []
    width = max(len(m) for m in scores)
    lines = ["token scores (1 = the largest of each method):"]
    for method, values in scores.items():
        cells = "  ".join(f"{visible_text(t)} {v:+.2f}" for t, v in zip(tokens, values))
        lines.append(f"  {method:<{width}}  {cells}")
    if "rollout" in scores:
        lines.append(
            "rollout: from the attention alone (what the other tokens mix into each position); "
            "it explains no output"
        )
    explaining = [m for m in scores if m in _EXPLAINING]
    if explaining:
        lines.append(f"{' and '.join(explaining)}: explain{'s' if len(explaining) == 1 else ''} {what}")
    return lines
