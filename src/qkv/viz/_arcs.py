"""Dependency arcs over a sentence and the attention heads marked for each relation, checked and
put in the viewer's payload (:func:`qkv.viz.render_html`'s ``arcs`` and ``best_heads``).

- ``arcs``: one ``(head, dependent, relation)`` per word, 0-based token indices, ``head = -1``
  for the root; drawn above the words, from the head to the dependent, labelled.
- ``best_heads``: ``{relation: [(layer, head, direction, accuracy), ...]}``, best first, 0-based
  layer and head; ``direction`` 0: the dependent (query) attends to its head (key), 1: the head
  (query) attends to its dependent (key); ``accuracy`` a fraction in [0, 1] or ``None``.
  Every relation named must label an arc.

Payload: ``{"arcs": [{"head", "dep", "rel"}], "relations": [{"name", "count", "heads":
[{"layer", "head", "direction", "accuracy"}]}]}``, relations sorted by name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = ["arcs_payload"]


def _int(name: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value < hi:
        raise ValueError(f"{name}: expected an int in [{lo}, {hi}), got {value!r}")
    return value


def _arcs(arcs: Sequence, n_tokens: int) -> list[dict]:
    if isinstance(arcs, (str, bytes, Mapping)) or not isinstance(arcs, Sequence):
        raise TypeError(
            f"arcs: expected a sequence of (head, dependent, relation), got {type(arcs).__name__}"
        )
    out = []
    for a, arc in enumerate(arcs):
        if isinstance(arc, (str, bytes)) or not isinstance(arc, Sequence) or len(arc) != 3:
            raise ValueError(f"arcs[{a}]: expected (head, dependent, relation), got {arc!r}")
        head = _int(f"arcs[{a}] head", arc[0], -1, n_tokens)
        dep = _int(f"arcs[{a}] dependent", arc[1], 0, n_tokens)
        if head == dep:
            raise ValueError(f"arcs[{a}]: a word cannot be its own head, got head = dependent = {dep}")
        out.append({"head": head, "dep": dep, "rel": str(arc[2])})
    return out


def _marked(rel: str, entries: Sequence, layers: int, heads: int) -> list[dict]:
    out = []
    for e, entry in enumerate(entries):
        name = f"best_heads[{rel!r}][{e}]"
        if isinstance(entry, (str, bytes)) or not isinstance(entry, Sequence) or len(entry) != 4:
            raise ValueError(f"{name}: expected (layer, head, direction, accuracy), got {entry!r}")
        accuracy = entry[3]
        if accuracy is not None and not (isinstance(accuracy, (int, float)) and 0.0 <= accuracy <= 1.0):
            raise ValueError(f"{name}: expected an accuracy in [0, 1] or None, got {accuracy!r}")
        out.append(
            {
                "layer": _int(f"{name} layer", entry[0], 0, layers),
                "head": _int(f"{name} head", entry[1], 0, heads),
                "direction": _int(f"{name} direction", entry[2], 0, 2),
                "accuracy": None if accuracy is None or math.isnan(accuracy) else round(float(accuracy), 4),
            }
        )
    return out


def arcs_payload(
    arcs: Sequence, best_heads: Mapping | None, *, n_tokens: int, layers: int, heads: int
) -> dict:
    """The checked ``{"arcs", "relations"}`` of the payload (the module docstring says what).

    Args:
        n_tokens: the tokens the arcs index; layers, heads: the attention's shape.

    Raises:
        ValueError: an index out of range, a word its own head, a malformed entry, a relation
            of ``best_heads`` that labels no arc (the present ones listed).
        TypeError: ``arcs`` or ``best_heads`` of the wrong type.
    """
    checked = _arcs(arcs, n_tokens)
    counts: dict[str, int] = {}
    for arc in checked:
        counts[arc["rel"]] = counts.get(arc["rel"], 0) + 1
    if best_heads is None:
        best_heads = {}
    if not isinstance(best_heads, Mapping):
        raise TypeError(
            f"best_heads: expected a mapping from relation to heads, got {type(best_heads).__name__}"
        )
    absent = [r for r in best_heads if r not in counts]
    if absent:
        raise ValueError(
            f"best_heads: relation {absent[0]!r} labels no arc; present: {', '.join(sorted(counts))}"
        )
    relations = [
        {"name": r, "count": counts[r], "heads": _marked(r, best_heads.get(r, ()), layers, heads)}
        for r in sorted(counts)
    ]
    return {"arcs": checked, "relations": relations}
