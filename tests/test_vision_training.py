"""Vision training: the Task learns digits, shifted batches keep labels and ink, checkpoints load back as
the same model, resume is exact."""

import pytest
import torch

from qkv.train.checkpoint import load_checkpoint
from qkv.vision import Classifier, resolve, train
from qkv.vision.data import Images
from qkv.vision.training import ClassificationTask, load_splits

TINY = [
    "--model.dim=32",
    "--model.depth=2",
    "--model.heads=2",
    "--model.mlp_dim=64",
    "--model.positions=sincos2d",
    "--train.batch_size=32",
    "--train.warmup=5",
    "--train.save_every_minutes=0",
]


def test_the_task_trains_a_tiny_vit_well_above_chance_on_digits(tmp_path):
    cfg = resolve(overrides=["--data.dataset=digits", "--train.epochs=3", "--train.lr=3e-3", *TINY])
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.step == 3 * 40  # 1258 training digits in batches of 32
    history = result.history
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["valid_loss"] < history[0]["valid_loss"]
    assert history[-1]["valid_accuracy"] >= 0.5  # chance: 0.1
    clf = Classifier.load(tmp_path / "run")
    test = load_splits(cfg.data)["test"]
    evaluation = clf.evaluate(test.images, test.labels)
    assert evaluation.n == 359 and evaluation.accuracy >= 0.5
    assert int(evaluation.confusion.sum()) == 359
    assert int(evaluation.confusion.trace()) == round(evaluation.accuracy * 359)


def test_classifier_load_round_trip_equals_the_model(tmp_path):
    cfg = resolve(overrides=["--data.dataset=digits", "--train.max_steps=3", *TINY])
    train(cfg, tmp_path / "run", progress=False)
    clf = Classifier.load(tmp_path / "run", best=False)
    assert (clf.image_size, clf.channels, clf.classes) == (8, 1, tuple("0123456789"))
    ck = load_checkpoint(tmp_path / "run")
    for name, tensor in clf.model.state_dict().items():
        assert torch.equal(tensor, ck.model_state[name]), name
    images = load_splits(cfg.data)["test"].images[:16]
    labels, probs = clf.predict(images)
    with torch.no_grad():
        logits = clf.model(images)
    torch.testing.assert_close(probs, torch.softmax(logits, -1), rtol=0, atol=0)
    assert torch.equal(labels, logits.argmax(-1))
    torch.testing.assert_close(probs.sum(-1), torch.ones(16))
    with pytest.raises(ValueError, match=r"images: expected 1 channel"):
        clf.predict(torch.zeros(2, 3, 8, 8))


def test_resume_is_exact(tmp_path):
    overrides = ["--data.dataset=digits", "--train.epochs=2", "--data.augment_shift=1", *TINY]
    cfg = resolve(overrides=overrides)
    straight = train(cfg, tmp_path / "straight", progress=False)
    train(cfg, tmp_path / "halves", progress=False, stop_after_steps=53)  # mid second epoch
    resumed = train(None, tmp_path / "halves", resume=True, progress=False)
    assert resumed.step == straight.step == 80
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "halves")
    for name in a.model_state:
        assert torch.equal(a.model_state[name], b.model_state[name]), name
    assert [h["train_loss"] for h in straight.history] == [h["train_loss"] for h in resumed.history]


def _blobs(n: int = 24, size: int = 12) -> Images:
    """``n`` images, each a 2x2 blob of its own brightness in the middle (room to move 3 px)."""
    images = torch.zeros(n, 1, size, size)
    for i in range(n):
        images[i, 0, 5:7, 5:7] = (i + 1) / n
    return Images(images, torch.arange(n) % 3, ("a", "b", "c"))


def _epoch(shift: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    cfg = resolve(overrides=["--data.dataset=digits", f"--data.augment_shift={shift}", "--train.batch_size=8",
                             f"--train.seed={seed}"])  # fmt: skip
    data = _blobs()
    return list(ClassificationTask(cfg, {"train": data, "valid": data.subset(torch.arange(0))}).batches(0, 0))


def test_shifted_batches_move_each_image_keeping_its_label_and_ink():
    plain, shifted = _epoch(0, seed=1), _epoch(2, seed=1)
    assert len(plain) == len(shifted) == 3
    moves = []
    for (x0, y0), (x1, y1) in zip(plain, shifted, strict=True):
        assert torch.equal(y0, y1)  # the same images in the same order, labels untouched
        torch.testing.assert_close(x1.sum((1, 2, 3)), x0.sum((1, 2, 3)), rtol=0, atol=0)  # no ink lost
        for a, b in zip(x0, x1, strict=True):
            (ya, xa), (yb, xb) = (torch.nonzero(t[0]).min(0).values.tolist() for t in (a, b))
            assert torch.equal(b[0, yb : yb + 2, xb : xb + 2], a[0, ya : ya + 2, xa : xa + 2])  # moved whole
            moves.append((yb - ya, xb - xa))
    assert all(abs(dy) <= 2 and abs(dx) <= 2 for dy, dx in moves)
    assert len(set(moves)) >= 10  # of the 25 possible moves, 24 images draw many
    for (xa, _), (xb, _) in zip(_epoch(2, seed=1), shifted, strict=True):
        assert torch.equal(xa, xb)  # a pure function of (seed, epoch, batch)
