"""Listen, Attend and Spell: attention-based speech recognition (one readable file).

Chan, Jaitly, Le, Vinyals 2016, "Listen, Attend and Spell" (arXiv:1508.01211):

    listener   a BiLSTM over the feature frames (stacked ``frame_stack`` at a time, as low
               frame rate models do, Pundak & Sainath 2016), then pyramidal BiLSTM layers, each reading
               pairs of consecutive frames concatenated, h^j_i = BLSTM(h^j_{i-1}, [h^{j-1}_{2i};
               h^{j-1}_{2i+1}]): ``listener_layers`` layers shorten the frames 2^(layers-1) times
    speller    an LSTM over the previous token and the previous context, s_i = RNN(s_{i-1},
               y_{i-1}, c_{i-1}); the context c_i = AttentionContext(s_i, h) is qkv's additive
               (Bahdanau) attention, :class:`qkv.modules.AdditiveAttention`, over the listener's
               states; P(y_i) = MLP([s_i; c_i])

``attention="location"`` makes it location-aware (Chorowski, Bahdanau, Serdyuk, Cho, Bengio
2015, "Attention-Based Models for Speech Recognition", eq. 8-9): the previous step's weights
alpha_{i-1} are convolved, f_i = F * alpha_{i-1} (``location_channels`` filters of width
``location_kernel``), and the score is w^T tanh(W s_i + V h_j + U f_{i,j}). It is written with
the same additive module by reading the keys ``[h_j; f_{i,j}]``: ``W_k [h; f] = V h + U f``.

Output units are the tokens of the data (words, for spoken numbers); ids 0, 1, 2 are <pad>,
<sos>, <eos>.

Shapes (B batch, T frames, M mel bands, S = about T / reduction listener states, U target
length, V vocabulary)::

    features (B, T, M) float, lengths (B,) long, tgt_in (B, U) = <sos> y_1 .. y_{U-1}
    -> logits (B, U, V); with need_weights the attention over the states (B, 1, U, S)

Decoding (:mod:`qkv.speech.decode`) uses the step interface of :mod:`qkv.models.seq2seq`:
``encode`` -> ``init_state`` -> ``step``, every tensor batch first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .._types import AttentionMaps
from ..modules import AdditiveAttention

__all__ = ["LAS", "LAS_ATTENTIONS", "LASConfig"]

#: The values of :attr:`LASConfig.attention`.
LAS_ATTENTIONS = ("additive", "location")
PAD, SOS, EOS = 0, 1, 2


@dataclass(frozen=True)
class LASConfig:
    """A Listen, Attend and Spell model (see the module docstring)."""

    n_mels: int  # input features per frame
    vocab_size: int  # output tokens, <pad> <sos> <eos> included
    frame_stack: int = 3  # consecutive frames concatenated before the listener (frames / 3)
    listener_dim: int = 64  # hidden size of each direction of the listener's BiLSTMs
    listener_layers: int = 2  # the first BiLSTM and the pyramidal ones: frames / 2^(layers-1)
    speller_dim: int = 128  # the speller LSTM's hidden size
    embed_dim: int = 32  # output token embeddings
    attention_dim: int = 64  # the additive score's hidden size
    attention: str = "additive"  # additive | location (Chorowski et al. 2015)
    location_channels: int = 8  # location-aware: convolution filters over the previous weights
    location_kernel: int = 15  # location-aware: their width (odd)
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for name in ("n_mels", "vocab_size", "frame_stack", "listener_dim", "listener_layers", "speller_dim", "embed_dim",
                     "attention_dim", "location_channels", "location_kernel"):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"LASConfig.{name}: expected an int >= 1, got {value!r}")
        if self.vocab_size < 4:
            raise ValueError(
                f"LASConfig.vocab_size: expected >= 4 (<pad> <sos> <eos> and a token), got {self.vocab_size}"
            )
        if self.attention not in LAS_ATTENTIONS:
            raise ValueError(
                f"LASConfig.attention: expected one of {', '.join(LAS_ATTENTIONS)}, got {self.attention!r}"
            )
        if self.location_kernel % 2 == 0:
            raise ValueError(f"LASConfig.location_kernel: expected an odd int, got {self.location_kernel}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LASConfig.dropout: expected a float in [0, 1), got {self.dropout!r}")

    @property
    def reduction(self) -> int:
        """How many frames one listener state covers: ``frame_stack * 2 ** (listener_layers - 1)``."""
        return self.frame_stack * 2 ** (self.listener_layers - 1)

    def to_dict(self) -> dict:
        return asdict(self)


class Listener(nn.Module):
    """Frames stacked ``frame_stack`` at a time (the last ones zero-padded), a BiLSTM, then
    pyramidal BiLSTMs each halving the states (an odd last state is dropped)."""

    def __init__(self, cfg: LASConfig) -> None:
        super().__init__()
        h = cfg.listener_dim
        self.layers = nn.ModuleList(
            [nn.LSTM(cfg.n_mels * cfg.frame_stack if i == 0 else 4 * h, h, batch_first=True, bidirectional=True)
             for i in range(cfg.listener_layers)]
        )  # fmt: skip
        self.drop = nn.Dropout(cfg.dropout)
        self.stack = cfg.frame_stack

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, T, M)``, ``(B,)`` -> states ``(B, S, 2H)`` and their lengths ``(B,)``."""
        k, (b, t, m) = self.stack, x.shape
        x = nn.functional.pad(x, (0, 0, 0, -t % k)).reshape(b, -(-t // k), k * m)  # (B, T, M) -> (B, T/k, kM)
        lengths = torch.div(lengths + k - 1, k, rounding_mode="floor")
        for i, lstm in enumerate(self.layers):
            if i > 0:
                b, t, d = x.shape
                x = x[:, : t // 2 * 2].reshape(b, t // 2, 2 * d)  # (B, T, D) -> (B, T/2, 2D): frame pairs
                lengths = torch.div(lengths, 2, rounding_mode="floor").clamp_min(1)
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            x, _ = pad_packed_sequence(lstm(packed)[0], batch_first=True, total_length=x.shape[1])
            x = self.drop(x)
        return x, lengths


class LAS(nn.Module):
    """Listen, Attend and Spell; see the module docstring."""

    def __init__(self, config: LASConfig) -> None:
        super().__init__()
        cfg = self.config = config
        mem = 2 * cfg.listener_dim
        self.listener = Listener(cfg)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=PAD)
        self.cell = nn.LSTMCell(cfg.embed_dim + mem, cfg.speller_dim)
        location = cfg.attention == "location"
        if location:
            k = cfg.location_kernel
            self.location = nn.Conv1d(1, cfg.location_channels, k, padding=k // 2, bias=False)
        key_dim = mem + (cfg.location_channels if location else 0)
        self.attn = AdditiveAttention(
            query_dim=cfg.speller_dim, key_dim=key_dim, hidden_dim=cfg.attention_dim
        )
        self.out = nn.Sequential(nn.Linear(cfg.speller_dim + mem, cfg.speller_dim), nn.Tanh(), nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.speller_dim, cfg.vocab_size))  # fmt: skip

    # ------------------------------------------------------------------ step interface
    def encode(self, features: Tensor, lengths: Tensor) -> dict[str, Tensor]:
        """The listener's states, the memory every speller step reads (batch first)."""
        check_features(features, lengths, self.config.n_mels)
        states, state_lengths = self.listener(features, lengths)
        return {"states": states, "lengths": state_lengths}  # (B, S, 2H), (B,)

    def init_state(self, memory: dict[str, Tensor]) -> dict[str, Tensor]:
        """The speller's state before the first step: zeros, and (location-aware) the previous
        weights, all on the first state."""
        states = memory["states"]
        b = states.shape[0]
        zeros = states.new_zeros(b, self.config.speller_dim)
        first = torch.zeros_like(states[..., 0])
        first[:, 0] = 1.0
        return {"h": zeros, "c": zeros, "context": states.new_zeros(b, states.shape[-1]), "weights": first}

    def step(
        self, prev: Tensor, state: dict[str, Tensor], memory: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """One speller step: previous tokens ``(B,)`` -> logits ``(B, V)``, the new state and the
        attention over the listener states ``(B, S)``."""
        emb = self.embed(prev)  # (B, E)
        h, c = self.cell(torch.cat([emb, state["context"]], dim=-1), (state["h"], state["c"]))  # s_i
        keys = memory["states"]
        if self.config.attention == "location":
            f = self.location(state["weights"].unsqueeze(1))  # (B, 1, S) -> (B, F, S)
            keys = torch.cat([keys, f.transpose(1, 2)], dim=-1)  # (B, S, 2H + F): [h_j; f_ij]
        res = self.attn(
            h.unsqueeze(1), keys, memory["states"], valid_lens=memory["lengths"], need_weights=True
        )
        context, weights = res.out.squeeze(1), res.weights.squeeze(1)  # (B, 2H), (B, S)
        logits = self.out(torch.cat([h, context], dim=-1))
        return logits, {"h": h, "c": c, "context": context, "weights": weights}, weights

    def loss(self, features: Tensor, lengths: Tensor, tgt_in: Tensor, tgt_out: Tensor) -> Tensor:
        """The mean cross-entropy per target token of ``tgt_out`` ``(B, U)`` (``y_1 .. y_U <eos>``,
        <pad> after) given ``tgt_in``, teacher-forced."""
        logits = self(features, lengths, tgt_in)  # (B, U, V)
        return nn.functional.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=PAD)

    def forward(self, features: Tensor, lengths: Tensor, tgt_in: Tensor, *, need_weights: bool = False):
        """Teacher-forced logits ``(B, U, V)`` of ``tgt_in``; with ``need_weights`` also the
        :class:`AttentionMaps` whose ``cross[0]`` is ``(B, 1, U, S)``."""
        memory = self.encode(features, lengths)
        state = self.init_state(memory)
        logits, weights = [], []
        for i in range(tgt_in.shape[1]):
            step_logits, state, w = self.step(tgt_in[:, i], state, memory)
            logits.append(step_logits)
            weights.append(w)
        out = torch.stack(logits, dim=1)  # (B, U, V)
        if not need_weights:
            return out
        return out, AttentionMaps(cross=[torch.stack(weights, dim=1).unsqueeze(1)])  # (B, 1, U, S)


def check_features(features: Tensor, lengths: Tensor, n_mels: int) -> None:
    if features.dim() != 3 or features.shape[-1] != n_mels:
        raise ValueError(f"features: expected (B, T, {n_mels}) float, got shape {tuple(features.shape)}")
    if lengths.dim() != 1 or lengths.shape[0] != features.shape[0]:
        raise ValueError(f"lengths: expected ({features.shape[0]},), got shape {tuple(lengths.shape)}")
    if bool((lengths < 1).any()) or bool((lengths > features.shape[1]).any()):
        raise ValueError(f"lengths: expected values in [1, {features.shape[1]}], got {lengths.tolist()}")
