"""``qkv transcribe``: spoken numbers in WAV files written out by a trained speech recognizer.

::

    qkv transcribe --checkpoint runs/las one.wav two.wav
    qkv transcribe --checkpoint runs/las --beam 4 --json one.wav
    qkv transcribe --checkpoint runs/demo-speech/transformer --beam 8 --ctc-weight 0.3 one.wav

Each file is read at its own sample rate (any rate, stereo averaged to mono), resampled to 16 kHz
and transcribed (:meth:`qkv.speech.recognizer.Recognizer.transcribe`). ``--json`` adds each
word's attention over the 10 ms feature frames: the peak frame of each word.
"""

from __future__ import annotations

import argparse
import json

from . import USER_ERRORS, CommandError, error_message, warnings_as_messages

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    t = sub.add_parser(
        "transcribe",
        help="transcribe WAV files with a trained speech recognizer (qkv train --model las)",
        description="The transcript of each WAV file (any sample rate; stereo averaged) by a trained "
        "Listen, Attend and Spell model, greedy or by beam search.",
    )
    t.add_argument(
        "--checkpoint", required=True, help="a run directory of qkv train --model las (or a checkpoint)"
    )
    t.add_argument("--beam", type=int, default=1, help="beam size (1 = greedy)")
    t.add_argument(
        "--ctc-weight",
        type=float,
        default=0.0,
        metavar="L",
        help="a model with a CTC head (speech-transformer): rank beam hypotheses by L * CTC + (1 - L) * "
        "attention log-probability (0, the default: attention alone)",
    )
    t.add_argument(
        "--json", action="store_true", help="print transcripts and each word's attention peak as JSON"
    )
    t.add_argument("files", nargs="+", metavar="FILE.wav", help="the WAV files to transcribe")
    t.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Load the recognizer, transcribe every file, print one line per file (or JSON)."""
    from ..speech.recognizer import Recognizer

    if args.beam < 1:
        raise CommandError(f"--beam: expected an int >= 1, got {args.beam}")
    if not 0.0 <= args.ctc_weight <= 1.0:
        raise CommandError(f"--ctc-weight: expected a float in [0, 1], got {args.ctc_weight}")
    try:
        rec = Recognizer.load(args.checkpoint)
    except USER_ERRORS as e:
        raise CommandError(f"--checkpoint: {error_message(e)}") from None
    try:
        with warnings_as_messages():
            transcripts = rec.transcribe(list(args.files), beam=args.beam, ctc_weight=args.ctc_weight)
    except USER_ERRORS as e:
        raise CommandError(error_message(e)) from None
    if args.json:
        rows = []
        for path, t in zip(args.files, transcripts, strict=True):
            peaks = [int(row.argmax()) * t.frames_per_state for row in t.attention]
            words = t.text.split()
            rows.append({"file": path, "text": t.text, "stop": t.stop,
                         "word_frames": [{"word": w, "frame": f} for w, f in zip(words, peaks, strict=False)]})  # fmt: skip
        print(json.dumps(rows, indent=2))
        return 0
    for path, t in zip(args.files, transcripts, strict=True):
        print(f"{path}\t{t.text}")
    return 0
