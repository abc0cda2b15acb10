import math
import os

import pytest

from lmkit.apps.code import (
    BENCHMARK,
    complete_functions,
    completes_function,
    parse_rate,
    parses,
    pass_at_k,
    pass_at_k_interval,
    run_tests,
    score_completions,
    split_functions,
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
    loop = run_tests("while True:\n    pass", "", timeout=1.0)
    assert loop["status"] == "timeout"


@pytest.mark.skipif(os.name != "posix", reason="the CPU-time limit needs POSIX rlimits")
def test_run_tests_limits_cpu_time_not_wall_time():
    # a busy machine slows a program down without adding to its CPU time: waiting 1.5 s is fine
    # under a 1 s budget of CPU time, computing forever is not, and waiting forever hits the wall
    assert run_tests("import time\ntime.sleep(1.5)", "", timeout=1.0)["status"] == "passed"
    loop = run_tests("while True:\n    pass", "", timeout=1.0)
    assert loop == {
        "passed": False,
        "status": "timeout",
        "detail": "used more than 1 s of CPU time",
    }
    sleeper = run_tests("import time\ntime.sleep(60)", "", timeout=1.0, wall_timeout=2.0)
    assert sleeper["status"] == "timeout" and sleeper["detail"] == "ran longer than 2 s"
    assert run_tests("x = bytearray(2**30)", "", memory_mb=256)["detail"] == "MemoryError"
    # isolated mode, none of this process's environment, an empty working directory
    isolated = "assert sys.flags.isolated\nassert 'HOME' not in os.environ\n"
    isolated += "assert os.listdir('.') == ['candidate.py']"
    assert run_tests("import os, sys", isolated)["status"] == "passed"


def test_truncate_completion():
    assert (
        truncate_completion("    return a\n\n    # c\ndef g():\n    pass")
        == "    return a\n\n    # c"
    )
    # the body's own indentation decides: a method-like body at 8 ends at the next method at 4
    assert (
        truncate_completion("        x = 1\n        return x\n\n    def g(self):\n        pass")
        == "        x = 1\n        return x"
    )
    # a nested block and a comment further left are still inside the body
    body = "    if a:\n        return 1\n# note\n    return 2"
    assert truncate_completion(body + "\nprint(f(1))") == body
    # a first line at column 0 is no body at all
    assert truncate_completion("print(1)\n    x = 2") == ""
    assert truncate_completion("\n\n    return 3\n") == "\n\n    return 3"
    # comments further left than the body, after its last line of code, are not part of it
    assert (
        truncate_completion("    return 4\n    # mine\n# not mine\n#\n")
        == "    return 4\n    # mine"
    )


SOURCE = """\
        return self.x   # the end of a method the text starts in
# a comment at column 0

class A:
    def m(self, a,
          b):
        \"\"\"Add.

        Two lines.\"\"\"
        # keep me
        return a + b

    def only_doc(self):
        \"\"\"Nothing else.\"\"\"

def outer(x):
    # a comment, then a blank line

    def inner(y):
        return y
# a comment at column 0 inside the function
    return inner(x)
def one_liner(x): return x
async def fetch(u):
    await u
def cut_by_the_end(z):
    return z"""


def test_split_functions():
    funcs = split_functions(SOURCE)
    assert [h.split("(")[0] for h, _ in funcs] == [
        "def m",
        "def outer",
        "def inner",
        "async def fetch",
    ]
    (h, b), (h2, b2), (h3, b3), (h4, b4) = funcs
    assert h == 'def m(self, a,\n      b):\n    """Add.\n\n    Two lines."""\n'
    assert b == "    # keep me\n    return a + b"
    # no docstring: the header is the def line, comments and blank lines go to the body
    assert h2 == "def outer(x):\n"
    assert b2.startswith("    # a comment") and b2.endswith("    return inner(x)")
    assert (h3, b3) == ("def inner(y):\n", "    return y")
    assert (h4, b4) == ("async def fetch(u):\n", "    await u")
    assert all(completes_function(h, b) and truncate_completion(b) == b for h, b in funcs)


def test_completes_function():
    header = 'def f(x):\n    """Doc."""\n'
    assert parses(header)  # why an empty body must not count
    assert not completes_function(header, "")
    assert not completes_function(header, "    # only a comment")
    assert completes_function(header, "    return x")
    assert not completes_function(header, "    return (")
    assert not completes_function("def f(x):\n", "")


def test_complete_functions_boundary_grouping_and_early_stop(monkeypatch):
    """A stand-in for generate that writes a fixed continuation, a chunk at a time, records the
    prompts it was given: headers lose their final line break, rows of equal length share a
    call, and a group stops as soon as every function has ended."""
    import torch

    import lmkit.apps.code as code
    from lmkit.data import CharTokenizer

    continuation = "\n    return 1\ndef g(): pass" + " " * 100
    headers = ["def f():\n", "def f():\n", "def long_name():\n"]
    tok = CharTokenizer.from_text("".join(headers) + continuation + "x")
    calls = []

    def fake_generate(model, idx, max_new_tokens, **kwargs):
        calls.append((tuple(idx.shape), tok.decode(idx[0].tolist())))
        header_len = next(
            len(h) - 1 for h in headers if tok.decode(idx[0].tolist()).startswith(h[:-1])
        )
        done = idx.size(1) - header_len
        new = tok.encode(continuation[done : done + max_new_tokens])
        return torch.cat([idx, torch.tensor([new] * idx.size(0))], dim=1)

    monkeypatch.setattr(code, "generate", fake_generate)
    bodies = complete_functions(None, tok, headers, n=2, max_new_tokens=64, chunk=4)
    assert bodies == [["    return 1"] * 2] * 3
    # "\n    return 1\nd" (15 characters) shows the end: 4 calls of 4 tokens per group, not 16;
    # the 4 rows of "def f():" share each call, then the 2 of "def long_name():"
    assert [shape[0] for shape, _ in calls] == [4] * 4 + [2] * 4
    # the first call of a group gets the header without its line break
    assert (calls[0][1], calls[4][1]) == ("def f():", "def long_name():")

    # rows leave the batch as their functions end: the short body after 4 calls, the long after 8
    conts = ["\n    return 1\nx", "\n  y = 2\n  y = 3\n  return y\nx"]  # differ within 4 tokens
    conts = [c + " " * 100 for c in conts]
    tok2 = CharTokenizer.from_text("def f():" + "".join(conts))
    calls.clear()

    def two_bodies(model, idx, max_new_tokens, **kwargs):
        calls.append((tuple(idx.shape), ""))
        rows = []
        for r, row in enumerate(idx.tolist()):
            done = tok2.decode(row[len("def f():") :])
            cont = conts[r] if not done else next(c for c in conts if c.startswith(done))
            rows.append(row + tok2.encode(cont[len(done) : len(done) + max_new_tokens]))
        return torch.tensor(rows)

    monkeypatch.setattr(code, "generate", two_bodies)
    bodies = complete_functions(None, tok2, headers[:1], n=2, max_new_tokens=64, chunk=4)
    assert bodies == [["    return 1", "  y = 2\n  y = 3\n  return y"]]
    assert [shape[0] for shape, _ in calls] == [2] * 4 + [1] * 4

    # a continuation that goes on writing on the header's last line is no body
    monkeypatch.setattr(code, "generate", fake_generate)
    continuation = " pass\n    return 1" + " " * 100
    assert complete_functions(None, tok, headers[:1], max_new_tokens=8, chunk=4) == [[""]]


def test_sampling_settings_reach_generate(monkeypatch):
    """temperature, top_k and top_p (nucleus sampling, chapter 20's Codex setting) are passed to
    every generate call, by complete_functions and by sample_completions."""
    import torch

    import lmkit.apps.code as code
    from lmkit.apps.code import sample_completions
    from lmkit.data import CharTokenizer

    tok = CharTokenizer.from_text("def f():\n    return 1\nx")
    seen = []

    def recording_generate(model, idx, max_new_tokens, **kwargs):
        seen.append({k: kwargs[k] for k in ("temperature", "top_k", "top_p")})
        return torch.cat([idx, torch.tensor([tok.encode("\nx"[:max_new_tokens])] * idx.size(0))], 1)

    monkeypatch.setattr(code, "generate", recording_generate)
    complete_functions(None, tok, ["def f():\n"], temperature=0.8, top_k=7, top_p=0.95)
    sample_completions(None, tok, "def f():\n", n=2, temperature=0.3, top_p=0.5)
    assert seen == [
        {"temperature": 0.8, "top_k": 7, "top_p": 0.95},
        {"temperature": 0.3, "top_k": None, "top_p": 0.5},
    ]


def test_pass_at_k_interval():
    def binomial_quantile(q, n, p):  # the smallest x with P(X <= x) >= q
        cdf = 0.0
        for x in range(n + 1):
            cdf += math.comb(n, x) * p**x * (1 - p) ** (n - x)
            if cdf >= q:
                return x

    # one problem, k = 1: the interval is the spread of c* / n with c* ~ Binomial(n, c / n)
    lo, hi = pass_at_k_interval([(20, 5)], k=1, n_boot=20_000)
    expected = (binomial_quantile(0.025, 20, 0.25) / 20, binomial_quantile(0.975, 20, 0.25) / 20)
    assert expected == (0.1, 0.45) and (lo, hi) == pytest.approx(expected)
    assert pass_at_k_interval([(20, 0)] * 10, k=10) == (0.0, 0.0)
    assert pass_at_k_interval([(20, 20)] * 3, k=1) == pytest.approx((1.0, 1.0))
    # problems are resampled too: ten problems of which one is solved every time
    lo, hi = pass_at_k_interval([(10, 10)] + [(10, 0)] * 9, k=1)
    assert lo == 0.0 and hi == pytest.approx(0.3)
    per = [(20, 3), (20, 0), (20, 12), (20, 1)]
    point = sum(pass_at_k(n, c, 10) for n, c in per) / len(per)
    lo, hi = pass_at_k_interval(per, k=10, seed=1)
    assert lo < point < hi and (lo, hi) == pass_at_k_interval(per, k=10, seed=1)
    lo50, hi50 = pass_at_k_interval(per, k=10, level=0.5, seed=1)
    assert lo <= lo50 < hi50 <= hi
    with pytest.raises(ValueError):
        pass_at_k_interval([(5, 1)], k=10)


def test_score_completions_runs_each_distinct_program_once(monkeypatch):
    import lmkit.apps.code as code

    ran = []

    def fake_run_tests(program, tests, timeout):
        ran.append((program, tests))
        return {"passed": "+" in program, "status": "passed" if "+" in program else "failed"}

    monkeypatch.setattr(code, "run_tests", fake_run_tests)
    add = BENCHMARK[0]
    # the same body for a second problem with other tests is another program
    twin = code.Problem("twin", add.prompt, "assert add(1, 1) == 2", add.reference, add.wrong)
    bodies = [add.reference] * 3 + [add.wrong] * 2
    res = score_completions([add, twin], {"add": bodies, "twin": bodies}, ks=(1, 5))
    assert sorted(ran) == sorted(
        (add.prompt + b, t) for b in (add.reference, add.wrong) for t in (add.tests, twin.tests)
    )
    assert res["per_problem"] == {"add": (5, 3), "twin": (5, 3)}
    assert res["statuses"] == {"passed": 6, "failed": 4} and res["pass@k"][5] == 1.0


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
