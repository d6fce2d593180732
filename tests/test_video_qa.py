"""Video question answering on digit clips: the answers and gold frames of hand-built clips, the
clips' invariants (every frame a handwriting image of its split at a moving offset), the model's
shapes and controls (the question-only output ignores the frames, the averaged one their
order, every variant the padding frames), the per-frame digit loss (weight 0 is the answers'
loss exactly; its labels are the frames' digits), a tiny model learning position questions,
scores, config pairing and bad input."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("sklearn")

import itertools

from qkv.crossmodal.answering import answer_metrics, frame_accuracy
from qkv.crossmodal.captions import CaptionTokenizer
from qkv.crossmodal.clips import (
    FRAME_SIZE,
    MAX_FRAMES,
    MAX_QUESTION_WORDS,
    DigitClips,
    clip_answer,
    digit_clips,
    question_kind,
    question_vocabulary,
)
from qkv.crossmodal.data import handwriting
from qkv.models.video_qa import VideoQA, VideoQAConfig
from qkv.number_words import number_tokens

TOKENIZER = CaptionTokenizer(question_vocabulary(), max_words=MAX_QUESTION_WORDS)
DIGIT_NAMES = [number_tokens(d, "en")[0] for d in range(10)]


def _tiny(variant: str = "full", **kw) -> VideoQA:
    torch.manual_seed(0)
    cfg = dict(vocab_size=len(TOKENIZER), max_words=MAX_QUESTION_WORDS, dim=16, heads=2, mlp_dim=32,
               frame_depth=1, temporal_depth=1, question_depth=1, variant=variant)  # fmt: skip
    return VideoQA(VideoQAConfig(**{**cfg, **kw})).eval()


@pytest.mark.parametrize(
    ("question", "answer", "gold"),
    [
        ("what is the first digit", 3, (0,)),
        ("what is the sixth digit", 0, (5,)),
        ("how many sevens", 2, (2, 3)),
        ("how many sixes", 0, ()),
        ("how many threes", 1, (0,)),
        ("which digit comes after the five", 7, (2,)),
        ("which digit comes after the one", 0, (5,)),
    ],
)
def test_answers_and_gold_frames_of_a_hand_built_clip(question, answer, gold):
    assert clip_answer([3, 5, 7, 7, 1, 0], question) == (answer, gold)


@pytest.mark.parametrize(
    ("digits", "question", "match"),
    [
        ([3, 5, 7, 7, 1, 0], "which digit comes after the seven", "exactly once"),
        ([3, 5, 7, 7, 1, 0], "which digit comes after the zero", "exactly once and not last"),
        ([3, 5, 7, 7, 1, 0], "which digit comes after the nine", "got digits"),
        ([3, 5, 7], "what is the fourth digit", "frame 4 of a clip of 3"),
        ([3, 5, 7], "how many seven", "question: expected"),
        ([3, 5, 7], "what is the seventh digit", "question: expected"),
    ],
)
def test_questions_without_an_answer_are_errors(digits, question, match):
    with pytest.raises(ValueError, match=match):
        clip_answer(digits, question)


def _offset_of(frame: torch.Tensor, image: torch.Tensor) -> tuple[int, int] | None:
    """Where ``image`` (8 x 8) sits in ``frame`` (the rest blank), or None."""
    for y in range(FRAME_SIZE - 7):
        for x in range(FRAME_SIZE - 7):
            placed = torch.zeros_like(frame)
            placed[y : y + 8, x : x + 8] = image
            if torch.equal(placed, frame):
                return y, x
    return None


def test_clips_show_their_splits_handwriting_moving_and_their_answers_are_right():
    clips = digit_clips(12, seed=5, split="test")
    images, by_digit = handwriting("test", 0)
    assert clips.frames.shape == (12, MAX_FRAMES, 1, FRAME_SIZE, FRAME_SIZE)
    for i in range(12):
        n = int(clips.lengths[i])
        assert 6 <= n <= MAX_FRAMES and (clips.digits[i, n:] == -1).all() and not clips.frames[i, n:].any()
        digits = clips.digits[i, :n].tolist()
        assert clip_answer(digits, clips.questions[i]) == (int(clips.answers[i]), clips.gold[i])
        offsets = []
        for t, d in enumerate(digits):  # each frame: one test image of its digit, somewhere
            found = [_offset_of(clips.frames[i, t, 0], images[j]) for j in by_digit[d].tolist()]
            offsets.append(next(o for o in found if o is not None))
        steps = {(b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(offsets)}
        assert all(abs(dy) <= 1 and abs(dx) <= 1 for dy, dx in steps)


def test_clips_are_a_function_of_their_arguments_and_kinds_are_balanced():
    a, b = digit_clips(300, seed=2), digit_clips(300, seed=2)
    assert torch.equal(a.frames, b.frames) and a.questions == b.questions and a.gold == b.gold
    assert not torch.equal(a.frames, digit_clips(300, seed=3).frames)
    kinds = a.kinds()
    assert all(70 <= kinds.count(k) <= 130 for k in ("position", "count", "after"))
    counts = [int(x) for x, k in zip(a.answers, kinds) if k == "count"]
    assert set(counts) == {0, 1, 2, 3, 4}
    assert question_kind("how many zeros") == "count"
    # fewer kinds, each equally often; all three in their order draw the same clips
    assert digit_clips(300, seed=2, kinds=("position", "count", "after")).questions == a.questions
    two = digit_clips(300, seed=2, kinds=("after", "position")).kinds()
    assert set(two) == {"position", "after"} and 120 <= two.count("after") <= 180
    assert set(digit_clips(20, seed=2, kinds=["count"]).kinds()) == {"count"}


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"n": -1}, "n: expected"),
        ({"seed": 1.5}, "seed: expected"),
        ({"split": "zero_shot"}, "split: expected"),
        (
            {"kinds": ()},
            r"kinds: expected distinct question kinds among position, count, after \(at least one\), got \(\)",
        ),
        ({"kinds": ("after", "after")}, "kinds: expected distinct question kinds"),
        ({"kinds": "after"}, "kinds: expected distinct question kinds .*, got 'after'"),
    ],
)
def test_bad_clip_arguments_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        digit_clips(**{"n": 2, "seed": 0, **kw})


@pytest.fixture(scope="module")
def clips() -> DigitClips:
    return digit_clips(6, seed=1)


def test_shapes_and_attention_maps(clips):
    model = _tiny()
    tokens = TOKENIZER.encode(clips.questions)
    logits, maps = model(clips.frames, clips.lengths, tokens, need_weights=True)
    assert logits.shape == (6, 10)
    assert [w.shape for w in maps.video.cross] == [(6, 2, 1, 1 + MAX_FRAMES)]
    assert [w.shape for w in maps.video.encoder] == [(6, 2, MAX_FRAMES, MAX_FRAMES)]
    assert maps.frames.encoder[0].shape == (6 * MAX_FRAMES, 2, 10, 10)  # class token + 3 x 3 patches
    cross = maps.video.cross[0]
    pad = torch.arange(MAX_FRAMES)[None, :] >= clips.lengths[:, None]
    assert torch.allclose(cross.sum(-1), torch.ones(6, 2, 1))
    assert cross[:, :, 0, 1:][pad[:, None].expand(-1, 2, -1)].abs().max() == 0  # padding never attended


@pytest.mark.parametrize(
    ("variant", "previous_frame"),
    [("full", False), ("full", True), ("question_only", False), ("frames_averaged", False)],
)
def test_padding_frames_change_nothing(clips, variant, previous_frame):
    model, tokens = _tiny(variant, previous_frame=previous_frame), TOKENIZER.encode(clips.questions)
    garbage = clips.frames.clone()
    pad = torch.arange(MAX_FRAMES)[None, :] >= clips.lengths[:, None]
    garbage[pad] = torch.rand_like(garbage[pad])
    with torch.no_grad():
        assert torch.allclose(
            model(clips.frames, clips.lengths, tokens), model(garbage, clips.lengths, tokens), atol=1e-6
        )


def test_controls_ignore_what_they_should(clips):
    tokens = TOKENIZER.encode(clips.questions)
    other = digit_clips(6, seed=99)
    reverse = torch.stack(
        [torch.cat([f[:n].flip(0), f[n:]]) for f, n in zip(clips.frames, clips.lengths.tolist())]
    )
    with torch.no_grad():
        q_only = _tiny("question_only")
        assert torch.equal(
            q_only(clips.frames, clips.lengths, tokens), q_only(other.frames, other.lengths, tokens)
        )
        averaged, full = _tiny("frames_averaged"), _tiny("full")
        same = averaged(clips.frames, clips.lengths, tokens), averaged(reverse, clips.lengths, tokens)
        assert torch.allclose(*same, atol=1e-5)
        moved = full(clips.frames, clips.lengths, tokens) - full(reverse, clips.lengths, tokens)
        assert moved.abs().max() > 1e-3  # the full model reads the order


def test_frame_loss_of_weight_zero_is_the_answer_loss_and_weighted_adds_the_frames_digit_loss(clips):
    tokens = TOKENIZER.encode(clips.questions)
    model = _tiny()
    args = (clips.frames, clips.lengths, tokens, clips.answers)
    with torch.no_grad():
        answer_loss = torch.nn.functional.cross_entropy(model(*clips[:2], tokens), clips.answers)
        # weight 0: the answers' loss bit for bit
        assert torch.equal(model.loss(*args, clips.digits), answer_loss)
        assert torch.equal(model.loss(*args), answer_loss)
        weighted = _tiny(frame_loss_weight=0.5)
        assert torch.equal(weighted.loss(*args), answer_loss)  # no digits given: the answers alone
        real = clips.digits >= 0
        read = weighted.frame_logits(clips.frames)[real]
        frame_loss = torch.nn.functional.cross_entropy(read, clips.digits[real])
        assert torch.allclose(weighted.loss(*args, clips.digits), answer_loss + 0.5 * frame_loss, atol=1e-6)
        q_only = _tiny("question_only", frame_loss_weight=0.5)  # reads no frame: no frame loss
        assert torch.equal(q_only.loss(*args, clips.digits), q_only.loss(*args))
        right = (weighted.frame_logits(clips.frames).argmax(-1) == clips.digits)[real]
        assert frame_accuracy(weighted, clips) == pytest.approx(right.float().mean().item())
        assert frame_accuracy(model, clips) is None and frame_accuracy(q_only, clips) is None
    with pytest.raises(ValueError, match="digits: expected int64"):
        weighted.loss(*args, clips.digits.clamp(min=0))
    with pytest.raises(ValueError, match="frame_loss_weight: expected a finite number >= 0, got -1"):
        VideoQAConfig(vocab_size=10, frame_loss_weight=-1)


def test_frame_labels_are_the_digits_the_frames_show():
    """Each real frame's label is the digit of the handwriting image it holds: wherever an 8 x 8
    window holds the whole frame's ink, the images equal to that window are of that digit."""
    clips = digit_clips(5, seed=3, split="valid")
    images, by_digit = handwriting("valid", 0)
    owner = torch.empty(len(images), dtype=torch.int64)
    for d, idx in enumerate(by_digit):
        owner[idx] = d
    for i in range(5):
        for t in range(int(clips.lengths[i])):
            frame, shown = clips.frames[i, t, 0], set()
            for y, x in itertools.product(range(FRAME_SIZE - 7), repeat=2):
                window = frame[y : y + 8, x : x + 8]
                if (window > 0).sum() == (frame > 0).sum():  # all the ink inside: compare with every image
                    shown |= set(owner[(images == window).flatten(1).all(1)].tolist())
            assert shown == {int(clips.digits[i, t])}


