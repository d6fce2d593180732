"""Real sentences end to end: what training did to the text is what translate and evaluate do.

English-French pairs from tests/english_french.py (a grammar, offline): cased, punctuated,
French spacing (U+202F before ``?``), elision, quotes. A stand-in model (:class:`Parrot`) that
writes chosen token ids makes the text pipeline testable exactly; a tiny trained run checks
the commands.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import warnings

import pytest
import torch
from torch import nn

import english_french as ef
from qkv.cli.main import main
from qkv.translation import Translator, load_corpus, prepare_data
from qkv.translation.data import (
    Example,
    TextFormat,
    encode_pairs,
    load_tsv,
    normalize_text,
    split_punct_tokens,
)
from qkv.translation.decode import EOS, beam_search, greedy, longest_repeat, repeat_cut
from qkv.translation.metrics import bleu, bleu_signed, corpus_scores
from qkv.translation.training import count_parameters, inference_facts, text_format
from qkv.translation.translator import TranslationWarning

NNBSP = "\u202f"


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def tsv_config(path, **data):
    from qkv.application.run_config import load_toml
    from qkv.translation.config import resolve

    overrides = [
        f"--data.corpus={json.dumps(str(path))}",
        *(f"--data.{k}={json.dumps(v)}" for k, v in data.items()),
    ]
    return resolve(load_toml("configs/tsv-example.toml"), overrides=overrides)


@pytest.fixture(scope="module")
def pairs_tsv(tmp_path_factory):
    return ef.write_tsv(tmp_path_factory.mktemp("data") / "en-fr.tsv", 500, seed=1)


# ----------------------------------------------------------------------------- a stand-in model


class Parrot(nn.Module):
    """A model with the decoding interface that writes, for a source it knows (by its token
    ids), the target ids it was given, and for any other source the fragment ``loop`` over and
    over (what a confused model does)."""

    def __init__(self, table: dict[tuple[int, ...], list[int]], vocab: int, loop=(4, 5)):
        super().__init__()
        self.table, self.vocab, self.loop = table, vocab, list(loop)
        self.config = None

    def encode(self, src, src_lengths):
        outs = []
        for row, n in zip(src.tolist(), src_lengths.tolist()):
            known = self.table.get(tuple(row[:n]))
            outs.append([*known, EOS] if known is not None else self.loop * 100)
        width = max(map(len, outs))
        out = torch.full((len(outs), width), EOS, dtype=torch.long)
        for i, o in enumerate(outs):
            out[i, : len(o)] = torch.tensor(o)
        return {"out": out}

    def init_state(self, memory):
        return {"t": torch.zeros(memory["out"].shape[0], dtype=torch.long)}

    def step(self, prev, state, memory):
        t = state["t"].clamp(max=memory["out"].shape[1] - 1)
        tok = memory["out"].gather(1, t.unsqueeze(1)).squeeze(1)
        logits = torch.full((tok.shape[0], self.vocab), -20.0)
        logits[torch.arange(tok.shape[0]), tok] = 0.0
        return logits, {"t": state["t"] + 1}, None


@pytest.fixture(scope="module")
def parrot(pairs_tsv):
    """A Translator whose model writes the (normalized) reference of every pair of the file."""
    cfg = tsv_config(pairs_tsv, valid_frac=0.0, test_frac=0.0)
    corpus, src_tok, tgt_tok = prepare_data(cfg)
    examples = corpus["train"]
    table = {tuple(src_tok.encode(e.source)): tgt_tok.encode(e.target) for e in examples}
    model = Parrot(table, len(tgt_tok))
    facts = inference_facts(examples, encode_pairs(examples, src_tok, tgt_tok))
    tr = Translator(
        model, src_tok, tgt_tok, cfg.to_dict(), text=text_format(cfg.data, corpus), inference=facts
    )
    return tr, examples


# ----------------------------------------------------------------------------- the text format


def test_normalize_then_detokenize_gives_the_training_text_back():
    """Learned on training targets, the format turns the normalized form of unseen sentences back
    into the sentences as written: case, punctuation spacing, quotes (U+202F/U+00A0 kept)."""
    pairs = ef.pairs(3000, seed=0)
    for side in (0, 1):
        raws = [p[side] for p in pairs]
        fmt = TextFormat.learn(raws[:2500], lowercase=True, split_punct=True)
        back = [fmt.detokenize(fmt.normalize(r)) for r in raws[2500:]]
        # the generator puts an ordinary space before "?" in 15% of French questions: the
        # format writes the usual U+202F there, so compare up to the kind of space
        assert [" ".join(b.split()) for b in back] == [" ".join(r.split()) for r in raws[2500:]]
        exact = sum(b == r for b, r in zip(back, raws[2500:]))
        assert exact >= 0.95 * 500


def test_detokenize_examples():
    fr = TextFormat.learn(
        [
            "Tom est malade\u202f?",
            "Je vois Tom.",
            "Mary a dit\u00a0: «\u00a0Oui\u00a0!\u00a0»",
            "Non, merci.",
        ],
        lowercase=True,
        split_punct=True,
    )
    assert fr.detokenize("tom est-il malade ?") == "Tom est-il malade\u202f?"
    assert (
        fr.detokenize("mary a dit : « tom est là ! »") == "Mary a dit\u00a0: «\u00a0Tom est là\u00a0!\u00a0»"
    )
    assert fr.detokenize("non , je vois tom .") == "Non, je vois Tom."
    en = TextFormat.learn(
        ['Tom said, "I\'m ill."', "Is Tom ill?", "I see Mary."], lowercase=True, split_punct=True
    )
    assert en.detokenize("is tom ill ?") == "Is Tom ill?"
    assert en.detokenize('mary said , " i see tom . "') == 'Mary said, "I see Tom."'
    assert en.detokenize("i don't know . is it 3.14 ?") == "I don't know. Is it 3.14?"
    # training kept the case: outputs keep it as the model wrote it
    cased = TextFormat.learn(["Is Tom ill?"], split_punct=True)
    assert cased.detokenize("Is tom ill ?") == "Is tom ill?"
    # nothing learned (a format from the config alone): English-like defaults
    assert TextFormat(split_punct=True).detokenize("( yes ) , he said : no !") == "(yes), he said: no!"
    assert TextFormat().detokenize("  four  two ") == "four two"


def test_text_format_is_stored_as_json_and_split_tokens_keep_the_spacing():
    fmt = TextFormat.learn(["Bonjour\u202f!", "Tom"], lowercase=True, split_punct=True)
    d = json.loads(json.dumps(fmt.to_dict()))
    assert TextFormat.from_dict(d) == fmt
    with pytest.raises(ValueError, match="text format"):
        TextFormat.from_dict({"lowercase": True})
    assert split_punct_tokens("«Oui», dit-il\u202f!") == (
        ["«", "Oui", "»", ",", "dit-il", "!"],
        ["", "", "", "", " ", "\u202f"],
    )
    assert normalize_text("Is Tom ill\u202f?", lowercase=True, split_punct=True) == "is tom ill ?"


def test_load_tsv_keeps_the_sentences_as_written(tmp_path):
    p = tmp_path / "p.tsv"
    p.write_text("Is Tom ill?\tTom est-il malade\u202f?\tCC-BY\n", encoding="utf-8")
    e = load_tsv(p, lowercase=True, split_punct=True, valid_frac=0.0, test_frac=0.0)["train"][0]
    assert (e.source, e.target) == ("is tom ill ?", "tom est-il malade ?")
    assert (e.source_text, e.target_text) == ("Is Tom ill?", "Tom est-il malade\u202f?")
    r = load_tsv(p, lowercase=True, split_punct=True, reverse=True, valid_frac=0.0, test_frac=0.0)["train"][0]
    assert (r.source, r.target_text) == ("tom est-il malade ?", "Is Tom ill?")
    assert Example("a", "b").target_text == "b" and Example("a", "b").raw_target is None


# ----------------------------------------------------------------------------- translate


def test_translate_applies_the_training_normalization(parrot):
    """Cased, punctuated input (and a U+202F the training removed) reads as its normalized form."""
    tr, examples = parrot
    e = next(x for x in examples if x.source_text == "How are you?")
    forms = [e.source_text, e.source, "HOW are you\u202f?", "  How   are you ?"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", TranslationWarning)
        results = tr.translate(forms)
    assert {tuple(r.source_tokens) for r in results} == {tuple(tr.src_tok.tokens(e.source))}
    assert all("<unk>" not in r.source_tokens for r in results)
    assert {r.text for r in results} == {e.target_text}  # "Comment allez-vous\u202f?"


def test_a_run_without_a_stored_format_still_normalizes_its_inputs(parrot):
    """Checkpoints written before formats were stored: the normalization comes from [data]."""
    tr, examples = parrot
    old = Translator(tr.model, tr.src_tok, tr.tgt_tok, tr.config)
    assert old.text_format == TextFormat(lowercase=True, split_punct=True)
    e = next(x for x in examples if x.source_text == "How are you?")
    (r,) = old.translate("How are you?")
    assert r.source_tokens == tr.src_tok.tokens(e.source) and r.normalized == e.target


def test_translations_are_text_and_evaluation_scores_text(parrot, caplog):
    """The output is detokenized and recased; evaluate scores it with sacrebleu's standard BLEU
    against the references as written (no tokenized-period warning), the normalized variant apart."""
    tr, examples = parrot
    sample = examples[:150]
    texts = [r.text for r in tr.translate([e.source_text for e in sample])]
    same_words = [" ".join(t.split()) for t in texts] == [" ".join(e.target_text.split()) for e in sample]
    assert same_words  # the generator varies U+202F / space before "?"; the format writes the usual one
    assert not any(re.search(r" [.,]", t) for t in texts)
    with caplog.at_level(logging.WARNING, logger="sacrebleu"):
        m = tr.evaluate(sample)
    assert not [r for r in caplog.records if "tokenized period" in r.getMessage()]
    assert m["bleu"] == pytest.approx(100.0) and m["exact_match"] == 1.0
    assert m["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert "tok:none" in m["bleu_normalized_signature"] and m["bleu_normalized"] == pytest.approx(100.0)
    assert m["chrf_signature"].startswith("nrefs:1|case:mixed")


def test_unknown_words_and_empty_input_warn_and_repetition_stops(parrot):
    tr, _ = parrot
    with pytest.warns(TranslationWarning) as rec:
        empty, unknown = tr.translate(["", "xyzzy plugh frobnicate"])
    messages = [str(w.message) for w in rec]
    assert empty.text == "" and empty.stop == "empty" and empty.source_tokens == []
    assert any("input 1 '': empty input" in m for m in messages)
    assert unknown.unknown_words == ["xyzzy", "plugh", "frobnicate"]
    assert any("3 of 3 words were never seen in training (xyzzy, plugh, frobnicate)" in m for m in messages)
    # the stand-in loops on "4 5 4 5 ..." for a source it does not know: cut at the learned limit
    k = tr.inference["max_repeats"]
    assert k >= 3
    assert unknown.stop == "repetition" and len(unknown.target_tokens) == 2
    assert any("repeating a fragment" in m for m in messages)
    with pytest.warns(TranslationWarning) as rec:
        (beam,) = tr.translate("xyzzy plugh frobnicate", beam=3)
    assert any("repeating a fragment" in str(w.message) for w in rec)
    assert beam.stop == "repetition" and len(beam.target_tokens) == 2


def test_a_source_too_long_for_the_transformer_is_a_clear_error_and_the_limit_is_capped():
    from qkv.models.transformer import Transformer, TransformerConfig
    from qkv.translation.config import resolve
    from qkv.translation.data import build_tokenizer

    tok = build_tokenizer("word", ["a b c d e f g"])
    model = Transformer(TransformerConfig(src_vocab=len(tok), tgt_vocab=len(tok), d_model=16, num_heads=2,
                                          ff_dim=16, encoder_layers=1, decoder_layers=1, max_len=12)).eval()  # fmt: skip
    tr = Translator(model, tok, tok, resolve(preset="transformer").to_dict())
    with pytest.raises(
        ValueError, match=r"input 1 .* is 20 source tokens long; this model reads at most 12 .*Split"
    ):
        tr.translate("a " * 20)
    assert tr.max_len(["a b c d e"]) == 12  # 3 x 5 + 10 = 25 would overrun the 12 positions
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TranslationWarning)
        (r,) = tr.translate("a b c d e")  # used to fail: "sequence length 13 exceeds max_len=12"
    assert len(r.target_tokens) <= 12


# ----------------------------------------------------------------------------- decoding rule


class Loop(nn.Module):
    """Writes ``prefix`` then ``fragment`` forever; never <eos>."""

    def __init__(self, prefix, fragment, vocab=12):
        super().__init__()
        self.seq, self.vocab = list(prefix) + list(fragment) * 50, vocab

    def encode(self, src, src_lengths):
        return {"x": src}

    def init_state(self, memory):
        return {"t": torch.zeros(memory["x"].shape[0], dtype=torch.long)}

    def step(self, prev, state, memory):
        b = prev.shape[0]
        logits = torch.full((b, self.vocab), -5.0)
        logits[:, self.seq[int(state["t"][0])]] = 0.0
        return logits, {"t": state["t"] + 1}, None


def test_degenerate_repetition_is_stopped_by_greedy_and_beam_search():
    m = Loop([7, 8], [5, 6])
    src, lengths = torch.ones(2, 3, dtype=torch.long), torch.tensor([3, 2])
    old = greedy(m, src, lengths, max_len=40)
    assert len(old[0].tokens) == 40 and old[0].stop == "limit"
    g = greedy(m, src, lengths, max_len=40, max_repeats=3)
    assert [h.tokens for h in g] == [[7, 8, 5, 6]] * 2 and {h.stop for h in g} == {"repetition"}
    b = beam_search(m, src, lengths, beam=1, max_len=40, max_repeats=3)
    assert [h.tokens for h in b] == [h.tokens for h in g]
    for x, y in zip(b, g):
        assert x.score == pytest.approx(y.score, abs=1e-5)
    b3 = beam_search(m, src, lengths, beam=3, max_len=40, max_repeats=3)
    assert all(h.stop == "repetition" and len(h.tokens) < 40 for h in b3)
    with pytest.raises(ValueError, match="max_repeats: expected None or an int >= 2"):
        greedy(m, src, lengths, max_repeats=1)


def test_repeat_helpers():
    assert repeat_cut([7, 5, 6, 5, 6, 5, 6], 3) == 3
    assert repeat_cut([1, 2, 1, 2], 3) is None
    assert repeat_cut([9, 9, 9, 9], 4) == 1
    assert longest_repeat([[1, 2, 3], [1, 0, 0, 0, 0, 0, 0]]) == 6  # "1 000 000": six zeros are data
    assert longest_repeat([[5, 6, 5, 6, 5, 6, 7]]) == 3 and longest_repeat([[]]) == 0


# ----------------------------------------------------------------------------- metrics


def test_bleu_is_cased_13a_of_text_with_its_signature_and_variants_are_named():
    hyps, refs = ["Tom is ill."], ["tom is ill."]
    assert bleu(hyps, refs) < 100 and bleu(hyps, refs, lowercase=True) == pytest.approx(100)
    s = corpus_scores(["Is Tom ill?"], ["Is Tom ill?"])
    assert s["bleu"] == pytest.approx(100) and s["bleu_signature"].startswith(
        "nrefs:1|case:mixed|eff:no|tok:13a"
    )
    score, signature = bleu_signed(["is tom ill ?"], ["is tom ill ?"], tokenize="none")
    assert score == pytest.approx(100) and "tok:none" in signature


# ----------------------------------------------------------------------------- the commands


@pytest.fixture(scope="module")
def trained(pairs_tsv, tmp_path_factory):
    """A tiny Bahdanau run of the documented TSV command (on a file with one malformed line)."""
    folder = tmp_path_factory.mktemp("run")
    tsv = folder / "pairs.tsv"
    lines = pairs_tsv.read_text(encoding="utf-8").splitlines()
    lines.insert(3, "no tab on this line")
    tsv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = folder / "run"
    code = main(["train", "configs/tsv-example.toml", "--data", str(tsv), "--out", str(out),
                 "--train.epochs=2", "--model.hidden_dim=48", "--model.embed_dim=24"])  # fmt: skip
    assert code == 0
    return tsv, out


def test_cli_train_prints_parameters_and_malformed_lines_as_messages(trained, capsys, tmp_path):
    tsv, _ = trained
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing reaches Python's warning machinery
        code, _, err = run(capsys, "train", "configs/tsv-example.toml", "--data", str(tsv),
                                "--out", str(tmp_path / "r"), "--train.max_steps=1", "--train.valid_decode=2")  # fmt: skip
    assert code == 0
    assert re.search(
        r"^warning: load_tsv: skipped 1 malformed line\(s\) of '.*pairs.tsv' .*: line 4$", err, re.M
    )
    assert "UserWarning" not in err and ".py:" not in err
    assert re.search(r"^model: bahdanau, [\d,]+ parameters; ", err, re.M)
    # the library still warns (a DataWarning, a UserWarning)
    with pytest.warns(UserWarning, match="line 4"):
        load_tsv(tsv)


def test_cli_translate_normalizes_detokenizes_and_warns(trained, capsys):
    _, out = trained
    code, stdout, err = run(capsys, "translate", "--checkpoint", str(out), "Is Tom ill?", "is tom ill ?",
                            "Is Tom ill\u202f?", "", "xyzzy plugh", "--no-alignment")  # fmt: skip
    assert code == 0
    lines = stdout.split("\n")
    assert lines[0] == lines[1] == lines[2] and lines[3] == ""
    assert lines[0] and lines[0][0].isupper() and not re.search(r" [.,]", lines[0])
    assert "warning: input 4 '': empty input (after normalization): nothing to translate" in err
    assert "warning: input 5 'xyzzy plugh': 2 of 2 words were never seen in training" in err
    assert ".py:" not in err
    code, stdout, err = run(capsys, "translate", "--checkpoint", str(out), "", "--json")
    doc = json.loads(stdout)
    assert doc[0]["translation"] == "" and doc[0]["stop"] == "empty" and doc[0]["warnings"]
    tr = Translator.load(out)
    assert (
        tr.text_format.lowercase and tr.text_format.split_punct and tr.text_format.cases.get("tom") == "Tom"
    )
    assert tr.inference["max_repeats"] >= 3 and "tom" in tr.inference["source_words"]


def test_cli_evaluate_rounds_prints_signature_and_parameters(trained, capsys):
    tsv, out = trained
    code, stdout, _ = run(capsys, "evaluate", "--checkpoint", str(out), "--json")
    assert code == 0
    m = json.loads(stdout)
    for key, places in (("bleu", 2), ("chrf", 2), ("bleu_normalized", 2), ("exact_match", 4)):
        assert round(m[key], places) == m[key], (key, m[key])
    assert m["parameters"] == count_parameters(Translator.load(out).model) > 0
    assert m["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    code, stdout, _ = run(capsys, "evaluate", "--checkpoint", str(out), "--data", str(tsv), "--limit", "20")
    assert code == 0
    assert f"\n{tsv} (its first 20 pairs): 20 examples, beam 1\n" in stdout
    small = tsv.parent / "five.tsv"
    pairs = [line for line in tsv.read_text(encoding="utf-8").splitlines() if "\t" in line][:5]
    small.write_text("\n".join(pairs) + "\n", encoding="utf-8")
    code, stdout, _ = run(capsys, "evaluate", "--checkpoint", str(out), "--data", str(small))
    assert code == 0 and f"\n{small} (the whole file): 5 examples, beam 1\n" in stdout
    code, _, err = run(capsys, "evaluate", "--checkpoint", str(out), "--data", str(tsv), "--split", "valid")
    assert code == 2 and "--split valid: not used with --data (the whole file is evaluated)" in err
    assert re.search(r"^model: seq2seq \(bahdanau attention\), [\d,]+ parameters$", stdout, re.M)
    assert "(sacrebleu nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" in stdout
    assert "BLEU normalized" in stdout


def test_cli_evaluate_json_rounds_100():
    from qkv.cli.evaluate import rounded_metrics

    m = rounded_metrics({"bleu": 100.00000000000004, "exact_match": 0.123456, "n": 3, "bleu_signature": "x"})
    assert json.dumps(m) == '{"bleu": 100.0, "exact_match": 0.1235, "n": 3, "bleu_signature": "x"}'


@pytest.mark.parametrize("preset", ["none", "bahdanau", "luong", "luong-local", "transformer"])
def test_every_model_trains_on_a_tsv_file_with_the_tsv_config(preset, pairs_tsv, tmp_path, capsys):
    out = tmp_path / preset
    extra = ["--model.max_len=64"] if preset == "transformer" else []
    code, stdout, err = run(capsys, "train", "configs/tsv-example.toml", "--data", str(pairs_tsv), "--model", preset,
                            "--out", str(out), "--quiet", "--train.max_steps=1", "--train.valid_decode=2", *extra)  # fmt: skip
    assert code == 0, err
    assert "done: step 1" in stdout
    if preset == "transformer":
        code, _, err = run(capsys, "translate", "--checkpoint", str(out), "word " * 100)
        assert code == 2
        assert re.search(
            r"is \d{3} source tokens long; this model reads at most 64 \(the Transformer's max_len\)", err
        )
        assert "Split the text into sentences" in err


def test_the_tsv_transformer_config_trains(pairs_tsv, tmp_path, capsys):
    code, _, err = run(capsys, "train", "configs/tsv-transformer.toml", "--data", str(pairs_tsv), "--quiet",
                       "--out", str(tmp_path / "t"), "--train.max_steps=1", "--train.valid_decode=2")  # fmt: skip
    assert code == 0, err
    assert re.search(r"^model: transformer, [\d,]+ parameters", err, re.M)


def test_every_config_file_resolves():
    from pathlib import Path

    from qkv.application.run_config import load_toml
    from qkv.translation.config import MODEL_PRESETS, resolve

    for path in sorted(Path("configs").glob("*.toml")):
        resolve(load_toml(path))
    for preset in MODEL_PRESETS:
        resolve(load_toml("configs/tsv-example.toml"), preset=preset)


def test_train_help_lists_the_keys_and_show_config_prints_a_valid_config(capsys, tmp_path):
    import tomllib

    from qkv.translation.config import RunConfig, resolve

    code, stdout, _ = run(capsys, "train", "--help")
    assert code == 0
    text = " ".join(stdout.split())
    for table in ("data", "train"):
        for key in RunConfig().to_dict()[table]:
            assert f"{key}=" in text, key
    assert "--show-config" in text and "configs/tsv-example.toml" in text and "--data.reverse" in text
    code, stdout, _ = run(capsys, "train", "configs/tsv-example.toml", "--model", "transformer", "--data.reverse",
                          "--train.lr=1e-4", "--show-config")  # fmt: skip
    assert code == 0
    shown = tomllib.loads(stdout)
    assert shown["data"]["reverse"] is True and shown["train"]["lr"] == 1e-4
    assert shown["model"]["kind"] == "transformer" and shown["model"]["d_model"] == 128
    again = resolve(shown).to_dict()
    assert again["data"] == {"options": {}, **shown["data"]} and again["train"] == shown["train"]
    assert again["model"] == {k: v for k, v in shown["model"].items() if k != "preset"}
    assert not (tmp_path / "runs").exists()


def test_data_reverse_translates_from_the_second_column(pairs_tsv, tmp_path, capsys):
    cfg = tsv_config(pairs_tsv, reverse=True)
    corpus = load_corpus(cfg.data)
    english = {p[0] for p in ef.pairs(500, seed=1)}
    assert all(x.target_text in english for x in corpus["train"])
    out = tmp_path / "rev"
    code, _, err = run(capsys, "train", "configs/tsv-example.toml", "--data", str(pairs_tsv), "--data.reverse",
                       "--out", str(out), "--quiet", "--train.max_steps=1", "--train.valid_decode=2")  # fmt: skip
    assert code == 0, err
    tr = Translator.load(out)
    assert tr.config["data"]["reverse"] is True and "malade" in tr.inference["source_words"]
    with pytest.raises(ValueError, match=r"data\.reverse: only for TSV files"):
        load_corpus(dataclasses.replace(cfg.data, corpus="numbers"))
