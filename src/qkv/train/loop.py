"""The training loop of qkv's translation models: data -> model -> optimizer -> checkpoints.

:func:`train` is what ``qkv train`` runs. It is resumable exactly: everything random (dropout,
teacher-forcing coins) draws from torch's global generator, whose state is checkpointed; the
batch order of an epoch is a pure function of ``(seed, epoch)``, so a resumed run skips the
batches already done; the learning rate is a function of the step. On CPU a run interrupted
after K/2 steps and resumed gives bitwise the same weights and losses as a run of K steps.

Ctrl-C (KeyboardInterrupt) saves a checkpoint at the current batch and returns cleanly.
"""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..models.seq2seq import Seq2Seq, Seq2SeqConfig
from ..models.transformer import Transformer, TransformerConfig

# Batches are drawn from windows of 20 batches sorted by length: ~2% padding instead of ~30%.
_SORT_WITHIN = 20

__all__ = ["TrainResult", "build_model", "learning_rate", "prepare_data", "train", "validation_loss"]


def build_model(model_cfg: dict[str, Any], *, src_vocab: int, tgt_vocab: int) -> nn.Module:
    """A :class:`Seq2Seq` or :class:`Transformer` from the ``[model]`` table."""
    fields = {k: v for k, v in model_cfg.items() if k != "kind"}
    kind = model_cfg.get("kind", "seq2seq")
    if kind == "seq2seq":
        return Seq2Seq(Seq2SeqConfig(src_vocab=src_vocab, tgt_vocab=tgt_vocab, **fields))
    if kind == "transformer":
        return Transformer(TransformerConfig(src_vocab=src_vocab, tgt_vocab=tgt_vocab, **fields))
    raise ValueError(f"model.kind: expected 'seq2seq' or 'transformer', got {kind!r}")


def prepare_data(cfg: dict[str, Any]):
    """The corpus and the two tokenizers (built on the training split only) of a config."""
    from .. import data as qdata

    d = cfg["data"]
    corpus = load_corpus(d)
    train_ex = corpus["train"]
    kw = {"vocab_size": d["bpe_vocab"]} if d["tokenizer"] == "bpe" else {}
    src_tok = qdata.build_tokenizer(d["tokenizer"], [e.source for e in train_ex], **kw)
    tgt_tok = qdata.build_tokenizer(d["tokenizer"], [e.target for e in train_ex], **kw)
    return corpus, src_tok, tgt_tok


def load_corpus(d: dict[str, Any]):
    """The corpus of a ``[data]`` table: a built-in name or a TSV path."""
    from .. import data as qdata

    name = str(d["corpus"])
    if name in qdata.BUILTIN_CORPORA:
        return qdata.builtin(name, size=d["size"], seed=d["seed"], **d.get("options", {}))
    path = Path(name)
    if not path.exists():
        raise ValueError(
            f"data.corpus: {name!r} is neither a built-in corpus ({', '.join(qdata.BUILTIN_CORPORA)}) "
            "nor an existing file"
        )
    return qdata.load_tsv(
        path,
        lowercase=d["lowercase"],
        split_punct=d["split_punct"],
        max_len=d["max_len"] or None,
        valid_frac=d["valid_frac"],
        test_frac=d["test_frac"],
        seed=d["seed"],
    )


def learning_rate(step: int, t: dict[str, Any], total_steps: int) -> float:
    """The learning rate at optimizer step ``step`` (0-based): linear warm-up, then the schedule."""
    lr, warm = float(t["lr"]), int(t["warmup"])
    if warm and step < warm:
        return lr * (step + 1) / warm
    if t["schedule"] == "constant":
        return lr
    if t["schedule"] == "inverse_sqrt":
        return lr * math.sqrt(max(warm, 1)) / math.sqrt(step + 1)
    progress = min(1.0, (step - warm) / max(1, total_steps - warm))
    return float(t["min_lr"]) + 0.5 * (lr - float(t["min_lr"])) * (1 + math.cos(math.pi * progress))


def _loss(model: nn.Module, batch, t: dict[str, Any]) -> tuple[Tensor, int]:
    """Token cross entropy, plus the model's auxiliary loss when it has one.

    A model with an ``auxiliary_loss(record, logits, targets)`` method (e.g. the REINFORCE
    term of hard attention in :class:`qkv.models.seq2seq.Seq2Seq`) is called with a ``record``
    dict its forward fills; a term it returns (not None) is added to the loss.
    """
    record: dict[str, Tensor] = {}
    extra = {"record": record} if hasattr(model, "auxiliary_loss") else {}
    logits = model(
        batch.src, batch.src_lengths, batch.tgt_in, teacher_forcing=float(t["teacher_forcing"]), **extra
    )
    ntok = int((batch.tgt_out != 0).sum())
    loss = nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        batch.tgt_out.reshape(-1),
        ignore_index=0,
        label_smoothing=float(t["label_smoothing"]),
    )
    if record:
        aux = model.auxiliary_loss(record, logits, batch.tgt_out)
        if aux is not None:
            loss = loss + aux
    return loss, ntok


