"""``qkv demo speech``: Listen, Attend and Spell against a Transformer on spoken numbers, and
where each listens.

Trains both recognizers at demo size on spoken numbers (``runs/demo-speech/las/``,
``runs/demo-speech/transformer/``; LAS's training speech of :data:`LAS_RECIPE`), scores them on held-out espeak-ng voices and on flite's
kal16 (:meth:`qkv.speech.Recognizer.evaluate`, each with its beam and CTC weight of
:data:`DEMO_RUNS`), and writes ``metrics.json``::

    {"las": {"wer": {"heldout_voices": ..., "flite_kal16": ...}, "cer": {...},
             "monotonic": {...}, "n": {...}, "beam": 4, "ctc_weight": 0.0,
             "train_seconds": ..., "train_cpu_seconds": ...},
     "transformer": {...}}

(``monotonic``: the share of transcripts whose alignment moves forward in time; the training
times are wall and CPU seconds of this process, ``None`` for a reused model), and
``report.html``: one offline page, the scores and, for a few held-out utterances, the log-mel
spectrogram above each word's attention for both models (PNG figures inlined as base64). A
finished model is reused on the next run (``fresh=True`` retrains it); ``quick=True`` is a
seconds-long smoke run whose numbers mean nothing. Without espeak-ng or flite it stops with
:class:`qkv.speech.SynthesizerMissing`, naming the install command.
"""

from __future__ import annotations

import base64
import html
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from ..train.checkpoint import list_checkpoints
from .config import resolve
from .recognizer import Recognizer
from .training import load_splits, train

__all__ = ["DEMO_RUNS", "LAS_RECIPE", "TRANSFORMER_RECIPE", "run_speech_demo"]

#: LAS's training speech: half of it flite's (awb, rms, slt), each utterance's filterbank warped
#: by a factor in [0.9, 1.1] (vocal tract length perturbation, :mod:`qkv.speech.vtlp`). The
#: Transformer trains on the default mix: in 20 epochs it learns this one too slowly.
LAS_RECIPE = ["--data.warp=0.1", "--data.flite_share=0.5"]
#: The Transformer's front end in the demo: 3x3 convolutions over (time, mel) instead of the
#: preset's over time alone (:mod:`qkv.models.speech_transformer`); a voice's formants at
#: shifted mel bands meet the same filters (kal16's WER 19.4% -> 12.5%, docs/guides/speech.md).
TRANSFORMER_RECIPE = ["--model.front=conv2d"]
#: Each model's preset, overrides at demo size (2,000 training utterances each; the same
#: held-out utterances), the beam it is scored with (1: greedy) and the weight of its CTC head
#: in the beam's ranking (:mod:`qkv.speech.decode`; 0: attention alone). The Transformer stays
#: greedy: joint CTC/attention beam search (beam 4 or 8, weight 0.1 to 0.7) scores it no better
#: on kal16 and worse on the held-out voices (docs/guides/speech.md, "Joint CTC/attention decoding").
DEMO_RUNS: dict[str, tuple[str, list[str], int, float]] = {
    "las": ("las", ["--train.epochs=8", *LAS_RECIPE], 4, 0.0),
    "transformer": ("speech-transformer", ["--train.epochs=20", *TRANSFORMER_RECIPE], 1, 0.0),
}
#: The demo's spoken numbers: training, validation, and each held-out split's size.
_DATA = ["--data.train_size=2000", "--data.valid_size=100", "--data.test_size=200"]
_QUICK_DATA = ["--data.train_size=16", "--data.valid_size=4", "--data.test_size=6", "--train.batch_size=8"]
_QUICK = {
    "las": ["--model.listener_dim=8", "--model.speller_dim=16", "--model.attention_dim=8", "--model.embed_dim=8"],
    "transformer": ["--model.d_model=16", "--model.heads=2", "--model.encoder_layers=1",
                    "--model.decoder_layers=1", "--model.ff_dim=32", "--model.channels=4"],
}  # fmt: skip
#: The report's splits: metrics.json's name of each.
SPLITS = {"test": "heldout_voices", "kal16": "flite_kal16"}
#: Held-out utterances drawn in the report.
FIGURES = 3


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _config(name: str, quick: bool):
    preset, overrides, *_ = DEMO_RUNS[name]
    extra = [*_QUICK_DATA, *_QUICK[name], "--train.max_steps=3"] if quick else _DATA
    return resolve(preset=preset, overrides=[*overrides, "--train.save_every_minutes=0", *extra])