def _position_batch(
    n: int, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clips of 6 frames whose digit d is a frame of brightness (d + 1) / 10, asked for frames 1-3."""
    digits = torch.randint(10, (n, 6), generator=g)
    frames = ((digits + 1) / 10.0)[:, :, None, None, None].expand(n, 6, 1, FRAME_SIZE, FRAME_SIZE)
    asked = torch.randint(3, (n,), generator=g)
    ordinals = ("first", "second", "third")
    tokens = TOKENIZER.encode([f"what is the {ordinals[k]} digit" for k in asked.tolist()])
    return frames.contiguous(), torch.full((n,), 6), tokens, digits[torch.arange(n), asked]


def test_a_tiny_model_learns_position_questions_in_300_steps():
    torch.set_num_threads(1)
    model, g = _tiny(max_frames=6).train(), torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = model.loss(*_position_batch(32, g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    frames, lengths, tokens, answers = _position_batch(256, torch.Generator().manual_seed(1))
    with torch.no_grad():
        accuracy = (model.eval()(frames, lengths, tokens).argmax(-1) == answers).float().mean()
    assert accuracy > 0.9


def test_previous_frame_shows_each_frame_the_one_before_it(clips):
    """Without temporal attention, a frame's memory row depends on that frame and, with
    ``previous_frame``, on the frame before it, on no other: changing frame 3 moves rows 3 and 4
    (keys 4 and 5 after the null frame) and leaves every other row bitwise equal."""
    changed = clips.frames.clone()
    changed[:, 3] = torch.rand_like(changed[:, 3])
    for previous, moved in ((False, {4}), (True, {4, 5})):
        model = _tiny(temporal_depth=0, previous_frame=previous)
        with torch.no_grad():
            a = model.encode_frames(clips.frames, clips.lengths, None)[0]
            b = model.encode_frames(changed, clips.lengths, None)[0]
        differs = {k for k in range(1 + MAX_FRAMES) if not torch.equal(a[:, k], b[:, k])}
        assert differs == moved


def _after_batch(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clips of 6 brightness frames (digit d: (d + 1) / 10) showing the digit named exactly once,
    not last, asked which digit comes after it."""
    named = torch.randint(10, (n,), generator=g)
    digits = (named[:, None] + 1 + torch.randint(9, (n, 6), generator=g)) % 10  # never the named one
    at = torch.randint(5, (n,), generator=g)
    digits[torch.arange(n), at] = named
    frames = ((digits + 1) / 10.0)[:, :, None, None, None].expand(n, 6, 1, FRAME_SIZE, FRAME_SIZE)
    names = [DIGIT_NAMES[k] for k in named.tolist()]
    tokens = TOKENIZER.encode([f"which digit comes after the {name}" for name in names])
    return frames.contiguous(), torch.full((n,), 6), tokens, digits[torch.arange(n), at + 1]


def test_a_tiny_model_with_the_previous_frame_learns_after_questions_in_500_steps():
    """The two-hop question (find the named digit, read the next frame) in one cross-attention
    layer, once each frame shows the one before it (without it: about 0.3 after 1,000 steps)."""
    torch.set_num_threads(1)
    model, g = _tiny(max_frames=6, previous_frame=True).train(), torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(500):
        loss = model.loss(*_after_batch(32, g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    frames, lengths, tokens, answers = _after_batch(256, torch.Generator().manual_seed(1))
    with torch.no_grad():
        accuracy = (model.eval()(frames, lengths, tokens).argmax(-1) == answers).float().mean()
    assert accuracy > 0.85


def test_answer_metrics_count_per_kind_and_gold_peaks():
    questions = [
        "what is the first digit",
        "how many twos",
        "how many nines",
        "which digit comes after the two",
    ]
    clips = DigitClips(torch.zeros(4, 3, 1, 12, 12), torch.full((4,), 3), torch.zeros(4, 3), questions,
                       torch.tensor([3, 1, 0, 5]), [(0,), (1,), (), (2,)])  # fmt: skip
    weights = torch.tensor([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.1, 0.2, 0.7]])
    m = answer_metrics(clips, torch.tensor([3, 2, 0, 5]), weights)
    assert (m["accuracy"], m["accuracy_position"], m["accuracy_count"], m["accuracy_after"]) == (
        0.75,
        1.0,
        0.5,
        1.0,
    )
    assert m["gold_peak"] == pytest.approx(2 / 3)  # the count of nines has no gold frame
    assert answer_metrics(clips, torch.tensor([3, 2, 0, 5]), None)["gold_peak"] is None


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m, c, t: m(c.frames[:, :, :, :8], c.lengths, t), "frames: expected"),
        (lambda m, c, t: m(c.frames, c.lengths + 20, t), "lengths: expected values in"),
        (lambda m, c, t: m(c.frames, c.lengths.float(), t), "lengths: expected int64"),
        (lambda m, c, t: m(c.frames, c.lengths, t[:2]), "tokens: expected"),
        (lambda m, c, t: m(c.frames, c.lengths, t * 0), "empty"),
    ],
)
def test_bad_model_input_is_named(clips, call, match):
    with pytest.raises(ValueError, match=match):
        call(_tiny(), clips, TOKENIZER.encode(clips.questions))