@torch.no_grad()
def validation_loss(model: nn.Module, pairs, *, batch_size: int) -> float:
    """Mean teacher-forced cross entropy per target token (no dropout, no label smoothing)."""
    from ..data import batches

    was = model.training
    model.eval()
    total, count = 0.0, 0
    for b in batches(pairs, batch_size=batch_size, shuffle=False, seed=0):
        logits = model(b.src, b.src_lengths, b.tgt_in)
        total += float(
            nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(),
                b.tgt_out.reshape(-1),
                ignore_index=0,
                reduction="sum",
            )
        )
        count += int((b.tgt_out != 0).sum())
    model.train(was)
    return total / max(count, 1)


@dataclass
class TrainResult:
    """What :func:`train` returns: the run directory, the step reached, per-epoch history, the
    best validation loss, and whether it stopped early or was interrupted."""

    out_dir: Path
    step: int
    history: list[dict[str, Any]] = field(default_factory=list)
    best_valid_loss: float = math.inf
    stopped_early: bool = False
    interrupted: bool = False
    seconds: float = 0.0


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def train(
    cfg: dict[str, Any],
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    stream=None,
    stop_after_steps: int | None = None,
) -> TrainResult:
    """Train the model a config describes; checkpoints go to ``out_dir``.

    Args:
        cfg: a full config from :func:`qkv.train.config.resolve`.
        out_dir: the run directory (``ckpt-*`` checkpoints, ``latest.json``, ``best/``).
        resume: continue from the latest checkpoint in ``out_dir`` (its config wins; an
            existing run directory without ``resume`` is an error, so nothing is overwritten).
        progress: show a progress bar with loss, tokens/s and ETA on ``stream`` (stderr).
        stop_after_steps: stop (and checkpoint) after this many optimizer steps in this call,
            as an interruption would (tests use it to check exact resumption).
    """
    from .checkpoint import find_latest, load_checkpoint

    stream = sys.stderr if stream is None else stream
    out = Path(out_dir)
    ckpt = None
    if resume:
        if find_latest(out) is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {str(out)!r}")
        ckpt = load_checkpoint(out)
        cfg = ckpt.config
    elif find_latest(out) is not None:
        raise FileExistsError(
            f"out: {str(out)!r} already holds a run; pass --resume to continue it or choose another --out"
        )
    t = cfg["train"]
    threads_before = torch.get_num_threads()
    if int(t.get("threads", 0) or 0) > 0:
        torch.set_num_threads(int(t["threads"]))
    try:
        return _train(cfg, out, ckpt, stream, progress, stop_after_steps)
    finally:
        torch.set_num_threads(threads_before)


