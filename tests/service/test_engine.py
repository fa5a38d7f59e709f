"""The adaptive batcher: concurrent requests share batches, results go back to their owners, a
full queue sheds load with 503, a request past its deadline is answered 503, failures reach
every waiter and the batcher keeps working. The text scheduler: decode steps of concurrent
generations share batches, a failure reaches every request and the next one runs.

Every await is bounded (`within`) and every event loop runs under a deadline (`run_loop`): a
batcher or scheduler that loses a request, or spins without yielding, fails its test in seconds
instead of hanging the suite."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import pytest

from service.engine import Batcher
from service.errors import ClientError

T = TypeVar("T")
AWAIT_S = 5.0  # each await; every one of them takes milliseconds when the code works
LOOP_S = 20.0  # a whole test's event loop


async def within(aw: Awaitable[T], seconds: float = AWAIT_S) -> T:
    return await asyncio.wait_for(aw, seconds)


async def collect(tokens: AsyncIterator[int], seconds: float = AWAIT_S) -> list[int]:
    """Every token of a generation, each awaited under its own timeout."""
    out = []
    while True:
        try:
            out.append(await within(anext(tokens), seconds))
        except StopAsyncIteration:
            return out


def run_loop(main: Callable[[], Coroutine[Any, Any, T]], seconds: float = LOOP_S) -> T:
    """asyncio.run(main()) in a thread, failing the test if the loop is still busy after `seconds`
    (a loop that never yields cannot be timed out from inside; its daemon thread is abandoned)."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(main())
        except BaseException as e:  # re-raised in the test's thread
            result["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"event loop still running after {seconds} s: a request lost, or a loop that never yields")
    if "error" in result:
        raise result["error"]
    return result["value"]


def make(run, **kw) -> Batcher:
    args = dict(max_batch_size=8, max_latency_s=5.0, max_queue_rows=64)
    args.update(kw)
    return Batcher(run, ThreadPoolExecutor(1), **args)


def test_concurrent_requests_share_batches_and_get_their_own_rows():
    sizes = []

    def run(x):
        sizes.append(len(x))
        time.sleep(0.01)  # long enough for the others to queue behind the first batch
        return [x * 2, x.sum(axis=1)]

    async def main():
        b = make(run)
        xs = [np.full((1, 3), i, dtype=np.float32) for i in range(20)]
        return xs, await within(asyncio.gather(*(b.submit(x) for x in xs)))

    xs, outs = run_loop(main)
    for x, (doubled, summed) in zip(xs, outs):
        np.testing.assert_array_equal(doubled, x * 2)
        np.testing.assert_array_equal(summed, x.sum(axis=1))
    assert sum(sizes) == 20 and max(sizes) > 1 and max(sizes) <= 8


def test_multi_row_requests_are_never_split():
    sizes = []

    def run(x):
        sizes.append(len(x))
        return [x]

    async def main():
        b = make(run, max_batch_size=4)
        return await within(asyncio.gather(*(b.submit(np.zeros((3, 2))) for _ in range(5))))

    outs = run_loop(main)
    assert all(o[0].shape == (3, 2) for o in outs) and all(s % 3 == 0 for s in sizes)


def test_full_queue_sheds_load_with_503():
    def run(x):
        time.sleep(0.05)
        return [x]

    async def main():
        b = make(run, max_queue_rows=4)
        return await within(asyncio.gather(*(b.submit(np.zeros((1, 1))) for _ in range(10)), return_exceptions=True))

    results = run_loop(main)
    shed = [r for r in results if isinstance(r, ClientError)]
    assert shed and all(e.status == 503 and e.reason == "overloaded" for e in shed)
    assert len(results) - len(shed) >= 4


def test_request_past_its_deadline_is_answered_503_not_served_late():
    served = []

    def run(x):
        served.append(len(x))
        time.sleep(0.2)  # the first batch outlives the others' deadline
        return [x]

    async def main():
        b = make(run, max_latency_s=0.05, max_batch_size=1)
        return await within(asyncio.gather(*(b.submit(np.zeros((1, 1))) for _ in range(3)), return_exceptions=True))

    results = run_loop(main)
    late = [r for r in results if isinstance(r, ClientError)]
    assert len(late) == 2 and all(e.status == 503 and e.reason == "deadline" for e in late)
    assert served == [1]


def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on():
    calls = []

    def run(x):
        calls.append(len(x))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return [x]

    async def main():
        b = make(run)
        with pytest.raises(RuntimeError):
            await within(b.submit(np.zeros((1, 1))))
        return await within(b.submit(np.ones((1, 1))))

    assert run_loop(main)[0][0, 0] == 1


def _text_engine(run, max_running: int = 8):
    from core.card import Generation, TensorSpec
    from core.textgen import TextModel
    from service.scheduler import TextScheduler

    generation = Generation(cache="recurrent", state={"h": "h_out"}, batch_axis=1)
    inputs = (TensorSpec("tokens", ("batch_size", "sequence_length"), "int64"), TensorSpec("h", (1, "batch_size", 2)))
    return TextScheduler(
        "toy",
        TextModel(generation, "abcd", inputs, run),
        ThreadPoolExecutor(1),
        max_running,
        64,
        "CPUExecutionProvider",
    )


def test_text_scheduler_batches_decode_steps_of_concurrent_generations():
    calls = []

    def run(feeds):
        calls.append(feeds["tokens"].shape)
        b = len(feeds["tokens"])
        return {
            "logits": np.tile(np.array([0.0, 0.0, 5.0, 0.0], np.float32), (b, feeds["tokens"].shape[1], 1)),
            "h_out": feeds["h"] + 1,
        }

    async def main():
        engine = _text_engine(run)
        gens = [engine.submit([0, 1], 5, 1.0, 1, seed) for seed in range(4)]
        return [await collect(engine.tokens(g)) for g in gens]

    outs = run_loop(main)
    assert outs == [[2] * 5] * 4  # greedy: the argmax every time
    assert calls[:4] == [(1, 2)] * 4  # a prompt step each
    assert (4, 1) in calls and len(calls) < 4 + 4 * 4  # then decode steps shared by all four


def test_text_scheduler_failure_reaches_every_request_and_the_next_one_runs():
    state = {"fail": True}

    def run(feeds):
        if state["fail"]:
            raise RuntimeError("boom")
        b, t = feeds["tokens"].shape
        return {"logits": np.zeros((b, t, 4), np.float32), "h_out": feeds["h"]}

    async def main():
        engine = _text_engine(run)
        gens = [engine.submit([0], 3, 1.0, 1, 0) for _ in range(3)]
        failures = 0
        for g in gens:
            try:
                await collect(engine.tokens(g))
            except RuntimeError:
                failures += 1
        state["fail"] = False
        after = await collect(engine.tokens(engine.submit([0], 3, 1.0, 1, 0)))
        return failures, after

    failures, after = run_loop(main)
    assert failures == 3 and after == [0, 0, 0]
