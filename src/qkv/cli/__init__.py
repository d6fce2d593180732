"""The ``qkv`` command: thin shells that parse arguments and call library functions.

Entry point: :func:`qkv.cli.main.main` (``qkv explain``, ``qkv demo``, ``qkv bench``). The
subcommand modules are imported by it, not here, so ``python -m qkv.cli.main`` runs cleanly.
"""


class CommandError(Exception):
    """A user error the ``qkv`` command reports as ``qkv: error: <message>`` with exit code 2."""

    def __init__(self, message: str, usage: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.usage = usage


__all__ = ["CommandError"]
