"""The Transformer over speech frames: shapes, causality (a later target token never changes an
earlier output), padding, cross-attention that sums to 1 over real frames, a tiny recognizer
that learns three words, decoding through the LAS step interface, bad input refused."""

import pytest
import torch
from torch import nn

from qkv.application.run import torch_threads
from qkv.models.builders import build_speech_model
from qkv.models.speech_transformer import SpeechTransformerConfig
from qkv.speech.decode import beam_search, greedy
from qkv.speech.training import pad_features
from qkv.speech.vocabulary import WordVocabulary
from spoken_toys import WORDS, word_utterances

TINY = {"kind": "speech-transformer", "subsample": 1, "d_model": 32, "heads": 2, "encoder_layers": 1,
        "decoder_layers": 1, "ff_dim": 64, "dropout": 0.0}  # fmt: skip


def _model(seed: int = 0, **changes) -> nn.Module:
    torch.manual_seed(seed)
    return build_speech_model({**TINY, **changes}, n_mels=8, vocab_size=7).eval()


def test_shapes_and_every_map():
    model = _model(encoder_layers=2, decoder_layers=2, subsample=2)
    x, lengths = torch.randn(3, 21, 8), torch.tensor([21, 17, 4])
    logits, maps = model(x, lengths, torch.randint(1, 7, (3, 5)), need_weights=True)
    assert logits.shape == (3, 5, 7)
    s = 6  # ceil(ceil(21 / 2) / 2)
    assert [w.shape for w in maps.encoder] == [(3, 2, s, s)] * 2
    assert [w.shape for w in maps.decoder] == [(3, 2, 5, 5)] * 2
    assert [w.shape for w in maps.cross] == [(3, 2, 5, s)] * 2
    assert model.encode(x, lengths)["lengths"].tolist() == [6, 5, 1]
    assert model.config.reduction == 4
    # causal self-attention: nothing above the diagonal
    assert torch.equal(maps.decoder[0].triu(1), torch.zeros_like(maps.decoder[0]))


def test_a_later_target_token_never_changes_an_earlier_output():
    model = _model(decoder_layers=2)
    x, lengths = torch.randn(2, 16, 8), torch.tensor([16, 11])
    tgt = torch.randint(1, 7, (2, 6))
    base = model(x, lengths, tgt)
    for t in range(1, 6):
        changed = tgt.clone()
        changed[:, t:] = (changed[:, t:] % 6) + 1  # every token from t on replaced
        out = model(x, lengths, changed)
        torch.testing.assert_close(out[:, :t], base[:, :t], atol=1e-6, rtol=0)  # earlier: unchanged
        assert (out[:, t] - base[:, t]).abs().max() > 1e-4  # position t reads its own token


def test_cross_attention_sums_to_one_over_real_frames_and_zero_on_padding():
    model = _model(decoder_layers=2)
    x, lengths = pad_features([torch.randn(n, 8) for n in (15, 9, 2)])
    _, maps = model(x, lengths, torch.randint(1, 7, (3, 4)), need_weights=True)
    states = model.encode(x, lengths)["lengths"]  # (8, 5, 1)
    for w in maps.cross:
        torch.testing.assert_close(w.sum(-1), torch.ones(3, 2, 4), atol=1e-6, rtol=0)
        for b, s in enumerate(states.tolist()):
            assert float(w[b, :, :, s:].sum()) == 0.0  # weights are >= 0: a zero sum is all zeros


def test_padding_never_changes_an_utterance():
    model = _model(subsample=2)
    a, b = torch.randn(13, 8), torch.randn(22, 8)
    x, lengths = pad_features([a, b])
    alone = model(a[None], torch.tensor([13]), torch.tensor([[1, 3, 4]]))
    batched = model(x, lengths, torch.tensor([[1, 3, 4], [1, 4, 4]]))
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=1e-5)


