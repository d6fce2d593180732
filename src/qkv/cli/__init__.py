"""The ``qkv`` command: thin shells that parse arguments and call library functions.

Entry point: :func:`qkv.cli.main.main`. Each command is one module, ``cli/<command>.py``, with
``add_parser(subparsers)`` and ``run(args)``; ``main`` builds the parser from them. They are
imported by it, not here, so ``python -m qkv.cli.main`` runs cleanly.

Here: how the library speaks to the user. Library errors become user errors through
:func:`error_message`, never through ``str(e).strip("'")``: that strip also ate the closing
quote of every message ending in a quoted name (``config: no such file 'x.toml``). Library
warnings become ``warning: <message>`` lines through :func:`warnings_as_messages`.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator

#: The library exceptions a command reports as user errors (bad files, values, missing extras).
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, ImportError, KeyError)


class CommandError(Exception):
    """A user error the ``qkv`` command reports as ``qkv: error: <message>`` with exit code 2."""

    def __init__(self, message: str, usage: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.usage = usage


def error_message(exc: BaseException) -> str:
    """The text of a library exception as the user should read it.

    ``str(exc)``, except for a ``KeyError`` (whose ``str`` is the ``repr`` of its key:
    ``KeyError("config: no key 'x'")`` prints with an extra pair of quotes): its message is
    taken as given. Nothing is stripped, so a message ending in a quoted name keeps its quote.
    """
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        return exc.args[0]
    return str(exc)


@contextlib.contextmanager
def warnings_as_messages() -> Iterator[None]:
    """Show warnings as ``warning: <message>`` lines on stderr (no file, line or source line);
    qkv's own (data and translation warnings) every time they occur."""
    from ..translation.data import DataWarning
    from ..translation.translator import TranslationWarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        ours = issubclass(category, (DataWarning, TranslationWarning))
        print(f"warning: {message}" + ("" if ours else f" ({category.__name__})"), file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("always", DataWarning)
        warnings.simplefilter("always", TranslationWarning)
        warnings.showwarning = show
        yield


__all__ = ["USER_ERRORS", "CommandError", "error_message", "warnings_as_messages"]
