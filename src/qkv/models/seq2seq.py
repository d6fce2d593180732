"""RNN encoder-decoder translation with pluggable attention (one readable file).

The model of article 000 and its attention variants of article 002:

    none         the fixed context of Sutskever et al. 2014 / Cho et al. 2014: the decoder sees
                 the encoder's final state c at every step (the bottleneck attention removes)
    bahdanau     Bahdanau, Cho, Bengio 2014: before step t, the previous decoder state s_{t-1}
                 scores every source state (additive MLP score); the context c_t feeds the RNN
    luong        Luong, Pham, Manning 2015, global: after the RNN step, h_t scores the source
                 (dot / general / concat); attentional state h~_t = tanh(W_c [c_t; h_t]) is fed
                 to the next step's input ("input feeding")
    luong-local  the same with local attention: local-m (p_t = t) or local-p (predicted p_t,
                 Gaussian around it), window [p_t - D, p_t + D]

The normalizer of bahdanau and luong (``normalize``) turns scores into weights:

    softmax      the papers' soft attention (default)
    sparsemax    Martins & Astudillo 2016: exact zeros on low-scoring source positions
    entmax15     Peters, Niculae, Martins 2019: 1.5-entmax, sparse and smoother than sparsemax
    hard         stochastic hard attention (Xu et al. 2015, section 4.1): training samples one
                 source position per step, s_t ~ softmax(scores), and reads its state only;
                 the scores learn by REINFORCE (:meth:`Seq2Seq.auxiliary_loss`); evaluation
                 and decoding take the argmax
    gumbel       straight-through Gumbel-softmax (Jang, Gu, Poole 2017) in training: forward
                 one-hot at argmax(scores + Gumbel noise), backward the gradient of
                 softmax((scores + noise) / gumbel_tau); the argmax at evaluation

Shapes (B batch, S source length, T target length, V vocabulary, H hidden size)::

    src (B, S) long, src_lengths (B,), tgt_in (B, T) = <sos> y_1 .. y_{T-1}
    -> logits (B, T, V); with need_weights the cross attention (B, 1, T, S) in AttentionMaps

Decoding (greedy and beam search in :mod:`qkv.translation.decode`) uses the step interface shared
with :mod:`qkv.models.transformer`: ``encode`` -> ``init_state`` -> ``step`` repeatedly; every
tensor of the memory and the state has the batch first, so a beam reorders it with
``index_select(0, ...)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .._types import AttentionMaps
from ..functional.local import local_attention, local_centers
from ..functional.normalize import sample_hard
from ..modules import AdditiveAttention, LuongAttention
from ..modules.hard import ReinforceBaseline, reinforce_loss

__all__ = ["ATTENTIONS", "NORMALIZERS", "Seq2Seq", "Seq2SeqConfig"]

ATTENTIONS = ("none", "bahdanau", "luong", "luong-local")
#: The values of :attr:`Seq2SeqConfig.normalize` (see the module docstring).
NORMALIZERS = ("softmax", "sparsemax", "entmax15", "hard", "gumbel")


@dataclass(frozen=True)
class Seq2SeqConfig:
    """Hyper-parameters of :class:`Seq2Seq` (all keyword-only, JSON-serializable).

    Attributes:
        src_vocab, tgt_vocab: vocabulary sizes (ids 0..3 are <pad> <sos> <eos> <unk>).
        attention: one of ``ATTENTIONS``.
        rnn: ``"gru"`` or ``"lstm"``.
        embed_dim, hidden_dim: sizes; num_layers: stacked RNN layers (encoder and decoder).
        bidirectional: bidirectional encoder (its two directions are concatenated; the
            decoder's initial state is a tanh projection of both final states).
        luong_score: ``"dot"``, ``"general"`` or ``"concat"`` (luong and luong-local).
        local_mode: ``"m"`` or ``"p"``; window: ``D``, the half-width of the local window.
        dropout: on embeddings and RNN outputs.
        normalize: one of ``NORMALIZERS`` (bahdanau and luong; the others take only
            ``"softmax"``).
        gumbel_tau: the Gumbel-softmax temperature of ``normalize="gumbel"``.
        entropy_weight: the entropy bonus ``lambda_e`` of the REINFORCE loss
            (``normalize="hard"``).
        baseline_decay: the decay of the moving-average reward baseline (``normalize="hard"``;
            Xu et al. use 0.9).
    """

    src_vocab: int
    tgt_vocab: int
    attention: str = "bahdanau"
    rnn: str = "gru"
    embed_dim: int = 64
    hidden_dim: int = 128
    num_layers: int = 1
    bidirectional: bool = True
    luong_score: str = "general"
    local_mode: str = "p"
    window: int = 3
    dropout: float = 0.1
    pad_id: int = 0
    normalize: str = "softmax"
    gumbel_tau: float = 1.0
    entropy_weight: float = 0.01
    baseline_decay: float = 0.9

    def __post_init__(self) -> None:
        for name in ("src_vocab", "tgt_vocab", "embed_dim", "hidden_dim", "num_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
        choices = {
            "attention": ATTENTIONS,
            "rnn": ("gru", "lstm"),
            "luong_score": ("dot", "general", "concat"),
            "local_mode": ("m", "p"),
            "normalize": NORMALIZERS,
        }
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"{name}: expected one of {', '.join(valid)}, got {getattr(self, name)!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {self.dropout!r}")
        if self.window < 0:
            raise ValueError(f"window: expected an int >= 0, got {self.window!r}")
        if self.normalize != "softmax" and self.attention not in ("bahdanau", "luong"):
            raise ValueError(
                f"normalize: attention={self.attention!r} supports only 'softmax' "
                f"(other normalizers need bahdanau or luong), got {self.normalize!r}"
            )
        checks = {
            "gumbel_tau": (lambda x: x > 0, "a finite number > 0"),
            "entropy_weight": (lambda x: x >= 0, "a finite number >= 0"),
            "baseline_decay": (lambda x: 0 <= x < 1, "a number in [0, 1)"),
        }
        for name, (good, want) in checks.items():
            value = getattr(self, name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not number or not good(value):
                raise ValueError(f"{name}: expected {want}, got {value!r}")

    def to_dict(self) -> dict:
        return {"kind": "seq2seq", **asdict(self)}


class Encoder(nn.Module):
    """Embedding + (bi)GRU/LSTM over packed sequences, so padding never reaches a state."""

    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(cfg.src_vocab, cfg.embed_dim, padding_idx=cfg.pad_id)
        rnn = nn.GRU if cfg.rnn == "gru" else nn.LSTM
        self.rnn = rnn(
            cfg.embed_dim,
            cfg.hidden_dim,
            num_layers=cfg.num_layers,
            batch_first=True,
            bidirectional=cfg.bidirectional,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.directions = 2 if cfg.bidirectional else 1

    def forward(self, src: Tensor, src_lengths: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """-> outputs (B, S, dirs*H) (zeros at padding), final h and c (B, L, dirs*H)."""
        packed = pack_padded_sequence(
            self.drop(self.embed(src)), src_lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        out, state = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])  # (B, S, dirs*H)
        h, c = state if isinstance(state, tuple) else (state, None)

        def merge(x: Tensor) -> Tensor:  # (L*dirs, B, H) -> (B, L, dirs*H)
            layers = x.shape[0] // self.directions
            x = x.view(layers, self.directions, x.shape[1], x.shape[2])  # (L, dirs, B, H)
            return x.permute(2, 0, 1, 3).reshape(x.shape[2], layers, -1)

        return self.drop(out), merge(h), None if c is None else merge(c)


class Seq2Seq(nn.Module):
    """Encoder-decoder RNN translator; see the module docstring for the variants."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        cfg = self.config = config
        self.encoder = Encoder(cfg)
        mem_dim = cfg.hidden_dim * self.encoder.directions
        hid = cfg.hidden_dim
        self.bridge_h = nn.Linear(mem_dim, hid)
        self.bridge_c = nn.Linear(mem_dim, hid) if cfg.rnn == "lstm" else None
        self.embed = nn.Embedding(cfg.tgt_vocab, cfg.embed_dim, padding_idx=cfg.pad_id)
        self.drop = nn.Dropout(cfg.dropout)
        att = cfg.attention
        # What the RNN reads besides the previous token's embedding.
        extra = {"none": mem_dim, "bahdanau": mem_dim, "luong": hid, "luong-local": hid}[att]
        cell = nn.GRUCell if cfg.rnn == "gru" else nn.LSTMCell
        self.cells = nn.ModuleList(
            [cell(cfg.embed_dim + extra if i == 0 else hid, hid) for i in range(cfg.num_layers)]
        )
        # The modules' own normalizer is the evaluation rule; training may override it per call
        # (sampling for hard attention, Gumbel noise): see _training_normalizer.
        norm = {"hard": "hard", "gumbel": "hard"}.get(cfg.normalize, cfg.normalize)
        if att == "bahdanau":
            self.attn = AdditiveAttention(query_dim=hid, key_dim=mem_dim, hidden_dim=hid, normalize=norm)
            self.out = nn.Linear(hid + mem_dim + cfg.embed_dim, cfg.tgt_vocab)
        elif att == "none":
            self.attn = None
            self.out = nn.Linear(hid + mem_dim + cfg.embed_dim, cfg.tgt_vocab)
        else:
            # Luong: keys are the source states projected to the decoder size, h_s.
            self.src_proj = nn.Linear(mem_dim, hid, bias=False) if mem_dim != hid else nn.Identity()
            self.attn = LuongAttention(score=cfg.luong_score, query_dim=hid, key_dim=hid, normalize=norm)
            self.combine = nn.Linear(2 * hid, hid, bias=False)  # W_c [c_t; h_t]
            self.out = nn.Linear(hid, cfg.tgt_vocab)
            if att == "luong-local" and cfg.local_mode == "p":
                self.predict_pos = nn.Sequential(nn.Linear(hid, hid), nn.Tanh(), nn.Linear(hid, 1))
        if cfg.normalize == "hard":
            self.baseline = ReinforceBaseline(decay=cfg.baseline_decay)

    # ------------------------------------------------------------------ step interface
    def encode(self, src: Tensor, src_lengths: Tensor) -> dict[str, Tensor]:
        """Run the encoder; the memory every decoding step reads (batch first)."""
        _check_batch(src, src_lengths, self.config.src_vocab)
        out, h, c = self.encoder(src, src_lengths)
        memory = {
            "states": out,  # (B, S, mem)
            "mask": torch.arange(src.shape[1], device=src.device) < src_lengths.unsqueeze(1),  # (B, S)
            "lengths": src_lengths,
            "final_h": h,  # (B, L, mem)
        }
        if c is not None:
            memory["final_c"] = c
        if self.config.attention in ("luong", "luong-local"):
            memory["keys"] = self.src_proj(out)  # (B, S, H)
        elif self.config.attention == "bahdanau":  # W_k h_j once per sentence, not once per step
            memory["keys"] = self.attn.score.project_keys(out)  # (B, S, H)
        return memory

    def init_state(self, memory: dict[str, Tensor]) -> dict[str, Tensor]:
        """The decoder state before the first step (batch first)."""
        state = {"h": torch.tanh(self.bridge_h(memory["final_h"]))}  # (B, L, H)
        if self.bridge_c is not None:
            state["c"] = torch.tanh(self.bridge_c(memory["final_c"]))
        if self.config.attention in ("luong", "luong-local"):
            state["feed"] = state["h"].new_zeros(state["h"].shape[0], self.config.hidden_dim)
        state["t"] = torch.zeros(state["h"].shape[0], dtype=torch.long, device=state["h"].device)
        return state

    def step(
        self, prev: Tensor, state: dict[str, Tensor], memory: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor], Tensor | None]:
        """One decoder step: previous tokens ``(B,)`` -> logits ``(B, V)``, new state, and the
        attention over the source ``(B, S)`` (None for ``attention="none"``)."""
        return self._step(prev, state, memory, None)

    def _training_normalizer(self, sampled: list[tuple[Tensor, Tensor]] | None) -> dict:
        """The ``normalize=`` override of one training step (empty: the module's own).

        ``"hard"`` samples ``s_t ~ softmax(scores)`` (:func:`qkv.functional.sample_hard`, torch's
        global generator, so a resumed run draws the same positions) and appends its
        ``(log p(s_t), H(p_t))``, each ``(B,)``, to ``sampled``.
        """
        cfg = self.config
        if not self.training or cfg.normalize not in ("hard", "gumbel"):
            return {}
        if cfg.normalize == "gumbel":
            return {"normalize": "gumbel", "normalize_kwargs": {"tau": cfg.gumbel_tau, "hard": True}}

        def sample(logits: Tensor, keep: Tensor | None) -> Tensor:
            # logits (B, 1, 1, S): one head, one decoder step
            one_hot, log_prob, entropy = sample_hard(logits, keep)
            if sampled is not None:
                sampled.append((log_prob.reshape(-1), entropy.reshape(-1)))  # (B, 1, 1) -> (B,)
            return one_hot

        return {"normalize": sample}

    def _step(
        self,
        prev: Tensor,
        state: dict[str, Tensor],
        memory: dict[str, Tensor],
        sampled: list[tuple[Tensor, Tensor]] | None,
    ) -> tuple[Tensor, dict[str, Tensor], Tensor | None]:
        cfg = self.config
        emb = self.drop(self.embed(prev))  # (B, E)
        h_prev = state["h"]
        weights = None
        if cfg.attention == "none":
            context = memory["final_h"][:, -1]  # the fixed context c, (B, mem)
            rnn_in = torch.cat([emb, context], dim=-1)
        elif cfg.attention == "bahdanau":
            query = h_prev[:, -1].unsqueeze(1)  # s_{t-1}, (B, 1, H)
            res = self.attn(
                query,
                memory["keys"],  # W_k h_j, projected once in encode
                memory["states"],
                mask=memory["mask"].unsqueeze(1),  # (B, 1, S): the lengths' mask, built once in encode
                need_weights=True,
                keys_projected=True,
                **self._training_normalizer(sampled),
            )
            context, weights = res.out.squeeze(1), res.weights.squeeze(1)  # (B, mem), (B, S)
            rnn_in = torch.cat([emb, context], dim=-1)
        else:
            rnn_in = torch.cat([emb, state["feed"]], dim=-1)  # input feeding
        new = dict(state)
        h_new, c_new = self._run_cells(rnn_in, h_prev, state.get("c"))
        new["h"] = h_new
        if c_new is not None:
            new["c"] = c_new
        top = self.drop(h_new[:, -1])  # (B, H)
        if cfg.attention in ("none", "bahdanau"):
            logits = self.out(torch.cat([top, context, emb], dim=-1))
        else:
            context, weights = self._luong_context(top, state["t"], memory, sampled)
            attentional = torch.tanh(self.combine(torch.cat([context, top], dim=-1)))  # h~_t
            new["feed"] = attentional
            logits = self.out(self.drop(attentional))
        new["t"] = state["t"] + 1
        return logits, new, weights

    def _run_cells(self, x: Tensor, h: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor | None]:
        hs, cs = [], []
        for i, cell in enumerate(self.cells):
            if c is None:
                x = cell(x, h[:, i])
                hs.append(x)
            else:
                x, ci = cell(x, (h[:, i], c[:, i]))
                hs.append(x)
                cs.append(ci)
            if i + 1 < len(self.cells):
                x = self.drop(x)
        return torch.stack(hs, dim=1), (torch.stack(cs, dim=1) if cs else None)

    def _luong_context(
        self, h_t: Tensor, t: Tensor, memory: dict[str, Tensor], sampled: list | None
    ) -> tuple[Tensor, Tensor]:
        cfg = self.config
        keys, values, mask = memory["keys"], memory["keys"], memory["mask"]
        if cfg.attention == "luong":
            res = self.attn(
                h_t,
                keys,
                values,
                mask=mask.unsqueeze(1),  # (B, 1, S): the lengths' mask, built once in encode
                need_weights=True,
                **self._training_normalizer(sampled),
            )
            return res.out, res.weights
        # Local attention: centre p_t per example, window D.
        if cfg.local_mode == "m":
            last = (memory["lengths"] - 1).clamp_min(0)
            center = torch.minimum(t, last).to(h_t.dtype).unsqueeze(1)  # (B, 1)
        else:
            frac = torch.sigmoid(self.predict_pos(h_t))  # (B, 1)
            center = local_centers("p", query_len=1, source_lengths=memory["lengths"], predicted=frac)
        res = local_attention(
            h_t.unsqueeze(1),
            keys,
            values,
            center=center,
            window=cfg.window,
            gaussian=cfg.local_mode == "p",
            score=self.attn.score if cfg.luong_score != "dot" else "dot",
            mask=mask,
        )
        return res.out.squeeze(1), res.weights.squeeze(1)

    # ------------------------------------------------------------------ training forward
    def forward(
        self,
        src: Tensor,
        src_lengths: Tensor,
        tgt_in: Tensor,
        *,
        teacher_forcing: float = 1.0,
        generator: torch.Generator | None = None,
        need_weights: bool = False,
        record: dict[str, Tensor] | None = None,
    ) -> Tensor | tuple[Tensor, AttentionMaps]:
        """Teacher-forced (or partly free-running) decoding of ``tgt_in`` -> logits (B, T, V).

        With ``teacher_forcing < 1`` each step feeds the model's own previous prediction with
        probability ``1 - teacher_forcing`` (per example, drawn from ``generator`` or torch's
        global generator, so a resumed run draws the same coins).

        ``record``: a dict that receives what :meth:`auxiliary_loss` needs. With
        ``normalize="hard"`` in training mode: ``"attention_log_prob"`` ``(B, T)``, the
        log-probability of each sampled source position (differentiable w.r.t. the score's
        parameters), and ``"attention_entropy"`` ``(B, T)``. Otherwise it stays empty.
        """
        if not 0.0 <= teacher_forcing <= 1.0:
            raise ValueError(f"teacher_forcing: expected a ratio in [0, 1], got {teacher_forcing!r}")
        memory = self.encode(src, src_lengths)
        state = self.init_state(memory)
        steps, attn = [], []
        sampled: list[tuple[Tensor, Tensor]] = []
        prev = tgt_in[:, 0]
        for t in range(tgt_in.shape[1]):
            if t > 0:
                prev = tgt_in[:, t]
                if teacher_forcing < 1.0:
                    coin = torch.rand(prev.shape, generator=generator, device=prev.device) >= teacher_forcing
                    prev = torch.where(coin, steps[-1].argmax(-1), prev)
            logits, state, weights = self._step(prev, state, memory, sampled)
            steps.append(logits)
            if weights is not None:
                attn.append(weights)
        logits = torch.stack(steps, dim=1)  # (B, T, V)
        if record is not None and sampled:
            record["attention_log_prob"] = torch.stack([lp for lp, _ in sampled], dim=1)  # (B, T)
            record["attention_entropy"] = torch.stack([h for _, h in sampled], dim=1)  # (B, T)
        if not need_weights:
            return logits
        maps = AttentionMaps()
        if attn:
            maps.cross.append(torch.stack(attn, dim=1).unsqueeze(1))  # (B, 1, T, S)
        return logits, maps

    def auxiliary_loss(self, record: dict[str, Tensor], logits: Tensor, targets: Tensor) -> Tensor | None:
        """The REINFORCE surrogate loss of hard attention, to add to the task loss (None when
        ``record`` holds no sampled attention: every other configuration).

        Xu et al. 2015, section 4.1, with a per-token reward: the choice ``s_t`` of step ``t``
        is rewarded with the log-likelihood of the gold token it helped predict,
        ``R_t = log p(y_t | y_<t, s_<=t)`` (detached; the negative per-token loss), against a
        moving-average baseline ``b`` (:class:`qkv.modules.hard.ReinforceBaseline`, updated
        here with this batch's mean reward; the very first batch, with no history, uses its own
        mean), plus an entropy bonus::

            loss = -mean_t[(R_t - b) log p(s_t)] - entropy_weight * mean_t[H(p_t)]

        over the non-padding target tokens (:func:`qkv.modules.hard.reinforce_loss`). Its
        gradient reaches only the attention scores; the task loss trains the rest, through the
        attended source states.

        Args:
            record: what :meth:`forward` wrote into its ``record=`` dict.
            logits: that forward's ``(B, T, V)``; targets: the gold tokens ``(B, T)``
                (``pad_id`` = padding).

        Raises:
            ValueError: ``targets`` whose shape is not ``logits``' ``(B, T)``.
        """
        log_prob = record.get("attention_log_prob")
        if log_prob is None:
            return None
        if tuple(targets.shape) != tuple(logits.shape[:2]) or log_prob.shape != targets.shape:
            raise ValueError(
                f"targets: expected shape (B, T) = {tuple(logits.shape[:2])} like the logits and the "
                f"recorded attention, got {tuple(targets.shape)}"
            )
        valid = targets != self.config.pad_id  # (B, T)
        if not bool(valid.any()):
            return None
        with torch.no_grad():
            logp = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
            reward = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)[valid]  # (N,) log p(y_t)
        first = int(self.baseline.steps) == 0
        baseline = self.baseline(reward)  # b before this batch; the average takes this batch in
        if first:  # no history yet: this batch's mean reward, not 0
            baseline = reward.mean()
        return reinforce_loss(
            reward,
            log_prob[valid],
            baseline,
            entropy=record["attention_entropy"][valid],
            entropy_weight=self.config.entropy_weight,
        )


def _check_batch(src: Tensor, src_lengths: Tensor, vocab: int) -> None:
    if not isinstance(src, Tensor) or src.dim() != 2 or src.dtype != torch.long:
        got = f"{tuple(src.shape)} {src.dtype}" if isinstance(src, Tensor) else type(src).__name__
        raise ValueError(f"src: expected a (B, S) long tensor of token ids, got {got}")
    if src_lengths.shape != (src.shape[0],):
        raise ValueError(f"src_lengths: expected shape ({src.shape[0]},), got {tuple(src_lengths.shape)}")
    if src_lengths.numel() and (int(src_lengths.min()) < 1 or int(src_lengths.max()) > src.shape[1]):
        raise ValueError(
            f"src_lengths: expected values in [1, {src.shape[1]}], got {src_lengths.min().item()}..{src_lengths.max().item()}"
        )
