"""CTC prefix scores: how probable the CTC head finds each extension of a partial transcript
(Graves 2008, "Supervised sequence labelling with recurrent neural networks", section 7.5.2;
the scorer of joint CTC/attention decoding, Watanabe et al. 2017, "Hybrid CTC/Attention
Architecture for End-to-End Speech Recognition", section III-B, algorithm 2).

For CTC log-probabilities ``x`` ``(T, V)`` of one utterance, a prefix ``g`` and a token ``c``:

* the **prefix score** ``log P(g + c ... | x)`` sums every alignment of the T frames whose
  collapse (repeats merged, then blanks dropped) *starts with* ``g + c``;
* the **end score** ``log P(g | x)`` sums the alignments whose collapse *is* ``g``: torch's
  ``ctc_loss`` negated.

Both come from the forward variables of ``g``, per frame t: ``r_n[t]`` (the first t + 1 frames
collapse to ``g`` and frame t is ``g``'s last token) and ``r_b[t]`` (... frame t is blank).
Extending ``g`` by ``c`` (every c at once, a ``(K, V)`` tensor for K prefixes)::

    phi[t]   = r_b[t] + r_n[t] (log-sum), or r_b[t] alone when c repeats g's last token
               (two equal tokens need a blank between them)
    r_n'[t]  = (r_n'[t-1] + phi[t-1]) x[t, c]           r_n'[0] = x[0, c] if g is empty, else 0
    r_b'[t]  = (r_b'[t-1] + r_n'[t-1]) x[t, blank]      r_b'[0] = 0

(in probabilities; the code adds logs)
    P(g + c ...) = r_n'[0] + sum_t phi[t-1] x[t, c]     (c first emitted at frame t)

so each step costs O(T K V), and a prefix keeps its ``(T,)`` variables to be extended next.
Adding a token never makes a prefix more probable, and ``P(g) <= P(g ...)``: both are sums
over fewer alignments.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["CTCPrefixScorer", "Extensions", "PrefixState"]


@dataclass
class PrefixState:
    """The forward variables of K prefixes: ``r_n``, ``r_b`` ``(T, K)`` log-probabilities (see
    the module docstring), each prefix's ``last`` token ``(K,)`` (-1: the empty prefix) and its
    prefix ``score`` ``(K,)``."""

    r_n: Tensor
    r_b: Tensor
    last: Tensor
    score: Tensor


@dataclass
class Extensions:
    """The forward variables of every one-token extension of K prefixes, ``(T, K, V)``."""

    r_n: Tensor
    r_b: Tensor
    scores: Tensor


class CTCPrefixScorer:
    """Prefix and end scores of hypotheses over one utterance's CTC log-probabilities.

    Args:
        log_probs: ``(T, V)`` log-probabilities of the CTC head per encoder state (rows
            summing to 1 in probability); computed in their own dtype (float64 for exact sums).
        blank: the blank's id (its extension scores ``-inf``: it is no token).
        eos: the end token's id: its column of :meth:`extend` is the end score of the prefix.

    Raises:
        ValueError: ``log_probs`` not a non-empty floating ``(T, V)`` tensor, ``blank`` or
            ``eos`` outside ``[0, V)`` or equal.
    """

    def __init__(self, log_probs: Tensor, *, blank: int, eos: int) -> None:
        if not isinstance(log_probs, Tensor) or log_probs.dim() != 2 or not log_probs.is_floating_point() \
                or 0 in log_probs.shape:  # fmt: skip
            got = tuple(log_probs.shape) if isinstance(log_probs, Tensor) else type(log_probs).__name__
            raise ValueError(f"log_probs: expected a non-empty floating (T, V) tensor, got {got}")
        v = log_probs.shape[1]
        for name, value in (("blank", blank), ("eos", eos)):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < v:
                raise ValueError(f"{name}: expected an id in [0, {v}), got {value!r}")
        if blank == eos:
            raise ValueError(f"eos: expected an id other than blank={blank}, got {eos}")
        self.x, self.blank, self.eos = log_probs, blank, eos

    def initial(self) -> PrefixState:
        """The empty prefix (K = 1): only blanks so far; its prefix score is 0 (log 1)."""
        x = self.x
        r_b = torch.cumsum(x[:, self.blank], 0)[:, None]  # (T, 1)
        return PrefixState(torch.full_like(r_b, -torch.inf), r_b, torch.tensor([-1]), x.new_zeros(1))

    def extend(self, state: PrefixState) -> Extensions:
        """Every one-token extension of ``state``'s K prefixes: ``scores`` ``(K, V)`` holds
        ``log P(g + c ... | x)`` for each token c, the end score ``log P(g | x)`` in the ``eos``
        column and ``-inf`` in the blank's; ``r_n``, ``r_b`` are ``(T, K, V)``."""
        x, (t_len, k), v = self.x, state.r_n.shape, self.x.shape[1]
        total = torch.logaddexp(state.r_n, state.r_b)  # (T, K): the first t + 1 frames collapse to g
        phi = total[:, :, None].expand(t_len, k, v).clone()
        rows = (state.last >= 0).nonzero().flatten()
        phi[:, rows, state.last[rows]] = state.r_b[:, rows]  # a repeat needs a blank before it
        r_n = torch.full((t_len, k, v), -torch.inf, dtype=x.dtype)
        r_b = torch.full_like(r_n, -torch.inf)
        r_n[0] = torch.where((state.last < 0)[:, None], x[0][None], -torch.inf)
        for t in range(1, t_len):
            r_n[t] = torch.logaddexp(r_n[t - 1], phi[t - 1]) + x[t]
            r_b[t] = torch.logaddexp(r_b[t - 1], r_n[t - 1]) + x[t, self.blank]
        scores = torch.logsumexp(torch.cat([r_n[:1], phi[:-1] + x[1:, None, :]]), dim=0)  # (K, V)
        scores[:, self.eos] = total[-1]
        scores[:, self.blank] = -torch.inf
        return Extensions(r_n, r_b, scores)

    def select(self, ext: Extensions, origins: Tensor, tokens: Tensor) -> PrefixState:
        """The prefixes ``g[origins[j]] + tokens[j]`` (``(K',)`` each), to be extended next."""
        return PrefixState(ext.r_n[:, origins, tokens], ext.r_b[:, origins, tokens], tokens.clone(),
                           ext.scores[origins, tokens])  # fmt: skip

    def score(self, tokens: list[int], *, complete: bool) -> float:
        """``log P(tokens | x)`` (``complete``: the collapse is exactly ``tokens``) or the
        prefix score ``log P(tokens ... | x)``, by extending one token at a time."""
        state = self.initial()
        for tok in tokens:
            ext = self.extend(state)
            state = self.select(ext, torch.tensor([0]), torch.tensor([tok]))
        if complete:
            return float(self.extend(state).scores[0, self.eos])
        return float(state.score[0])
