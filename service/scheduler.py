"""Text generation for concurrent requests, with continuous batching.

One scheduler task per text model and worker loops while there is work: it first gives every
newly arrived request its prompt step (one graph call each: prompts differ in length), then runs
ONE decode step for all running requests together (core/textgen.py pads the GPT's caches to
a common length), samples each request's next token with its own seeded generator, and hands it
to the request's queue. A request joins the running batch at the next step after its prompt and
leaves it when done or when its client went away, so concurrent generations never wait for each
other to finish, only for one step of the batch.

Admission: a request is admitted only if, with the work already admitted ahead of it, its first
token and its last are forecast within the latency budget (EE559_TTFT_BUDGET_S,
EE559_GENERATION_BUDGET_S, less a HEADROOM for the forecast's error); otherwise it is shed at once
with 503 and a Retry-After of the forecast overrun, before any work is spent on it. The forecast
replays the queue over the batch's slots with step times calibrated at start-up and corrected by
what each turn of the loop really took. An admitted request never outlives its budget: one still
waiting past its first-token budget gets a 503, one running at its deadline ends with the tokens it
has (finish_reason "time_limit"), so the server's 30 s timeout never drops computed tokens.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from core.textgen import Sequence, TextModel, choose

from . import metrics
from .errors import ClientError
from .observe import RequestTiming, current

log = logging.getLogger("ee559.scheduler")
# Admit only what is forecast within this share of each budget: a forecast is an estimate, and a
# request admitted on an optimistic one is shed late (or cut at its deadline) instead of at once.
HEADROOM = 0.8


@dataclass(eq=False)  # compared by identity: two requests may be equal field by field
class TextRequest:
    seq: Sequence
    max_new: int
    temperature: float
    top_k: int
    rng: np.random.Generator
    arrived: float = field(default_factory=time.perf_counter)
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)  # token ids, then None (or an exception)
    produced: int = 0
    last: float = 0.0
    first_token_s: float | None = None
    deadline: float = math.inf  # perf_counter time by which it ends, with the tokens it has
    timing: RequestTiming | None = None  # its HTTP request's, for Server-Timing
    finish_reason: str = ""  # "length" (max_new tokens) or "time_limit" (the deadline came first)
    cancelled: bool = False  # the client went away: dropped at the next step
    finished: bool = False  # out of the scheduler (done, cancelled or failed)

    @property
    def remaining(self) -> int:
        return self.max_new - self.produced


@dataclass
class StepCosts:
    """Forecast seconds: one turn of the decode loop with n sequences costs
    `(step_fixed + step_row * n) * step_load`, a prompt step of L tokens
    `(prompt_fixed + prompt_token * L) * prompt_load`. The fixed and per-row parts come from
    timing the graph at start-up; each load is the running ratio of what the service really
    spent to that (a turn of the loop also samples, hands out tokens and shares the event loop
    with every other request of the worker; the cores may be shared with other workers).
    All zero until calibrated: then everything fits."""

    step_fixed: float = 0.0
    step_row: float = 0.0
    prompt_fixed: float = 0.0
    prompt_token: float = 0.0
    step_load: float = 1.0
    prompt_load: float = 1.0

    def step(self, n: int) -> float:
        return (self.step_fixed + self.step_row * n) * self.step_load

    def prompt(self, tokens: int) -> float:
        return (self.prompt_fixed + self.prompt_token * tokens) * self.prompt_load

    def observe_step(self, n: int, seconds: float) -> None:
        self.step_load = self._moved(self.step_load, self.step_fixed + self.step_row * n, seconds)

    def observe_prompt(self, tokens: int, seconds: float) -> None:
        self.prompt_load = self._moved(self.prompt_load, self.prompt_fixed + self.prompt_token * tokens, seconds)

    @staticmethod
    def _moved(load: float, base: float, seconds: float) -> float:
        """Half way towards what this measurement says when it says slower, a tenth when faster:
        a burst must not be admitted on the speed of the idle service (bounded: one stall is not
        a trend)."""
        if base <= 0:
            return load
        ratio = min(max(seconds / base, 0.1), 50.0)
        return load + (0.5 if ratio > load else 0.1) * (ratio - load)


@dataclass(frozen=True)
class Budget:
    """The latency every admitted generation is promised: first token and last, in seconds."""

    first_token_s: float = math.inf
    total_s: float = math.inf


class TextScheduler:
    def __init__(
        self,
        name: str,
        model: TextModel,
        executor: ThreadPoolExecutor,
        max_running: int,
        max_waiting: int,
        provider: str,
        budget: Budget = Budget(),
    ) -> None:
        self.name, self.model, self.executor, self.provider = name, model, executor, provider
        self.max_running, self.max_waiting, self.budget = max_running, max_waiting, budget
        self.costs = StepCosts()
        self.waiting: deque[TextRequest] = deque()
        self.running: list[TextRequest] = []
        # Out of the queue and in its prompt step, not yet in the batch: still work ahead of a new
        # request (a request arriving meanwhile must not find the scheduler idle).
        self.admitting: TextRequest | None = None
        self.task: asyncio.Task | None = None

    def calibrate(self, max_prompt: int) -> None:
        """Time the graph (blocking, at start-up): decode steps of 1 and of max_running sequences,
        prompt steps of 1 and of `max_prompt` tokens (capped at the model's context)."""
        longest = min(max_prompt, self.model.context or max_prompt)

        def timed(make: Callable[[], list[Sequence]]) -> float:
            best = math.inf
            for _ in range(3):  # the least of three: start-up has other work going on
                seqs = make()
                start = time.perf_counter()
                self.model.step(seqs)
                best = min(best, time.perf_counter() - start)
            return best

        short = timed(lambda: [self.model.new([0] * 3)])
        long = timed(lambda: [self.model.new([0] * longest)])
        per_token = max(long - short, 0.0) / max(longest - 3, 1)

        def decoding(n: int) -> list[Sequence]:
            seqs = [self.model.new([0] * 3) for _ in range(n)]
            self.model.step(seqs)
            for s in seqs:
                s.tokens.append(0)
            return seqs

        times = {n: timed(functools.partial(decoding, n)) for n in (1, self.max_running)}
        rng, logits = np.random.default_rng(0), np.zeros(len(self.model.vocab), np.float32)
        start = time.perf_counter()
        for _ in range(32):  # a row's sampling (at the default: every token, temperature 1)
            choose(logits, 1.0, len(logits), rng)
        sampling = (time.perf_counter() - start) / 32
        row = max(times[self.max_running] - times[1], 0.0) / max(self.max_running - 1, 1) + sampling
        self.costs = StepCosts(max(times[1] - row, 0.0), row, max(short - 3 * per_token, 0.0), per_token)
        log.info(
            "%s: a decode step takes %.2f ms alone, %.2f ms for %d sequences; a %d-token prompt %.2f ms",
            self.name, 1e3 * times[1], 1e3 * times[self.max_running], self.max_running, longest, 1e3 * long,
        )  # fmt: skip

    def forecast(self, prompt_tokens: int, max_new: int) -> tuple[float, float]:
        """Seconds from now to the first token and to the last of a request arriving now: the work
        admitted ahead of it replayed over the batch's slots (first come, first served)."""
        costs = self.costs
        ahead = [*self.running, self.admitting] if self.admitting is not None else self.running
        step = costs.step(min(self.max_running, len(ahead) + len(self.waiting) + 1))
        slots = [g.remaining * step for g in ahead]
        slots += [0.0] * (self.max_running - len(slots))
        heapq.heapify(slots)
        prompts = 0.0  # prompt steps stall the whole batch, in front of this request's first token
        for g in self.waiting:
            prompt = costs.prompt(g.seq.pending)
            prompts += prompt
            heapq.heappush(slots, heapq.heappop(slots) + prompt + (g.remaining - 1) * step)
        first = slots[0] + prompts + costs.prompt(prompt_tokens)
        return first, first + (max_new - 1) * step

    def submit(self, tokens: list[int], max_new: int, temperature: float, top_k: int, seed: int) -> TextRequest:
        if len(self.waiting) >= self.max_waiting:
            raise ClientError(
                503, "overloaded", "the server is generating at capacity; retry after a second", retry_after=1
            )
        seq = self.model.new(tokens)
        timing = current()
        # The budget runs from the request's arrival at the service (its body took time already).
        since = timing.start if timing is not None else time.perf_counter()
        spent = time.perf_counter() - since
        if self.waiting or self.running or self.admitting:  # alone, a request is always admitted (its deadline holds)
            first, last = self.forecast(seq.pending, max_new)
            over = max(
                spent + first - HEADROOM * self.budget.first_token_s, spent + last - HEADROOM * self.budget.total_s
            )
            if over > 0:
                seconds = min(max(math.ceil(over), 1), 60)
                raise ClientError(
                    503,
                    "over_budget",
                    f"text generation is at capacity: with the work ahead, this request's first token would "
                    f"come in about {first:.1f} s (budget {self.budget.first_token_s:g} s, EE559_TTFT_BUDGET_S) "
                    f"and its last in about {last:.1f} s (budget {self.budget.total_s:g} s, "
                    f"EE559_GENERATION_BUDGET_S); retry in {seconds} s or ask for fewer max_new_tokens",
                    retry_after=seconds,
                )
        gen = TextRequest(seq, max_new, temperature, top_k, np.random.default_rng(seed), timing=timing)
        gen.deadline = since + self.budget.total_s
        self.waiting.append(gen)
        metrics.active_generations().labels(model=self.name).inc()
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._loop())
        return gen

    async def tokens(self, gen: TextRequest) -> AsyncIterator[int]:
        """The generated token ids, as they come; leaving early (a client that disconnected)
        takes the generation out of the batch."""
        try:
            while True:
                item = await gen.queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.cancel(gen)

    @staticmethod
    def cancel(gen: TextRequest) -> None:
        """Stop generating for `gen` (its client went away); a no-op once it is complete."""
        if gen.produced < gen.max_new:
            gen.cancelled = True

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        turn: tuple[float, int] | None = None  # when the last decode step started, and its batch size
        prompts = 0.0  # seconds of prompt steps since then
        try:
            while self.waiting or self.running:
                self._end_overdue(time.perf_counter())
                while self.waiting and len(self.running) < self.max_running:
                    gen = self.waiting.popleft()
                    if gen.cancelled:
                        self._finish(gen)
                        continue
                    self.admitting, start = gen, time.perf_counter()
                    metrics.queue_seconds().labels(model=self.name).observe(start - gen.arrived)
                    if gen.timing is not None:
                        gen.timing.queue = start - gen.arrived
                    logits = await loop.run_in_executor(self.executor, self.model.step, [gen.seq])
                    seconds = time.perf_counter() - start
                    self.costs.observe_prompt(len(gen.seq.tokens) - gen.seq.start, seconds)
                    prompts += seconds
                    self._emit(gen, logits[0])
                    self.admitting = None
                for gen in [g for g in self.running if g.cancelled]:
                    self._finish(gen)
                if self.running:
                    batch, start = list(self.running), time.perf_counter()
                    if turn is not None:  # the whole last turn: its step, sampling, handing out, the event loop
                        self.costs.observe_step(turn[1], start - turn[0] - prompts)
                    turn, prompts = (start, len(batch)), 0.0
                    logits = await loop.run_in_executor(self.executor, self.model.step, [g.seq for g in batch])
                    metrics.batch_size().labels(model=self.name).observe(len(batch))
                    metrics.inference_seconds().labels(model=self.name, provider=self.provider).observe(
                        time.perf_counter() - start
                    )
                    for gen, row in zip(batch, logits):
                        self._emit(gen, row)
        except Exception as exc:
            log.exception("text generation failed")
            admitting = [self.admitting] if self.admitting is not None else []
            for gen in [*admitting, *self.waiting, *self.running]:
                gen.queue.put_nowait(exc)
                self._finish(gen)
            self.waiting.clear()
            self.admitting = None

    def _end_overdue(self, now: float) -> None:
        """Requests that outlived their budget end now: a running one at its deadline with the
        tokens it has (finish_reason "time_limit"); a waiting one past its time-to-first-token
        budget (the forecast was wrong) with a 503, not served late."""
        for gen in [g for g in self.running if now >= g.deadline]:
            gen.finish_reason = "time_limit"
            gen.queue.put_nowait(None)
            self._finish(gen)
        for gen in [g for g in self.waiting if now >= g.arrived + self.budget.first_token_s]:
            self.waiting.remove(gen)
            gen.queue.put_nowait(
                ClientError(
                    503,
                    "over_budget",
                    "text generation fell behind its forecast and this request could not start within "
                    f"{self.budget.first_token_s:g} s (EE559_TTFT_BUDGET_S); retry in a few seconds",
                    retry_after=2,
                )
            )
            self._finish(gen)

    def _emit(self, gen: TextRequest, logits: np.ndarray) -> None:
        if gen.cancelled:
            self._finish(gen)
            return
        token = choose(logits, gen.temperature, gen.top_k, gen.rng)
        gen.seq.tokens.append(token)
        now = time.perf_counter()
        if gen.produced == 0:
            gen.first_token_s = now - gen.arrived
            metrics.time_to_first_token().labels(model=self.name).observe(gen.first_token_s)
        else:
            metrics.time_per_output_token().labels(model=self.name).observe(now - gen.last)
        gen.last = now
        if gen.timing is not None:
            gen.timing.compute = now - gen.arrived - gen.timing.queue
        gen.produced += 1
        metrics.generated_tokens().labels(model=self.name).inc()
        gen.queue.put_nowait(token)
        if gen.produced >= gen.max_new:
            gen.finish_reason = "length"
            gen.queue.put_nowait(None)
            self._finish(gen)
        elif gen not in self.running:
            self.running.append(gen)

    def _finish(self, gen: TextRequest) -> None:
        if gen in self.running:
            self.running.remove(gen)
        if not gen.finished:
            gen.finished = True
            metrics.active_generations().labels(model=self.name).dec()
            gen.seq.state.clear()  # the caches are the memory a generation holds