def _train(cfg, out: Path, ckpt, stream, progress: bool, stop_after_steps: int | None) -> TrainResult:
    from ..data import batches, encode_pairs, num_batches
    from .checkpoint import save_checkpoint
    from .progress import Progress

    t = cfg["train"]
    _seed_everything(int(t["seed"]))
    corpus, src_tok, tgt_tok = prepare_data(cfg)
    if ckpt is not None:
        from ..data import tokenizer_from_dict

        src_tok = tokenizer_from_dict(ckpt.vocab["source"])
        tgt_tok = tokenizer_from_dict(ckpt.vocab["target"])
    train_pairs = encode_pairs(corpus["train"], src_tok, tgt_tok)
    valid_pairs = encode_pairs(corpus["valid"], src_tok, tgt_tok)
    model = build_model(cfg["model"], src_vocab=len(src_tok), tgt_vocab=len(tgt_tok))
    opt = torch.optim.AdamW(model.parameters(), lr=float(t["lr"]), weight_decay=float(t["weight_decay"]))
    bsz = int(t["batch_size"])
    per_epoch = num_batches(len(train_pairs), bsz)
    total = int(t["epochs"]) * per_epoch
    if t["max_steps"]:
        total = min(total, int(t["max_steps"]))
    vocab = {"source": src_tok.to_dict(), "target": tgt_tok.to_dict()}
    # Everything a resumed run needs to continue exactly (plain numbers, checkpointed as JSON).
    st = {
        "epoch": 0, "batch": 0, "step": 0, "best": math.inf, "bad_epochs": 0, "history": [], "seconds": 0.0,
        "epoch_loss": 0.0, "epoch_tokens": 0, "finished": False,
    }  # fmt: skip
    if ckpt is not None:
        ckpt.restore(model, opt, rng=True)
        st.update(ckpt.state)
    result = TrainResult(
        out_dir=out, step=st["step"], history=list(st["history"]), best_valid_loss=st["best"]
    )

    def save(**extra) -> None:
        save_checkpoint(
            out, model=model, optimizer=opt, step=st["step"], config=cfg, vocab=vocab,
            metrics={"history": st["history"], **extra}, state=dict(st), keep=int(t["keep"]),
        )  # fmt: skip

    started, steps_here = time.perf_counter(), 0
    seconds_before = float(st["seconds"])
    bar = (
        Progress(
            total, desc=f"train {cfg['model'].get('attention', cfg['model'].get('kind'))}", stream=stream
        )
        if progress
        else None
    )
    model.train()
    try:
        while st["epoch"] < int(t["epochs"]) and st["step"] < total:
            t0, tok_here = time.perf_counter(), 0
            epoch_batches = batches(
                train_pairs, batch_size=bsz, shuffle=True, seed=int(t["seed"]), epoch=st["epoch"],
                sort_within=_SORT_WITHIN, start=st["batch"],
            )  # fmt: skip
            for i, batch in enumerate(epoch_batches, start=st["batch"]):
                for group in opt.param_groups:
                    group["lr"] = learning_rate(st["step"], t, total)
                loss, ntok = _loss(model, batch, t)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if t["clip"]:
                    nn.utils.clip_grad_norm_(model.parameters(), float(t["clip"]))
                opt.step()
                st["step"] += 1
                st["batch"] = i + 1
                steps_here += 1
                st["epoch_loss"] += float(loss.detach()) * ntok
                st["epoch_tokens"] += ntok
                tok_here += ntok
                if bar is not None:
                    rate = tok_here / max(time.perf_counter() - t0, 1e-9)
                    bar.update(
                        1, epoch=st["epoch"] + 1, loss=f"{float(loss.detach()):.3f}", tok_s=f"{rate:,.0f}"
                    )
                if t["save_every"] and st["step"] % int(t["save_every"]) == 0:
                    st["seconds"] = seconds_before + time.perf_counter() - started
                    save()
                if st["step"] >= total or (stop_after_steps is not None and steps_here >= stop_after_steps):
                    break
            if (
                stop_after_steps is not None
                and steps_here >= stop_after_steps
                and st["batch"] < per_epoch
                and st["step"] < total
            ):
                result.interrupted = True
                break
            # ---- end of epoch: validate, early stopping, checkpoint
            vloss = validation_loss(model, valid_pairs, batch_size=bsz * 2)
            record = {
                "epoch": st["epoch"] + 1,
                "step": st["step"],
                "train_loss": st["epoch_loss"] / max(st["epoch_tokens"], 1),
                "valid_loss": vloss,
                "tokens_per_s": tok_here / max(time.perf_counter() - t0, 1e-9),
            }
            if t["valid_decode"]:
                record["valid_exact_match"] = _valid_exact_match(
                    model, corpus["valid"][: int(t["valid_decode"])], src_tok, tgt_tok, cfg
                )
            st["history"].append(record)
            st["epoch"] += 1
            st["batch"], st["epoch_loss"], st["epoch_tokens"] = 0, 0.0, 0
            improved = vloss < st["best"] - 1e-6
            if improved:
                st["best"], st["bad_epochs"] = vloss, 0
            else:
                st["bad_epochs"] += 1
            msg = (
                f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}, valid loss {vloss:.4f}"
                + (
                    f", valid exact match {record['valid_exact_match']:.3f}"
                    if "valid_exact_match" in record
                    else ""
                )
                + f", {record['tokens_per_s']:,.0f} target tok/s"
            )
            if bar is not None:
                bar.write(msg)
            st["seconds"] = seconds_before + time.perf_counter() - started
            save()
            if improved:
                save_checkpoint(out / "best", model=model, step=st["step"], config=cfg, vocab=vocab,
                                metrics={"valid_loss": vloss, **record}, state={}, keep=1)  # fmt: skip
            if t["patience"] and st["bad_epochs"] >= int(t["patience"]):
                result.stopped_early = st["finished"] = True
                save()
                if bar is not None:
                    bar.write(f"early stopping: no better validation loss for {st['bad_epochs']} epochs")
                break
    except KeyboardInterrupt:
        result.interrupted = True
        if bar is not None:
            bar.write("interrupted: saving a checkpoint...")
    finally:
        if bar is not None:
            bar.close()
    if result.interrupted:
        st["seconds"] = seconds_before + time.perf_counter() - started
        save()
        print(f"checkpoint saved at step {st['step']}; continue with --resume", file=stream)
    result.step = st["step"]
    result.history = list(st["history"])
    result.best_valid_loss = st["best"]
    result.seconds = seconds_before + time.perf_counter() - started
    return result


def _valid_exact_match(model, examples, src_tok, tgt_tok, cfg) -> float:
    from .translator import decode_examples

    hyps = decode_examples(
        model, examples, src_tok, tgt_tok, beam=1, batch_size=128, max_len=_max_len(cfg, examples, tgt_tok)
    )
    good = sum(h == " ".join(e.target.split()) for h, e in zip(hyps, examples))
    return good / max(len(examples), 1)


def _max_len(cfg, examples, tgt_tok) -> int:
    """The decoding limit of validation: ``max_decode_len``, else 2 x the longest target in
    the target tokenizer's tokens (characters for ``char``, pieces for ``bpe``) + 10."""
    limit = int(cfg["train"].get("max_decode_len", 0) or 0)
    if limit:
        return limit
    longest = max((len(tgt_tok.encode(e.target)) for e in examples), default=10)
    return 2 * longest + 10
