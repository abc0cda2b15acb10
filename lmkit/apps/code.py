"""Code generation: does it parse, does it pass its tests, and pass@k. Explained in chapter 20.

* :func:`parses` / :func:`parse_rate`: syntactic validity checked with :mod:`ast`;
* :func:`run_tests`: a program plus its ``assert`` tests run in a separate Python process with a
  time limit, in an empty temporary directory, with ``-I`` (isolated mode) and, on POSIX, limits
  on memory and CPU time. This contains accidents (infinite loops, huge allocations, stray
  files); it is **not** a security sandbox for hostile code: use a container or VM for that;
* :func:`pass_at_k`: the unbiased estimator of Chen et al. (2021);
* :data:`BENCHMARK`: ten small function-completion problems (prompt = signature + docstring,
  tests = asserts), each with a reference solution and a deliberately wrong one.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import numpy as np
import torch

from lmkit.generate import generate


def parses(source: str) -> bool:
    """True when ``source`` is syntactically valid Python (``ast.parse`` succeeds)."""
    try:
        ast.parse(source)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False
    return True


def parse_rate(samples) -> float:
    """Share of the samples (strings) that parse as Python."""
    samples = list(samples)
    return sum(map(parses, samples)) / len(samples) if samples else 0.0


def _limits(memory_mb: int, cpu_s: int):
    def apply():
        try:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
        except (ImportError, ValueError, OSError):
            pass

    return apply


def run_tests(program: str, tests: str, timeout: float = 5.0, memory_mb: int = 512) -> dict:
    """Run ``program`` followed by ``tests`` in a fresh Python process.

    Returns {"passed": bool, "status": "passed" | "failed" | "error" | "timeout", "detail": str}:
    "failed" means an ``AssertionError``, "error" any other exception (including a syntax error),
    "timeout" that it ran longer than ``timeout`` seconds of wall time.
    """
    code = program + "\n\n" + tests + "\n"
    if not parses(code):  # no need to start a process for a syntax error
        return {"passed": False, "status": "error", "detail": "SyntaxError"}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "candidate.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(code)
        env = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        kwargs = {}
        if os.name == "posix":
            kwargs["preexec_fn"] = _limits(memory_mb, int(timeout) + 1)
        try:
            r = subprocess.run(
                [sys.executable, "-I", path],
                cwd=tmp,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                **kwargs,
            )
        except subprocess.TimeoutExpired:
            return {"passed": False, "status": "timeout", "detail": f"ran longer than {timeout} s"}
    if r.returncode == 0:
        return {"passed": True, "status": "passed", "detail": ""}
    last = (r.stderr.strip().splitlines() or [""])[-1]
    status = "failed" if last.startswith("AssertionError") else "error"
    return {"passed": False, "status": status, "detail": last[:200]}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c pass (Chen et al. 2021).

    pass@k = 1 - C(n - c, k) / C(n, k), computed as 1 - prod_{i=n-c+1}^{n} (1 - k / i) to avoid huge
    binomials. Needs n >= k.
    """
    if not 0 <= c <= n or k < 1 or n < k:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


@dataclass(frozen=True)
class Problem:
    """A function-completion problem: the model sees ``prompt`` and writes the body."""

    name: str
    prompt: str  # signature + docstring, ending with a newline
    tests: str  # assert statements
    reference: str  # a correct body (indented)
    wrong: str  # a plausible but wrong body (indented)


def _p(name, prompt, tests, reference, wrong):
    return Problem(
        name, prompt.strip("\n") + "\n", tests.strip("\n"), reference.strip("\n"), wrong.strip("\n")
    )


