"""Fashion-MNIST with qkv's ViT: test accuracy on the 10,000 test images within a wall-clock budget.

The run a user makes (``qkv train --model vit --data fashion-mnist`` with the recipe below:
:func:`qkv.vision.train` on the ``vit-fashion-mnist`` preset), with one addition: the number of
optimizer steps fits the budget. A few steps of the same model on the same batches are timed
first, and ``--train.max_steps`` is set so the whole run (validation each epoch included)
ends within ``--minutes``; the learning rate schedule then ends where training ends. The trained
run is loaded back with :meth:`qkv.vision.Classifier.load` and evaluated on the test set.
Target: >= 90% test accuracy in <= 10 minutes on 2 CPU cores.

    python -m benchmarks.vision_fashion                  # 10 minutes: benchmarks/results/vision_fashion.{json,md}
    python -m benchmarks.vision_fashion --minutes 2      # a short run, same recipe (results/vision_fashion_quick.*)
    python -m benchmarks.vision_fashion --quick          # smoke: 2,000 images, a tiny model, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# common.py sits beside this file, however it is run
if __package__:  # imported as a package module (`python -m benchmarks.<suite>`)
    from .common import CpuLoad, log, machine_info, machine_line, markdown_table, write_report
else:  # python benchmarks/<suite>.py: the script's directory is first on sys.path
    from common import CpuLoad, log, machine_info, machine_line, markdown_table, write_report

SUITE = "vision_fashion"
REPO = Path(__file__).resolve().parent.parent
#: The training recipe on top of the ``vit-fashion-mnist`` preset (``epochs`` is a ceiling: the budget decides).
TRAIN = ["--data.dataset=fashion-mnist", "--data.augment_shift=0", "--train.epochs=30", "--train.batch_size=64",
         "--train.lr=2e-3", "--train.warmup=200", "--train.label_smoothing=0.1"]  # fmt: skip
QUICK = ["--data.size=2000", "--model.dim=16", "--model.depth=1", "--model.heads=2", "--model.mlp_dim=32"]
#: The share of the budget the timed steps may take (the rest: data, validation each epoch, checkpoints,
#: steps slower than the median timed): on 2 quiet cores the 600 s run of the preset took 56.2 ms a
#: step against the 47.0 ms timed, a share of 0.836, so 0.88 ran out of budget 556 steps before the
#: schedule's end. A narrower-token recipe leaves more to the fixed costs (patch 7 at 96 wide: 0.69).
SAFETY = 0.81


def seconds_per_step(cfg, *, steps: int = 30, warmup: int = 10) -> float:
    """The median time of one optimizer step of ``cfg``'s model on its first training batches."""
    import torch

    from qkv.application.run import torch_threads
    from qkv.models.builders import build_image_model
    from qkv.vision import ClassificationTask, load_splits
    from qkv.vision.training import image_facts

    splits = load_splits(cfg.data)
    facts = image_facts(splits["train"])
    with torch_threads(cfg.train.threads):
        model = build_image_model(cfg.model, image_size=facts["image_size"], channels=facts["channels"],
                                  num_classes=len(facts["classes"]))  # fmt: skip
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
        task, times = ClassificationTask(cfg, splits), []
        for i, batch in zip(range(warmup + steps), task.batches(0, 0), strict=False):
            t0 = time.perf_counter()
            loss, _ = task.loss(model, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


@contextlib.contextmanager
def hard_stop(seconds: float) -> Iterator[None]:
    """SIGTERM to this process after ``seconds``: the trainer stops after its current step and
    checkpoints, as on any interruption (the ceiling for a machine slower than the steps measured)."""
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def budget_config(overrides: list[str], minutes: float):
    """The run's config with ``train.max_steps`` fitting ``minutes``, and the step time measured."""
    from qkv.vision import resolve

    cfg = resolve(overrides=overrides)
    step_s = seconds_per_step(cfg)
    steps = max(1, int(minutes * 60 * SAFETY / step_s))
    return resolve(overrides=[*overrides, f"--train.max_steps={steps}"]), step_s


def to_markdown(res: dict[str, Any]) -> str:
    target = "met" if res["target_met"] else "not met"
    rows = [[res["accuracy_text"], f"{res['train_seconds']:.0f}", f"{res['budget_minutes'] * 60:.0f}",
             f"{res['steps']:,}", f"{res['epochs']:.1f}", f"{res['images_per_second']:.0f}",
             "n/a" if res["other_load_cores"] is None else f"{res['other_load_cores']:.2f}"]]  # fmt: skip
    headers = [
        "test accuracy",
        "train s",
        "budget s",
        "steps",
        "epochs",
        "images/s",
        "other processes (cores)",
    ]
    stopped = (
        " (the budget ran out before the last step: the run was stopped there)"
        if res["stopped_by_budget"]
        else ""
    )
    worst = ", ".join(f"{name} {acc:.3f}" for name, acc in res["hardest_classes"])
    return (
        f"# Fashion-MNIST: qkv's ViT within a wall-clock budget\n\n"
        f"{res['model']}; `qkv train --model vit` with {' '.join(res['overrides'])}. Test accuracy on "
        f"the {res['test_images']:,} test images; the target (>= 0.90 in <= 600 s of training) is "
        f"{target}{stopped}.\n\n"
        + markdown_table(headers, rows, align="rrrrrrr")
        + f"\n\nThe hardest classes (test accuracy): {worst}.\n\n{machine_line(res['machine'])}\n"
    )


def _train(args: argparse.Namespace, run: Path) -> dict[str, Any]:
    from qkv.vision import Classifier, load_splits, train

    overrides = [*TRAIN, f"--train.threads={args.threads}", f"--train.seed={args.seed}",
                 "--train.save_every_minutes=0", *(QUICK if args.quick else []),
                 *(f"--{kv}" for kv in args.set)]  # fmt: skip
    cfg, step_s = budget_config(overrides, args.minutes)
    log(f"{step_s * 1000:.0f} ms a step: {cfg.train.max_steps:,} steps fit {args.minutes:g} minutes")
    load, t0 = CpuLoad().start(), time.perf_counter()
    with hard_stop(args.minutes * 60):
        result = train(cfg, run, progress=args.progress)
    seconds, other = time.perf_counter() - t0, load.stop()
    if result.interrupted:
        log(f"the budget ran out at step {result.step:,} of {cfg.train.max_steps:,}: stopped there")
    splits = load_splits(cfg.data)
    clf, test = Classifier.load(run), splits["test"]
    ev = clf.evaluate(test.images, test.labels)
    per_class = (ev.confusion.diag() / ev.confusion.sum(1).clamp(min=1)).tolist()
    hardest = sorted(zip(clf.classes, per_class, strict=True), key=lambda kv: kv[1])[:3]
    steps = result.step
    batches = -(-len(splits["train"]) // cfg.train.batch_size)
    return {"model": clf.describe(), "overrides": overrides, "budget_minutes": args.minutes,
            "step_ms_measured": round(step_s * 1000, 1), "steps": steps, "epochs": steps / batches,
            "train_seconds": round(seconds, 1), "images_per_second": steps * cfg.train.batch_size / seconds,
            "other_load_cores": other, "accuracy": ev.accuracy, "test_images": ev.n,
            "accuracy_text": f"{ev.accuracy:.4f} ({int(ev.confusion.diag().sum()):,} of {ev.n:,})",
            "hardest_classes": [[name, round(acc, 4)] for name, acc in hardest],
            "stopped_by_budget": result.interrupted, "target_met": ev.accuracy >= 0.90 and seconds <= 600}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vision_fashion", description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="the training budget in minutes (default 10)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for training (default 1)")
    p.add_argument("--seed", type=int, default=0, help="the training seed (default 0)")
    p.add_argument("--run", type=Path, help="where to train (default: a temporary directory)")
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="TABLE.KEY=VALUE",
        help="more overrides of the recipe, e.g. --set model.depth=6 data.augment_shift=0",
    )
    p.add_argument("--progress", action="store_true", help="show the training progress bar")
    p.add_argument(
        "--quick", action="store_true", help="2,000 images, a tiny model, 0.2 minutes: a smoke run"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.minutes = 0.2
    info = machine_info(REPO)
    with tempfile.TemporaryDirectory(prefix="qkv-fashion-") as tmp:
        res = {"suite": SUITE, "machine": info, **_train(args, args.run or Path(tmp) / "run")}
    log(f"test accuracy {res['accuracy']:.4f} after {res['train_seconds']:.0f} s of training")
    short = args.quick or args.minutes != 10.0
    write_report(REPO / "benchmarks" / "results", SUITE, short, res, to_markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
