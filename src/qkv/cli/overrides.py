"""Dotted config overrides on the command line: ``--table.key=value`` (``qkv train``).

They are taken out of the arguments before argparse sees them (argparse knows no dotted
options) and given to the config as ``--table.key=value`` strings:

    --train.epochs=3        as written
    --train.epochs 3        the same: the next argument is the value (how argparse users type it)
    --train.lr -1e-3        the same with a negative number
    --data.reverse          a switch: ``--data.reverse=true``

A bare ``--table.key`` takes the next argument as its value unless that argument is an option
(starts with ``-`` and is not a number) or names a TOML file (``qkv train``'s positional
config): ``--data.reverse configs/x.toml`` is the switch and the config file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["OVERRIDE", "split_overrides"]

#: A dotted config override such as ``--train.lr=1e-3``; a bare ``--data.reverse`` means ``=true``.
OVERRIDE = re.compile(r"^--[A-Za-z_]+\.[A-Za-z_.]+(=|$)")

_NUMBER = re.compile(r"^-\.?\d")


def _is_value(text: str) -> bool:
    """Whether the argument after a bare ``--table.key`` is its value (see the module docstring)."""
    if text.endswith(".toml"):
        return False
    return not text.startswith("-") or bool(_NUMBER.match(text))


def split_overrides(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """``args`` -> (the arguments for argparse, the overrides as ``--table.key=value``).

    >>> split_overrides(["cfg.toml", "--train.epochs", "3", "--data.reverse", "--quiet"])
    (['cfg.toml', '--quiet'], ['--train.epochs=3', '--data.reverse=true'])
    """
    rest: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if not OVERRIDE.match(a):
            rest.append(a)
        elif "=" in a:
            overrides.append(a)
        elif i + 1 < len(args) and _is_value(args[i + 1]):
            overrides.append(f"{a}={args[i + 1]}")
            i += 1
        else:
            overrides.append(f"{a}=true")
        i += 1
    return rest, overrides