def test_steps_equal_the_teacher_forced_pass_and_beam_is_never_worse():
    model = _model(decoder_layers=2)
    x, lengths = pad_features([torch.randn(n, 8) for n in (9, 14, 20)])
    tgt = torch.tensor([[1, 3, 5, 4], [1, 6, 6, 3], [1, 4, 3, 3]])
    forced = model(x, lengths, tgt)
    memory = model.encode(x, lengths)
    state = model.init_state(memory)
    for i in range(4):
        logits, state, att = model.step(tgt[:, i], state, memory)
        torch.testing.assert_close(logits, forced[:, i], atol=1e-5, rtol=1e-5)
        assert att.shape == (3, memory["states"].shape[1])
    for hg, hb in zip(greedy(model, x, lengths, max_len=6), beam_search(model, x, lengths, beam=3, max_len=6),
                      strict=True):  # fmt: skip
        assert hb.score >= hg.score - 1e-9
        assert hb.attention.shape[0] == len(hb.tokens) + (hb.stop == "eos")


PRESETLIKE = {"front_norm": True, "ctc_weight": 0.3}


@pytest.mark.parametrize("recipe", [{}, {**PRESETLIKE, "label_smoothing": 0.1},
                                    {**PRESETLIKE, "front": "conv2d", "channels": 16}])  # fmt: skip
def test_a_tiny_recognizer_learns_three_words_within_150_steps(recipe):
    with torch_threads(1):
        torch.manual_seed(0)
        vocab = WordVocabulary(WORDS)
        model = build_speech_model({**TINY, **recipe}, n_mels=8, vocab_size=len(vocab))
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for step in range(150):
            feats, texts = word_utterances(16, seed=step)
            x, lengths = pad_features(feats)
            tgt_in, tgt_out = vocab.encode(texts)
            loss = model.loss(x, lengths, tgt_in, tgt_out)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        feats, texts = word_utterances(50, seed=10_000)
        x, lengths = pad_features(feats)
        hyps = [vocab.decode(h.tokens) for h in greedy(model, x, lengths, max_len=8)]
    assert sum(h == t for h, t in zip(hyps, texts, strict=True)) >= 48


def test_bad_input_is_refused_by_name():
    model = _model()
    with pytest.raises(ValueError, match=r"features: expected \(B, T, 8\)"):
        model.encode(torch.zeros(2, 5, 7), torch.tensor([5, 5]))
    with pytest.raises(ValueError, match=r"lengths: expected values in \[1, 5\]"):
        model.encode(torch.zeros(2, 5, 8), torch.tensor([5, 0]))
    with pytest.raises(ValueError, match=r"SpeechTransformerConfig\.d_model: expected a multiple of heads=3"):
        SpeechTransformerConfig(n_mels=8, vocab_size=6, d_model=32, heads=3)
    with pytest.raises(ValueError, match=r"SpeechTransformerConfig\.subsample: expected an int >= 1"):
        SpeechTransformerConfig(n_mels=8, vocab_size=6, subsample=0)
    with pytest.raises(
        ValueError, match=r"SpeechTransformerConfig\.ctc_weight: expected a float in \[0, 1\)"
    ):
        SpeechTransformerConfig(n_mels=8, vocab_size=6, ctc_weight=1.0)
    with pytest.raises(ValueError, match=r"SpeechTransformerConfig\.front: expected one of 'conv1d', 'conv2d', "
                                         r"got 'conv3d'"):  # fmt: skip
        SpeechTransformerConfig(n_mels=8, vocab_size=6, front="conv3d")
    with pytest.raises(ValueError, match=r"SpeechTransformerConfig\.channels: expected an int >= 1, got 0"):
        SpeechTransformerConfig(n_mels=8, vocab_size=6, front="conv2d", channels=0)
    with pytest.raises(ValueError, match="unknown key"):
        build_speech_model({"kind": "speech-transformer", "attention": "location"}, n_mels=8, vocab_size=6)


