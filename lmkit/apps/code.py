"""Code generation: does it parse, does it pass its tests, and pass@k. Explained in chapter 20.

* :func:`parses` / :func:`parse_rate`: syntactic validity checked with :mod:`ast`;
* :func:`run_tests`: a program plus its ``assert`` tests run in a separate Python process, in an
  empty temporary directory, with ``-I`` (isolated mode), a wall-clock time limit and, on POSIX,
  limits on memory and CPU time. This contains accidents (infinite loops, huge allocations, stray
  files); it is **not** a security sandbox for hostile code: use a container or VM for that;
* :func:`pass_at_k`: the unbiased estimator of Chen et al. (2021), and
  :func:`pass_at_k_interval`, a bootstrap confidence interval for its mean over problems;
* :data:`BENCHMARK`: ten small function-completion problems (prompt = signature + docstring,
  tests = asserts), each with a reference solution and a deliberately wrong one;
* :func:`split_functions`: real functions of a stretch of source as (header, body) pairs, and
  :func:`completes_function`: whether a body completes its header into valid Python;
* :func:`complete_functions`: sampled bodies for many headers from an lmkit GPT, batched by
  prompt length, each row stopped once its function has ended and cut by
  :func:`truncate_completion` (:func:`sample_completions` and :func:`complete_benchmark` use it).
"""

from __future__ import annotations

import ast
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from lmkit.generate import generate


