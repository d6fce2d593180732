"""The built-in corpora by name: ``builtin("numbers-de")``, listed in :data:`BUILTIN_CORPORA`.

Every one is generated offline and deterministically (same seed, same corpus on any
machine) with a gold word alignment, so attention maps can be scored against it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from .corpus import Corpus
from .dates import dates_corpus
from .numbers import numbers_corpus

__all__ = ["BUILTIN_CORPORA", "builtin"]

_SPECS: dict[str, tuple[Callable[..., Corpus], dict[str, Any], str]] = {
    "numbers": (numbers_corpus, {"source": "digits", "target": "en"},
                "digits -> English words: '3 4' -> 'thirty four' (monotonic alignment)"),
    "numbers-fr": (numbers_corpus, {"source": "digits", "target": "fr"},
                   "digits -> French words: '8 0' -> 'quatre vingts'"),
    "numbers-de": (numbers_corpus, {"source": "digits", "target": "de"},
                   "digits -> German words, compounds split: '3 4' -> 'vier und dreißig' (crossing)"),
    "numbers-es": (numbers_corpus, {"source": "digits", "target": "es"},
                   "digits -> Spanish words: '2 0 0' -> 'doscientos' (one word, two roles)"),
    "numbers-en-digits": (numbers_corpus, {"source": "en", "target": "digits"},
                          "English words -> digits: 'thirty four' -> '3 4'"),
    "numbers-en-de": (numbers_corpus, {"source": "en", "target": "de"},
                      "English -> German number words: 'thirty four' -> 'vier und dreißig' (crossing)"),
    "numbers-en-fr": (numbers_corpus, {"source": "en", "target": "fr"},
                      "English -> French number words: 'ninety one' -> 'quatre vingt onze' (one-to-many)"),
    "dates-fr": (dates_corpus, {"locale": "fr"}, "French dates -> ISO: '1 5 mars 2 0 2 4' -> '2 0 2 4 - 0 3 - 1 5'"),
    "dates-de": (dates_corpus, {"locale": "de"}, "German dates -> ISO: '1 5 . März 2 0 2 4' -> '2 0 2 4 - 0 3 - 1 5'"),
    "dates-es": (dates_corpus, {"locale": "es"}, "Spanish dates -> ISO: '1 5 de marzo de 2 0 2 4' -> ..."),
    "dates-en": (dates_corpus, {"locale": "en"}, "English dates -> ISO: 'March 1 5 , 2 0 2 4' -> ... (reordering)"),
}  # fmt: skip

#: name -> one-line description of every built-in corpus.
BUILTIN_CORPORA: dict[str, str] = {name: spec[2] for name, spec in _SPECS.items()}


def builtin(name: str, **overrides: Any) -> Corpus:
    """Generate the built-in corpus ``name`` (see :data:`BUILTIN_CORPORA`).

    ``overrides`` go to the generator (:func:`qkv.translation.data.numbers_corpus` or
    :func:`qkv.translation.data.dates_corpus`): ``size``, ``seed``, ``long_from``, ``max_value``... The
    languages that define the corpus (``source``/``target``, ``locale``) are fixed; call the
    generator directly for other pairs.

    Raises:
        ValueError: an unknown name (the message lists the valid ones), an override of a
            defining argument.
        TypeError: an override the generator does not take (the message lists those it takes).
    """
    try:
        fn, fixed, _ = _SPECS[name]
    except (KeyError, TypeError):
        raise ValueError(f"corpus: expected one of {', '.join(_SPECS)}, got {name!r}") from None
    clash = sorted(set(overrides) & set(fixed))
    if clash:
        raise ValueError(
            f"builtin({name!r}): {', '.join(clash)} define this corpus and cannot be overridden; "
            f"call {fn.__name__}(...) for other languages"
        )
    params = set(inspect.signature(fn).parameters) - set(fixed) - {"name"}
    unknown = sorted(set(overrides) - params)
    if unknown:
        raise TypeError(
            f"builtin({name!r}): unknown options {', '.join(unknown)}; valid: {', '.join(sorted(params))}"
        )
    return fn(**fixed, **overrides, name=name)
