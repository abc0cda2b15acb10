"""Continuous batching: one decoding loop over a batched KV cache. Explained in chapter 13.

A server that runs one request at a time leaves a small model's CPU (or GPU) mostly idle: a cached
decoding step of the book's char-level GPT costs about the same whether it carries one sequence or
sixty-four, because its time goes to per-call overhead, not arithmetic (chapter 12). The
:class:`Engine` therefore keeps every running request in one batch:

* one thread runs decoding *steps*; between two steps it retires sequences that finished (stop
  string, ``max_tokens``), were cancelled (the client went away) or ran out of time, and admits
  waiting ones into the free slots (at most ``max_batch``);
* in a step every live sequence gets exactly one model call: a newly admitted one (or one whose
  context window is full) a *prefill* of its own, alone, exactly as :func:`lmkit.generate.generate`
  does; all the others one batched *decode* call, in which each row has its own position;
* the :class:`BatchedKVCache` holds one row per slot; a row's valid length is its sequence's own,
  and the attention mask hides the positions past it (the padding of shorter sequences);
* sampling settings and the random generator belong to each sequence, so a request with a seed
  gets the same tokens alone or in a batch, and the same as ``lmkit.generate.generate`` (the
  tokens of a batch are drawn with one division and one argmax, each row with its own generator,
  where that reproduces ``torch.multinomial``: :func:`exponential_draws_match`).

The engine knows nothing of HTTP: a sequence reports to its ``sink`` (a callable) with
:class:`Event` objects, handed over once per step through ``Engine.deliver`` (every other step
for the events of a large batch, except first tokens and ends: the web server then sends one chunk
for two tokens, which halves its work per token when it has the most to do).
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmkit.models.gpt import GPT, Block, CausalSelfAttention
from lmkit.nn import FeedForward, apply_rope, device_of, rope_cache
from lmkit.sampling import filter_logits

MAX_SEED = 2**63 - 1
COALESCE_FROM = 32  # a running batch this large hands its events over every other step


class GenerationTimeout(Exception):
    """A request's deadline passed after ``produced`` new tokens. Chapter 13."""

    def __init__(self, produced: int):
        super().__init__(produced)
        self.produced = produced


def deadline_check(deadline: float):
    """``before_step`` for :func:`lmkit.generate.generate`: raise once ``time.monotonic()`` passes
    ``deadline`` (at exactly ``deadline`` there is still time). The engine applies the same rule
    to every sequence before each of its model calls.
    """

    def check(produced: int):
        if time.monotonic() > deadline:
            raise GenerationTimeout(produced)

    return check


class QueueFull(Exception):
    """``Engine.submit`` refused: ``pending`` sequences are waiting or running (limit ``limit``)."""

    def __init__(self, pending: int, limit: int):
        super().__init__(f"{pending} sequences pending (limit {limit})")
        self.pending, self.limit = pending, limit


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence is decoded. ``temperature=0`` is greedy; ``seed=None`` draws one.

    ``stop``: strings that end the completion (not included in it). ``logprobs``: report the
    chosen token's log-probability and the ``logprobs`` most likely alternatives (None: no).
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None

    def __post_init__(self):
        if self.max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {self.max_tokens}")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")


@dataclass
class TokenLogprob:
    """One generated token: its text, log-probability, the top alternatives, its offset."""

    token: str
    logprob: float
    top: dict[str, float]
    offset: int  # characters of the completion before this token


@dataclass
class Event:
    """What the loop tells a sequence's sink. ``text`` is new completion text released to the
    client (text that might begin a stop string is held back until it cannot); the last event of
    a sequence has ``finish_reason``: ``stop``, ``length``, ``cancelled``, ``timeout`` or
    ``error`` (then ``error`` says why), and ``completion`` the whole completion text."""

    index: int
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    tokens: int = 0  # completion tokens generated so far
    finish_reason: str | None = None
    completion: str | None = None
    token_ids: list[int] | None = None
    prompt_tokens: int = 0
    error: str | None = None


class NullMetrics:
    """The engine's measurement hooks; :class:`lmkit.serve.metrics.ServerMetrics` records them."""

    def queue(self, waiting: int, running: int) -> None:
        pass

    def first_token(self, seconds: float) -> None:
        pass

    def finished(self, reason, prompt_tokens, completion_tokens, seconds, per_token) -> None:
        pass