def parses(source: str) -> bool:
    """True when ``source`` is syntactically valid Python (``ast.parse`` succeeds). The parser's
    ``SyntaxWarning``s (``invalid escape sequence``, ...) are silenced: they do not make a program
    invalid, and generated code would print a stream of them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
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
            # SIGXCPU at cpu_s seconds of CPU time, SIGKILL one second later
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        except (ImportError, ValueError, OSError):
            pass

    return apply


def run_tests(
    program: str,
    tests: str,
    timeout: float = 5.0,
    memory_mb: int = 512,
    wall_timeout: float | None = None,
) -> dict:
    """Run ``program`` followed by ``tests`` in a fresh Python process.

    Returns {"passed": bool, "status": "passed" | "failed" | "error" | "timeout", "detail": str}:
    "failed" means an ``AssertionError``, "error" any other exception (including a syntax error),
    "timeout" that the program computed for more than ``timeout`` seconds of CPU time or ran
    for more than ``wall_timeout`` seconds of wall time.

    On POSIX the kernel enforces the CPU limit (``RLIMIT_CPU``, ``ceil(timeout)`` seconds) and
    an address-space limit of ``memory_mb``; CPU time does not grow when the machine is busy,
    so correct code does not time out on a loaded machine. The wall-clock limit, by default
    ``4 * timeout + 5`` seconds there, catches programs that wait instead of computing
    (``time.sleep``, a lock). Elsewhere only the wall-clock limit applies, by default
    ``timeout``.
    """
    code = program + "\n\n" + tests + "\n"
    if not parses(code):  # no need to start a process for a syntax error
        return {"passed": False, "status": "error", "detail": "SyntaxError"}
    posix = os.name == "posix"
    cpu_s = max(1, math.ceil(timeout))
    if wall_timeout is None:
        wall_timeout = 4 * timeout + 5 if posix else timeout
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "candidate.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(code)
        # only PATH: the child inherits none of this process's variables. (PYTHON* variables
        # such as PYTHONHASHSEED would be pointless: -I makes the child ignore all of them.)
        env = {"PATH": os.environ.get("PATH", "")}
        kwargs = {"preexec_fn": _limits(memory_mb, cpu_s)} if posix else {}
        try:
            r = subprocess.run(
                [sys.executable, "-I", path],
                cwd=tmp,
                env=env,
                capture_output=True,
                text=True,
                timeout=wall_timeout,
                stdin=subprocess.DEVNULL,
                **kwargs,
            )
        except subprocess.TimeoutExpired:
            detail = f"ran longer than {wall_timeout:g} s"
            return {"passed": False, "status": "timeout", "detail": detail}
    if r.returncode == 0:
        return {"passed": True, "status": "passed", "detail": ""}
    if posix and r.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        detail = f"used more than {cpu_s} s of CPU time"
        return {"passed": False, "status": "timeout", "detail": detail}
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


def pass_at_k_interval(
    per_problem, k: int, level: float = 0.95, n_boot: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """A bootstrap confidence interval for the mean pass@k over problems.

    ``per_problem``: (n, c) per problem (the ``"per_problem"`` values of
    :func:`score_completions`). Each of ``n_boot`` replicates draws the problems with replacement
    and, for each drawn problem, a new number of passing samples c* ~ Binomial(n, c / n) (its n
    samples drawn again), and takes the mean of :func:`pass_at_k` (n, c*, k); the interval is
    the central ``level`` share of the replicates (the percentile bootstrap). It covers both
    sources of noise: which problems the benchmark has, and which samples the model drew. A
    problem with c = 0 (or c = n) has no spread of its own, so with few problems and few passes
    the interval is optimistic; report it next to the counts.
    """
    nc = np.array([tuple(x) for x in per_problem], dtype=np.int64).reshape(-1, 2)
    if len(nc) == 0:
        raise ValueError("need at least one problem")
    n, c = nc[:, 0], nc[:, 1]
    if np.any(n < k) or k < 1:
        raise ValueError(f"every problem needs n >= k >= 1, got k={k}, n={n.tolist()}")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(nc), size=(n_boot, len(nc)))
    c_star = rng.binomial(n[picks], c[picks] / n[picks])
    table = {(a, b): pass_at_k(a, b, k) for a in set(n.tolist()) for b in range(a + 1)}
    scores = np.vectorize(lambda a, b: table[(a, b)])(n[picks], c_star).mean(axis=1)
    lo, hi = np.quantile(scores, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


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


_DEF = re.compile(r"^([ \t]*)(?:async[ \t]+)?def[ \t]")


def split_functions(source: str) -> list[tuple[str, str]]:
    """Every function of ``source`` that parses on its own, as (header, body), both dedented to
    a ``def`` at column 0: the header is the ``def`` line(s) and the docstring if there is one, up
    to its closing line, ending with a line break; the body is the rest, without trailing blank
    lines, so that ``header + body`` is the function's source.

    ``source`` may be any stretch of Python (a split of a corpus that starts and ends mid-file):
    a function runs from its ``def`` line to the next code line (not blank, not a comment)
    indented no deeper than it (trailing blank and comment lines are dropped), and
    one is skipped when that text does not parse as exactly one function (a multi-line string
    with lines further left than the ``def`` ends it too early), when the end of ``source`` may
    have cut it, when its body is only the docstring, or when a statement shares a line with the
    ``def`` or the docstring. Methods and nested functions are included (dedented). Decorators
    are left out. Chapter 20.
    """
    lines = source.split("\n")
    out = []
    for i, line in enumerate(lines):
        m = _DEF.match(line)
        if not m:
            continue
        indent = m.group(1)
        j = i + 1
        while j < len(lines) and (_blank_or_comment(lines[j]) or _indent(lines[j]) > len(indent)):
            j += 1
        if j == len(lines):  # the text ended inside (or right after) the function: maybe cut
            continue
        chunk = lines[i:j]
        while _blank_or_comment(chunk[-1]):  # comments after the function are not its body
            chunk.pop()
        if any(x.strip() and not x.startswith(indent) for x in chunk):
            continue  # mixed tabs and spaces
        text = "\n".join(x[len(indent) :] if x.strip() else "" for x in chunk)
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            continue
        if len(tree.body) != 1 or not isinstance(
            tree.body[0], (ast.FunctionDef, ast.AsyncFunctionDef)
        ):
            continue
        fn = tree.body[0]
        first = fn.body[0]
        has_doc = (
            isinstance(first, ast.Expr)
            and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)
        )
        rest = fn.body[1:] if has_doc else fn.body
        if not rest or first.lineno == fn.lineno:
            continue  # only a docstring, or a body that starts on the def line
        if has_doc and rest[0].lineno == first.end_lineno:
            continue  # a statement on the docstring's closing line
        text_lines = text.split("\n")
        cut = first.end_lineno if has_doc else rest[0].lineno - 1
        # blank and comment lines between the def line and the first statement go to the body
        while not has_doc and cut > 1 and _blank_or_comment(text_lines[cut - 1]):
            cut -= 1
        out.append(("\n".join(text_lines[:cut]) + "\n", "\n".join(text_lines[cut:])))
    return out


def completes_function(header: str, body: str) -> bool:
    """True when ``body`` holds some code and ``header + body`` parses (a header with a
    docstring parses alone, so an empty body must not count). Chapter 20."""
    has_code = any(not _blank_or_comment(x) for x in body.split("\n"))
    return has_code and parses(header + body)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _blank_or_comment(line: str) -> bool:
    return not line.strip() or line.lstrip().startswith("#")


def _function_end(lines: list[str]) -> tuple[int | None, int | None]:
    """(index of the line where a function body written as ``lines`` ends or None if it has not
    ended, the body's indentation or None if no code line came yet). The first code line (not
    blank, not a comment) sets the body's indentation; the body ends at the first later code line
    indented less (a dedent: the next ``def``, ``class``, method or statement of the enclosing
    block), or at the first line if that one is not indented at all (no body)."""
    body_indent = None
    for i, line in enumerate(lines):
        if _blank_or_comment(line):
            continue
        if body_indent is None:
            body_indent = _indent(line)
            if body_indent == 0:
                return i, 0
        elif _indent(line) < body_indent:
            return i, body_indent
    return None, body_indent


def truncate_completion(text: str) -> str:
    """Cut a generated function body where the function ends.

    The first code line (neither blank nor a comment) sets the body's indentation; the body ends
    before the first later code line indented less than that (a new ``def``, ``class``, method,
    decorator or statement outside the function), and is empty when the first code line is not
    indented. Comment lines further left than the body are kept where code of the body follows
    them and dropped at its end, with trailing whitespace. Python accepts any consistent
    indentation, so a body indented by 8 spaces after a ``def`` at column 0 (the model took the
    function for a method) is kept, and cut before the next method at 4 spaces. Lines of a
    multi-line string or bracket that start further left than the body are taken for its end, as
    the rule cannot see them.
    """
    lines = text.split("\n")
    end, body_indent = _function_end(lines)
    lines = lines if end is None else lines[:end]
    while lines and (
        not lines[-1].strip()
        or (_blank_or_comment(lines[-1]) and _indent(lines[-1]) < (body_indent or 0))
    ):
        lines.pop()
    return "\n".join(lines).rstrip()


def score_completions(
    problems, completions: dict, ks=(1, 5), timeout: float = 5.0, workers: int = 4
) -> dict:
    """Run every completion against its problem's tests.

    ``completions``: {problem name: [body, ...]} (n bodies per problem, the same n for all).
    Returns {"per_problem": {name: (n, c)}, "pass@k": {k: mean over problems}, "statuses": Counter}.
    A program that occurs several times (the same body for the same problem, as low temperatures
    often sample) is run once, and its outcome counts for every copy.
    """
    from collections import Counter
    from concurrent.futures import ThreadPoolExecutor

    per, statuses = {}, Counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        runs = {}  # (program, tests) -> future
        for p in problems:
            for body in completions[p.name]:
                key = (p.prompt + body, p.tests)
                if key not in runs:
                    runs[key] = pool.submit(run_tests, key[0], key[1], timeout)
    for p in problems:
        bodies = completions[p.name]
        results = [runs[(p.prompt + body, p.tests)].result() for body in bodies]
        statuses.update(r["status"] for r in results)
        per[p.name] = (len(bodies), sum(r["passed"] for r in results))
    scores = {
        k: float(np.mean([pass_at_k(n, c, k) for n, c in per.values()]))
        for k in ks
        if all(n >= k for n, _ in per.values())
    }
    return {"per_problem": per, "pass@k": scores, "statuses": statuses}


def _encode_header(tokenizer, header: str) -> list[int]:
    """The header's tokens without its final line break: the model writes the break itself."""
    ids = tokenizer.encode(header[:-1] if header.endswith("\n") else header)
    if not ids:
        raise ValueError("a header must have at least one token before its final line break")
    return ids


