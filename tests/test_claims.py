"""lmkit.claims.check: a true claim prints one visible line, a false one stops with its words."""

import numpy as np
import pytest
import torch

from lmkit.claims import ClaimFailed, check


def test_a_true_claim_is_printed(capsys):
    check("the tuned model beats the baseline", 2.1 < 2.5)
    check("numpy and torch booleans count", np.float64(1.0) > 0)
    check("a one-element tensor counts", torch.tensor([True]))
    assert capsys.readouterr().out.splitlines() == [
        "checked: the tuned model beats the baseline",
        "checked: numpy and torch booleans count",
        "checked: a one-element tensor counts",
    ]


def test_a_false_claim_stops_with_its_words(capsys):
    with pytest.raises(ClaimFailed, match="'the loss falls' no longer holds"):
        check("the loss falls", 3.0 < 2.0)
    assert capsys.readouterr().out == ""  # nothing printed for a failed claim
    assert issubclass(ClaimFailed, AssertionError)  # pytest and nbval report it as an assertion


@pytest.mark.parametrize("many", [np.array([True, False]), torch.tensor([True, True])])
def test_an_ambiguous_condition_is_refused(many):
    with pytest.raises(TypeError, match="reduce it with all"):
        check("every value is positive", many)


@pytest.mark.parametrize("claim", ["", "   ", None, 3])
def test_a_claim_needs_words(claim):
    with pytest.raises(TypeError, match="non-empty sentence"):
        check(claim, True)