def test_the_joint_ctc_loss_mixes_cross_entropy_and_ctc_by_its_weight():
    torch.manual_seed(3)
    x, lengths = pad_features([torch.randn(n, 8) for n in (15, 9)])
    tgt_in, tgt_out = torch.tensor([[1, 3, 5, 4], [1, 6, 0, 0]]), torch.tensor([[3, 5, 4, 2], [6, 2, 0, 0]])
    plain, joint = _model(), _model(ctc_weight=0.25)
    joint.load_state_dict(
        {**plain.state_dict(), **{k: v for k, v in joint.state_dict().items() if "ctc" in k}}
    )
    ce = plain.loss(x, lengths, tgt_in, tgt_out)
    logits = plain(x, lengths, tgt_in)
    torch.testing.assert_close(
        ce, nn.functional.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=0)
    )
    memory = joint.encode(x, lengths)
    log_probs = torch.log_softmax(joint.ctc(memory["states"]), -1).transpose(0, 1)
    ctc = nn.functional.ctc_loss(
        log_probs, torch.tensor([3, 5, 4, 6]), memory["lengths"], torch.tensor([3, 1])
    )
    torch.testing.assert_close(joint.loss(x, lengths, tgt_in, tgt_out), 0.75 * ce + 0.25 * ctc)


def test_label_smoothing_moves_epsilon_of_the_target_onto_every_unit():
    torch.manual_seed(4)
    x, lengths = pad_features([torch.randn(n, 8) for n in (12, 7)])
    tgt_in, tgt_out = torch.tensor([[1, 3, 5], [1, 6, 0]]), torch.tensor([[3, 5, 2], [6, 2, 0]])
    model = _model(label_smoothing=0.1)
    logp = torch.log_softmax(model(x, lengths, tgt_in), -1)  # (B, U, V)
    real = tgt_out != 0
    nll = -logp.gather(-1, tgt_out[..., None])[..., 0][real]  # the target word's, per real token
    uniform = -logp.mean(-1)[real]  # the mean over all 7 units
    torch.testing.assert_close(model.loss(x, lengths, tgt_in, tgt_out), (0.9 * nll + 0.1 * uniform).mean())


def test_the_front_norm_gives_unit_scale_states_and_padding_still_never_changes_an_utterance():
    model = _model(front_norm=True, subsample=2)
    x = torch.randn(1, 21, 8)
    alone = model.encode(x, torch.tensor([21]))
    padded = model.encode(torch.cat([x, torch.zeros(1, 9, 8)], 1), torch.tensor([21]))  # as pad_features pads
    assert alone["lengths"].tolist() == padded["lengths"].tolist() == [6]
    torch.testing.assert_close(padded["states"][:, :6], alone["states"])
    h, _ = model.subsample(x, torch.tensor([21]))
    normed = model.front_norm(model.proj(h))
    torch.testing.assert_close(normed.std(-1, unbiased=False), torch.ones(1, 6), atol=1e-3, rtol=0)


