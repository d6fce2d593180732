"""``qkv explain``: print every step of an attention computation (a thin shell over
:mod:`qkv.explain`).

    qkv explain                                   # the Seq2Seq example, dot score
    qkv explain --score additive --seed 1         # seeded W_q, W_k, v printed as steps
    qkv explain --query "1,0" --keys "1,2;3,4" --values "10;20"
    qkv explain --self-attention --tokens "I,love,cats"
    qkv explain --kernel-regression --query 56.5
    qkv explain --pooling                         # the attention pooling layer and its trap
    qkv explain --json                            # the same steps, machine-readable
"""

from __future__ import annotations

import argparse
import json
import math
import re
from typing import Any

from ..functional.scores import SPECS
from . import CommandError

__all__ = ["add_parser", "parse_numbers", "render", "run"]

SCORES = tuple(SPECS)  # every named score

# Options that take a list of numbers: "-1,2" must stay their value, not become an option.
VECTOR_OPTIONS = ("--query", "--keys", "--values")

# Which options each mode reads (everything else given explicitly is an error).
_MODE_OPTIONS = {
    "seq2seq": {"score", "query", "keys", "values", "scale", "seed", "sigma", "temperature", "hidden"},
    "self-attention": {"tokens", "seed", "d_model", "d_k"},
    "kernel-regression": {"query", "keys", "values", "sigma"},
    "pooling": {"seed", "length", "units"},
}
_ALL_MODE_OPTIONS = set().union(*_MODE_OPTIONS.values())
# Library error messages start with a parameter name: point them at the option instead.
_OPTION_OF = {name: "--" + name.replace("_", "-") for name in _ALL_MODE_OPTIONS}

_NUMBERS_HELP = 'numbers separated by "," and vectors (rows) by ";", e.g. "1,2;3,4"'


def parse_numbers(text: str) -> list[float] | list[list[float]]:
    """``"0.5,0.5"`` -> ``[0.5, 0.5]`` (one vector); ``"1,2;3,4"`` -> ``[[1, 2], [3, 4]]``.

    Raises ``argparse.ArgumentTypeError`` with a readable message (argparse prefixes the option).
    """
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected {_NUMBERS_HELP}; got an empty string")
    rows = []
    for r, row in enumerate(text.split(";"), 1):
        if not row.strip():
            raise argparse.ArgumentTypeError(f"row {r} of {text!r} is empty; expected {_NUMBERS_HELP}")
        numbers = []
        for item in row.split(","):
            try:
                x = float(item.strip())
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"{item.strip()!r} in {text!r} is not a number; expected {_NUMBERS_HELP}"
                ) from None
            if not math.isfinite(x):
                raise argparse.ArgumentTypeError(f"{item.strip()!r} in {text!r}: expected finite numbers")
            numbers.append(x)
        rows.append(numbers)
    if len({len(r) for r in rows}) > 1:
        lengths = ", ".join(str(len(r)) for r in rows)
        raise argparse.ArgumentTypeError(
            f"rows of {text!r} have different lengths ({lengths}); every vector needs the same dimension"
        )
    return rows[0] if len(rows) == 1 and ";" not in text else rows


def _positive_float(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(x) and x > 0):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return x


def _finite_float(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return x


def _int_in(lo: int, hi: int):
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not lo <= n <= hi:
            raise argparse.ArgumentTypeError(f"expected an integer from {lo} to {hi}, got {n}")
        return n

    parse.__name__ = "integer"
    return parse


def _tokens(text: str) -> list[str]:
    tokens = [t.strip() for t in text.split(",")]
    if not all(tokens):
        raise argparse.ArgumentTypeError(
            f"expected labels separated by ',', e.g. \"I,love,cats\"; got {text!r}"
        )
    return tokens


def add_output_options(
    p: argparse.ArgumentParser,
    *,
    precision_help: str = "decimals shown in the text layout (default 4; --json keeps full precision)",
    json_help: str = "print the steps as one JSON object instead",
    precision_default: int | None = 4,
) -> None:
    """``--precision N`` and ``--json``, with help texts that say what they do in ``p``'s command."""
    p.add_argument(
        "--precision", type=_int_in(0, 15), default=precision_default, metavar="N", help=precision_help
    )
    p.add_argument("--json", action="store_true", help=json_help)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "explain",
        help="print every step of an attention computation",
        description=(
            "Print every step of an attention computation: inputs, scores, scaled scores, weights, "
            "output, with the formula of each step. Default: the Seq2Seq example (decoder state "
            "s0 = [0.5, 0.5] attends to encoder states h1 = [1, 2], h2 = [3, 4]) with the dot score. "
            "Every number is computed by qkv and checked against qkv.attention."
        ),
        epilog='Negative numbers: --query=-1,2 or --query "-1,2" both work.',
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--self-attention", action="store_true",
        help="walk through single-head self-attention on a small seeded example",
    )  # fmt: skip
    mode.add_argument(
        "--kernel-regression", action="store_true",
        help="Nadaraya-Watson waist/weight example: keys 56,58, values 43,48, query 57 -> 45.5",
    )  # fmt: skip
    mode.add_argument(
        "--pooling", action="store_true",
        help="the attention pooling layer of the Q, K, V article (one W for Q and K, V = the inputs) on a "
        "small seeded sequence, and its trap: training on raw scores, predicting with the softmax",
    )  # fmt: skip
    p.add_argument("--score", choices=SCORES, default=None, help="score function (default dot)")
    p.add_argument(
        "--query", type=parse_numbers, default=None, metavar="NUMS", help="query vector(s), " + _NUMBERS_HELP
    )
    p.add_argument("--keys", type=parse_numbers, default=None, metavar="NUMS", help="key vectors (rows)")
    p.add_argument(
        "--values", type=parse_numbers, default=None, metavar="NUMS", help="value vectors (default: the keys)"
    )
    p.add_argument(
        "--scale",
        type=_finite_float,
        default=None,
        help="factor on the scores (default 1/sqrt(D) for scaled_dot, else 1)",
    )
    p.add_argument(
        "--seed", type=_int_in(0, 2**63 - 1), default=None, help="seed of the random parameters (default 0)"
    )
    p.add_argument("--sigma", type=_positive_float, default=None, help="Gaussian kernel width (default 1)")
    p.add_argument(
        "--temperature", type=_positive_float, default=None, help="cosine score temperature (default 1)"
    )
    p.add_argument(
        "--hidden",
        type=_int_in(1, 64),
        default=None,
        metavar="A",
        help="additive score hidden size (default 3)",
    )
    p.add_argument(
        "--tokens", type=_tokens, default=None, help='self-attention token labels, e.g. "I,love,cats"'
    )
    p.add_argument(
        "--d-model",
        type=_int_in(1, 16),
        default=None,
        metavar="N",
        help="self-attention input size (default 4)",
    )
    p.add_argument(
        "--d-k",
        type=_int_in(1, 16),
        default=None,
        metavar="N",
        help="self-attention d_k = d_v (default d_model)",
    )
    p.add_argument(
        "--length", type=_int_in(1, 16), default=None, metavar="T", help="--pooling: positions (default 4)"
    )
    p.add_argument(
        "--units", type=_int_in(1, 16), default=None, metavar="U", help="--pooling: features (default 3)"
    )
    add_output_options(p)
    p.set_defaults(handler=run)
    return p


