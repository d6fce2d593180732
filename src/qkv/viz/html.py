"""One self-contained HTML file to explore attention: head view, model view, matrix view.

The page needs nothing but itself: the JavaScript and CSS are read from this package's
``templates/`` and inlined, the weights are embedded, and it opens from ``file://`` with no
network (no CDN, no font, no URL at all).

Data contract
-------------

``data`` is :class:`qkv.AttentionMaps`, a mapping from kind to weights, or one array:

- kinds: ``"encoder"`` (source self-attention, ``Tq = Tk = Ts``), ``"decoder"`` (target
  self-attention, ``Tq = Tk = Tt``), ``"cross"`` (target queries over source keys,
  ``Tq = Tt``, ``Tk = Ts``); a bare array is ``"encoder"`` (self-attention of one sequence);
- weights of a kind: a list over layers of ``(B, H, Tq, Tk)`` (batch ``batch_index`` is shown,
  as :class:`~qkv.AttentionMaps` holds them) or ``(H, Tq, Tk)``; or one array
  ``(L, H, Tq, Tk)``, ``(L, B, H, Tq, Tk)``, ``(H, Tq, Tk)`` (one layer) or ``(Tq, Tk)``.
  Tensors, numpy arrays and nested lists are all accepted; values must be finite.

``tokens`` is one list (self-attention: used for every side) or
``{"source": [...], "target": [...]}``; ``None`` numbers the positions. ``scores`` optionally
maps a method name to one value per token, e.g. ``{"rollout": [...], "integrated_gradients":
[...]}``: a plain list belongs to the source tokens (the only sequence of self-attention), a
``{"source": [...], "target": [...]}`` mapping names the sides.

Storage: each ``(Tq, Tk)`` head matrix is quantized to 16 bits over its own range
``[min, max]`` (absolute error at most ``(max - min) / 131070``, below 1e-5 for weights in
[0, 1]) and embedded as base64: 2.7 bytes per weight, so all-MiniLM-L6-v2 on 128 tokens
(6 layers x 12 heads x 128 x 128 = 1.2M weights) is a 3.2 MB page.

Safety: the data sits in ``<script type="application/json" id="qkv-data">`` with ``<``, ``>``,
``&``, U+2028 and U+2029 written as ``\\uXXXX`` escapes, so no token can close the script
element; the page puts tokens on screen only through ``textContent``, attribute setters and
canvas ``fillText``, never as HTML. Bidirectional control characters (U+202E and the others of
:data:`qkv.viz._inputs.BIDI_CONTROLS`) in tokens or the title are shown as their code points,
``⟨U+202E⟩``, never applied; the embedded data keeps the exact strings.

Labels: the axes are named by the kind of attention. A page of one sequence (BERT, or any
self-attention given one token list) calls it "tokens" and its axes "queries" and "keys"; a
translation (source and target) says which side each axis is: "queries (target)" and
"keys (source)" for cross-attention.

Head view: every head of the layer at once, one colour per head, overlaid (as BertViz draws
it); the Head selector (or the arrow keys) shows one.

Dependency arcs (``arcs``, ``best_heads``; :mod:`qkv.viz._arcs`): a tree over the encoder's
tokens is drawn above the head view, one labelled arc from each head to its dependent; the
Relation selector highlights that relation's arcs, opens the first of its best heads (the
others are buttons beside it and dashed in the model view) and dashes its gold pairs in the
head view (dependent -> head, or head -> dependent for a head measured that way round). A page
without arcs has neither.

Test hook: ``window.qkvViewer`` (``ready``, ``state()``, ``labels()``, ``lines`` (the heads and
colours last drawn), ``visible(text)``, ``setKind/setLayer/setHead/setView/setRelation``,
``weight(kind, layer, head, i, j)``, ``matrixWeightAt(clientX, clientY)``,
``matrixCellCenter(i, j)``, ``headTokenCenter(side, i)``, ``arcs()`` (each arc drawn: ``rel``,
``head``, ``dep``, ``on``), ``relation()`` (``name``, the ``marked`` thumbnails, the
``pressed`` best-head button, the ``gold`` pairs dashed), ``timings``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from .._types import AttentionMaps
from ._arcs import arcs_payload
from ._inputs import as_float, labels, stack_layers
from ._page import quantize, render_page

__all__ = ["KINDS", "VIEWS", "render_html", "save_html"]

KINDS = ("encoder", "decoder", "cross")
VIEWS = ("head", "model", "matrix")
# (query side, key side) of each kind
_SIDES = {"encoder": ("source", "source"), "decoder": ("target", "target"), "cross": ("target", "source")}


def _by_kind(data: object) -> dict[str, object]:
    if isinstance(data, AttentionMaps):
        kinds: dict[str, object] = dict(data.kinds())
    elif isinstance(data, Mapping):
        unknown = [k for k in data if k not in KINDS]
        if unknown:
            raise ValueError(
                f"data: unknown attention kind {unknown[0]!r}; expected some of {', '.join(KINDS)}"
            )
        kinds = {k: data[k] for k in KINDS if k in data and data[k] is not None}
    else:
        kinds = {"encoder": data}
    if not kinds:
        raise ValueError(f"data: no attention weights given (expected at least one of {', '.join(KINDS)})")
    return kinds


def _side_lengths(weights: dict[str, Tensor]) -> dict[str, int]:
    """Token count of each side, checked for agreement between kinds."""
    lengths: dict[str, int] = {}
    for kind, w in weights.items():
        q_side, k_side = _SIDES[kind]
        for side, n, what in ((q_side, w.shape[2], "query"), (k_side, w.shape[3], "key")):
            if side in lengths and lengths[side] != n:
                raise ValueError(
                    f"data: the {kind} attention has {n} {what} positions but another kind has "
                    f"{lengths[side]} {side} tokens"
                )
            lengths[side] = n
    return lengths


def _tokens(tokens: object, lengths: dict[str, int]) -> dict[str, list[str]]:
    if tokens is None:
        return {side: [str(i) for i in range(n)] for side, n in lengths.items()}
    if isinstance(tokens, Mapping):
        unknown = [k for k in tokens if k not in ("source", "target")]
        if unknown:
            raise ValueError(f"tokens: unknown side {unknown[0]!r}; expected 'source' and/or 'target'")
        out = {}
        for side, n in lengths.items():
            if side not in tokens:
                raise ValueError(f"tokens: the attention needs {side} tokens ({n} of them), got none")
            out[side] = labels(
                f"tokens[{side!r}]", tokens[side], n, what=f"({side} positions of the attention)"
            )
        return out
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"tokens: one list was given but the source has {lengths['source']} and the target "
            f"{lengths['target']} positions; pass {{'source': [...], 'target': [...]}}"
        )
    n = next(iter(lengths.values()))
    one = labels("tokens", tokens, n, what="(positions of the attention)")
    return dict.fromkeys(lengths, one)


def _scores(scores: object, token_lists: dict[str, list[str]]) -> list[dict]:
    if scores is None:
        return []
    if not isinstance(scores, Mapping):
        raise TypeError(
            f"scores: expected a mapping from method name to per-token values, got {type(scores).__name__}"
        )
    default_side = "source" if "source" in token_lists else "target"
    out = []
    for method, values in scores.items():
        by_side = values if isinstance(values, Mapping) else {default_side: values}
        for side, v in by_side.items():
            name = f"scores[{method!r}][{side!r}]" if isinstance(values, Mapping) else f"scores[{method!r}]"
            if side not in token_lists:
                raise ValueError(f"{name}: there are no {side!r} tokens (sides: {', '.join(token_lists)})")
            t = as_float(name, v, ndim=1, what="per-token")
            if t.shape[0] != len(token_lists[side]):
                raise ValueError(
                    f"{name}: expected {len(token_lists[side])} values (one per {side} token), got {t.shape[0]}"
                )
            if not torch.isfinite(t).all():
                raise ValueError(f"{name}: expected finite values, got NaN or inf")
            out.append({"name": str(method), "side": side, "values": [round(x, 6) for x in t.tolist()]})
    return out


def _payload(
    data, tokens, *, title: str, scores, batch_index: int, view: str, arcs=None, best_heads=None
) -> dict:
    if view not in VIEWS:
        raise ValueError(f"view: expected one of {', '.join(VIEWS)}, got {view!r}")
    weights = {}
    for kind, value in _by_kind(data).items():
        w = stack_layers(f"data[{kind!r}]", value, batch_index=batch_index)  # (L, H, Tq, Tk)
        if w.shape[2] == 0 or w.shape[3] == 0 or w.shape[0] == 0 or w.shape[1] == 0:
            raise ValueError(
                f"data[{kind!r}]: expected at least one layer, head, query and key, got {tuple(w.shape)}"
            )
        if kind != "cross" and w.shape[2] != w.shape[3]:
            raise ValueError(f"data[{kind!r}]: self-attention needs Tq == Tk, got shape {tuple(w.shape)}")
        bad = ~torch.isfinite(w)
        if bad.any():
            layer, head = (int(i) for i in bad.nonzero()[0][:2])
            raise ValueError(f"data[{kind!r}]: non-finite weight (NaN or inf) in layer {layer}, head {head}")
        weights[kind] = w
    token_lists = _tokens(tokens, _side_lengths(weights))
    # one sequence (BERT): its tokens are "tokens"; a translation names its sides
    one_sequence = len(token_lists) == 1
    kinds = []
    for kind, w in weights.items():
        lo, hi, blob = quantize(w)
        q_side, k_side = _SIDES[kind]
        kinds.append(
            {
                "name": kind,
                "layers": w.shape[0],
                "heads": w.shape[1],
                "tq": w.shape[2],
                "tk": w.shape[3],
                "queries": q_side,
                "keys": k_side,
                "queryLabel": "queries" if one_sequence else f"queries ({q_side})",
                "keyLabel": "keys" if one_sequence else f"keys ({k_side})",
                "lo": lo,
                "hi": hi,
                "data": blob,
            }
        )
    payload = {
        "version": 1,
        "title": str(title),
        "view": view,
        "tokens": token_lists,
        "sideLabels": {side: "tokens" if one_sequence else side for side in token_lists},
        "kinds": kinds,
        "scores": _scores(scores, token_lists),
    }
    if arcs is not None:
        payload.update(_tree(weights, arcs, best_heads))
    elif best_heads is not None:
        raise ValueError("best_heads: given without arcs; pass the arcs the relations label")
    return payload


def _tree(weights: dict[str, Tensor], arcs, best_heads) -> dict:
    """The arcs over the encoder's tokens and the heads marked per relation (:mod:`._arcs`)."""
    if "encoder" not in weights:
        raise ValueError(
            f"arcs: expected encoder self-attention (the arcs join its tokens), got only {', '.join(weights)}"
        )
    n_layers, n_heads, n_tokens, _ = weights["encoder"].shape
    return arcs_payload(arcs, best_heads, n_tokens=n_tokens, layers=n_layers, heads=n_heads)


