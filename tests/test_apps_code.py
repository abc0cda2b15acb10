import math

import pytest

from lmkit.apps.code import (
    BENCHMARK,
    parse_rate,
    parses,
    pass_at_k,
    run_tests,
    score_completions,
    truncate_completion,
)


def test_parses():
    assert parses("def f(x):\n    return x\n")
    assert not parses("def f(x) return x")
    assert parse_rate(["x = 1", "x = = 1", "pass", "("]) == 0.5
    assert parse_rate([]) == 0.0


def test_pass_at_k_matches_the_binomial_formula():
    for n, c, k in [(10, 3, 1), (10, 3, 5), (20, 0, 4), (5, 5, 5), (7, 2, 3)]:
        exact = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(exact)
    assert pass_at_k(10, 1, 1) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 5)


def test_run_tests_statuses():
    assert run_tests("def f():\n    return 1", "assert f() == 1")["status"] == "passed"
    assert run_tests("def f():\n    return 2", "assert f() == 1")["status"] == "failed"
    assert run_tests("def f(:\n    return 2", "assert f() == 1")["status"] == "error"
    assert run_tests("def f():\n    return 1 / 0", "f()")["status"] == "error"
    assert run_tests("while True:\n    pass", "", timeout=1.0)["status"] == "timeout"


def test_truncate_completion():
    assert (
        truncate_completion("    return a\n\n    # c\ndef g():\n    pass")
        == "    return a\n\n    # c"
    )


def test_benchmark_reference_passes_and_wrong_fails():
    assert len(BENCHMARK) == 10
    ref = score_completions(BENCHMARK, {p.name: [p.reference] for p in BENCHMARK}, ks=(1,))
    bad = score_completions(BENCHMARK, {p.name: [p.wrong] for p in BENCHMARK}, ks=(1,))
    assert ref["pass@k"][1] == 1.0
    assert bad["pass@k"][1] == 0.0


def test_sampling_from_a_tiny_gpt_is_reproducible():
    import torch

    from lmkit.apps.code import complete_benchmark, sample_completions
    from lmkit.data import CharTokenizer
    from lmkit.models.gpt import GPT, GPTConfig

    tok = CharTokenizer.from_text("".join(p.prompt + p.reference for p in BENCHMARK))
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(vocab_size=tok.vocab_size, block_size=256, n_layer=1, n_head=2, n_embd=16)
    )
    a = sample_completions(model, tok, BENCHMARK[0].prompt, n=3, max_new_tokens=20, seed=1)
    b = sample_completions(model, tok, BENCHMARK[0].prompt, n=3, max_new_tokens=20, seed=1)
    assert a == b and len(a) == 3
    comps = complete_benchmark(model, tok, BENCHMARK[:2], n=2, max_new_tokens=10)
    assert set(comps) == {"add", "is_even"} and all(len(v) == 2 for v in comps.values())
    res = score_completions(BENCHMARK[:2], comps, ks=(1, 2))
    assert set(res["pass@k"]) == {1, 2} and sum(res["statuses"].values()) == 4


def test_complete_statements():
    from lmkit.apps.code import complete_statements

    text = "import os\n\ndef f(x):\n    return x\nelse_ = 1\ndef g(y):\n    return ("
    assert complete_statements(text) == "import os\n\ndef f(x):\n    return x\nelse_ = 1\n"
    assert parses(complete_statements(text))
    assert complete_statements("def f(x):\n    return (") == ""
    assert (
        complete_statements("try:\n    a = 1\nexcept E:\n    pass\nx = (")
        == "try:\n    a = 1\nexcept E:\n    pass\n"
    )
