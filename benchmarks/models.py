"""Whole models: qkv's models against the same models built from ``transformers`` and ``torch.nn``.

Three cases, each timed side by side in one process (interleaved balanced rounds, medians, an
fp32 2048^3 matmul, the roof, in the same rounds; docs/performance/index.md):

    bert         all-MiniLM-L6-v2 (the ``minilm`` extra), batch 32 x 128 tokens, half the rows
                 padded, inference: ``qkv.interop.load_bert`` against ``transformers``
                 ``BertModel`` (``attn_implementation="sdpa"``) on the same weights. Target <= 1.0x.
    transformer  the translation Transformer as ``qkv train --model transformer`` builds it
                 (``qkv.models.builders.build_model``), one training step (forward, backward,
                 gradient clipping, AdamW step) on a batch of the default corpus, against an
                 ``nn.Transformer`` model of the same shape (pre-LN, GELU, sinusoidal positions,
                 tied output layer) holding the same weights. Target <= 1.05x.
    seq2seq      the Bahdanau seq2seq of ``qkv train --model bahdanau``, one training step on
                 the same kind of batch, against a tutorial-style encoder and ``AttnDecoderRNN``
                 (``nn.GRU`` encoder, a step loop of ``nn.GRU`` over one token with additive
                 attention) of the same size holding the same weights. Target <= 1.0x.

Before timing, every pair is checked to compute the same function: the outputs (evaluation
mode) agree within ``TOLERANCE``, or the suite stops. FLOPs are counted once per case with
``torch.utils.flop_counter`` on the peer; peak memory is the growth of peak RSS during one call.

    python -m benchmarks.models                         # writes benchmarks/results/models.{json,md}
    python -m benchmarks.models --cases bert --reps 10
    python -m benchmarks.models --quick                 # smoke run -> results/models_quick.*
    python -m benchmarks.models --profile transformer   # torch.profiler tables of both contenders
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

if __package__:  # imported as a package module (`python -m benchmarks.<suite>`)
    from .common import (
        MEMORY_METHOD,
        Contender,
        log,
        machine_info,
        machine_line,
        markdown_table,
        matmul_contender,
        paired_ratio,
        peak_rss_growth,
        time_interleaved,
        wait_for_quiet,
        write_report,
    )
else:  # python benchmarks/<suite>.py: the script's directory is first on sys.path
    from common import (
        MEMORY_METHOD,
        Contender,
        log,
        machine_info,
        machine_line,
        markdown_table,
        matmul_contender,
        paired_ratio,
        peak_rss_growth,
        time_interleaved,
        wait_for_quiet,
        write_report,
    )

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SUITE = "models"
REPO = Path(__file__).resolve().parent.parent
CASES = ("bert", "transformer", "seq2seq")
TARGETS = {"bert": 1.0, "transformer": 1.05, "seq2seq": 1.0}
TOLERANCE = 1e-4  # largest |qkv - peer| of the outputs on the same weights and inputs
ROOF = "roof-matmul"
BERT_SHAPE = (32, 128)  # batch, tokens


# ----------------------------------------------------------------------------- case 1: BERT


def _bert_inputs(vocab: int, batch: int, tokens: int) -> dict[str, Tensor]:
    """Random word ids between [CLS] (101) and [SEP] (102); rows ``batch // 2 ..`` padded (id 0)
    to lengths spread from ``tokens - 1`` down to about ``tokens / 4``."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab, (batch, tokens), generator=g)
    padded = batch - batch // 2
    lengths = torch.full((batch,), tokens)
    lengths[batch // 2 :] = torch.linspace(tokens - 1, tokens // 4, padded).round().long()
    keep = torch.arange(tokens)[None, :] < lengths[:, None]  # (B, T)
    ids[:, 0] = 101
    ids[torch.arange(batch), lengths - 1] = 102
    ids = ids.masked_fill(~keep, 0)
    return {"input_ids": ids, "attention_mask": keep.long(), "token_type_ids": torch.zeros_like(ids)}


def bert_case(quick: bool) -> dict[str, Any]:
    """qkv's BERT and ``transformers``' on all-MiniLM-L6-v2, inference under ``inference_mode``."""
    import transformers

    from qkv.interop import load_bert, minilm_path

    ours, _ = load_bert("minilm")
    peer = transformers.BertModel.from_pretrained(str(minilm_path()), attn_implementation="sdpa").eval()
    batch, tokens = (2, 32) if quick else BERT_SHAPE
    inputs = _bert_inputs(ours.config.vocab_size, batch, tokens)

    def run(model: nn.Module) -> Callable[[], Tensor]:
        def call() -> Tensor:
            with torch.inference_mode():
                return model(**inputs).last_hidden_state

        return call

    keep = inputs["attention_mask"].bool()
    diff = float((run(ours)() - run(peer)())[keep].abs().max())
    return {
        "what": f"all-MiniLM-L6-v2 inference, batch {batch} x {tokens} tokens, rows {batch // 2}.. padded",
        "peer_model": f"transformers {transformers.__version__} BertModel (attn_implementation='sdpa')",
        "qkv": run(ours),
        "peer_run": run(peer),
        "max_abs_diff": diff,
        "compared": "last_hidden_state at the non-padding tokens",
    }


# ----------------------------------------------------------------------------- case 2: Transformer


class PeerTransformer(nn.Module):
    """The translation Transformer written on ``nn.Transformer``: embeddings scaled by
    ``sqrt(E)`` plus a sinusoidal table, pre-LN layers with GELU, a causal target mask, source
    padding masked in self- and cross-attention, the output layer tied to the target embedding."""

    def __init__(self, cfg, positions: Tensor) -> None:
        super().__init__()
        self.cfg = cfg
        self.src_embed = nn.Embedding(cfg.src_vocab, cfg.d_model, padding_idx=cfg.pad_id)
        self.tgt_embed = nn.Embedding(cfg.tgt_vocab, cfg.d_model, padding_idx=cfg.pad_id)
        self.register_buffer("positions", positions.clone(), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        with warnings.catch_warnings():  # norm_first disables the nested-tensor fast path: it says so
            warnings.simplefilter("ignore")
            self.transformer = nn.Transformer(
                d_model=cfg.d_model, nhead=cfg.num_heads, num_encoder_layers=cfg.encoder_layers,
                num_decoder_layers=cfg.decoder_layers, dim_feedforward=cfg.ff_dim, dropout=cfg.dropout,
                activation="gelu", batch_first=True, norm_first=True,
            )  # fmt: skip
        self.out = nn.Linear(cfg.d_model, cfg.tgt_vocab, bias=False)
        self.out.weight = self.tgt_embed.weight

    def _embed(self, table: nn.Embedding, ids: Tensor) -> Tensor:
        return self.drop(table(ids) * math.sqrt(self.cfg.d_model) + self.positions[: ids.shape[1]])

    def forward(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> Tensor:
        pad = torch.arange(src.shape[1]) >= src_lengths[:, None]  # (B, S) True = padding
        causal = nn.Transformer.generate_square_subsequent_mask(tgt_in.shape[1])
        y = self.transformer(
            self._embed(self.src_embed, src), self._embed(self.tgt_embed, tgt_in), tgt_mask=causal,
            src_key_padding_mask=pad, memory_key_padding_mask=pad, tgt_is_causal=True,
        )  # fmt: skip
        return self.out(y)


def _copy_attention(peer: nn.MultiheadAttention, ours: nn.Module) -> None:
    peer.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
    peer.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
    peer.out_proj.load_state_dict(ours.out_proj.state_dict())


@torch.no_grad()
def _copy_transformer(peer: PeerTransformer, ours: nn.Module) -> None:
    """qkv's Transformer weights into the ``nn.Transformer`` model (same function after)."""
    peer.src_embed.load_state_dict(ours.src_embed.state_dict())
    peer.tgt_embed.load_state_dict(ours.tgt_embed.state_dict())
    t = peer.transformer
    for p, o in zip(t.encoder.layers, ours.encoder, strict=True):
        _copy_attention(p.self_attn, o.self_attn)
        for a, b in ((p.norm1, o.norm1), (p.norm2, o.norm2), (p.linear1, o.ff[0]), (p.linear2, o.ff[3])):
            a.load_state_dict(b.state_dict())
    for p, o in zip(t.decoder.layers, ours.decoder, strict=True):
        _copy_attention(p.self_attn, o.self_attn)
        _copy_attention(p.multihead_attn, o.cross_attn)
        pairs = ((p.norm1, o.norm1), (p.norm2, o.norm2), (p.norm3, o.norm3), (p.linear1, o.ff[0]),
                 (p.linear2, o.ff[3]))  # fmt: skip
        for a, b in pairs:
            a.load_state_dict(b.state_dict())
    t.encoder.norm.load_state_dict(ours.enc_norm.state_dict())
    t.decoder.norm.load_state_dict(ours.dec_norm.state_dict())


def _translation_setup(preset: str, quick: bool):
    """The run config of ``qkv train --model PRESET``, its model and one training batch of the
    default corpus (the corpus cut to a few thousand pairs: only the vocabulary and one batch matter)."""
    from qkv.models.builders import build_model
    from qkv.translation.config import resolve
    from qkv.translation.data import batches, encode_pairs
    from qkv.translation.training import prepare_data

    cfg = resolve({"data": {"size": 500 if quick else 4000}}, preset=preset)
    corpus, src_tok, tgt_tok = prepare_data(cfg)
    pairs = encode_pairs(corpus["train"], src_tok, tgt_tok)
    batch = next(iter(batches(pairs, batch_size=cfg.train.batch_size, shuffle=True, seed=0)))
    torch.manual_seed(0)
    model = build_model(cfg.model, src_vocab=len(src_tok), tgt_vocab=len(tgt_tok))
    return cfg, model, batch


def _train_step(model: nn.Module, forward: Callable[[], Tensor], batch, train_cfg, steps: int):
    """``steps`` training steps of ``qkv train``: cross entropy over the non-padding target
    tokens, backward, gradient-norm clipping, AdamW."""
    opt = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)

    def run() -> None:
        model.train()
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            logits = forward()
            loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch.tgt_out.reshape(-1), ignore_index=0
            )
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), train_cfg.clip)
            opt.step()

    return run


