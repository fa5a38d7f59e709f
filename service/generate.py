"""Text generation for concurrent requests, with continuous batching.

One scheduler task per text model and worker loops while there is work: it first gives every
newly arrived request its prompt step (one graph call each: prompts differ in length), then runs
ONE decode step for all running requests together (service/textgen.py pads the GPT's caches to
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
from typing import Any

import numpy as np

from . import metrics
from .errors import ClientError
from .textgen import Sequence, TextModel, choose

log = logging.getLogger("ee559.generate")


@dataclass(eq=False)  # compared by identity: two requests may be equal field by field
class Generation:
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


class TextEngine:
    def __init__(self, name: str, model: TextModel, executor: ThreadPoolExecutor, max_running: int,
                 max_waiting: int, provider: str) -> None:
        self.name, self.model, self.executor, self.provider = name, model, executor, provider
        self.max_running, self.max_waiting = max_running, max_waiting
        self.waiting: deque[Generation] = deque()
        self.running: list[Generation] = []
        self.task: asyncio.Task | None = None

    def submit(self, tokens: list[int], max_new: int, temperature: float, top_k: int, seed: int) -> Generation:
        if len(self.waiting) >= self.max_waiting:
            raise ClientError(503, "overloaded", "the server is generating at capacity; retry after a second")
        gen = Generation(self.model.new(tokens), max_new, temperature, top_k, np.random.default_rng(seed))
        self.waiting.append(gen)
        metrics.active_generations().labels(model=self.name).inc()
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._loop())
        return gen

    async def tokens(self, gen: Generation) -> AsyncIterator[int]:
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
    def cancel(gen: Generation) -> None:
        """Stop generating for `gen` (its client went away); a no-op once it is complete."""
        if gen.produced < gen.max_new:
            gen.cancelled = True

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        admitting: list[Generation] = []  # the one between the queue and the running batch
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
                        time.perf_counter() - start)
                    for gen, row in zip(batch, logits):
                        self._emit(gen, row)
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the failure; the server goes on
            log.exception("text generation failed")
            for gen in [*admitting, *self.waiting, *self.running]:
                gen.queue.put_nowait(exc)
                self._finish(gen)
            self.waiting.clear()

    def _emit(self, gen: Generation, logits: np.ndarray) -> None:
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

    def _finish(self, gen: Generation) -> None:
        if gen in self.running:
            self.running.remove(gen)
        if not gen.finished:
            gen.finished = True
            metrics.active_generations().labels(model=self.name).dec()
            gen.seq.state.clear()  # the caches are the memory a generation holds


def options(card: dict[str, Any], fields: dict[str, Any], max_new_cap: int, max_prompt_chars: int) -> dict[str, Any]:
    """Validated request fields; every message says what is accepted."""
    import math
    import secrets

    from .preprocess import MAX_SEED
    from .tasks import GenerateText, check_fields, int_field

    check_fields(fields, GenerateText.fields, image=False)
    prompt = fields.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise ClientError(400, "bad_field", "'prompt' must be a non-empty string (the text to continue)")
    if len(prompt) > max_prompt_chars:
        raise ClientError(400, "bad_field", f"'prompt' has {len(prompt)} characters; at most {max_prompt_chars} "
                                            "are accepted (EE559_MAX_PROMPT_CHARS)")
    vocab = card["labels"]
    known = set(vocab)
    unknown = sorted({ch for ch in prompt if ch not in known})
    if unknown:
        shown = ", ".join(f"{ch!r} (U+{ord(ch):04X})" for ch in unknown[:5])
        raise ClientError(400, "unknown_characters", f"'prompt' holds characters the model never saw: {shown}"
                                                     f"{' ...' if len(unknown) > 5 else ''}; it knows these "
                                                     f"{len(vocab)}: {''.join(vocab)!r}")
    temperature = fields.get("temperature", 1.0)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or not 0 < temperature <= 10:
        raise ClientError(400, "bad_field", f"'temperature' must be a number in (0, 10], got {str(temperature)[:40]!r}"
                                            "; for greedy decoding send top_k 1")
    stream = fields.get("stream", False)
    if not isinstance(stream, bool):
        raise ClientError(400, "bad_field", f"'stream' must be true or false, got {str(stream)[:40]!r}")
    return {
        "prompt": prompt,
        "max_new": int_field(fields, "max_new_tokens", 1, max_new_cap, min(128, max_new_cap)),
        "temperature": float(temperature),
        "top_k": int_field(fields, "top_k", 1, len(vocab), len(vocab)),
        "seed": int_field(fields, "seed", 0, MAX_SEED, secrets.randbelow(MAX_SEED + 1)),
        "stream": stream,
    }
