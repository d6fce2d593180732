"""Joint CTC/attention beam search: ``ctc_weight=0`` is the attention-only search bit for bit
(the CTC head is never read), a joint result's score is lambda CTC + (1 - lambda) attention
recomputed independently (teacher forcing, torch's ``ctc_loss``) and never below greedy's joint
score, and bad arguments are refused by name."""

import pytest
import torch
from torch import nn

from qkv.models.builders import build_speech_model
from qkv.speech.ctc_prefix import CTCPrefixScorer
from qkv.speech.decode import beam_search, greedy
from qkv.speech.training import pad_features

TINY = {"kind": "speech-transformer", "subsample": 1, "d_model": 32, "heads": 2, "encoder_layers": 1,
        "decoder_layers": 1, "ff_dim": 64, "dropout": 0.0, "ctc_weight": 0.3}  # fmt: skip


def _model(**changes) -> nn.Module:
    torch.manual_seed(0)
    return build_speech_model({**TINY, **changes}, n_mels=8, vocab_size=7).eval()


def _batch():
    torch.manual_seed(1)
    return pad_features([torch.randn(n, 8) for n in (9, 14, 20, 6)])


@torch.no_grad()
def _attention_score(model, x, length, tokens, ended: bool) -> float:
    """The attention decoder's total log-probability of ``tokens`` (then <eos> if ``ended``), teacher-forced."""
    tgt = torch.tensor([[1, *tokens]])
    logp = torch.log_softmax(model(x[None, :length], torch.tensor([length]), tgt)[0].double(), -1)
    out = [*tokens, 2] if ended else tokens
    return float(sum(logp[i, t] for i, t in enumerate(out)))


@torch.no_grad()
def _ctc_score(model, x, length, tokens, ended: bool = True) -> float:
    """The CTC log-probability of exactly ``tokens`` (torch's ``ctc_loss``), or, for a transcript
    cut at the length limit, its prefix score (checked against brute force in
    ``test_speech_ctc_prefix.py``)."""
    memory = model.encode(x[None, :length], torch.tensor([length]))
    lp = torch.log_softmax(model.ctc(memory["states"]).double(), -1)  # (1, S, V)
    if not ended:
        return CTCPrefixScorer(lp[0], blank=0, eos=2).score(tokens, complete=False)
    lp = lp.transpose(0, 1)  # (S, 1, V)
    return -float(nn.functional.ctc_loss(lp, torch.tensor([tokens]), memory["lengths"], torch.tensor([len(tokens)]),
                                         blank=0, reduction="sum"))  # fmt: skip


def test_weight_zero_is_the_attention_search_bit_for_bit():
    model, (x, lengths) = _model(), _batch()
    want = beam_search(model, x, lengths, beam=3, max_len=6)
    model.ctc = None  # the head is not read at weight 0
    got = beam_search(model, x, lengths, beam=3, max_len=6, ctc_weight=0.0)
    for a, b in zip(want, got, strict=True):
        assert (a.tokens, a.score, a.stop) == (b.tokens, b.score, b.stop)
        assert torch.equal(a.attention, b.attention)


@pytest.mark.parametrize(("beam", "weight"), [(3, 0.3), (3, 0.7), (3, 1.0), (1, 0.5)])
def test_the_joint_score_is_recomputed_and_never_below_greedys(beam, weight):
    model, (x, lengths) = _model(), _batch()
    firsts = greedy(model, x, lengths, max_len=6)
    for i, h in enumerate(beam_search(model, x, lengths, beam=beam, max_len=6, ctc_weight=weight)):
        n = int(lengths[i])
        ended = h.stop == "eos"
        assert h.attention.shape[0] == len(h.tokens) + ended
        want = weight * _ctc_score(model, x[i], n, h.tokens, ended) + (1 - weight) * _attention_score(
            model, x[i], n, h.tokens, ended
        )
        assert h.score == pytest.approx(want, abs=1e-4)
        g = firsts[i]
        greedy_joint = weight * _ctc_score(model, x[i], n, g.tokens, g.stop == "eos") + (1 - weight) * g.score
        assert h.score >= greedy_joint - 1e-4


def test_bad_weights_are_refused_by_name():
    x, lengths = _batch()
    for bad in (-0.1, 1.5, True, "0.3"):
        with pytest.raises(ValueError, match=r"ctc_weight: expected a float in \[0, 1\], got"):
            beam_search(_model(), x, lengths, ctc_weight=bad)
    with pytest.raises(ValueError, match="ctc_weight: SpeechTransformer has no CTC head"):
        beam_search(_model(ctc_weight=0.0), x, lengths, ctc_weight=0.5)
