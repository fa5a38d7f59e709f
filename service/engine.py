"""ONNX Runtime sessions for the served models, and an adaptive batcher under our control.

The batcher is greedy, as Triton's dynamic batcher with no queue delay: while one batch runs,
requests queue up; the next batch takes all of them (up to max_batch_size rows), so batches grow
with load and a lone request waits for nobody. Requests past their deadline are answered 503
instead of being served late, and a full queue sheds new requests at once (503, Retry-After).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core import golden, store
from core.card import ModelCard
from core.session import CUDA, make_session
from core.textgen import StepRunner, TextModel

from . import metrics
from .errors import ClientError
from .observe import RequestTiming, current
from .scheduler import Budget, TextScheduler
from .settings import Settings

log = logging.getLogger("ee559.engine")

# Batches expected to take less than this run on the event loop itself: for small models the hop
# to a thread costs more than the inference (docs/benchmarks.md), while longer batches go to a
# thread so the loop keeps reading requests meanwhile.
INLINE_BELOW_S = 0.002


@dataclass
class _Pending:
    x: np.ndarray
    future: asyncio.Future
    deadline: float
    enqueued: float  # perf_counter time
    timing: RequestTiming | None  # the request's, for Server-Timing


@dataclass
class Batcher:
    execute: Callable[[np.ndarray], list[np.ndarray]]  # a batch -> its outputs; blocking
    executor: ThreadPoolExecutor
    max_batch_size: int
    max_latency_s: float
    max_queue_rows: int
    model: str = ""  # the metrics' label
    queue: deque = field(default_factory=deque)
    queued_rows: int = 0
    busy: bool = False
    draining: asyncio.Task | None = None  # the task that runs batches while the queue holds any (kept: asyncio
    # holds tasks weakly)
    seconds_per_batch: float = 0.0  # moving average, decides inline vs thread

    async def submit(self, x: np.ndarray) -> list[np.ndarray]:
        if self.queued_rows + len(x) > self.max_queue_rows:
            raise ClientError(503, "overloaded", "the server is at capacity; retry after a second")
        loop = asyncio.get_running_loop()
        item = _Pending(x, loop.create_future(), time.monotonic() + self.max_latency_s, time.perf_counter(), current())
        self.queue.append(item)
        self.queued_rows += len(x)
        metrics.queued_rows().labels(model=self.model).inc(len(x))  # inc/dec: versions of a model add up
        if not self.busy:
            self.busy = True
            self.draining = loop.create_task(self._drain())
        return await item.future

    def _take(self) -> list[_Pending]:
        batch: list[_Pending] = []
        rows, now, before = 0, time.monotonic(), self.queued_rows
        while self.queue and (not batch or rows + len(self.queue[0].x) <= self.max_batch_size):
            item = self.queue.popleft()
            self.queued_rows -= len(item.x)
            if item.future.cancelled():  # the client went away
                continue
            if now > item.deadline:
                item.future.set_exception(
                    ClientError(
                        503, "deadline", "the request waited past its deadline in the queue; retry after a second"
                    )
                )
                continue
            batch.append(item)
            rows += len(item.x)
        metrics.queued_rows().labels(model=self.model).dec(before - self.queued_rows)
        return batch

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.queue:
                batch = self._take()
                if not batch:
                    continue
                x = batch[0].x if len(batch) == 1 else np.concatenate([p.x for p in batch])
                t0 = time.perf_counter()
                try:
                    if self.seconds_per_batch < INLINE_BELOW_S:
                        outs = self.execute(x)
                    else:
                        outs = await loop.run_in_executor(self.executor, self.execute, x)
                except Exception as exc:
                    log.exception("inference failed")
                    for p in batch:
                        if not p.future.done():
                            p.future.set_exception(exc)
                    continue
                t1 = time.perf_counter()
                self.seconds_per_batch = 0.8 * self.seconds_per_batch + 0.2 * (t1 - t0)
                self._observe(batch, t0, t1)
                start = 0
                for p in batch:
                    n = len(p.x)
                    if not p.future.done():
                        p.future.set_result([o[start : start + n] for o in outs])
                    start += n
        finally:
            self.busy = False

    def _observe(self, batch: list[_Pending], t0: float, t1: float) -> None:
        queued, computed = (
            metrics.queue_seconds().labels(model=self.model),
            metrics.compute_seconds().labels(model=self.model),
        )
        for p in batch:
            queued.observe(t0 - p.enqueued)
            computed.observe(t1 - t0)
            if p.timing is not None:
                p.timing.queue += t0 - p.enqueued
                p.timing.compute += t1 - t0


def tensor_runner(
    session: Any, card: ModelCard, provider: str, io_binding: bool
) -> Callable[[np.ndarray], list[np.ndarray]]:
    """A tensor model's batch -> its outputs in card order (blocking). With `io_binding`, through
    ONNX Runtime's IO binding: the batch is bound as the input (copied to the device once, inside
    the run) and every output is bound on the session's device and fetched to the host together,
    after the run. On the CPU the same path runs (outputs bound on the host), so it is tested where
    no GPU is; there plain run() was a little faster (settings.py, EE559_IO_BINDING). Not yet
    measured on a GPU: `make gpu-check`'s bench compares IO binding and numpy I/O there
    (docs/architecture.md, docs/gpu.md)."""
    names, feed = card.output_names, card.input.name
    if not io_binding:
        return lambda x: session.run(names, {feed: x})
    device = "cuda" if provider == CUDA else "cpu"

    def run(x: np.ndarray) -> list[np.ndarray]:
        binding = session.io_binding()
        binding.bind_cpu_input(feed, np.ascontiguousarray(x))
        for name in names:
            binding.bind_output(name, device)
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    return run


class Engine:
    """Every served model's session, warmed up; `infer` queues rows into adaptive batches,
    `run_batch` executes one batch; text models generate through `text` (service/scheduler.py).
    `models`: the stored versions to serve, by tag, as service.py read and checked them.

    Before a version is served, its session must reproduce the golden outputs its card names
    (core/golden.py) on the provider it got; one that does not is left out, logged with model,
    provider and error, and listed in `unready`: the worker then reports not ready (service.py)."""

    def __init__(self, models: dict[str, store.StoredModel], settings: Settings) -> None:
        """`models` by tag (name:version, as the store and card.tag spell it): the keys of every table here. Metrics are labelled by
        the model's name, and ee559_model_info says which versions are served."""
        self.settings = settings
        self.sessions: dict[str, Any] = {}
        self.providers: dict[str, str] = {}
        self.cards: dict[str, ModelCard] = {}
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ort")
        self.text: dict[str, TextScheduler] = {}
        self.batchers: dict[str, Batcher] = {}
        self.runners: dict[str, Callable[[np.ndarray], list[np.ndarray]]] = {}
        self.unready: dict[str, str] = {}  # tag -> why its golden check failed
        self.cpu_reasons: set[str] = set()
        for tag, model in models.items():
            try:
                self.add(tag, model)
            except golden.GoldenError as exc:
                self.unready[tag] = str(exc)
                log.error("not ready: %s", exc)
        log.info("models ready: %s", ", ".join(f"{t} on {p}" for t, p in self.providers.items()))

    def add(self, tag: str, model: store.StoredModel) -> None:
        """Load and warm up one version (blocking); it is served from the moment it is in the
        tables, which this fills last."""
        settings, card = self.settings, model.card
        session, used, why = make_session(model.onnx_path, settings.provider, settings.ort_threads)
        if why and why not in self.cpu_reasons:  # one line per reason, not per model
            self.cpu_reasons.add(why)
            log.warning("execution provider: CPU (CUDA not used: %s)", why)
        runner = None if card.is_text else tensor_runner(session, card, used, settings.io_binding_for(used))
        self._check_golden(model, session, runner, used)
        if card.is_text:
            text_model = TextModel.from_card(card, self._runner(session, card))
            text_model.step([text_model.new([0, 1, 2])])  # warm-up
            scheduler = TextScheduler(
                card.name,
                text_model,
                self.executor,
                max_running=settings.max_batch_size,
                max_waiting=settings.max_queue_rows,
                provider=used,
                budget=Budget(settings.ttft_budget_s, settings.generation_budget_s),
            )
            scheduler.calibrate(settings.max_prompt_chars)
        else:
            assert runner is not None
            for batch in (1, min(settings.max_batch_size, card.max_batch_size)):
                runner(np.zeros((batch, *card.row_shape), dtype=card.input.dtype))
        self.sessions[tag], self.providers[tag], self.cards[tag] = session, used, card
        if card.is_text:
            self.text[tag] = scheduler
        else:
            assert runner is not None
            self.runners[tag] = runner
            self.batchers[tag] = Batcher(
                functools.partial(self.run_batch, tag),
                self.executor,
                min(settings.max_batch_size, card.max_batch_size),
                settings.max_latency_ms / 1000,
                settings.max_queue_rows,
                model=card.name,
            )
        metrics.model_info().labels(model=card.name, version=card.version, opset=str(card.opset), provider=used).set(1)

    def remove(self, tag: str) -> None:
        """Forget one version (its requests must be done: see service.py's reload)."""
        card = self.cards.pop(tag, None)
        for table in (self.sessions, self.text, self.batchers, self.runners):
            table.pop(tag, None)
        provider = self.providers.pop(tag, None)
        if card is not None:
            labels = {"model": card.name, "version": card.version, "opset": str(card.opset)}
            metrics.model_info().labels(**labels, provider=provider).set(0)

    @staticmethod
    def _check_golden(
        model: store.StoredModel,
        session: Any,
        runner: Callable[[np.ndarray], list[np.ndarray]] | None,
        provider: str,
    ) -> None:
        """Run the card's golden inputs through the path requests take (the tensor runner, or the
        text step graph); raises golden.GoldenError naming model, provider and error."""
        card = model.card
        if not card.golden:  # exported before golden inputs were recorded
            log.warning("%s: its card has no golden inputs (exported before 2026-11-26): not checked", card.tag)
            return
        where = f"{card.tag} on {provider}"
        try:
            data = store.read_artifact(card, card.golden["artifact"], model.path)
        except (KeyError, OSError, store.ModelStoreError) as exc:
            raise golden.GoldenError(f"{where}: golden inputs unreadable: {exc}") from None
        if data is None:
            raise golden.GoldenError(f"{where}: the card names golden inputs it does not store")
        names = card.output_names
        if runner is None:
            run = golden.session_runner(session, names)
        else:
            run = lambda feeds: dict(zip(names, runner(feeds[card.input.name])))  # noqa: E731
        try:
            err = golden.check(run, data, float(card.golden["tolerance_abs"]), where)
        except golden.GoldenError:
            raise
        except Exception as exc:  # the session could not even run them: the same verdict
            raise golden.GoldenError(f"{where}: golden check failed: {type(exc).__name__}: {str(exc)[:300]}") from None
        log.info("%s: golden inputs reproduced (max abs error %.2e <= %g)", where, err, card.golden["tolerance_abs"])

    @staticmethod
    def _runner(session: Any, card: ModelCard) -> StepRunner:
        outputs = card.output_names

        def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return dict(zip(outputs, session.run(outputs, feeds)))

        return run

    def run_batch(self, tag: str, x: np.ndarray) -> list[np.ndarray]:
        """Every output of the served version `tag` for the batch `x`, in model-card order (blocking)."""
        card = self.cards[tag]
        start = time.perf_counter()
        outs = self.runners[tag](x)
        metrics.inference_seconds().labels(model=card.name, provider=self.providers[tag]).observe(
            time.perf_counter() - start
        )
        metrics.batch_size().labels(model=card.name).observe(len(x))
        return outs

    async def infer(self, tag: str, x: np.ndarray) -> tuple[list[np.ndarray], str]:
        return await self.batchers[tag].submit(x), self.providers[tag]
