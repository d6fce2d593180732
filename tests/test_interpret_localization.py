"""Localisation scores of image explanations on hand-made maps, against hand computation."""

import pytest
import torch

from qkv.interpret.localization import (
    box_masks,
    deletion_auc,
    energy_in_box,
    insertion_auc,
    perturbation_curve,
    pointing_game,
)

BOX = torch.tensor([[2, 1, 5, 4]])  # x 2..4, y 1..3 of an 8 x 8 image


def test_box_masks_cover_the_box_exactly():
    mask = box_masks(BOX, (8, 8))[0]
    assert int(mask.sum()) == 9 and bool(mask[1:4, 2:5].all())
    assert not bool(mask[0].any()) and not bool(mask[:, 5:].any())


def test_a_map_peaked_inside_the_box_points_and_holds_the_energy():
    peaked = torch.full((1, 8, 8), 0.001)
    peaked[0, 2, 3] = 1.0
    assert pointing_game(peaked, BOX).tolist() == [1.0]
    energy = float(energy_in_box(peaked, BOX))
    assert energy == pytest.approx((1.0 + 8 * 0.001) / (1.0 + 63 * 0.001), rel=1e-6) and energy > 0.94
    outside = torch.zeros(1, 8, 8)
    outside[0, 7, 7] = 1.0
    assert pointing_game(outside, BOX).tolist() == [0.0] and float(energy_in_box(outside, BOX)) == 0.0


def test_ties_negatives_and_an_empty_map():
    uniform = torch.ones(2, 8, 8)  # every pixel a maximum: a hit; energy = box area / image area
    boxes = BOX.expand(2, 4)
    assert pointing_game(uniform, boxes).tolist() == [1.0, 1.0]
    torch.testing.assert_close(energy_in_box(uniform, boxes), torch.full((2,), 9 / 64))
    signed = -torch.ones(1, 8, 8)
    signed[0, 1, 2], signed[0, 0, 0] = 3.0, 1.0  # negatives carry no energy
    assert float(energy_in_box(signed, BOX)) == pytest.approx(0.75)
    assert float(energy_in_box(torch.zeros(1, 8, 8), BOX)) == 0.0


def _sum_score(images):
    return images.flatten(1).sum(1)


IMAGE = torch.tensor([[[[0.1, 0.2], [0.3, 0.4]]]])
MAP = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])  # remove/insert 0.1, 0.2, 0.3, 0.4 in that order


def test_deletion_and_insertion_auc_by_hand():
    kw = {"steps": 4, "baseline": "zero"}
    curve = perturbation_curve(_sum_score, IMAGE, MAP, insert=False, **kw)
    torch.testing.assert_close(curve, torch.tensor([[1.0, 0.9, 0.7, 0.4, 0.0]]))
    # trapezoids: (1.0 + 0.9 + 0.9 + 0.7 + 0.7 + 0.4 + 0.4 + 0.0) / 2 / 4
    torch.testing.assert_close(deletion_auc(_sum_score, IMAGE, MAP, **kw), torch.tensor([0.625]))
    torch.testing.assert_close(insertion_auc(_sum_score, IMAGE, MAP, **kw), torch.tensor([0.375]))
    mean = perturbation_curve(_sum_score, IMAGE, MAP, insert=False, steps=4)  # removed -> 0.25
    torch.testing.assert_close(mean, torch.tensor([[1.0, 1.15, 1.2, 1.15, 1.0]]))
    two = perturbation_curve(_sum_score, IMAGE, MAP, insert=True, steps=2, baseline="zero")
    torch.testing.assert_close(two, torch.tensor([[0.0, 0.3, 1.0]]))


def test_a_better_map_deletes_faster_and_inserts_faster():
    torch.manual_seed(0)
    weights = torch.zeros(1, 1, 8, 8)
    weights[..., 1:4, 2:5] = 1.0  # the score reads the box only
    images = torch.rand(5, 1, 8, 8)

    def score(x):
        return (x * weights).flatten(1).sum(1)

    good = (weights[:, 0] * 2 + torch.rand(5, 8, 8) * 0.1).expand(5, 8, 8).contiguous()
    bad = 1 - good
    kw = {"steps": 8, "baseline": "zero"}
    assert bool((deletion_auc(score, images, good, **kw) < deletion_auc(score, images, bad, **kw)).all())
    assert bool((insertion_auc(score, images, good, **kw) > insertion_auc(score, images, bad, **kw)).all())


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: pointing_game(torch.zeros(8, 8), BOX), r"maps: expected a float tensor \(N, H, W\), got torch.float32 \(8, 8\)"),
        (lambda: pointing_game(torch.zeros(1, 8, 8), torch.tensor([[0, 0, 9, 4]])), r"boxes: expected 0 <= x0 < x1 <= 8"),
        (lambda: energy_in_box(torch.zeros(2, 8, 8), BOX), r"boxes: expected a tensor \(2, 4\)"),
        (lambda: energy_in_box(torch.full((1, 8, 8), float("nan")), BOX), r"maps: expected finite values"),
        (lambda: deletion_auc(_sum_score, IMAGE, MAP, baseline="blur"), r"baseline: expected one of mean, zero, got 'blur'"),
        (lambda: deletion_auc(_sum_score, IMAGE, MAP, steps=0), r"steps: expected an int >= 1, got 0"),
        (lambda: insertion_auc(_sum_score, IMAGE[..., :1], MAP), r"images: expected \(N, C, H, W\) with \(N, H, W\) = \(1, 2, 2\)"),
        (lambda: insertion_auc(lambda x: x, IMAGE, MAP, steps=4), r"score: expected \(5,\) scores"),
    ],
)  # fmt: skip
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
