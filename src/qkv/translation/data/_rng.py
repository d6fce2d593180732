"""Seeded randomness that gives the same numbers on every machine and Python version.

Python only guarantees that ``random.Random(seed).random()`` keeps its sequence across
versions; ``randrange``, ``shuffle`` and ``sample`` have changed before. Everything here is
built on ``getrandbits`` (the Mersenne Twister's raw output, seeded from an integer), and seeds
for separate purposes are derived with SHA-256, never with ``hash()``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import MutableSequence

__all__ = ["RangeDraws", "SeededRandom"]


class SeededRandom:
    """A small deterministic generator: ``below``, ``shuffle`` and draws without replacement.

    ``SeededRandom(seed, "purpose", ...)`` derives an independent stream for each purpose, so
    adding a draw for one purpose never shifts another's.
    """

    def __init__(self, seed: int, *labels: object) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
        text = ":".join(["qkv", str(seed), *map(str, labels)])
        digest = hashlib.sha256(text.encode("utf-8")).digest()
        self._rng = random.Random(int.from_bytes(digest, "big"))

    def below(self, n: int) -> int:
        """A uniform integer in ``[0, n)`` (rejection sampling on raw bits, no modulo bias)."""
        if n <= 0:
            raise ValueError(f"n: expected an int >= 1, got {n}")
        bits = n.bit_length()
        while True:
            r = self._rng.getrandbits(bits)
            if r < n:
                return r

    def shuffle(self, items: MutableSequence) -> None:
        """Fisher-Yates shuffle in place."""
        for i in range(len(items) - 1, 0, -1):
            j = self.below(i + 1)
            items[i], items[j] = items[j], items[i]


class RangeDraws:
    """Draws from ``range(lo, hi + 1)`` without replacement in O(1) each (lazy Fisher-Yates).

    The permutation is stored sparsely (only swapped positions), so a pool of a billion
    numbers costs memory proportional to the number of draws.
    """

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.size = lo, hi - lo + 1
        self.taken = 0
        self._swap: dict[int, int] = {}

    @property
    def left(self) -> int:
        return self.size - self.taken

    def draw(self, rng: SeededRandom) -> int:
        if self.left <= 0:
            raise IndexError("draw from an exhausted range")
        t = self.taken
        j = t + rng.below(self.size - t)
        value = self._swap.get(j, j)
        self._swap[j] = self._swap.get(t, t)
        self.taken = t + 1
        return self.lo + value