def test_bad_config_and_mismatched_data_are_named():
    with pytest.raises(ValueError, match="variant: expected one of full, question_only, frames_averaged"):
        VideoQAConfig(vocab_size=10, variant="none")
    with pytest.raises(ValueError, match="previous_frame: expected a bool, got 1"):
        VideoQAConfig(vocab_size=10, previous_frame=1)
    from qkv.crossmodal.config import resolve

    with pytest.raises(
        ValueError, match=r"config \[data\] dataset: expected digit-clips for model kind 'video-qa'"
    ):
        resolve(preset="video-qa")
    with pytest.raises(
        ValueError, match=r"config \[data\] dataset: expected digit-strips .* for model kind 'clip'"
    ):
        resolve(preset="clip", overrides=["--data.dataset=digit-clips"])
    assert resolve(preset="video-qa", overrides=["--data.dataset=digit-clips"]).model["kind"] == "video-qa"
    with pytest.raises(
        ValueError,
        match=r"config \[data\] question_kinds: expected distinct kinds among position, count, after, got \['how'\]",
    ):
        resolve(preset="video-qa", overrides=["--data.dataset=digit-clips", '--data.question_kinds=["how"]'])


def test_train_and_evaluate_commands_report_accuracy_per_kind_and_gold_peaks(tmp_path, capsys):
    import json

    from qkv.cli.main import main
    from qkv.crossmodal import Answerer, Matcher

    out = tmp_path / "run"
    code = main(["train", "--model", "video-qa", "--data", "digit-clips", "--out", str(out), "--quiet",
                 "--data.train_size=32", "--data.valid_size=8", "--data.test_size=30", "--train.epochs=1",
                 "--train.batch_size=32", "--train.threads=1", "--model.dim=16", "--model.heads=2"])  # fmt: skip
    assert code == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)["test"]
    assert r["n"] == 30 == sum(r[f"n_{k}"] for k in ("position", "count", "after"))
    weighted = sum(r[f"accuracy_{k}"] * r[f"n_{k}"] for k in ("position", "count", "after")) / 30
    assert r["accuracy"] == pytest.approx(weighted, abs=1e-3) and 0 <= r["gold_peak"] <= 1
    assert 0 <= r["frame_accuracy"] <= 1  # the preset trains with the frame loss
    assert main(["evaluate", "--checkpoint", str(out), "--split", "zero_shot"]) == 2
    with pytest.raises(ValueError, match="is not an image-text matcher's \\(its model kind is 'video-qa'\\)"):
        Matcher.load(out)
    assert Answerer.load(out).variant == "full"