@pytest.mark.parametrize("front", ["conv1d", "conv2d"])
@pytest.mark.parametrize("subsample", [1, 2, 3])
def test_subsampled_lengths_are_ceil_of_length_over_the_reduction(subsample, front):
    model = _model(subsample=subsample, front=front, channels=4)
    lengths = torch.arange(1, 40)
    out = model.encode(torch.randn(len(lengths), 39, 8), lengths)
    r = 2**subsample
    assert out["lengths"].tolist() == [-(-n // r) for n in range(1, 40)]  # every stride-2 layer rounds up
    assert out["states"].shape[1] == -(-39 // r)


def test_the_ctc_term_is_the_probability_of_every_path_that_collapses_to_the_words():
    """Two states, one word ``a``: the paths a a, a -, - a (``-`` the blank, id 0)."""
    torch.manual_seed(5)
    w = 0.4
    model = _model(ctc_weight=w)  # subsample 1: 3 frames -> 2 states
    x, lengths = torch.randn(1, 3, 8), torch.tensor([3])
    tgt_in, tgt_out = torch.tensor([[1, 4]]), torch.tensor([[4, 2]])
    memory = model.encode(x, lengths)
    p = torch.softmax(model.ctc(memory["states"]), -1)[0]  # (2 states, V)
    a, blank = 4, 0
    paths = p[0, a] * p[1, a] + p[0, a] * p[1, blank] + p[0, blank] * p[1, a]
    ce = nn.functional.cross_entropy(model(x, lengths, tgt_in)[0], tgt_out[0])
    ctc = (model.loss(x, lengths, tgt_in, tgt_out) - (1 - w) * ce) / w
    torch.testing.assert_close(ctc, -torch.log(paths))  # one word: the mean over words is the sum


@pytest.mark.parametrize("n_mels", [7, 8])
def test_the_conv2d_front_halves_time_and_mel_bands_per_layer_rounding_up(n_mels):
    torch.manual_seed(0)
    model = build_speech_model({**TINY, "subsample": 2, "front": "conv2d", "channels": 5}, n_mels=n_mels,
                               vocab_size=7).eval()  # fmt: skip
    assert [tuple(c.weight.shape) for c in model.subsample.convs] == [(5, 1, 3, 3), (5, 5, 3, 3)]
    x, lengths = torch.randn(3, 21, n_mels), torch.tensor([21, 17, 3])
    with torch.no_grad():
        h, out_lengths = model.subsample(x, lengths)
    assert h.shape == (3, 6, 5 * 2) and model.subsample.out_dim == 10  # ceil(ceil(n_mels / 2) / 2) = 2
    assert out_lengths.tolist() == [6, 5, 1]  # ceil(ceil(n / 2) / 2)
    assert float(h[1, 5:].abs().sum()) == 0.0 and float(h[2, 1:].abs().sum()) == 0.0  # zero past the length
    memory = model.encode(x, lengths)
    assert memory["states"].shape == (3, 6, 32) and memory["lengths"].tolist() == [6, 5, 1]
    assert model.config.reduction == 4  # frames per state: the front does not change it


@pytest.mark.parametrize("front", ["conv1d", "conv2d"])
def test_whatever_fills_the_padding_never_changes_a_valid_state(front):
    torch.manual_seed(0)
    model = build_speech_model({**TINY, "subsample": 2, "front": front, "channels": 6}, n_mels=8,
                               vocab_size=7).double().eval()  # fmt: skip
    a, b = torch.randn(13, 8, dtype=torch.float64), torch.randn(22, 8, dtype=torch.float64)
    x, lengths = pad_features([a, b])
    x[0, 13:] = 1e3 * torch.randn(9, 8, dtype=torch.float64)  # not zeros: the front masks the input itself
    batched = model.encode(x, lengths)
    assert batched["lengths"].tolist() == [4, 6]
    for i, u in enumerate((a, b)):
        alone = model.encode(u[None], torch.tensor([len(u)]))
        n = alone["states"].shape[1]
        torch.testing.assert_close(batched["states"][i, :n], alone["states"][0], atol=1e-12, rtol=0)


def test_the_default_front_keeps_its_parameters_so_older_checkpoints_load():
    model = _model(subsample=2)
    assert model.config.front == "conv1d"
    front = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith(("subsample", "proj"))}
    assert front == {"subsample.convs.0.weight": (32, 8, 3), "subsample.convs.0.bias": (32,),
                     "subsample.convs.1.weight": (32, 32, 3), "subsample.convs.1.bias": (32,),
                     "proj.weight": (32, 32), "proj.bias": (32,)}  # fmt: skip
    assert len(model.state_dict()) == 55
    older = {k: v for k, v in model.config.to_dict().items() if k not in ("front", "channels", "n_mels",
                                                                           "vocab_size")}  # fmt: skip
    again = build_speech_model({"kind": "speech-transformer", **older}, n_mels=8, vocab_size=7)  # no "front"
    again.load_state_dict(model.state_dict())  # strict: the same keys and shapes