def _train_one(name: str, run: Path, *, fresh: bool, quick: bool) -> tuple[float, float] | None:
    """Train ``name`` into ``run`` (wall and CPU seconds), or reuse a finished run there (``None``)."""
    if list_checkpoints(run) and not fresh:
        _say(f"{name}: reusing the model in {run} (--fresh retrains it)")
        return None
    if run.exists():
        shutil.rmtree(run)
    t0, c0 = time.perf_counter(), time.process_time()
    train(_config(name, quick), run, progress=not quick, stream=sys.stderr)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    _say(f"{name}: trained in {seconds:.0f} s ({cpu:.0f} CPU-seconds)")
    return round(seconds, 1), round(cpu, 1)


def _scores(rec: Recognizer, sets: dict[str, Any], beam: int, ctc_weight: float) -> dict[str, Any]:
    """WER, CER and the share of monotonic alignments on each held-out split, decoded with ``beam``
    and ``ctc_weight``."""
    scores = {SPLITS[s]: rec.evaluate(sets[s], beam=beam, ctc_weight=ctc_weight) for s in SPLITS}
    return {k: {name: (round(v[k], 4) if k != "n" else v[k]) for name, v in scores.items()}
            for k in ("wer", "cer", "monotonic", "n")}  # fmt: skip


def _previous(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}


