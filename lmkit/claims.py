"""Checked claims: the sentences of the book that state a result of the code. Chapter 0 explains.

A chapter states a comparison, a trend or a ratio only where the code right after the result
checks it with :func:`check`, which prints the claim as a visible line and raises
:class:`ClaimFailed` when it no longer holds. A re-run whose result changes then stops with the
claim's own words, and the text that states it is revised (CI executes every chapter). Claims are
qualitative or carry a tolerance, so that they hold on the CPU and the GPU presets alike.
"""

from __future__ import annotations


class ClaimFailed(AssertionError):
    """A claim of the text that the code's result no longer supports."""


def check(claim: str, holds) -> None:
    """Print ``"checked: <claim>"`` when ``holds`` is true; else raise :class:`ClaimFailed`.

    ``claim``: the result in words, as the text states it ("char-gpt beats the 5-gram").
    ``holds``: the condition computed from the outputs (a bool, or a one-element NumPy/PyTorch
    boolean). A value whose truth is ambiguous (an array of several booleans) is refused, so a
    claim about many numbers says which reduction (``all``, ``any``) it means.
    """
    if not isinstance(claim, str) or not claim.strip():
        raise TypeError(f"claim must be a non-empty sentence, got {claim!r}")
    try:
        ok = bool(holds)
    except (ValueError, RuntimeError) as e:  # numpy / torch: truth value of many elements
        raise TypeError(
            f"check({claim!r}, ...): the condition has several values; reduce it with all() or "
            "any() to say what the claim means"
        ) from e
    if not ok:
        raise ClaimFailed(
            f"the claim {claim!r} no longer holds for these outputs: revise the sentence that "
            "states it (and this check), or find what changed the result"
        )
    print(f"checked: {claim}")
