"""Text generation for concurrent requests, with continuous batching.

One scheduler task per text model and worker loops while there is work: it first gives every
newly arrived request its prompt step (one graph call each: prompts differ in length), then runs
ONE decode step for all running requests together (core/textgen.py pads the GPT's caches to
a common length), samples each request's next token with its own seeded generator, and hands it
to the request's queue. A request joins the running batch at the next step after its prompt and
leaves it when done or when its client went away, so concurrent generations never wait for each
other to finish, only for one step of the batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from core.textgen import Sequence, TextModel, choose

from . import metrics
from .errors import ClientError

log = logging.getLogger("ee559.scheduler")


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
    cancelled: bool = False  # the client went away: dropped at the next step
    finished: bool = False  # out of the scheduler (done, cancelled or failed)


class TextScheduler:
    def __init__(
        self,
        name: str,
        model: TextModel,
        executor: ThreadPoolExecutor,
        max_running: int,
        max_waiting: int,
        provider: str,
    ) -> None:
        self.name, self.model, self.executor, self.provider = name, model, executor, provider
        self.max_running, self.max_waiting = max_running, max_waiting
        self.waiting: deque[TextRequest] = deque()
        self.running: list[TextRequest] = []
        self.task: asyncio.Task | None = None

    def submit(self, tokens: list[int], max_new: int, temperature: float, top_k: int, seed: int) -> TextRequest:
        if len(self.waiting) >= self.max_waiting:
            raise ClientError(503, "overloaded", "the server is generating at capacity; retry after a second")
        gen = TextRequest(self.model.new(tokens), max_new, temperature, top_k, np.random.default_rng(seed))
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
        admitting: list[TextRequest] = []  # the one between the queue and the running batch
        try:
            while self.waiting or self.running:
                while self.waiting and len(self.running) < self.max_running:
                    gen = self.waiting.popleft()
                    if gen.cancelled:
                        self._finish(gen)
                        continue
                    admitting = [gen]
                    logits = await loop.run_in_executor(self.executor, self.model.step, [gen.seq])
                    self._emit(gen, logits[0])
                    admitting = []
                for gen in [g for g in self.running if g.cancelled]:
                    self._finish(gen)
                if self.running:
                    batch = list(self.running)
                    start = time.perf_counter()
                    logits = await loop.run_in_executor(self.executor, self.model.step, [g.seq for g in batch])
                    metrics.batch_size().labels(model=self.name).observe(len(batch))
                    metrics.inference_seconds().labels(model=self.name, provider=self.provider).observe(
                        time.perf_counter() - start
                    )
                    for gen, row in zip(batch, logits):
                        self._emit(gen, row)
        except Exception as exc:
            log.exception("text generation failed")
            for gen in [*admitting, *self.waiting, *self.running]:
                gen.queue.put_nowait(exc)
                self._finish(gen)
            self.waiting.clear()

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
        gen.produced += 1
        metrics.generated_tokens().labels(model=self.name).inc()
        gen.queue.put_nowait(token)
        if gen.produced >= gen.max_new:
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
