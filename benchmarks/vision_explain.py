"""Which image explanation points at the object? The localisation benchmark of qkv's ViT.

A ViT (the ``vit-located`` preset) is trained on ``located-digits`` canvases: one 8x8 digit
(upscaled to 16x16) at a random spot of a 32x32 canvas among distractor strokes, the class
depending on the digit alone (or loaded with ``--checkpoint``). On fresh canvases drawn from
the test digits, every method of ``qkv.interpret.explain_image`` (attention, rollout, grad,
gradcam, ig) and a random map explain the true class, and each map is scored against the
digit's box (``qkv.interpret.localization``): pointing game (the map's maximum inside the box),
energy inside the box, deletion and insertion AUC (pixels removed from the canvas, or inserted
into a black one, most important first; the class probability's area under the curve).

    python -m benchmarks.vision_explain                        # writes benchmarks/results/vision_explain.{json,md}, docs/vision-explain.png
    python -m benchmarks.vision_explain --checkpoint runs/located --images 500
    python -m benchmarks.vision_explain --quick                # smoke run: a tiny model, its numbers mean nothing
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

# common.py sits beside this file, however it is run
if __package__:  # imported as a package module (`python -m benchmarks.<suite>`)
    from .common import log, machine_info, machine_line, markdown_table, write_report
else:  # python benchmarks/<suite>.py: the script's directory is first on sys.path
    from common import log, machine_info, machine_line, markdown_table, write_report

SUITE = "vision_explain"
REPO = Path(__file__).resolve().parent.parent
#: The training recipe (on top of the ``vit-located`` preset): 8,000 canvases, 1,000 steps: about 6 minutes on 2 busy cores.
TRAIN = ["--train.epochs=8", "--train.batch_size=64", "--train.lr=3e-3", "--train.warmup=100"]
QUICK = ["--data.size=400", "--train.epochs=1", "--model.dim=16", "--model.depth=1", "--model.heads=2",
         "--model.mlp_dim=32"]  # fmt: skip


def _classifier(args: argparse.Namespace, run: Path) -> tuple[Any, dict[str, Any]]:
    from qkv.vision import Classifier, resolve, train

    if args.checkpoint:
        return Classifier.load(args.checkpoint), {"checkpoint": str(args.checkpoint)}
    overrides = ["--data.dataset=located-digits", *TRAIN, f"--train.threads={args.threads}",
                 "--train.save_every_minutes=0", *(QUICK if args.quick else [])]  # fmt: skip
    cfg = resolve(preset="vit-located", overrides=overrides)
    t0 = time.perf_counter()
    train(cfg, run, progress=False)
    seconds = time.perf_counter() - t0
    log(f"trained in {seconds:.0f} s")
    return Classifier.load(run), {"train_seconds": round(seconds, 1), "overrides": overrides}


def _figure(clf, images, labels, out: Path) -> None:
    from qkv.interpret import IMAGE_METHODS
    from qkv.viz import image_methods

    maps = {
        m: clf.explain(images[:1], method=m, target=labels[:1], steps=16).pixels[0] for m in IMAGE_METHODS
    }
    image_methods(images[0], maps, title=f"a located digit of class {int(labels[0])}: every method", path=out)


def to_markdown(res: dict[str, Any]) -> str:
    rows = [
        [name, f"{s['pointing']:.3f}", f"{s['energy_in_box']:.3f}", f"{s['deletion_auc']:.3f}",
         f"{s['insertion_auc']:.3f}"]
        for name, s in res["scores"].items()
    ]  # fmt: skip
    trained = f"trained in {res['train_seconds']:.0f} s; " if "train_seconds" in res else ""
    return (
        f"# Localisation of image explanations (located digits)\n\n"
        f"{res['model']}; {trained}test accuracy {res['accuracy']:.3f} on {res['images']} fresh canvases "
        f"of the test digits; deletion/insertion in {res['steps']} steps to black, ig with {res['ig_steps']} "
        f"points. Pointing and energy: higher is better; deletion AUC: lower; insertion AUC: higher.\n\n"
        + markdown_table(
            ["method", "pointing", "energy in box", "deletion AUC", "insertion AUC"], rows, align="lrrrr"
        )
        + f"\n\n{machine_line(res['machine'])}\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vision_explain", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, help="a located-digits run of qkv train (default: train one)")
    p.add_argument("--images", type=int, default=300, help="test canvases scored (default 300)")
    p.add_argument("--steps", type=int, default=16, help="deletion/insertion steps (default 16)")
    p.add_argument("--ig-steps", type=int, default=16, help="integration points of ig (default 16)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for training (default 1)")
    p.add_argument("--run", type=Path, default=Path("runs/bench-vision-explain"), help="where to train")
    p.add_argument("--quick", action="store_true", help="a tiny model and 40 images: a smoke run")
    args = p.parse_args(argv)
    if args.quick:
        args.images = 40
    from qkv.vision.config import DataConfig
    from qkv.vision.localization import localization_scores, located_test_set

    info = machine_info(REPO)
    clf, how = _classifier(args, args.run)
    images, labels, boxes = located_test_set(DataConfig(**clf.config["data"]), args.images, seed=12345)
    accuracy = float((clf.predict(images)[0] == labels).float().mean())
    t0 = time.perf_counter()
    scores = localization_scores(clf, images, labels, boxes, steps=args.steps, ig_steps=args.ig_steps)
    log(f"scored {args.images} images in {time.perf_counter() - t0:.0f} s")
    res = {"suite": SUITE, "machine": info, "model": clf.describe(), **how, "accuracy": accuracy,
           "images": args.images, "steps": args.steps, "ig_steps": args.ig_steps, "scores": scores}  # fmt: skip
    out = REPO / "benchmarks" / "results"
    write_report(out, SUITE, args.quick, res, to_markdown)
    _figure(
        clf,
        images,
        labels,
        out / f"{SUITE}_quick.png" if args.quick else REPO / "docs" / "vision-explain.png",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
