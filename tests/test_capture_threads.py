"""qkv.capture switches nothing process-wide: while one thread captures, another thread's calls
run the same kernel (bitwise the same results, the same backend name), and captures that
overlap in several threads leave nothing changed behind them."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
from torch import nn

import qkv
import qkv.interop
from qkv.backends import dispatch
from qkv.capture import capture

E, H = 16, 4
CALLS = 150  # calls of the plain thread; the capturing thread loops until they are done


class Encoder(nn.Module):
    """Two self-attention layers: the capturing thread's model."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([qkv.MultiHeadAttention(embed_dim=E, num_heads=H) for _ in range(2)])

    def forward(self, x):
        for layer in self.layers:
            x = x + layer(x).out
        return x


def _plain_results(q, k, v, mha, x) -> tuple:
    """``qkv.attention`` and an (uncaptured) MultiHeadAttention, both asked for their weights."""
    r = qkv.attention(q, k, v, need_weights=True)
    m = mha(x, need_weights=True)
    return r.out, r.weights, r.backend, m.out, m.weights, m.backend


def _same(a: tuple, b: tuple) -> bool:
    return all(
        torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(a, b, strict=True)
    )


def _in_threads(*targets) -> list[BaseException]:
    """Run the targets in parallel threads, started together; the exceptions they raised."""
    errors: list[BaseException] = []
    start = threading.Barrier(len(targets))

    def wrap(fn):
        def run():
            try:
                start.wait()
                fn()
            except BaseException as e:  # reported by the test
                errors.append(e)

        return run

    threads = [threading.Thread(target=wrap(fn)) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    return errors


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = Encoder().eval()
    mha = qkv.MultiHeadAttention(embed_dim=E, num_heads=H).eval()
    x_model, x_mha = torch.randn(2, 9, E), torch.randn(2, 7, E)
    q, k, v = torch.randn(2, H, 6, 8), torch.randn(2, H, 10, 8), torch.randn(2, H, 10, 8)
    return model, mha, x_model, x_mha, (q, k, v)


def _dispatch_settings() -> dict:
    """The module-level numbers, strings and flags of qkv.backends.dispatch."""
    return {
        k: v
        for k, v in vars(dispatch).items()
        if not k.startswith("__") and isinstance(v, (bool, int, float, str))
    }


def test_plain_calls_in_another_thread_are_bitwise_those_of_one_thread():
    model, mha, x_model, x_mha, (q, k, v) = _setup()
    with torch.no_grad():
        expected = _plain_results(q, k, v, mha, x_mha)
        with capture(model) as maps:
            captured_alone = model(x_model)
        maps_alone = maps.stack()

    done = threading.Event()
    mismatches: list[int] = []
    capture_mismatches: list[int] = []

    def capturing():
        with torch.no_grad():
            while not done.is_set():
                with capture(model) as maps:
                    out = model(x_model)
                if not (torch.equal(out, captured_alone) and torch.equal(maps.stack(), maps_alone)):
                    capture_mismatches.append(1)

    def plain():
        try:
            with torch.no_grad():
                for i in range(CALLS):
                    if not _same(_plain_results(q, k, v, mha, x_mha), expected):
                        mismatches.append(i)
        finally:
            done.set()

    assert _in_threads(capturing, plain) == []
    assert mismatches == [], f"{len(mismatches)} of {CALLS} plain calls changed while another thread captured"
    assert capture_mismatches == []


def _state(models, q, k, v, mha, x_mha, x) -> tuple:
    """What a capture must leave as it found it: dispatch's settings, the modules' backends and
    hooks, and the results of calls made after it."""
    with torch.no_grad():
        return (
            _dispatch_settings(),
            [[layer.backend for layer in m.layers] for m in models],
            sum(
                len(m._forward_hooks) + len(m._forward_pre_hooks) for model in models for m in model.modules()
            ),
            _plain_results(q, k, v, mha, x_mha),
            [m(x) for m in models],
        )


def _same_state(a: tuple, b: tuple) -> bool:
    return a[:3] == b[:3] and _same(a[3], b[3]) and all(torch.equal(x, y) for x, y in zip(a[4], b[4]))


def test_overlapping_captures_in_threads_leave_nothing_changed():
    """Capture 2 starts while a call of capture 1 runs, and exits after capture 1 exited."""
    models = [_setup(seed)[0] for seed in (1, 2)]
    _, mha, _, x_mha, (q, k, v) = _setup()
    x = torch.randn(2, 9, E)
    before = _state(models, q, k, v, mha, x_mha, x)
    in_call, second_started, first_exited = threading.Event(), threading.Event(), threading.Event()

    def pause(mod, args):  # runs inside capture 1's hooked call, after its own pre-hook
        in_call.set()
        assert second_started.wait(60)

    def first():
        with torch.no_grad(), capture(models[0]) as maps:
            handle = models[0].layers[0].register_forward_pre_hook(pause)
            try:
                models[0](x)
            finally:
                handle.remove()
        assert len(maps) == 2
        first_exited.set()

    def second():
        assert in_call.wait(60)
        with torch.no_grad(), capture(models[1]) as maps:
            second_started.set()
            models[1](x)
            assert first_exited.wait(60)
        assert len(maps) == 2

    assert _in_threads(first, second) == []
    assert _same_state(_state(models, q, k, v, mha, x_mha, x), before)


def test_many_overlapping_captures_in_threads_leave_nothing_changed():
    models = [_setup(seed)[0] for seed in (1, 2)]
    _, mha, _, x_mha, (q, k, v) = _setup()
    x = torch.randn(2, 9, E)
    before = _state(models, q, k, v, mha, x_mha, x)

    def captures(model):
        def run():
            with torch.no_grad():
                for i in range(60):
                    with capture(model) as maps:
                        model(x)
                        if i % 2:  # the caller's own request for weights, too
                            model.layers[0](x, need_weights=True)
                    assert len(maps) == 2

        return run

    assert _in_threads(captures(models[0]), captures(models[1])) == []
    assert _same_state(_state(models, q, k, v, mha, x_mha, x), before)


def test_detach_false_changes_no_module_setting():
    """Gradients through the maps are arranged per call: the modules' backend attributes stay,
    and another thread's calls are unchanged."""
    model, mha, x_model, x_mha, (q, k, v) = _setup(3)
    with torch.no_grad():
        expected = _plain_results(q, k, v, mha, x_mha)
    backends = [layer.backend for layer in model.layers]
    results: list[tuple] = []

    def capturing():
        for _ in range(20):
            with capture(model, detach=False) as maps:
                assert [layer.backend for layer in model.layers] == backends
                model(x_model).sum().backward()
            assert len(maps) == 2

    def plain():
        with torch.no_grad():
            results.extend(_plain_results(q, k, v, mha, x_mha) for _ in range(40))

    assert _in_threads(capturing, plain) == []
    assert [layer.backend for layer in model.layers] == backends
    assert all(_same(r, expected) for r in results)


def test_overlapping_captures_of_a_transformers_model_restore_its_attention():
    """Capture 1 enters, capture 2 enters, capture 1 exits, capture 2 exits (the order two
    threads may take): the model is back on its own attention implementation."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=16, attn_implementation="sdpa",
    )  # fmt: skip
    hf = transformers.BertModel(cfg).eval()
    ids = torch.randint(0, 30, (1, 5))
    first, second = capture(hf), capture(hf)
    with torch.no_grad():
        maps_1 = first.__enter__()
        maps_2 = second.__enter__()
        assert hf.config._attn_implementation == "qkv"
        hf(input_ids=ids)
        first.__exit__(None, None, None)
        assert hf.config._attn_implementation == "qkv"  # capture 2 still runs
        hf(input_ids=ids)
        second.__exit__(None, None, None)
    assert hf.config._attn_implementation == "sdpa"
    assert [len(v) for v in maps_1.values()] == [1] and [len(v) for v in maps_2.values()] == [2]


def test_captures_of_transformers_models_in_threads_record_their_own_calls():
    """Two threads capture two Hugging Face models (on qkv's implementation) while a third
    calls a third one on qkv's implementation without capture: each capture gives, bitwise,
    what it gives alone; the plain model's outputs stay those of one thread, without weights."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=16, attn_implementation="sdpa",
    )  # fmt: skip
    torch.manual_seed(3)
    models = [transformers.BertModel(copy.deepcopy(cfg)).eval() for _ in range(3)]  # configs not shared
    qkv.interop.register_hf()
    models[2].set_attn_implementation("qkv")
    inputs = [torch.randint(0, 30, (1, n)) for n in (5, 7, 6)]
    with torch.no_grad():
        alone = []
        for model, ids in zip(models[:2], inputs):
            with capture(model) as maps:
                out = model(input_ids=ids).last_hidden_state
            alone.append((out, maps.stack()))
        plain_alone = models[2](input_ids=inputs[2]).last_hidden_state

    def capturing(i):
        def run():
            for _ in range(10):
                with torch.no_grad(), capture(models[i]) as maps:
                    out = models[i](input_ids=inputs[i]).last_hidden_state
                assert torch.equal(out, alone[i][0]) and torch.equal(maps.stack(), alone[i][1])

        return run

    def plain():
        for _ in range(10):
            with torch.no_grad():
                res = models[2](input_ids=inputs[2])
            assert torch.equal(res.last_hidden_state, plain_alone) and res.attentions is None

    assert _in_threads(capturing(0), capturing(1), plain) == []
    assert [m.config._attn_implementation for m in models] == ["sdpa", "sdpa", "qkv"]
