"""Seeded task generators: parallel corpora and labelled data that need no download.

The main one is a tiny "translation" task from English number words to Chinese numerals,
e.g. ``"three hundred and twelve" -> "三百一十二"``. It has the shape of real machine translation
(different vocabularies, different lengths, re-ordering of ``"and"``/``"零"``) while being small
enough to learn in seconds on a CPU, and every reference translation is exactly right.
Explained in chapter 19.
"""

from __future__ import annotations

import random

_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_ZH_DIGITS = "零一二三四五六七八九"


def english_number(n: int) -> str:
    """British English words for 0 <= n <= 9999: 312 -> "three hundred and twelve".

    Tens and units are written with a hyphen ("forty-two"). Explained in chapter 19.
    """
    if not 0 <= n <= 9999:
        raise ValueError(f"english_number handles 0..9999, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        t, u = divmod(n, 10)
        return _TENS[t] + ("-" + _ONES[u] if u else "")
    parts = []
    thousands, rest = divmod(n, 1000)
    if thousands:
        parts.append(_ONES[thousands] + " thousand")
    hundreds, rest = divmod(rest, 100)
    if hundreds:
        parts.append(_ONES[hundreds] + " hundred")
    if rest:
        parts.append(("and " if parts else "") + english_number(rest))
    return " ".join(parts)


def chinese_number(n: int) -> str:
    """Chinese numerals for 0 <= n <= 9999: 312 -> "三百一十二", 105 -> "一百零五", 10 -> "十".

    Conventions: a leading "一十" is written "十" (10-19); a run of zeros inside the number is
    read as one "零" (1005 -> "一千零五"); trailing zeros are silent (1200 -> "一千二百");
    "二" is used throughout (the spoken "两千" is not). Explained in chapter 19.
    """
    if not 0 <= n <= 9999:
        raise ValueError(f"chinese_number handles 0..9999, got {n}")
    if n == 0:
        return "零"
    digits = [int(c) for c in f"{n:04d}"]
    units = ["千", "百", "十", ""]
    out, zero_pending, started = [], False, False
    for d, u in zip(digits, units):
        if d == 0:
            if started:
                zero_pending = True
            continue
        if zero_pending:
            out.append("零")
            zero_pending = False
        out.append(_ZH_DIGITS[d] + u)
        started = True
    text = "".join(out)
    if 10 <= n <= 19:
        text = text[1:]  # 一十二 -> 十二
    return text


def number_pairs(max_value: int = 999, min_value: int = 1) -> list[tuple[str, str]]:
    """Every (English words, Chinese numerals) pair for min_value..max_value, in numeric order."""
    return [(english_number(n), chinese_number(n)) for n in range(min_value, max_value + 1)]


def number_translation_splits(
    max_value: int = 999, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2
) -> dict[str, list[tuple[str, str]]]:
    """Deterministic random split of :func:`number_pairs` into ``train`` / ``val`` / ``test``.

    The split is over numbers, so no test number is ever seen in training: a model has to learn
    the composition rules, not memorise. Same ``seed`` and sizes -> same split on every machine
    (Python's ``random.Random`` is specified to be reproducible). Explained in chapter 19.
    """
    if not 0 < val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction and test_fraction must be in (0, 1) and sum to less than 1")
    pairs = number_pairs(max_value)
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_test = int(round(len(pairs) * test_fraction))
    n_val = int(round(len(pairs) * val_fraction))
    test = sorted(order[:n_test])
    val = sorted(order[n_test : n_test + n_val])
    train = sorted(order[n_test + n_val :])
    return {
        name: [pairs[i] for i in idx]
        for name, idx in (("train", train), ("val", val), ("test", test))
    }