def _body_from(continuation: str) -> str:
    """The body a continuation of a header (encoded by :func:`_encode_header`) writes: after the
    line break that ends the header, cut by :func:`truncate_completion`; empty when the model went
    on writing on the header's last line instead of starting a new one."""
    if not continuation.startswith("\n"):
        return ""
    return truncate_completion(continuation[1:])


def _ended(continuation: str) -> bool:
    if not continuation.startswith("\n"):
        return bool(continuation)
    return _function_end(continuation[1:].split("\n"))[0] is not None


def complete_functions(
    model,
    tokenizer,
    headers,
    n: int = 1,
    max_new_tokens: int = 128,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    device="cpu",
    chunk: int = 32,
    max_batch: int = 64,
) -> list[list[str]]:
    """``n`` sampled bodies for each function header (a ``def`` line, and its docstring if any,
    ending with a line break), each cut where the function ends (:func:`truncate_completion`).

    Returns one list of ``n`` bodies per header, in order; ``header + body`` is the program.
    ``temperature``, ``top_k`` and ``top_p`` (nucleus sampling) go to
    :func:`lmkit.generate.generate`.

    * **Token boundary.** A header is encoded without its final ``"\n"``: byte-level BPE merges a
      line break with the indentation after it (``"\n   "``), so a prompt ending in a bare
      ``"\n"`` token asks for a continuation the model has rarely seen (one at column 0). The
      model writes the line break; a continuation that does not start with one gives ``""``.
    * **Batching.** ``generate`` takes a (B, T) batch of equal-length prompts, so the rows (every
      header ``n`` times) are grouped by their number of tokens, at most ``max_batch`` a call.
    * **Early stop.** Tokens are drawn ``chunk`` at a time (each call continues the sequences of
      the last); a row whose function has ended leaves the batch, and a group stops when every
      row has left it, else after ``max_new_tokens``.

    Deterministic for a given ``seed`` on a given device: every ``generate`` call gets a seed
    drawn from ``random.Random(seed)``, in a fixed order of groups.
    """
    import random

    headers = list(headers)
    encoded = [_encode_header(tokenizer, h) for h in headers]
    rows = [(i, r) for i in range(len(headers)) for r in range(n)]
    groups: dict[int, list[tuple[int, int]]] = {}
    for i, r in rows:
        groups.setdefault(len(encoded[i]), []).append((i, r))
    rng = random.Random(seed)
    bodies: list[list[str]] = [[""] * n for _ in headers]
    for length in sorted(groups):
        members = groups[length]
        for start in range(0, len(members), max_batch):
            batch = members[start : start + max_batch]
            idx = torch.tensor([encoded[i] for i, _ in batch], dtype=torch.long, device=device)
            texts = [""] * len(batch)
            active = list(range(len(batch)))  # rows whose function has not ended yet
            out, produced = idx, 0
            while active and produced < max_new_tokens:
                step = min(chunk, max_new_tokens - produced)
                out = generate(
                    model,
                    out,
                    step,
                    temperature=temperature,
                    top_k=top_k,
                    top_p=top_p,
                    seed=rng.randrange(2**31),
                )
                produced += step
                for j, row in zip(active, out):
                    texts[j] = tokenizer.decode(row[length:].tolist())
                going = [a for a, j in enumerate(active) if not _ended(texts[j])]
                active, out = [active[a] for a in going], out[going]
            for (i, r), text in zip(batch, texts):
                bodies[i][r] = _body_from(text)
    return bodies


def sample_completions(
    model,
    tokenizer,
    prompt: str,
    n: int = 5,
    max_new_tokens: int = 128,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    device="cpu",
) -> list[str]:
    """n sampled bodies for one ``prompt`` (a function header) from an lmkit GPT, each cut by
    :func:`truncate_completion`: :func:`complete_functions` for one header. Chapter 20."""
    return complete_functions(
        model,
        tokenizer,
        [prompt],
        n=n,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        device=device,
    )[0]


def complete_benchmark(
    model, tokenizer, problems=None, n: int = 5, seed: int = 0, **kwargs
) -> dict:
    """{problem name: n completions} for every problem, sampled by :func:`complete_functions`
    in one pass (keyword arguments go to it). Chapter 20."""
    problems = BENCHMARK if problems is None else problems
    bodies = complete_functions(
        model, tokenizer, [p.prompt for p in problems], n=n, seed=seed, **kwargs
    )
    return {p.name: b for p, b in zip(problems, bodies)}


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