def render_html(
    data,
    tokens=None,
    *,
    title: str = "qkv attention",
    scores: Mapping | None = None,
    batch_index: int = 0,
    view: str = "head",
    arcs=None,
    best_heads: Mapping | None = None,
) -> str:
    """The viewer page as a string (see the module docstring for the data contract).

    Args:
        data: :class:`qkv.AttentionMaps`, ``{"encoder"|"decoder"|"cross": weights}`` or one
            weights array (self-attention).
        tokens: one list of strings, ``{"source": [...], "target": [...]}`` or ``None``.
        title: page title (shown as text, never as markup).
        scores: per-token importance, ``{"method": [...]}`` or
            ``{"method": {"source": [...], "target": [...]}}``; drawn as a bar of tokens.
        batch_index: which batch element to show when the weights carry a batch dim.
        view: the view shown first: ``"head"``, ``"model"`` or ``"matrix"``.
        arcs: a dependency tree over the encoder's tokens, ``[(head, dependent, relation),
            ...]`` (0-based, ``head = -1`` for the root): drawn above the head view, labelled,
            with a relation selector that highlights that relation's arcs.
        best_heads: ``{relation: [(layer, head, direction, accuracy), ...]}``, best first
            (:mod:`qkv.viz._arcs`): choosing a relation opens its first head and marks them all.

    Views: *head* (query tokens left, key tokens right, one line per pair with opacity =
    weight over the largest shown; all heads overlaid at first, one colour per head, or one
    head; hover or click a token to isolate its lines and read its weights), *model* (a thumbnail per layer x head; click one to open it), *matrix*
    (the heatmap of one head, or the mean of all, with a "query -> key: weight" tooltip).

    Raises:
        ValueError: unknown kinds, shapes that disagree with each other or with the tokens,
            non-finite weights or scores, ``batch_index`` out of range, unknown ``view``;
            arcs without encoder attention, arcs or best heads out of range, best heads of a
            relation no arc has, best heads without arcs.
        TypeError: inputs that are not arrays / token lists.
    """
    payload = _payload(
        data,
        tokens,
        title=title,
        scores=scores,
        batch_index=batch_index,
        view=view,
        arcs=arcs,
        best_heads=best_heads,
    )
    js = ["common.js", "arcs.js", "viewer.js"]
    return render_page("viewer.html", title=title, css=["viewer.css"], js=js, payload=payload)


def save_html(path: str | Path, data, tokens=None, **kwargs) -> Path:
    """Write :func:`render_html` ``(data, tokens, **kwargs)`` to ``path`` (UTF-8) and return it.

    Raises:
        ValueError: ``path`` does not end in ``.html`` or ``.htm`` (and what
            :func:`render_html` raises).
    """
    p = Path(path)
    if p.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"path: expected a file name ending in .html or .htm, got {str(path)!r}")
    text = render_html(data, tokens, **kwargs)
    p.write_text(text, encoding="utf-8")
    return p
