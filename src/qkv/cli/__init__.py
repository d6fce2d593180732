"""The ``qkv`` command: thin shells that parse arguments and call library functions.

Entry point: :func:`qkv.cli.main.main` (``qkv explain``, ``qkv demo``, ``qkv bench``). The
subcommand modules are imported by it, not here, so ``python -m qkv.cli.main`` runs cleanly.

Library errors become user errors through :func:`error_message`, never through
``str(e).strip("'")``: that strip also ate the closing quote of every message ending in a quoted
name (``config: no such file 'x.toml``).
"""


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


__all__ = ["CommandError", "error_message"]
