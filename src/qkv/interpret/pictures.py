"""One input's attention, ready to show: the maps of a pretrained encoder on a sentence (with
token scores) or of a translation model on its own translation, with their tokens, a title and
a one-line summary. ``qkv viz`` writes these as the HTML viewer (:func:`qkv.viz.save_html`) or
a figure (:mod:`qkv.viz.heatmap`); the functions here compute, they draw and write nothing.

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

Translation (:func:`translation_picture`): the sentence is translated greedily, then the model
is run teacher-forced on its own output to collect every attention map: encoder and decoder
self-attention and cross-attention for a Transformer, cross-attention only for an RNN. Each
target position is the decoder step that emits that token, the last one ``<eos>``; so the
cross-attention rows are :class:`qkv.translation.Translation`'s ``attention``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .._types import AttentionMaps

__all__ = ["DEFAULT_METHODS", "SCORE_METHODS", "AttentionPicture", "sentence_picture", "translation_picture"]

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


def _short(text: str) -> str:
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
    import torch.nn.functional as F

    from ..models.bert import mean_pool
    from .gradients import grad_rollout, integrated_gradients
    from .rollout import rollout
    from .scores import token_scores

    unknown = [m for m in methods if m not in SCORE_METHODS]
    if unknown:
        raise ValueError(f"methods: unknown {unknown}; expected some of {', '.join(SCORE_METHODS)}")
    batch = tokenizer([sentence])
    tokens = batch.tokens_of(0)
    inputs = batch.model_inputs()
    notes = []
    if len(tokens) >= tokenizer.max_length:
        notes.append(f"note: the model reads at most {tokenizer.max_length} tokens; longer text is cut there")
    mask = batch.attention_mask  # (1, T)
    with torch.no_grad():
        out = model(**inputs, need_weights=True)
        own = mean_pool(out.last_hidden_state, mask)[0]  # (E,)
    maps = out.attentions
    if check_maps is not None:
        check_maps(maps)
    if other is None:
        direction = own / own.norm().clamp_min(1e-12)  # (E,), held fixed

        def target(pooled):  # (N, E) -> (N,)
            return pooled @ direction

        what = "the sentence embedding along its own direction"
    else:
        reference = model.encode([other], tokenizer=tokenizer)[0]  # (E,), unit norm

        def target(pooled):  # (N, E) -> (N,)
            return F.normalize(pooled, dim=-1) @ reference

        similarity = float(target(own[None])[0])
        notes.append(f"cosine similarity: {similarity:.4f}")
        what = "the cosine similarity of the two sentences"

    scores: dict[str, list[float]] = {}
    for method in dict.fromkeys(methods):
        if method == "rollout":
            relevance = rollout(maps)[0]  # (B, T, T) -> (T, T)
            s = token_scores(relevance, exclude_self=True)
        elif method == "grad_rollout":
            relevance = grad_rollout(
                model, inputs, lambda o: target(mean_pool(o.last_hidden_state, mask))[0]
            )[0]  # (T, T)
            s = token_scores(relevance, exclude_self=True)
        else:
            words = model.embeddings.word(batch.input_ids).detach()  # (1, T, E)
            special = torch.tensor([t in ("[CLS]", "[SEP]") for t in tokens])  # (T,)
            pad = torch.full_like(batch.input_ids, tokenizer.pad_id).where(~special, batch.input_ids)
            baseline = model.embeddings.word(pad).detach()  # (1, T, E)

            def model_fn(x):  # (N, T, E) -> (N,)
                m = mask.expand(x.shape[0], -1)  # (N, T)
                return target(mean_pool(model(inputs_embeds=x, attention_mask=m).last_hidden_state, m))

            s = token_scores(integrated_gradients(model_fn, words, baseline, steps=ig_steps)[0])
        scores[method] = [float(v) for v in s]
    notes.extend(_score_notes(tokens, scores, what))
    n_layers, n_heads = len(maps.encoder), maps.encoder[0].shape[1]
    title = f"{name}: {_short(sentence)}"
    if other is not None:
        title += f"  (vs. {_short(other)})"
    return AttentionPicture(
        maps=maps,
        tokens=tokens,
        title=title,
        summary=f"encoder self-attention, {n_layers} layers x {n_heads} heads x {len(tokens)} tokens",
        scores=scores,
        notes=notes,
    )


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
    import torch

    from ..data.tokenize import Tokenizer
    from ..translation.decode import greedy
    from ..viz import visible_text

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
        title=f"{kind}: {_short(sentence)} -> {_short(text)}",
        summary=(
            f"{', '.join(parts)} (layers x heads), {len(source_tokens)} source x "
            f"{len(target_tokens)} target tokens"
        ),
        notes=[f"translation: {visible_text(text)}"],
    )
