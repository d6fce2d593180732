"""Attention flow (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers").

The layers form a graph with ``L + 1`` rows of ``T`` nodes: node ``(l, i)`` is token ``i``
after layer ``l`` (``l = 0``: the input). Layer ``l``'s matrix ``A~_l`` (heads fused, residual
mixed in, rows normalized: :func:`qkv.interpret.rollout.layer_matrices`) gives edges
``(l, i) -> (l - 1, j)`` of capacity ``A~_l[i, j]``. The flow of input token ``j`` into output
position ``i`` is the maximum flow from ``(L, i)`` to ``(0, j)``: unlike rollout, which
multiplies (a product of weights along all paths), flow is limited by the narrowest cut.

Capacities are scaled to integers (``2**40``) so networkx's max-flow is exact on them; the
result is within ``L * T * 2**-40`` of the real-valued max flow. Cost: one max-flow per
``(source, input token)`` pair on ``L * T^2`` edges, fine for short texts (T of a few dozen).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .rollout import layer_matrices

__all__ = ["flow"]

_SCALE = 2**40


def flow(
    attentions,
    *,
    source: int | None = None,
    head_fusion: str = "mean",
    add_residual: bool = True,
    kind: str = "encoder",
) -> Tensor:
    """Attention flow from output position ``source`` to every input token.

    Args:
        attentions: one sample's weights: ``(L, H, T, T)``, a list of ``(H, T, T)`` or
            ``(1, H, T, T)``, or an :class:`qkv.AttentionMaps` with batch size 1.
        source: output position (e.g. 0 for ``[CLS]``); ``None``: every position.
        head_fusion, add_residual, kind: as in :func:`qkv.interpret.rollout`.

    Returns:
        ``(T,)`` max-flow values (``(T, T)`` with row ``i`` for source ``i`` when ``source`` is
        None), each in ``[0, 1]``, float64.

    Raises:
        ImportError: networkx missing (it ships with torch).
        ValueError: a batch of several samples, ``source`` out of range, and as for rollout.
    """
    try:
        import networkx as nx
    except ImportError as exc:  # pragma: no cover - torch depends on networkx
        raise ImportError("qkv.interpret.flow needs networkx: pip install networkx") from exc
    a = layer_matrices(attentions, head_fusion=head_fusion, add_residual=add_residual, kind=kind)
    if a.dim() == 4 and a.shape[1] == 1:
        a = a[:, 0]  # (L, 1, T, T) -> (L, T, T)
    if a.dim() != 3:
        raise ValueError(
            f"attentions: expected one sample (L, H, T, T), got a batch {tuple(a.shape[1:-2])}; pick a sample first"
        )
    n_layers, t = a.shape[0], a.shape[-1]
    if source is not None and (
        isinstance(source, bool) or not isinstance(source, int) or not 0 <= source < t
    ):
        raise ValueError(f"source: expected an int in [0, {t}) or None, got {source!r}")

    graph = nx.DiGraph()
    caps = (a.double() * _SCALE).round().long().tolist()  # (L, T, T) integer capacities
    for layer in range(1, n_layers + 1):
        rows = caps[layer - 1]
        for i in range(t):
            for j in range(t):
                if rows[i][j] > 0:
                    graph.add_edge((layer, i), (layer - 1, j), capacity=rows[i][j])
    sources = range(t) if source is None else [source]
    out = torch.zeros(len(sources), t, dtype=torch.float64)
    for r, s in enumerate(sources):
        for j in range(t):
            top, bottom = (n_layers, s), (0, j)
            if top in graph and bottom in graph:
                out[r, j] = nx.maximum_flow_value(graph, top, bottom) / _SCALE
    return out[0] if source is not None else out