class Sequence:
    """One sequence being generated; ``cancel()`` may be called from any thread."""

    def __init__(self, prompt, params: SamplingParams, sink, index, seed, deadline, device):
        self.prompt, self.params, self.sink, self.index = list(prompt), params, sink, index
        self.tokens = list(prompt)  # prompt + completion, as generate()'s idx
        self.seed, self.deadline = seed, deadline
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.start = 0  # first token of the context window (generate()'s policy)
        self.filled = 0  # cache positions filled in this sequence's slot
        self.text, self.sent = "", 0  # completion text; how much of it was released
        self.held: list[TokenLogprob] = []  # logprobs of tokens whose text is not released yet
        self.slot = -1  # its row of the batched cache while it runs
        self.cancelled = self.done = False
        self.t_submit = time.perf_counter()
        self.t_first: float | None = None
        self.t_last: float | None = None

    @property
    def produced(self) -> int:
        return len(self.tokens) - len(self.prompt)

    def cancel(self) -> None:
        """Stop generating: the loop retires the sequence before its next model call."""
        self.cancelled = True


# --------------------------------------------------------------------------------------------
# The batched KV cache and one decoding step over it.


class _SlotCache:
    """Row ``slot`` of a :class:`BatchedKVCache` seen as a batch-1 ``KVCache`` (``pos``,
    ``update``, ``advance``): a prefill through ``GPT.forward`` writes into the row directly."""

    def __init__(self, cache: BatchedKVCache, slot: int):
        self.layer_k = [k[slot : slot + 1] for k in cache.layer_k]  # each (1, H, block_size, hd)
        self.layer_v = [v[slot : slot + 1] for v in cache.layer_v]
        self.pos = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        t, end = k.size(2), self.pos + k.size(2)
        keys, values = self.layer_k[layer], self.layer_v[layer]
        keys.narrow(2, self.pos, t).copy_(k)
        values.narrow(2, self.pos, t).copy_(v)
        return keys.narrow(2, 0, end), values.narrow(2, 0, end)

    def advance(self, t: int) -> None:
        self.pos += t