def _same_function(ours: nn.Module, peer: nn.Module, batch) -> float:
    """Largest |logits difference| in evaluation mode (no dropout) over the non-padding targets."""
    ours.eval()
    peer.eval()
    with torch.no_grad():
        a = ours(batch.src, batch.src_lengths, batch.tgt_in)
        b = peer(batch.src, batch.src_lengths, batch.tgt_in)
    return float((a - b)[batch.tgt_out != 0].abs().max())


def transformer_case(quick: bool, steps: int) -> dict[str, Any]:
    cfg, ours, batch = _translation_setup("transformer", quick)
    mc = ours.config
    peer = PeerTransformer(mc, ours.positions)
    _copy_transformer(peer, ours)
    forward = lambda m: lambda: m(batch.src, batch.src_lengths, batch.tgt_in)  # noqa: E731
    return {
        "what": f"Transformer training step x {steps} (d_model {mc.d_model}, {mc.num_heads} heads, "
        f"{mc.encoder_layers}+{mc.decoder_layers} layers, ffn {mc.ff_dim}, vocab {mc.src_vocab}/{mc.tgt_vocab}), "
        f"batch {tuple(batch.src.shape)} -> {tuple(batch.tgt_in.shape)}",
        "peer_model": "nn.Transformer (norm_first, GELU) with the same embeddings",
        "qkv": _train_step(ours, forward(ours), batch, cfg.train, steps),
        "peer_run": _train_step(peer, forward(peer), batch, cfg.train, steps),
        "max_abs_diff": _same_function(ours, peer, batch),
        "compared": "logits in evaluation mode at the non-padding targets",
        "parameters": {"qkv": _count(ours), "peer": _count(peer)},
    }


