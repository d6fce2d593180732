"""Classifier.explain and Classifier.attention: explain_image on the loaded model, its checks."""

import pytest
import torch

from qkv.interpret import IMAGE_METHODS, explain_image
from qkv.models.builders import build_image_model
from qkv.vision import Classifier
from qkv.vision.config import VIT_PRESETS


@pytest.fixture
def clf():
    torch.manual_seed(0)
    model = build_image_model({**VIT_PRESETS["vit-located"], "dim": 16, "depth": 2, "heads": 2, "mlp_dim": 32},
                              image_size=16, channels=1, num_classes=3)  # fmt: skip
    facts = {"image_size": 16, "channels": 1, "classes": ["a", "b", "c"]}
    return Classifier(model, {"model": {"kind": "vit"}}, facts)


@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_explain_is_explain_image_on_the_model(clf, method):
    images = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    got = clf.explain(images, method=method, steps=4)
    want = explain_image(clf.model, images, method=method, steps=4)
    assert got.method == method and got.pixels.shape == (3, 16, 16) and got.patches.shape == (3, 4, 4)
    torch.testing.assert_close(got.pixels, want.pixels, rtol=0, atol=0)
    torch.testing.assert_close(got.patches, want.patches, rtol=0, atol=0)
    if method in ("grad", "gradcam", "ig"):  # the predicted class by default
        assert torch.equal(got.target, clf.predict(images)[0])


def test_explain_one_image_and_a_chosen_class(clf):
    image = torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(2))
    one = clf.explain(image, method="gradcam", target=2)
    assert one.pixels.shape == (1, 16, 16) and one.target.tolist() == [2]
    batch = clf.explain(image[None], method="gradcam", target=2)
    torch.testing.assert_close(one.pixels, batch.pixels, rtol=0, atol=0)


def test_attention_rows_are_distributions_over_class_token_and_patches(clf):
    layers = clf.attention(torch.rand(2, 1, 16, 16))
    assert len(layers) == 2 and all(a.shape == (2, 2, 17, 17) for a in layers)  # 1 + 4 x 4 tokens
    for a in layers:
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 2, 17))
    rollout = clf.explain(torch.rand(2, 1, 16, 16), method="rollout")
    assert bool((rollout.patches >= 0).all())


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.rand(2, 3, 16, 16), r"images: expected \(N, 1, 16, 16\), got \(2, 3, 16, 16\)"),
        (torch.rand(2, 1, 8, 8), r"images: expected \(N, 1, 16, 16\), got \(2, 1, 8, 8\)"),
        (torch.rand(16, 16), r"images: expected a tensor \(N, 1, 16, 16\) or one image"),
        ([[0.0]], r"images: expected a tensor .* got list"),
    ],
)
def test_explain_refuses_images_of_another_shape(clf, images, message):
    with pytest.raises(ValueError, match=message):
        clf.explain(images)


def test_explain_names_the_methods_on_an_unknown_one(clf):
    with pytest.raises(
        ValueError, match=r"method: expected one of attention, rollout, grad, gradcam, ig, got 'cam'"
    ):
        clf.explain(torch.rand(1, 1, 16, 16), method="cam")


def test_localization_scores_of_every_method_and_the_random_baseline(clf):
    from qkv.interpret.localization import deletion_auc, energy_in_box, pointing_game
    from qkv.vision.config import DataConfig
    from qkv.vision.localization import METRICS, localization_scores, located_test_set, random_maps

    images, labels, boxes = located_test_set(DataConfig(dataset="located-digits", canvas=16), 6, seed=3)
    assert images.shape == (6, 1, 16, 16) and bool((boxes[:, 2:] <= 16).all())
    labels = labels % 3  # the toy classifier has three classes
    scores = localization_scores(clf, images, labels, boxes, methods=("rollout", "gradcam"), steps=4, batch=4)
    assert list(scores) == ["rollout", "gradcam", "random"]
    for s in scores.values():
        assert list(s) == list(METRICS)
        assert min(abs(s["pointing"] - k / 6) for k in range(7)) < 1e-6 and 0 <= s["energy_in_box"] <= 1
        assert 0 <= s["deletion_auc"] <= 1 and 0 <= s["insertion_auc"] <= 1
    noise = random_maps(6, (16, 16), seed=0)  # the baseline is these maps, scored alike
    assert scores["random"]["pointing"] == pytest.approx(float(pointing_game(noise, boxes).mean()))
    assert scores["random"]["energy_in_box"] == pytest.approx(float(energy_in_box(noise, boxes).mean()))

    def score(x):
        return clf.predict(x)[1][torch.arange(len(x)), labels.repeat_interleave(5)]

    want = float(deletion_auc(score, images, noise, steps=4, baseline="zero", batch_size=30).mean())
    assert scores["random"]["deletion_auc"] == pytest.approx(want, rel=1e-5)