class BatchedKVCache:
    """Keys and values of up to ``capacity`` sequences, each of its own length. Chapter 13.

    ``k``, ``v``: (n_layer, capacity, n_head, block_size, head_dim); row ``b`` belongs to the
    sequence in slot ``b``, whose length the engine keeps (``Sequence.filled``). The capacity grows
    (doubling) up to what the engine asks for, so an idle server holds little memory.
    """

    def __init__(self, config, capacity: int, device=None, dtype=torch.float32):
        self.config, self.device, self.dtype = config, device, dtype
        self.capacity = 0
        self.k = self.v = None
        self.grow(capacity)

    def grow(self, capacity: int) -> None:
        if capacity <= self.capacity:
            return
        c = self.config
        shape = (c.n_layer, capacity, c.n_head, c.block_size, c.n_embd // c.n_head)
        k = torch.zeros(shape, device=self.device, dtype=self.dtype)
        v = torch.zeros(shape, device=self.device, dtype=self.dtype)
        if self.capacity:
            k[:, : self.capacity] = self.k
            v[:, : self.capacity] = self.v
        self.k, self.v, self.capacity = k, v, capacity
        # (capacity, H): where position 0 of each row and head starts, in units of hd
        heads = torch.arange(capacity * c.n_head, device=self.device).view(capacity, c.n_head)
        self.row_starts = heads * c.block_size
        self.layer_k = [k[i] for i in range(len(k))]  # each (capacity, H, block_size, hd)
        self.layer_v = [v[i] for i in range(len(v))]

    def slot(self, b: int) -> _SlotCache:
        return _SlotCache(self, b)

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first ``length`` positions of row ``src`` to row ``dst``."""
        self.k[:, dst, :, :length] = self.k[:, src, :, :length]
        self.v[:, dst, :, :length] = self.v[:, src, :, :length]

    def flat_index(self, positions: torch.Tensor) -> torch.Tensor:
        """Where rows 0..n-1 at ``positions`` (n,) sit in a layer's cache flattened to
        (capacity * H * block_size, hd): (n * H,) indices, for :meth:`write`."""
        return (self.row_starts[: positions.size(0)] + positions[:, None]).view(-1)

    def write(self, layer: int, k, v, flat: torch.Tensor | None, same_pos: int | None, length):
        """Store k, v (n, H, 1, hd) of rows 0..n-1, all at ``same_pos`` or each at its own
        position (``flat``, from :meth:`flat_index`); return keys and values (n, H, length, hd)."""
        keys, values = self.layer_k[layer], self.layer_v[layer]
        n = k.size(0)
        if same_pos is not None:  # every row at one position: a plain slice, as KVCache does
            keys[:n, :, same_pos : same_pos + 1].copy_(k)
            values[:n, :, same_pos : same_pos + 1].copy_(v)
        else:
            hd = k.size(-1)
            keys.view(-1, hd).index_copy_(0, flat, k.reshape(-1, hd))
            values.view(-1, hd).index_copy_(0, flat, v.reshape(-1, hd))
        return keys[:n, :, :length], values[:n, :, :length]


def _fast(module: nn.Module):
    """A plain Linear or LayerNorm as a function (no Module dispatch); anything else, or a module
    with hooks, stays a module and is called as one (the same rule as lmkit's DecodeStep)."""
    if module._forward_hooks or module._forward_pre_hooks:
        return module
    if type(module) is nn.Linear:
        return lambda x, w=module.weight, b=module.bias: F.linear(x, w, b)
    if type(module) is nn.LayerNorm:
        m = module
        return lambda x, s=m.normalized_shape, w=m.weight, b=m.bias, eps=m.eps: F.layer_norm(
            x, s, w, b, eps
        )
    return module


def _mlp(mlp: nn.Module):
    """The feed-forward layer as a function: GELU (GPT's) inlined, any other called as a module."""
    plain = not (mlp._forward_hooks or mlp._forward_pre_hooks)
    if type(mlp) is FeedForward and mlp.activation == "gelu" and plain:
        fc, proj = _fast(mlp.fc), _fast(mlp.proj)
        return lambda x: proj(F.gelu(fc(x), approximate="tanh"))
    return mlp


class BatchedDecoder:
    """Model calls of the engine: ``prefill`` of one sequence into its cache row, and ``step``:
    one new token for each of n rows, each at its own position. Chapter 13.

    It reads the GPT's modules the way :class:`lmkit.models.decode_step.DecodeStep` does (the same
    arithmetic as ``GPT.forward`` with a cache), with per-row positions and a padding mask.
    """

    def __init__(self, model):
        if not isinstance(model, GPT) or not all(
            isinstance(b, Block) and isinstance(b.attn, CausalSelfAttention)
            for b in model.transformer.h
        ):
            raise ValueError(
                "the server batches lmkit GPT models (lmkit.models.GPT); "
                f"got {type(model).__name__}"
            )
        self.model = model
        c = model.config
        self.n_head, self.head_dim, self.window = c.n_head, c.n_embd // c.n_head, c.block_size
        t = model.transformer
        self.wte = t.wte.weight
        self.wpe = t.wpe.weight if c.pos_emb == "learned" else None
        self.rope = (
            rope_cache(c.block_size, self.head_dim, device=self.wte.device)
            if c.pos_emb == "rope"
            else None
        )
        self._watched = (
            [t.ln_f, model.lm_head]
            + [m for b in t.h for m in (b.ln_1, b.attn.c_attn, b.attn.c_proj, b.ln_2, b.mlp)]
            + [b.mlp.fc for b in t.h]
            + [b.mlp.proj for b in t.h]
        )
        self._hooks = None
        self._read_modules()

    def _hook_count(self) -> int:
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in self._watched)

    def _read_modules(self) -> None:
        """Look the layers up (again): a module that has hooks is called as a module."""
        t = self.model.transformer
        self.ln_f, self.lm_head = _fast(t.ln_f), _fast(self.model.lm_head)
        self.layers = [
            (_fast(b.ln_1), _fast(b.attn.c_attn), _fast(b.attn.c_proj), _fast(b.ln_2), _mlp(b.mlp))
            for b in t.h
        ]
        self._hooks = self._hook_count()

    def prefill(self, ids: list[int], cache: BatchedKVCache, slot: int) -> torch.Tensor:
        """Run ``ids`` through the model into row ``slot`` (from position 0): logits (1, V)."""
        idx = torch.tensor([ids], dtype=torch.long, device=self.wte.device)
        return self.model(idx, cache=cache.slot(slot))[0][:, -1]

    def step(self, tokens: list[int], positions: list[int], cache: BatchedKVCache):
        """Tokens (n,) at positions (n,) in cache rows 0..n-1: next-token logits (n, V)."""
        if self._hook_count() != self._hooks:  # hooks added or removed since the last step
            self._read_modules()
        n, H, hd, device = len(tokens), self.n_head, self.head_dim, self.wte.device
        same = positions[0] if min(positions) == max(positions) else None
        idx = torch.tensor(tokens, dtype=torch.long, device=device)[:, None]  # (n, 1)
        pos = flat = mask = None
        length = max(positions) + 1
        if same is None:
            pos = torch.tensor(positions, dtype=torch.long, device=device)
            flat = cache.flat_index(pos)
            # (n, 1, 1, L): row i sees its own positions 0..pos[i], not the padding after them
            mask = (torch.arange(length, device=device) <= pos[:, None])[:, None, None, :]
        x = self.wte[idx]  # (n, 1, C)
        if self.wpe is not None:
            x = x + (self.wpe[same] if same is not None else self.wpe[pos][:, None])
        rope = None
        if self.rope is not None:
            if same is not None:
                rope = (self.rope[0][same : same + 1], self.rope[1][same : same + 1])
            else:
                rope = (self.rope[0][pos][:, None, None], self.rope[1][pos][:, None, None])
        for layer, (ln_1, c_attn, c_proj, ln_2, mlp) in enumerate(self.layers):
            q, k, v = c_attn(ln_1(x)).view(n, 3, H, 1, hd).unbind(1)  # each (n, H, 1, hd)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
            keys, values = cache.write(layer, k, v, flat, same, length)
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
            x = x + c_proj(y.view(n, 1, H * hd))
            x = x + mlp(ln_2(x))
        return self.lm_head(self.ln_f(x))[:, 0]


# --------------------------------------------------------------------------------------------
# The loop.


def exponential_draws_match(device, draws: int = 32) -> bool:
    """Does ``argmax(p / E)``, E ~ Exp(1) drawn from the same generator, reproduce
    ``torch.multinomial(p, 1)`` draw for draw on ``device``?

    It is how torch draws one sample (the exponential race, equivalent to the Gumbel-max trick),
    and it lets the engine draw the tokens of a whole batch with one division and one argmax
    instead of one multinomial call per sequence, each row still from its own generator. The
    engine checks it here, on distributions with zeros, and falls back to ``torch.multinomial``
    row by row where it does not hold, so answers stay those of ``lmkit.generate``.
    """
    logits = torch.linspace(-4.0, 4.0, 97, device=device).sin() * 5
    p = torch.stack([logits.softmax(-1), logits.masked_fill(logits < 0, -math.inf).softmax(-1)])
    g1 = torch.Generator(device=device).manual_seed(20240607)
    g2 = torch.Generator(device=device).manual_seed(20240607)
    for _ in range(draws):
        for row in p:
            want = torch.multinomial(row[None], 1, generator=g1)[0, 0]
            noise = torch.empty_like(row).exponential_(generator=g2)
            if int((row / noise).argmax()) != int(want):
                return False
    return True


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many characters at the end of ``text`` could be the beginning of a stop string."""
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:k]):
                hold = k
                break
    return hold


class Engine:
    """Continuous batching over one model. Explained in chapter 13.

    ``submit(prompt_ids, params, sink, n=...)`` queues ``n`` sequences (or raises
    :class:`QueueFull` once ``max_queue`` are waiting or running); ``start()`` runs the decoding
    loop in a thread, ``step()`` runs one step in the caller's thread (tests, notebooks). Each
    sequence reports to ``sink(event)`` (:class:`Event`); the events of a step are handed to
    ``deliver(list of (sink, event))`` (default: call each sink at once; the server hands them to
    its event loop in one wake-up); from ``coalesce_from`` running sequences on, every other step.
    """

    def __init__(self, model, tokenizer, max_batch: int = 64, max_queue: int = 64, metrics=None):
        self.model, self.tokenizer = model, tokenizer
        self.decoder = BatchedDecoder(model)
        self.window = model.config.block_size
        self.device = device_of(model)
        dtype = next(model.parameters()).dtype
        self.max_batch, self.max_queue = max_batch, max_queue
        self.cache = BatchedKVCache(model.config, min(max_batch, 4), self.device, dtype)
        self.metrics = metrics or NullMetrics()
        self.deliver: Callable[[list], None] | None = None
        self.char_level = getattr(tokenizer, "kind", None) == "char"
        self.exponential_draws = exponential_draws_match(self.device)
        self._cv = threading.Condition()
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []  # slot b of the cache holds self._running[b]
        self._pending = 0
        self._out: list[tuple[Sequence, Event]] = []
        self.coalesce_from = COALESCE_FROM
        self._held, self._urgent = False, set()  # held back last step; to hand over now
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.steps = 0  # decoding steps run, for tests and the chapter

    # -- the outside: submit, start, stop ---------------------------------------------------

    @property
    def pending(self) -> int:
        """Sequences waiting or running."""
        return self._pending

    @property
    def running(self) -> int:
        """Sequences in the running batch."""
        return len(self._running)

    def active(self) -> list[Sequence]:
        """The running sequences (a copy; for tests and notebooks)."""
        return list(self._running)

    def submit(self, prompt_ids, params: SamplingParams, sink, n: int = 1, timeout_s=None):
        """Queue ``n`` sequences of one prompt (choice ``i`` samples with seed ``seed + i``):
        returns them (their ``seed`` and ``cancel()``). ``timeout_s`` counts from now."""
        if not prompt_ids:
            raise ValueError("the prompt has no tokens")
        base = params.seed if params.seed is not None else secrets.randbits(63)
        deadline = math.inf if timeout_s is None else time.monotonic() + timeout_s
        seqs = [
            Sequence(
                prompt_ids, params, sink, i, (base + i) % (MAX_SEED + 1), deadline, self.device
            )
            for i in range(n)
        ]
        with self._cv:
            if self._pending + n > self.max_queue:
                raise QueueFull(self._pending, self.max_queue)
            self._pending += n
            self._waiting.extend(seqs)
            self.metrics.queue(len(self._waiting), len(self._running))
            self._cv.notify()
        return seqs

    def start(self) -> None:
        """Run the decoding loop in a daemon thread until :meth:`stop`."""
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="lmkit-engine", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop; sequences still pending end with ``finish_reason="error"``."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._fail_all("the server is shutting down")

    def run_until_idle(self) -> None:
        """Run steps in this thread until nothing is waiting or running (no loop thread)."""
        while self._waiting or self._running:
            self.step()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not (self._waiting or self._running or self._stopping):
                    self._cv.wait()
                if self._stopping:
                    return
            try:
                self.step()
            except Exception as e:  # a bug, not bad input: fail what runs, keep serving
                self._out = []
                self._fail_all(f"internal error: {type(e).__name__}: {str(e)[:200]}", False)

    def _fail_all(self, message: str, waiting: bool = True) -> None:
        """End the running sequences (and the waiting ones, unless ``waiting=False``)."""
        with self._cv:
            doomed = [s for s in self._running if not s.done]
            if waiting:
                doomed += list(self._waiting)
                self._waiting.clear()
        self._running = []
        for seq in doomed:
            self._retire(seq, "error", error=message)
        self._flush()

    # -- one step ---------------------------------------------------------------------------

    @torch.no_grad()
    def step(self) -> int:
        """Retire, admit, one model call per live sequence, sample, release text; returns how
        many sequences got a token."""
        self._running = self._sweep(self._running)
        self._compact()
        self._admit()
        live = self._running
        if live:
            logits = self._forward(live)
            self._sample(live, logits)
            self.steps += 1
        self.metrics.queue(len(self._waiting), len(self._running))
        self._flush(force=False)
        return len(live)

    def _sweep(self, seqs: list[Sequence]) -> list[Sequence]:
        """Retire cancelled, finished and timed-out sequences (before any model call)."""
        now, keep = time.monotonic(), []
        for seq in seqs:
            if seq.cancelled:
                self._retire(seq, "cancelled")
            elif seq.produced >= seq.params.max_tokens:
                self._retire(seq, "length")
            elif now > seq.deadline:
                self._retire(seq, "timeout", error="time limit reached")
            else:
                keep.append(seq)
        return keep

    def _compact(self) -> None:
        """Keep the running sequences in cache rows 0..n-1: a sequence in a row past the end
        moves into a row that a retired one freed (one copy per retirement)."""
        n = len(self._running)
        taken = {s.slot for s in self._running}
        holes = [b for b in range(n) if b not in taken]
        movers = sorted((s for s in self._running if s.slot >= n), key=lambda s: s.slot)
        for hole, seq in zip(holes, movers):
            self.cache.move(seq.slot, hole, seq.filled)
            seq.slot = hole
        if holes:
            self._running.sort(key=lambda s: s.slot)

    def _admit(self) -> None:
        """Waiting sequences take the free slots (at most ``max_batch`` run at once)."""
        with self._cv:
            new = []
            while self._waiting and len(self._running) + len(new) < self.max_batch:
                new.append(self._waiting.popleft())
        new = self._sweep(new)
        if not new:
            return
        self.cache.grow(min(self.max_batch, max(2 * self.cache.capacity, len(self._running) + 8)))
        self.cache.grow(len(self._running) + len(new))
        for seq in new:
            seq.slot, seq.filled = len(self._running), 0
            self._running.append(seq)

    def _needs_prefill(self, seq: Sequence) -> bool:
        # generate()'s window policy: a sequence that fills the window restarts from its last half
        return seq.filled == 0 or len(seq.tokens) - seq.start >= self.window

    def _forward(self, live: list[Sequence]) -> torch.Tensor:
        """One model call per sequence: next-token logits (len(live), V), row i for live[i]."""
        fresh = [self._needs_prefill(s) for s in live]
        decoding = [i for i, f in enumerate(fresh) if not f]
        logits, n = None, 0
        if decoding:
            n = decoding[-1] + 1  # rows 0..n-1; a row being prefilled in this step is a dummy
            tokens = [live[i].tokens[-1] if not fresh[i] else 0 for i in range(n)]
            positions = [min(live[i].filled, self.window - 1) for i in range(n)]
            logits = self.decoder.step(tokens, positions, self.cache)
            for i in decoding:
                live[i].filled += 1
        prefilled = {}
        for i, seq in enumerate(live):
            if fresh[i]:
                if len(seq.tokens) - seq.start >= self.window:
                    seq.start = len(seq.tokens) - self.window // 2
                ids = seq.tokens[seq.start :]
                prefilled[i] = self.decoder.prefill(ids, self.cache, seq.slot)
                seq.filled = len(ids)
        if not prefilled:
            return logits
        some = logits if logits is not None else next(iter(prefilled.values()))
        out = some.new_empty(len(live), some.size(-1))
        if logits is not None:
            out[:n] = logits
        for i, row in prefilled.items():
            out[i] = row[0]
        return out

    def _sample(self, live: list[Sequence], logits: torch.Tensor) -> None:
        """Pick each sequence's next token with its own settings and generator, as
        :func:`lmkit.sampling.next_token` does; rows with equal settings share the arithmetic."""
        groups: dict[tuple, list[int]] = {}
        for i, seq in enumerate(live):
            p = seq.params
            groups.setdefault((p.temperature, p.top_k, p.top_p), []).append(i)
        picked: list[int] = [0] * len(live)
        for (temperature, top_k, top_p), members in groups.items():
            if len(members) == len(live):
                rows = logits
            else:
                rows = logits[torch.tensor(members, device=logits.device)]
            if temperature == 0:
                toks = rows.argmax(-1).tolist()
            else:
                probs = filter_logits(rows.float() / temperature, top_k, top_p).softmax(-1)
                toks = self._draw(probs, [live[i].generator for i in members])
            for i, tok in zip(members, toks):
                picked[i] = tok
        now = time.perf_counter()
        for i, seq in enumerate(live):
            lp = (
                self._logprob(logits[i : i + 1], picked[i], seq)
                if seq.params.logprobs is not None
                else None
            )
            self._append(seq, picked[i], lp, now)
        survivors = [s for s in live if not s.done]
        if len(survivors) != len(live):
            self._running = survivors
            self._compact()

    def _draw(self, probs: torch.Tensor, generators: list) -> list[int]:
        """One token per row of probs (n, V), row i drawn with generators[i]: exactly what
        ``torch.multinomial(probs[i:i+1], 1, generator=generators[i])`` draws."""
        if self.exponential_draws:  # torch's own algorithm, with the arithmetic batched
            noise = torch.empty_like(probs)
            for row, g in zip(noise, generators):
                row.exponential_(generator=g)
            return (probs / noise).argmax(-1).tolist()
        draws = [
            torch.multinomial(probs[j : j + 1], 1, generator=g)[0] for j, g in enumerate(generators)
        ]
        return torch.cat(draws).tolist()

    def _logprob(self, row: torch.Tensor, tok: int, seq: Sequence) -> TokenLogprob:
        lp = F.log_softmax(row[0].float(), dim=-1)
        top = torch.topk(lp, min(seq.params.logprobs, lp.numel())) if seq.params.logprobs else None
        alternatives = {}
        if top is not None:
            for value, i in zip(top.values.tolist(), top.indices.tolist()):
                alternatives.setdefault(self.tokenizer.decode([i]), value)
        return TokenLogprob(self.tokenizer.decode([tok]), float(lp[tok]), alternatives, 0)

    # -- text, stop strings, the end of a sequence ------------------------------------------

    def _append(self, seq: Sequence, tok: int, lp: TokenLogprob | None, now: float) -> None:
        """Add a token; release the text that can no longer turn into a stop string."""
        seq.tokens.append(tok)
        if seq.t_first is None:
            seq.t_first = now
            self.metrics.first_token(now - seq.t_submit)
        seq.t_last = now
        before = len(seq.text)
        if self.char_level:
            seq.text += self.tokenizer.decode([tok])
        else:
            seq.text = self.tokenizer.decode(seq.tokens[len(seq.prompt) :])
        if lp is not None:
            lp.offset = before
            seq.held.append(lp)
        stops = seq.params.stop
        if stops:
            cuts = [
                i for i in (seq.text.find(s, max(0, seq.sent - len(s))) for s in stops) if i >= 0
            ]
            if cuts:
                self._retire(seq, "stop", cut=min(cuts))
                return
        if seq.produced >= seq.params.max_tokens:
            self._retire(seq, "length")
            return
        safe = len(seq.text) - _held_back(seq.text, stops)
        if not self.char_level:
            while safe > seq.sent and seq.text[safe - 1] == "\ufffd":  # an unfinished character
                safe -= 1
        if safe > seq.sent or seq.held:
            self._emit(seq, self._release(seq, safe))

    def _release(self, seq: Sequence, end: int) -> Event:
        text = seq.text[seq.sent : end] if end > seq.sent else ""
        seq.sent = max(seq.sent, end)
        lps = [lp for lp in seq.held if lp.offset < seq.sent]
        seq.held = seq.held[len(lps) :]
        return Event(seq.index, text, lps, seq.produced)

    def _retire(self, seq: Sequence, reason: str, cut: int | None = None, error=None) -> None:
        """End a sequence: release the rest of its text (up to a stop string), free its place."""
        seq.done = True
        if cut is not None:
            seq.text = seq.text[:cut]
        event = self._release(seq, len(seq.text))
        seq.held = []
        event.finish_reason, event.error = reason, error
        event.completion, event.token_ids = seq.text, seq.tokens[len(seq.prompt) :]
        event.prompt_tokens = len(seq.prompt)
        with self._cv:
            self._pending -= 1
        n = seq.produced
        per_token = (seq.t_last - seq.t_first) / (n - 1) if n > 1 else None
        elapsed = time.perf_counter() - seq.t_submit
        self.metrics.finished(reason, len(seq.prompt), n, elapsed, per_token)
        self._emit(seq, event)

    def _emit(self, seq: Sequence, event: Event) -> None:
        self._out.append((seq, event))
        if event.finish_reason is not None or seq.produced == 1:
            self._urgent.add(seq)

    def _flush(self, force: bool = True) -> None:
        """Hand the events over (``deliver``). A batch of ``coalesce_from`` sequences or more
        hands each sequence's events over every other step, so that a chunk sent to a client
        carries two tokens and the web server's work per token is about halved; a sequence's
        first token and its end are handed over at once."""
        held = not force and len(self._running) >= self.coalesce_from and not self._held
        if held:
            out = [(q, e) for q, e in self._out if q in self._urgent]
            self._out = [(q, e) for q, e in self._out if q not in self._urgent]
        else:
            out, self._out = self._out, []
        self._held, self._urgent = held, set()
        if not out:
            return
        out = [(seq.sink, event) for seq, event in out]
        try:
            if self.deliver is not None:
                self.deliver(out)
            else:
                for sink, event in out:
                    sink(event)
        except Exception:  # the receiver is gone (its event loop closed): nobody to tell
            pass