BENCHMARK = [
    _p(
        "add",
        '''
def add(a, b):
    """Return the sum of a and b."""
''',
        "assert add(2, 3) == 5\nassert add(-1, 1) == 0\nassert add(0.5, 0.25) == 0.75",
        "    return a + b",
        "    return a - b",
    ),
    _p(
        "is_even",
        '''
def is_even(n):
    """Return True if the integer n is even."""
''',
        "assert is_even(4)\nassert not is_even(7)\nassert is_even(0)\nassert is_even(-2)",
        "    return n % 2 == 0",
        "    return n % 2 == 1",
    ),
    _p(
        "maximum",
        '''
def maximum(items):
    """Return the largest element of a non-empty list without using max()."""
''',
        "assert maximum([3, 9, 2]) == 9\n"
        "assert maximum([-5, -2, -9]) == -2\nassert maximum([7]) == 7",
        "    best = items[0]\n    for x in items[1:]:\n"
        "        if x > best:\n            best = x\n    return best",
        "    best = 0\n    for x in items:\n        if x > best:\n"
        "            best = x\n    return best",
    ),
    _p(
        "reverse_string",
        '''
def reverse_string(s):
    """Return the string s reversed."""
''',
        "assert reverse_string('abc') == 'cba'\n"
        "assert reverse_string('') == ''\nassert reverse_string('a') == 'a'",
        "    return s[::-1]",
        "    return s",
    ),
    _p(
        "count_vowels",
        '''
def count_vowels(text):
    """Return how many characters of text are vowels (a, e, i, o, u, either case)."""
''',
        "assert count_vowels('Hello') == 2\n"
        "assert count_vowels('xyz') == 0\nassert count_vowels('AEIOU') == 5",
        "    return sum(1 for ch in text if ch.lower() in 'aeiou')",
        "    return sum(1 for ch in text if ch in 'aeiou')",
    ),
    _p(
        "factorial",
        '''
def factorial(n):
    """Return n! for an integer n >= 0."""
''',
        "assert factorial(0) == 1\nassert factorial(5) == 120\nassert factorial(1) == 1",
        "    result = 1\n    for i in range(2, n + 1):\n        result *= i\n    return result",
        "    result = 1\n    for i in range(1, n):\n        result *= i\n    return result",
    ),
    _p(
        "fibonacci",
        '''
def fibonacci(n):
    """Return the n-th Fibonacci number, with fibonacci(0) == 0 and fibonacci(1) == 1."""
''',
        "assert fibonacci(0) == 0\nassert fibonacci(1) == 1\nassert fibonacci(10) == 55",
        "    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
        "    a, b = 1, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
    ),
    _p(
        "is_palindrome",
        '''
def is_palindrome(s):
    """Return True if s reads the same backwards, ignoring case."""
''',
        "assert is_palindrome('Level')\n"
        "assert not is_palindrome('python')\nassert is_palindrome('')",
        "    s = s.lower()\n    return s == s[::-1]",
        "    return s == s[::-1]",
    ),
    _p(
        "unique_sorted",
        '''
def unique_sorted(items):
    """Return the distinct elements of items in increasing order, as a list."""
''',
        "assert unique_sorted([3, 1, 3, 2]) == [1, 2, 3]\nassert unique_sorted([]) == []",
        "    return sorted(set(items))",
        "    return sorted(items)",
    ),
    _p(
        "word_count",
        '''
def word_count(text):
    """Return a dict mapping each whitespace-separated word of text to how often it occurs."""
''',
        "assert word_count('a b a') == {'a': 2, 'b': 1}\nassert word_count('') == {}",
        "    counts = {}\n    for word in text.split():\n"
        "        counts[word] = counts.get(word, 0) + 1\n    return counts",
        "    return {word: 1 for word in text.split()}",
    ),
]


def truncate_completion(text: str) -> str:
    """Cut a generated function body where the function ends: at the first non-empty line that is
    not indented (a new ``def``, ``class``, statement or decorator at column 0)."""
    out = []
    for line in text.split("\n"):
        if line.strip() and not line.startswith((" ", "\t")):
            break
        out.append(line)
    return "\n".join(out).rstrip()


def score_completions(
    problems, completions: dict, ks=(1, 5), timeout: float = 5.0, workers: int = 4
) -> dict:
    """Run every completion against its problem's tests.

    ``completions``: {problem name: [body, ...]} (n bodies per problem, the same n for all).
    Returns {"per_problem": {name: (n, c)}, "pass@k": {k: mean over problems}, "statuses": Counter}.
    """
    from collections import Counter
    from concurrent.futures import ThreadPoolExecutor

    per, statuses = {}, Counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {
            p.name: [
                pool.submit(run_tests, p.prompt + body, p.tests, timeout)
                for body in completions[p.name]
            ]
            for p in problems
        }
    for p in problems:
        bodies = completions[p.name]
        results = [f.result() for f in futures[p.name]]
        statuses.update(r["status"] for r in results)
        per[p.name] = (len(bodies), sum(r["passed"] for r in results))
    scores = {
        k: float(np.mean([pass_at_k(n, c, k) for n, c in per.values()]))
        for k in ks
        if all(n >= k for n, _ in per.values())
    }
    return {"per_problem": per, "pass@k": scores, "statuses": statuses}


def sample_completions(
    model,
    tokenizer,
    prompt: str,
    n: int = 5,
    max_new_tokens: int = 128,
    temperature: float = 0.8,
    top_k: int | None = None,
    seed: int = 0,
    device="cpu",
) -> list[str]:
    """n sampled continuations of ``prompt`` from an lmkit
    GPT, each cut by :func:`truncate_completion`.

    Explained in chapter 20.
    """
    ids = torch.tensor([tokenizer.encode(prompt)] * n, dtype=torch.long, device=device)
    out = generate(model, ids, max_new_tokens, temperature=temperature, top_k=top_k, seed=seed)
    return [truncate_completion(tokenizer.decode(row[ids.size(1) :].tolist())) for row in out]


def complete_benchmark(
    model, tokenizer, problems=None, n: int = 5, seed: int = 0, **kwargs
) -> dict:
    """{problem name: n completions} for every problem
    (seeds ``seed + i`` per problem). Chapter 20."""
    problems = BENCHMARK if problems is None else problems
    return {
        p.name: sample_completions(model, tokenizer, p.prompt, n=n, seed=seed + i, **kwargs)
        for i, p in enumerate(problems)
    }


def complete_statements(text: str) -> str:
    """Drop the last, possibly unfinished, top-level statement of a code sample.

    A top-level statement starts at a non-empty line with no indentation. The text before the last
    such line is returned (``""`` when there is only one), so that a sample cut off mid-function
    is judged on the statements it finished. Explained in chapter 20.
    """
    lines = text.split("\n")
    starts = [
        i
        for i, line in enumerate(lines)
        if line.strip()
        and not line[0].isspace()
        and not line.lstrip().startswith(
            (")", "]", "}", "else", "elif", "except", "finally", "#", "@")
        )
    ]
    if len(starts) < 2:
        return ""
    return "\n".join(lines[: starts[-1]]).rstrip() + "\n"