# ----------------------------------------------------------------------------- case 3: seq2seq


class TutorialEncoder(nn.Module):
    """Embedding, dropout and a bidirectional ``nn.GRU`` over the packed source."""

    def __init__(self, vocab: int, embed: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed, padding_idx=0)
        self.gru = nn.GRU(embed, hidden, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        packed = pack_padded_sequence(self.dropout(self.embedding(src)), lengths, batch_first=True,
                                      enforce_sorted=False)  # fmt: skip
        out, hidden = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])
        return self.dropout(out), torch.cat([hidden[0], hidden[1]], dim=-1)  # (B, S, 2H), (B, 2H)


class BahdanauAttention(nn.Module):
    """``Va^T tanh(Wa q + Ua k)``, padding keys masked, softmax, weighted sum of the keys."""

    def __init__(self, hidden: int, key_dim: int) -> None:
        super().__init__()
        self.Wa = nn.Linear(hidden, hidden, bias=False)
        self.Ua = nn.Linear(key_dim, hidden, bias=False)
        self.Va = nn.Linear(hidden, 1, bias=False)

    def forward(self, query: Tensor, keys: Tensor, keep: Tensor) -> Tensor:
        scores = self.Va(torch.tanh(self.Wa(query) + self.Ua(keys))).squeeze(2).unsqueeze(1)  # (B, 1, S)
        weights = F.softmax(scores.masked_fill(~keep[:, None], float("-inf")), dim=-1)
        return torch.bmm(weights, keys)  # (B, 1, 2H)