def run_speech_demo(
    out_dir: str | Path = "runs/demo-speech", *, fresh: bool = False, quick: bool = False
) -> dict:
    """Generate the spoken numbers, train, score and report; returns what ``metrics.json`` holds.

    Raises:
        SynthesizerMissing: espeak-ng or flite is not installed (naming the install command).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started, previous = time.perf_counter(), _previous(out)
    data = _config("las", quick).data
    _say(f"[1/4] spoken numbers: {data.train_size} training utterances, {data.test_size} per held-out split "
         "(synthesized once, then cached)")  # fmt: skip
    sets = load_splits(data, ("train", "valid", *SPLITS))
    metrics: dict[str, Any] = {}
    recognizers = {}
    for i, name in enumerate(DEMO_RUNS, 2):
        _say(f"[{i}/4] {name}: training ({DEMO_RUNS[name][0]})")
        times = _train_one(name, out / name, fresh=fresh, quick=quick)
        if times is None:
            times = tuple(previous.get(name, {}).get(k) for k in ("train_seconds", "train_cpu_seconds"))
        recognizers[name], (beam, ctc) = Recognizer.load(out / name), DEMO_RUNS[name][2:]
        metrics[name] = {**_scores(recognizers[name], sets, beam, ctc), "beam": beam, "ctc_weight": ctc,
                         "train_seconds": times[0], "train_cpu_seconds": times[1]}  # fmt: skip
        _say(f"{name}: WER held-out voices {metrics[name]['wer']['heldout_voices']:.4f}, "
             f"flite kal16 {metrics[name]['wer']['flite_kal16']:.4f}")  # fmt: skip
    _say("[4/4] report: alignments of held-out utterances")
    figures = _figures(recognizers, sets["test"], out)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    seconds = time.perf_counter() - started
    (out / "report.html").write_text(_report_html(metrics, figures, quick=quick, seconds=seconds))
    _say(f"wrote {out / 'metrics.json'} and {out / 'report.html'} ({seconds:.0f} s)")
    return metrics


def _figures(recognizers: dict[str, Recognizer], spoken, out: Path) -> list[Path]:
    """One figure per held-out utterance: its spectrogram over both models' alignments (none
    without matplotlib)."""
    try:
        from .pictures import alignment_figure

        paths = []
        for i in range(min(FIGURES, len(spoken))):
            rows = [
                (name, rec.transcribe_features(spoken.features[i : i + 1])[0])
                for name, rec in recognizers.items()
            ]
            title = f"\u201c{spoken.texts[i]}\u201d ({spoken.voices[i]}, a voice never heard in training)"
            paths.append(
                alignment_figure(spoken.features[i], rows, title=title, path=out / f"alignment_{i}.png")
            )
    except ImportError:
        return []
    return paths


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}"></figure>'


def _rows(metrics: dict[str, Any]) -> str:
    cells = []
    for name, m in metrics.items():
        secs = "reused" if m["train_seconds"] is None else f"{m['train_seconds']:.0f} s"
        if m["train_cpu_seconds"] is not None:
            secs += f" ({m['train_cpu_seconds']:.0f} CPU-s)"
        values = [m[k][s] for k in ("wer", "cer", "monotonic") for s in SPLITS.values()]
        cells.append(f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{100 * v:.1f}%</td>" for v in values)
                     + f"<td>{secs}</td></tr>")  # fmt: skip
    return "\n".join(cells)


def _decoding(metrics: dict[str, Any]) -> str:
    """How each model decoded: ``"las: beam 4, transformer: greedy"`` (``"beam 8, CTC weight 0.3"``)."""
    return ", ".join(
        f"{html.escape(name)}: {_way(m['beam'], m['ctc_weight'])}" for name, m in metrics.items()
    )


def _way(beam: int, ctc_weight: float) -> str:
    if beam == 1 and not ctc_weight:
        return "greedy"
    return f"beam {beam}" + (f", CTC weight {ctc_weight}" if ctc_weight else "")


def _report_html(metrics: dict[str, Any], figures: list[Path], *, quick: bool, seconds: float) -> str:
    note = "<p><b>A --quick run</b>: tiny models, a few steps; the numbers mean nothing.</p>" if quick else ""
    n = next(iter(metrics.values()))["n"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>qkv demo speech</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td,th{{padding:.2em .8em;text-align:right}}
td:first-child{{text-align:left}}img{{max-width:100%}}</style></head><body>
<h1>Listen, Attend and Spell against a Transformer, on spoken numbers</h1>{note}
<p>Both recognizers learn numbers in English words from espeak-ng and flite voices and are scored
({_decoding(metrics)}) on {n["heldout_voices"]} utterances of espeak-ng voices never heard in training and {n["flite_kal16"]} of
flite's kal16, another synthesizer's voice, never heard. <i>las</i>: a pyramidal BiLSTM listener over frames
stacked by 3, an LSTM speller with additive attention. <i>transformer</i>: two stride-2 convolutions over the
frames, sinusoidal positions, encoder self-attention, a causal decoder with cross-attention to the frames,
its states layer-normalised before the positions, trained jointly with CTC over the encoder states.
Monotonic: the share of transcripts whose most attended state never moves back from one word to the next.</p>
<table><tr><th>model</th><th>WER held-out</th><th>WER kal16</th><th>CER held-out</th><th>CER kal16</th>
<th>monotonic held-out</th><th>monotonic kal16</th><th>training</th></tr>
{_rows(metrics)}</table>
<h2>Where each model listens</h2>
<p>Each figure: a held-out utterance's log-mel spectrogram (40 bands every 10 ms), and under it, on the same
time axis, each model's attention for every word it wrote (a row per word, the last for &lt;eos&gt;). A
working alignment steps down and to the right with the words.</p>
{"".join(_img(f) for f in figures) or "<p>(figures need matplotlib: pip install 'qkv[viz]')</p>"}
<p>Total demo time {seconds:.0f} s. Transcribe your own recording with
<code>qkv transcribe --checkpoint runs/demo-speech/transformer one.wav</code>.</p>
</body></html>
"""
