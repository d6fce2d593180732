"""``torch.compile`` and ONNX export over ``qkv.attention`` and ``qkv.MultiHeadAttention``.

One graph for every case (``torch._dynamo.explain`` counts no graph break): dense, padding,
causal, patterns combined with padding (built inside the compiled function too), and the
block-sparse path of sliding-window and BigBird patterns at a fixed length. Compiled outputs
and gradients follow the error-ratio rule against a float64 golden, as eager does; a small
model exported to ONNX gives eager's outputs in onnxruntime.
"""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

import qkv
from qkv import masks
from qkv.backends import sequence_parallel

from helpers import GRAD_FACTOR, assert_error_ratio

B, H, T, D = 2, 2, 16, 8
LONG = 256  # blocksparse's 64 x 64 tiles: a 4 x 4 grid


def _qkv(t: int, batch: int = B, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, H, t, D, generator=g, dtype=dtype) for _ in range(3))


def _padding(t: int) -> torch.Tensor:
    keep = torch.ones(B, 1, 1, t, dtype=torch.bool)  # (B, 1, 1, Tk), True = may attend
    keep[1, ..., t // 2 + 1 :] = False
    return keep


PAD = _padding(T)
WINDOW = masks.sliding_window(64)
BIGBIRD = masks.bigbird(block=64, window_blocks=3, global_blocks=1, random_blocks=1, seed=0)


def _call(**kwargs):
    return lambda q, k, v: qkv.attention(q, k, v, **kwargs).out


CASES = {
    "dense": lambda q, k, v: qkv.attention(q, k, v).out,
    "padding": _call(mask=PAD),
    "causal": lambda q, k, v: qkv.attention(q, k, v, mask=masks.causal()).out,
    "causal & padding": lambda q, k, v: qkv.attention(q, k, v, mask=masks.causal() & PAD).out,
    "padding & causal": lambda q, k, v: qkv.attention(q, k, v, mask=PAD & masks.causal()).out,
    "longformer & padding": lambda q, k, v: qkv.attention(q, k, v, mask=masks.longformer(2, [0]) & PAD).out,
    "bigbird | ~padding": lambda q, k, v: (
        qkv.attention(
            q, k, v, mask=masks.bigbird(block=4, window_blocks=1, global_blocks=1, random_blocks=1) | ~PAD
        ).out
    ),
}


def _breaks(fn, *args) -> tuple[int, int]:
    torch._dynamo.reset()
    report = torch._dynamo.explain(fn)(*args)
    return report.graph_break_count, report.graph_count


@pytest.mark.parametrize("case", list(CASES))
def test_attention_one_graph(case):
    assert _breaks(CASES[case], *_qkv(T)) == (0, 1)


@pytest.mark.parametrize("pattern", [WINDOW, BIGBIRD], ids=["window", "bigbird"])
@pytest.mark.parametrize("backend", ["blocksparse", "auto"])
def test_blocksparse_one_graph(pattern, backend):
    """The block-sparse path at a fixed length: one opaque operator, its plan made on the host."""
    t = LONG if backend == "blocksparse" else 1024  # auto picks blocksparse on long sparse rows
    q, k, v = _qkv(t, batch=1)
    assert qkv.dispatch_report(q, k, v, mask=pattern, backend=backend).chosen == "blocksparse"
    assert _breaks(_call(mask=pattern, backend=backend), q, k, v) == (0, 1)


def _module(seed: int = 0) -> qkv.MultiHeadAttention:
    torch.manual_seed(seed)
    return qkv.MultiHeadAttention(16, 2).eval()


def test_multihead_one_graph():
    """Causal with padding, a window with padding, and weights asked for."""
    m = _module()
    x = torch.randn(B, T, 16)
    pad = ~PAD[:, 0, 0]  # (B, T), True = padding
    causal, window = masks.causal(), masks.sliding_window(3)
    for call in (
        lambda x, p: m(x, mask=causal, key_padding_mask=p).out,
        lambda x, p: m(x, mask=window, key_padding_mask=p).out,
        lambda x, p: m(x, mask=causal, key_padding_mask=p, need_weights=True).weights,
    ):
        assert _breaks(call, x, pad) == (0, 1)


def test_multihead_compiled_equals_eager(request):
    """Inductor's module under the error-ratio rule (golden: the module in float64)."""
    m = _module()
    golden_m = copy.deepcopy(m).double()
    x = torch.randn(B, T, 16)
    pad = ~PAD[:, 0, 0]
    torch._dynamo.reset()
    compiled = torch.compile(m, fullgraph=True)
    with torch.no_grad():
        impl = compiled(x, mask=masks.causal(), key_padding_mask=pad).out
        eager = m(x, mask=masks.causal(), key_padding_mask=pad).out
        golden = golden_m(x.double(), mask=masks.causal(), key_padding_mask=pad).out
    assert_error_ratio(request, impl, golden, eager)


def test_multihead_causal_padding_compiled_at_blocksparse_lengths(request):
    """Causal with padding at a length where auto weighs blocksparse: the pattern joined with
    the padding inside the traced forward is run by the dense kernels, in one graph, under
    the error-ratio rule (golden: the module in float64)."""
    m = _module()
    golden_m = copy.deepcopy(m).double()
    t = 4 * qkv.backends.blocksparse.BlockSparseBackend().q_block
    x = torch.randn(2, t, 16)
    pad = torch.zeros(2, t, dtype=torch.bool)
    pad[1, t - 37 :] = True
    causal = masks.causal()
    call = lambda x, p: m(x, mask=causal, key_padding_mask=p).out  # noqa: E731
    assert _breaks(call, x, pad) == (0, 1)
    torch._dynamo.reset()
    compiled = torch.compile(m, fullgraph=True)
    with torch.no_grad():
        impl = compiled(x, mask=causal, key_padding_mask=pad).out
        eager = m(x, mask=causal, key_padding_mask=pad).out
        golden = golden_m(x.double(), mask=causal, key_padding_mask=pad).out
    assert_error_ratio(request, impl, golden, eager)


@pytest.mark.parametrize("pattern", [WINDOW, BIGBIRD], ids=["window", "bigbird"])
def test_blocksparse_compiled_equals_eager(request, pattern):
    """Forward and backward of the compiled operator: the error-ratio rule against float64, and
    bitwise eager blocksparse's (the same kernels in the same order)."""
    q64, k64, v64 = (x.requires_grad_() for x in _qkv(LONG, batch=1, seed=1, dtype=torch.float64))
    q, k, v = (x.detach().float().requires_grad_() for x in (q64, k64, v64))
    torch._dynamo.reset()
    compiled = torch.compile(_call(mask=pattern, backend="blocksparse"), fullgraph=True)
    impl = compiled(q, k, v)
    blocksparse = qkv.attention(q, k, v, mask=pattern, backend="blocksparse").out
    eager = qkv.attention(q, k, v, mask=pattern, backend="reference").out
    golden = qkv.attention(q64, k64, v64, mask=pattern, backend="reference").out
    assert_error_ratio(request, impl, golden, eager)
    assert torch.equal(impl, blocksparse)
    go = torch.randn(golden.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    grads = [torch.autograd.grad(o, i, go.to(o.dtype)) for o, i in (
        (impl, (q, k, v)), (blocksparse, (q, k, v)), (eager, (q, k, v)), (golden, (q64, k64, v64)),
    )]  # fmt: skip
    for gi, gb, ge, gg in zip(*grads):
        assert_error_ratio(request, gi, gg, ge, factor=GRAD_FACTOR, what="grad")
        assert torch.equal(gi, gb)


def test_blocksparse_compiled_nan_key_gradients_equal_eager():
    """A key holding NaN: the NaN rule fills the rows that attend it, and those rows pass no
    gradient back, compiled as in eager (bitwise; no NaN reaches the other rows' gradients)."""
    q, k, v = (x.requires_grad_() for x in _qkv(LONG, batch=1, seed=3, dtype=torch.float32))
    with torch.no_grad():
        k[0, 1, 37, 3] = float("nan")
    torch._dynamo.reset()
    compiled = torch.compile(_call(mask=WINDOW, backend="blocksparse"), fullgraph=True)
    impl, eager = compiled(q, k, v), qkv.attention(q, k, v, mask=WINDOW, backend="blocksparse").out
    assert torch.equal(impl.isnan(), eager.isnan()) and bool(eager.isnan().any())
    gi = torch.autograd.grad(impl.nan_to_num().sum(), (q, k, v))
    ge = torch.autograd.grad(eager.nan_to_num().sum(), (q, k, v))
    for a, b in zip(gi, ge):
        assert not bool(a.isnan().any())
        assert torch.equal(a, b)


def test_blocksparse_pattern_made_inside_is_refused():
    """Blocksparse plans on the host: a pattern made inside the traced function has no state
    there yet, and the error says where to make it."""
    q, k, v = _qkv(LONG, batch=1)
    torch._dynamo.reset()
    fn = torch.compile(_call_inside, fullgraph=True, backend="eager")
    with pytest.raises(Exception, match=r"mask: the pattern _SlidingWindow was made inside the function"):
        fn(q, k, v)


def _call_inside(q, k, v):
    return qkv.attention(q, k, v, mask=masks.sliding_window(64), backend="blocksparse").out


def test_sequence_parallel_context_retraces():
    """A compiled call traced outside any sequence-parallel context is traced again inside one
    (the open-context count is guarded), so it never runs the local choice there."""

    def where(x):
        return x + (0.0 if sequence_parallel.active() is None else 1.0)

    torch._dynamo.reset()
    fn = torch.compile(where, backend="eager")
    x = torch.zeros(2)
    assert torch.equal(fn(x), x)
    context = sequence_parallel.SequenceParallel(group=None, layout="contiguous", rank=0, world=1)
    with sequence_parallel.activate(context):
        assert torch.equal(fn(x), x + 1)
    assert torch.equal(fn(x), x)


class _Tiny(torch.nn.Module):
    """Causal self-attention over padded sequences, then a linear read-out."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = qkv.MultiHeadAttention(16, 2)
        self.head = torch.nn.Linear(16, 3)
        self.causal = masks.causal()

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(x, mask=self.causal, key_padding_mask=pad).out)


_ONNX = all(importlib.util.find_spec(n) for n in ("onnx", "onnxscript", "onnxruntime"))


@pytest.mark.skipif(not _ONNX, reason="onnx, onnxscript and onnxruntime are the dev extra's")
def test_onnx_export_equals_eager(request, tmp_path):
    """torch.onnx.export (the dynamo exporter) of a model with qkv attention; onnxruntime gives
    eager's outputs under the error-ratio rule."""
    import onnxruntime

    torch.manual_seed(0)
    model = _Tiny().eval()
    x = torch.randn(B, T, 16)
    pad = ~PAD[:, 0, 0]
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(model, (x, pad), str(path), dynamo=True, input_names=["x", "pad"], verbose=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (impl,) = session.run(None, {"x": x.numpy(), "pad": pad.numpy()})
    with torch.no_grad():
        eager = model(x, pad)
        golden = copy.deepcopy(model).double()(x.double(), pad)
    assert_error_ratio(request, torch.from_numpy(impl), golden, eager)