class AttnDecoderRNN(nn.Module):
    """The tutorial's attention decoder: per target step, attend with the previous hidden state,
    feed ``[embedding; context]`` to a one-step ``nn.GRU``, predict from ``[output; context;
    embedding]``; teacher forcing on ``tgt_in``."""

    def __init__(self, vocab: int, embed: int, hidden: int, mem: int, dropout: float) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed, padding_idx=0)
        self.attention = BahdanauAttention(hidden, mem)
        self.gru = nn.GRU(embed + mem, hidden, batch_first=True)
        self.out = nn.Linear(hidden + mem + embed, vocab)
        self.dropout = nn.Dropout(dropout)

    def forward(self, memory: Tensor, keep: Tensor, hidden: Tensor, tgt_in: Tensor) -> Tensor:
        outputs = []
        for t in range(tgt_in.shape[1]):
            embedded = self.dropout(self.embedding(tgt_in[:, t : t + 1]))  # (B, 1, E)
            context = self.attention(hidden.permute(1, 0, 2), memory, keep)  # (B, 1, 2H)
            output, hidden = self.gru(torch.cat([embedded, context], dim=2), hidden)
            outputs.append(self.out(torch.cat([self.dropout(output), context, embedded], dim=2)))
        return torch.cat(outputs, dim=1)  # (B, T, V)