def _mode(args: argparse.Namespace) -> str:
    if args.self_attention:
        return "self-attention"
    if args.kernel_regression:
        return "kernel-regression"
    if args.pooling:
        return "pooling"
    return "seq2seq"


def _flat(x: list | None, option: str) -> list[float] | None:
    if x is None or not x or not isinstance(x[0], list):
        return x
    if all(len(r) == 1 for r in x) or len(x) == 1:
        return [v for r in x for v in r]
    raise CommandError(f'{option}: --kernel-regression takes plain numbers (one feature), e.g. "56,58"')


def build(args: argparse.Namespace):
    """The :class:`qkv.explain.Explanation` the parsed arguments ask for."""
    from .. import explain as ex

    mode = _mode(args)
    for name in sorted(_ALL_MODE_OPTIONS - _MODE_OPTIONS[mode]):
        if getattr(args, name, None) is not None:
            where = (
                "without --self-attention/--kernel-regression/--pooling"
                if mode == "seq2seq"
                else f"with --{mode}"
            )
            raise CommandError(f"{_OPTION_OF[name]}: not used {where}")
    try:
        if mode == "self-attention":
            kw = {"tokens": args.tokens, "seed": args.seed or 0, "d_k": args.d_k}
            if args.d_model is not None:
                kw["d_model"] = args.d_model
            return ex.explain_self_attention(**kw)
        if mode == "pooling":
            kw = {k: v for k, v in (("length", args.length), ("units", args.units)) if v is not None}
            return ex.explain_pooling(seed=args.seed or 0, **kw)
        if mode == "kernel-regression":
            query = _flat(args.query, "--query")
            return ex.explain_kernel_regression(
                ex.KERNEL_QUERY if query is None else (query[0] if len(query) == 1 else query),
                ex.KERNEL_KEYS if args.keys is None else _flat(args.keys, "--keys"),
                ex.KERNEL_VALUES if args.values is None else _flat(args.values, "--values"),
                sigma=1.0 if args.sigma is None else args.sigma,
            )
        kw = {
            "score": args.score or "dot",
            "scale": args.scale,
            "seed": args.seed or 0,
            "sigma": 1.0 if args.sigma is None else args.sigma,
            "temperature": 1.0 if args.temperature is None else args.temperature,
            "hidden": 3 if args.hidden is None else args.hidden,
        }
        query = ex.SEQ2SEQ_QUERY if args.query is None else args.query
        keys = ex.SEQ2SEQ_KEYS if args.keys is None else args.keys
        if args.query is None and args.keys is None:
            return ex.explain_seq2seq(query, keys, args.values, **kw)
        return ex.explain(query, keys, args.values, **kw)
    except ValueError as e:
        raise CommandError(_name_option(str(e))) from None


def _name_option(message: str) -> str:
    """``"keys: ..."`` (a library parameter) -> ``"--keys: ..."`` (the option the user typed)."""
    m = re.match(r"(\w+):", message)
    if m and m.group(1) in _OPTION_OF:
        return _OPTION_OF[m.group(1)] + message[m.end(1) :]
    return message


def render(explanation, args: argparse.Namespace) -> str:
    """The text layout, or ``--json`` (which writes every non-ASCII character as ``\\uXXXX``).
    Bidi control characters in ``--tokens`` are shown as code points in the text layout
    (:func:`qkv.viz.visible_text`): a U+202E in a label would reverse the rest of its row."""
    if args.json:
        return json.dumps(explanation.to_dict(), indent=2, allow_nan=False)
    from ..viz import visible_text

    return visible_text(explanation.to_text(precision=args.precision))


def run(args: argparse.Namespace) -> int:
    print(render(build(args), args))
    return 0
