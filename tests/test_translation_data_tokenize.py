"""qkv.translation.data tokenizers: special ids, round trips, unknowns, to_dict/from_dict, BPE on train only."""

from __future__ import annotations

import json

import pytest
import torch

from qkv.translation.data import (
    BPETokenizer,
    CharTokenizer,
    Tokenizer,
    WordTokenizer,
    build_tokenizer,
    builtin,
    tokenizer_from_dict,
)

TEXTS = ["the cat sat", "the dog sat", "the cat ran", "a bird"]


def _json_round_trip(tok: Tokenizer) -> Tokenizer:
    d = json.loads(json.dumps(tok.to_dict()))
    return tokenizer_from_dict(d)


@pytest.mark.parametrize("kind", ["word", "char", "bpe"])
def test_special_ids_are_fixed(kind):
    tok = build_tokenizer(kind, TEXTS)
    assert (Tokenizer.PAD, Tokenizer.SOS, Tokenizer.EOS, Tokenizer.UNK) == (0, 1, 2, 3)
    assert [tok.id_to_token(i) for i in range(4)] == ["<pad>", "<sos>", "<eos>", "<unk>"]
    assert [tok.token_to_id(s) for s in ("<pad>", "<sos>", "<eos>", "<unk>")] == [0, 1, 2, 3]


def test_word_tokenizer():
    tok = WordTokenizer.build(TEXTS)
    # most frequent first, ties in code-point order
    assert tok.vocab[4:] == ["the", "cat", "sat", "a", "bird", "dog", "ran"]
    assert len(tok) == 11
    ids = tok.encode("the cat sat")
    assert ids == [4, 5, 6] and tok.tokens("the  cat\tsat") == ["the", "cat", "sat"]
    assert tok.decode(ids) == "the cat sat"
    assert tok.encode("the zebra") == [4, Tokenizer.UNK]
    assert tok.decode([4, Tokenizer.UNK]) == "the <unk>"
    # decode stops at EOS and skips PAD/SOS; tensors work too
    assert tok.decode([1, 4, 5, 2, 6, 6]) == "the cat"
    assert tok.decode(torch.tensor([1, 4, 0, 5, 0])) == "the cat"
    assert tok.decode_tokens([4, 5, 2, 9]) == ["the", "cat"]
    assert WordTokenizer.build(TEXTS, min_freq=2).vocab[4:] == ["the", "cat", "sat"]
    assert WordTokenizer.build(TEXTS, max_size=6).vocab[4:] == ["the", "cat"]


def test_char_tokenizer_round_trip():
    texts = ["quatre vingt onze", "dix-neuf", "zéro"]
    tok = CharTokenizer.build(texts)
    for t in texts:
        assert tok.decode(tok.encode(t)) == t
        assert tok.tokens(t) == list(t)
    assert tok.encode("q!")[1] == Tokenizer.UNK
    assert " " in tok.vocab


@pytest.mark.parametrize("kind", ["word", "char", "bpe"])
def test_to_dict_from_dict_gives_the_same_tokenizer(kind):
    c = builtin("numbers-en-fr", size=300, seed=0)
    tok = build_tokenizer(kind, c.texts("train", "target"))
    again = _json_round_trip(tok)
    assert type(again) is type(tok) and len(again) == len(tok)
    assert again.to_dict() == tok.to_dict()
    for e in c["test"]:
        assert again.encode(e.target) == tok.encode(e.target)
        assert again.decode(tok.encode(e.target)) == e.target  # every word/char was seen


def test_bpe_round_trip_and_unknown_characters():
    c = builtin("numbers-de", size=600, seed=0)
    tok = BPETokenizer.build(c.texts("train", "target"), max_size=80)
    assert len(tok) <= 80
    for e in c["test"]:
        ids = tok.encode(e.target)
        assert Tokenizer.UNK not in ids and all(4 <= i < len(tok) for i in ids)
        assert tok.decode(ids) == e.target
        assert "".join(tok.tokens(e.target)).replace("▁", " ").strip() == e.target
    assert Tokenizer.UNK in tok.encode("vier Ω")
    assert tok.decode(tok.encode("vier")) == "vier"
    # vocab_size is the same argument under the tokenizers name
    assert BPETokenizer.build(c.texts("train", "target"), vocab_size=80).to_dict() == tok.to_dict()


def test_bpe_is_trained_on_the_given_texts_only():
    train = ["low lower lowest", "newer newest"] * 20
    tok = BPETokenizer.build(train, max_size=60)
    seen = set("".join(train))
    vocab = [tok.id_to_token(i) for i in range(4, len(tok))]
    assert all(set(v.replace("▁", "")) <= seen for v in vocab)  # nothing from elsewhere
    ids = tok.encode("wide")  # 'i' and 'd' were never seen
    assert ids.count(Tokenizer.UNK) == 2 and tok.decode(ids) == "w<unk><unk>e"
    assert tok.to_dict() == BPETokenizer.build(train, max_size=60).to_dict()  # deterministic


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind: expected one of word, char, bpe, got 'sentencepiece'"):
        build_tokenizer("sentencepiece", TEXTS)
    with pytest.raises(ValueError, match="empty vocabulary"):
        WordTokenizer.build([])
    with pytest.raises(ValueError, match="empty vocabulary: no token occurs at least min_freq=9"):
        WordTokenizer.build(TEXTS, min_freq=9)
    with pytest.raises(ValueError, match="empty vocabulary"):
        BPETokenizer.build(["", " "])
    with pytest.raises(ValueError, match="min_freq: expected an int >= 1, got 0"):
        CharTokenizer.build(TEXTS, min_freq=0)
    with pytest.raises(ValueError, match="max_size: expected None or an int > 4"):
        WordTokenizer.build(TEXTS, max_size=4)
    with pytest.raises(TypeError, match="texts: expected a sequence of str, got a single str"):
        WordTokenizer.build("the cat")
    with pytest.raises(TypeError, match=r"texts\[1\]: expected a str, got int"):
        WordTokenizer.build(["a", 1])
    tok = WordTokenizer.build(TEXTS)
    with pytest.raises(ValueError, match=r"ids: expected ids in \[0, 11\), got 99"):
        tok.decode([4, 99])
    with pytest.raises(ValueError, match=r"id: expected an int in \[0, 11\), got -1"):
        tok.id_to_token(-1)
    with pytest.raises(ValueError, match="ids: expected a 1-D tensor"):
        tok.decode(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="kind in word, char, bpe, got 'gpt'"):
        tokenizer_from_dict({"kind": "gpt"})
    with pytest.raises(ValueError, match="vocab: expected to start with"):
        tokenizer_from_dict({"kind": "word", "vocab": ["a", "b"]})
    with pytest.raises(ValueError, match="expected a 'json' string"):
        tokenizer_from_dict({"kind": "bpe"})