class TutorialSeq2Seq(nn.Module):
    def __init__(self, cfg) -> None:
        super().__init__()
        mem = 2 * cfg.hidden_dim
        self.encoder = TutorialEncoder(cfg.src_vocab, cfg.embed_dim, cfg.hidden_dim, cfg.dropout)
        self.bridge = nn.Linear(mem, cfg.hidden_dim)
        self.decoder = AttnDecoderRNN(cfg.tgt_vocab, cfg.embed_dim, cfg.hidden_dim, mem, cfg.dropout)

    def forward(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> Tensor:
        memory, final = self.encoder(src, src_lengths)
        keep = torch.arange(src.shape[1]) < src_lengths[:, None]
        return self.decoder(memory, keep, torch.tanh(self.bridge(final))[None], tgt_in)


@torch.no_grad()
def _copy_seq2seq(peer: TutorialSeq2Seq, ours: nn.Module) -> None:
    """qkv's Bahdanau Seq2Seq weights into the tutorial model (same function after)."""
    peer.encoder.embedding.load_state_dict(ours.encoder.embed.state_dict())
    peer.encoder.gru.load_state_dict(ours.encoder.rnn.state_dict())
    peer.bridge.load_state_dict(ours.bridge_h.state_dict())
    d, score, cell = peer.decoder, ours.attn.score, ours.cells[0]
    d.embedding.load_state_dict(ours.embed.state_dict())
    d.attention.Wa.weight.copy_(score.w_query.weight)
    d.attention.Ua.weight.copy_(score.w_key.weight)
    d.attention.Va.weight.copy_(score.v[None])
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        getattr(d.gru, f"{name}_l0").copy_(getattr(cell, name))
    d.out.load_state_dict(ours.out.state_dict())


def seq2seq_case(quick: bool, steps: int) -> dict[str, Any]:
    cfg, ours, batch = _translation_setup("bahdanau", quick)
    mc = ours.config
    if mc.rnn != "gru" or not mc.bidirectional or mc.num_layers != 1:
        raise ValueError(f"the tutorial peer is a 1-layer bidirectional GRU model; the preset has {mc}")
    peer = TutorialSeq2Seq(mc)
    _copy_seq2seq(peer, ours)
    forward = lambda m: lambda: m(batch.src, batch.src_lengths, batch.tgt_in)  # noqa: E731
    return {
        "what": f"Bahdanau seq2seq training step x {steps} (bi-GRU {mc.hidden_dim}, embeddings {mc.embed_dim}, "
        f"vocab {mc.src_vocab}/{mc.tgt_vocab}), batch {tuple(batch.src.shape)} -> {tuple(batch.tgt_in.shape)}",
        "peer_model": "tutorial-style EncoderRNN + AttnDecoderRNN (additive attention, nn.GRU step loop)",
        "qkv": _train_step(ours, forward(ours), batch, cfg.train, steps),
        "peer_run": _train_step(peer, forward(peer), batch, cfg.train, steps),
        "max_abs_diff": _same_function(ours, peer, batch),
        "compared": "logits in evaluation mode at the non-padding targets",
        "parameters": {"qkv": _count(ours), "peer": _count(peer)},
    }


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- measuring


def _flops(fn: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def measure(name: str, case: dict[str, Any], reps: int, wait_s: float, max_other_load: float | None,
            memory: bool) -> dict[str, Any]:  # fmt: skip
    """Check the pair, then time qkv, the peer and the roof interleaved; the case's row."""
    if not case["max_abs_diff"] <= TOLERANCE:
        raise AssertionError(f"{name}: qkv and the peer differ by {case['max_abs_diff']:.2e} > {TOLERANCE}")
    contenders = [
        Contender("qkv", case["qkv"]),
        Contender("peer", case["peer_run"]),
        matmul_contender(name=ROOF),
    ]
    quiet = wait_for_quiet(wait_s, threshold=max_other_load or 0.25)
    tm = time_interleaved(
        contenders, reps, label=name, max_other_load=max_other_load,
        max_redo=reps // 2 if max_other_load is not None else 0, wait_s=min(wait_s, 10.0),
    )  # fmt: skip
    flops = _flops(case["peer_run"])
    roof = 2 * 2048**3 / tm[ROOF].median / 1e9
    row = {
        "case": name, "what": case["what"], "peer_model": case["peer_model"], "compared": case["compared"],
        "max_abs_diff": case["max_abs_diff"], "parameters": case.get("parameters"),
        "target": TARGETS[name], "flops": flops, "roof_gflops_same_rounds": roof,
        "waited_for_quiet_s": quiet["waited_s"], "load_average_1m_after": os.getloadavg()[0],
        "ratio": tm["qkv"].median / tm["peer"].median, "paired_ratio": paired_ratio(tm["qkv"], tm["peer"]),
        "cpu_ratio": tm["qkv"].cpu_median / tm["peer"].cpu_median,
        "cpu_paired_ratio": paired_ratio(tm["qkv"], tm["peer"], cpu=True),
        "other_load_cores": tm["qkv"].mean_other_load, "rounds_redone": tm["qkv"].redone,
    }  # fmt: skip
    for who in ("qkv", "peer"):
        run = case["qkv" if who == "qkv" else "peer_run"]
        row[who] = {**tm[who].to_dict(), "gflops": flops / tm[who].median / 1e9,
                    "roof_fraction": flops / tm[who].median / 1e9 / roof,
                    "peak_rss_growth_bytes": peak_rss_growth(run) if memory else None}  # fmt: skip
    log(f"{name}: qkv {tm['qkv'].median * 1e3:.1f} ms, peer {tm['peer'].median * 1e3:.1f} ms, ratio "
        f"{row['ratio']:.3f} (paired {row['paired_ratio']:.3f}); CPU time ratio {row['cpu_ratio']:.3f} "
        f"(paired {row['cpu_paired_ratio']:.3f}); target <= {TARGETS[name]}")  # fmt: skip
    return row


def profile(name: str, case: dict[str, Any], rows: int = 25) -> None:
    """``torch.profiler`` CPU tables (by self time, one row per op and input shapes) of one call
    of each contender, on stderr."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for who in ("qkv", "peer_run"):
        case[who]()  # warm
        c0 = time.process_time()
        with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            case[who]()
        cpu = time.process_time() - c0
        events = prof.key_averages(group_by_input_shape=True)
        table = events.table(sort_by="self_cpu_time_total", row_limit=rows)
        calls = sum(e.count for e in events if e.key.startswith("aten::"))
        print(
            f"\n## {name}: {who.removesuffix('_run')}: {calls} aten calls, {cpu:.3f} CPU s\n{table}",
            file=sys.stderr,
        )


# ----------------------------------------------------------------------------- report


def _mib(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2**20:.0f}"


def to_markdown(res: dict[str, Any]) -> str:
    rows = []
    for r in res["cases"]:
        verdict = "met" if r["cpu_ratio"] <= r["target"] else "missed"
        load = "n/a" if r["other_load_cores"] is None else f"{r['other_load_cores']:.2f}"
        for who in ("qkv", "peer"):
            c, ours = r[who], who == "qkv"
            rows.append([
                r["case"], who, f"{c['median_s'] * 1e3:.1f}", f"{c['cpu_median_s'] * 1e3:.1f}",
                f"{r['ratio']:.3f} ({r['paired_ratio']:.3f})" if ours else "",
                f"**{r['cpu_ratio']:.3f}** ({r['cpu_paired_ratio']:.3f})" if ours else "",
                f"<= {r['target']}: {verdict}" if ours else "", f"{c['gflops']:.1f}",
                f"{c['roof_fraction'] * 100:.0f}%", _mib(c["peak_rss_growth_bytes"]), load if ours else "",
            ])  # fmt: skip
    notes = [f"- **{r['case']}**: {r['what']}; peer: {r['peer_model']}; max |qkv - peer| {r['max_abs_diff']:.1e} "
             f"({r['compared']}); roof {r['roof_gflops_same_rounds']:.0f} GFLOP/s in the same rounds; "
             f"load average {r['load_average_1m_after']:.2f} after the case"
             + (f"; {r['rounds_redone']} rounds redone" if r["rounds_redone"] else "")
             for r in res["cases"]]  # fmt: skip
    headers = ["case", "contender", "wall ms", "CPU ms", "wall ratio (paired)", "CPU ratio (paired)", "target",
               "GFLOP/s", "of roof", "peak MiB", "other load"]  # fmt: skip
    return (
        "# Whole models against their peers\n\n"
        f"Median of {res['reps']} interleaved rounds per case (qkv, the peer and an fp32 2048^3 matmul, the "
        f"roof), {res['machine']['torch_num_threads']} torch thread(s). Wall ms: `perf_counter`; CPU ms: the "
        "process's CPU time (`process_time`) of the same calls, what a call cost whatever the other processes "
        "did. Ratio = qkv's median / the peer's (paired: the median of per-round ratios); the target is "
        "judged on the CPU ratio. FLOPs counted with `torch.utils.flop_counter` on the peer; GFLOP/s and of "
        "roof from wall times. Peak MiB: peak RSS growth during one call. Other load: cores other processes "
        "kept busy during the rounds.\n\n"
        + markdown_table(headers, rows, align="llrrrrlrrrr")
        + "\n\n"
        + "\n".join(notes)
        + f"\n\n{machine_line(res['machine'])} Load average {res['load_average_1m_end']:.2f} at the end; "
        f"{res['wall_s']:.0f} s.\n"
    )


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="models", description=__doc__.splitlines()[0])
    p.add_argument(
        "--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)} (default all)"
    )
    p.add_argument(
        "--reps", type=int, default=None, help="timed rounds per case (default 10; 2 with --quick)"
    )
    p.add_argument("--steps", type=int, default=5, help="training steps per timed call (default 5)")
    p.add_argument(
        "--quick", action="store_true", help="smoke run: small BERT batch, 2 rounds; writes *_quick.*"
    )
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: CPU times then are one call's cost)"
    )
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory calls")
    p.add_argument(
        "--max-other-load", type=float, default=0.25, metavar="CORES",
        help="redo (at most reps/2 times per case, waiting up to 10 s each) a round during which other "
        "processes kept more than CORES cores busy; negative: keep every round (default 0.25)",
    )  # fmt: skip
    p.add_argument(
        "--wait-quiet", type=float, default=None, metavar="S",
        help="before each case wait up to S seconds for a quiet machine (default 60, 0 with --quick)",
    )  # fmt: skip
    p.add_argument(
        "--profile", choices=CASES, default=None, help="print torch.profiler tables of one case and exit"
    )
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="output folder")
    return p


def _build_case(name: str, quick: bool, steps: int) -> dict[str, Any]:
    if name == "bert":
        return bert_case(quick)
    return (transformer_case if name == "transformer" else seq2seq_case)(quick, steps)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if not cases or set(cases) - set(CASES):
        raise SystemExit(f"--cases: expected some of {', '.join(CASES)}, got {args.cases!r}")
    if args.threads < 1:
        raise SystemExit(f"--threads: expected >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    steps = 1 if args.quick else args.steps
    if args.profile:
        profile(args.profile, _build_case(args.profile, args.quick, steps))
        return 0
    reps = args.reps or (2 if args.quick else 10)
    wait = args.wait_quiet if args.wait_quiet is not None else (0.0 if args.quick else 60.0)
    other = None if args.max_other_load < 0 else args.max_other_load
    t0, info = time.perf_counter(), machine_info(REPO)
    rows = [
        measure(n, _build_case(n, args.quick, steps), reps, wait, other, not args.no_memory) for n in cases
    ]
    res = {"suite": SUITE, "machine": info, "reps": reps, "steps_per_call": steps, "tolerance": TOLERANCE,
           "memory_method": MEMORY_METHOD, "wait_quiet_s": wait, "max_other_load": other,
           "load_average_1m_end": os.getloadavg()[0], "wall_s": time.perf_counter() - t0, "cases": rows}  # fmt: skip
    write_report(args.out, SUITE, args.quick, res, to_markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
