"""Text generation under overload: a request is admitted only if its first and last tokens are
forecast within the budget (503 + Retry-After at once otherwise), an admitted request ends at its
deadline with the tokens it has, and a flood against a real server gets only answers within the
budget or 503s, never a 504 at the server's timeout."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from core.card import Generation, TensorSpec
from core.textgen import TextModel
from service.errors import ClientError
from service.scheduler import Budget, StepCosts, TextRequest, TextScheduler
from service.settings import REQUEST_TIMEOUT_S, Settings, SettingsError

from ..conftest import start_server, stop_server, wait_ready


def _toy(max_running: int = 2, budget: Budget | None = None, delay: float = 0.0) -> TextScheduler:
    """A recurrent toy model over the vocabulary 'abcd' whose steps take `delay` seconds."""

    def step(feeds):
        time.sleep(delay)
        b, t = feeds["tokens"].shape
        return {"logits": np.zeros((b, t, 4), np.float32), "h_out": feeds["h"]}

    generation = Generation(cache="recurrent", state={"h": "h_out"}, batch_axis=1)
    inputs = (TensorSpec("tokens", ("batch_size", "sequence_length"), "int64"), TensorSpec("h", (1, "batch_size", 2)))
    model = TextModel(generation, "abcd", inputs, step)
    return TextScheduler(
        "toy", model, ThreadPoolExecutor(1), max_running, 64, "CPUExecutionProvider", budget or Budget()
    )


def _running(scheduler: TextScheduler, remaining: list[int]) -> None:
    """Requests in the batch with `remaining` tokens to go (no loop runs: the forecast alone)."""
    for r in remaining:
        gen = TextRequest(scheduler.model.new([0]), r + 1, 1.0, 1, np.random.default_rng(0))
        gen.produced = 1
        scheduler.running.append(gen)


def test_the_forecast_replays_the_work_ahead_over_the_batch_slots():
    s = _toy(max_running=2)
    s.costs = StepCosts(step_fixed=0.1, prompt_fixed=0.5)
    assert s.forecast(3, 10) == pytest.approx((0.5, 0.5 + 9 * 0.1))  # idle: its prompt, then its steps
    _running(s, [10, 30])
    first, last = s.forecast(3, 10)
    assert first == pytest.approx(10 * 0.1 + 0.5)  # the slot that frees first
    assert last == pytest.approx(first + 9 * 0.1)
    s.waiting.append(TextRequest(s.model.new([0]), 5, 1.0, 1, np.random.default_rng(0)))
    first2, _ = s.forecast(3, 10)
    # the waiting one takes the first slot (1.0 s) and holds it for its prompt and 4 steps (0.9 s);
    # the second slot frees at 3.0 s; its prompt step stalls the batch in front of ours
    assert first2 == pytest.approx(min(1.0 + 0.5 + 0.4, 3.0) + 0.5 + 0.5)


def test_a_request_over_budget_is_shed_at_once_with_retry_after_and_an_idle_one_is_admitted():
    async def main():
        s = _toy(max_running=1, budget=Budget(first_token_s=1.0, total_s=2.0))
        s.costs = StepCosts(step_fixed=0.01, prompt_fixed=0.01)
        alone = s.submit([0], 1000, 1.0, 1, 0)  # alone it needs 10 s: admitted, ends at its deadline
        assert alone in s.waiting
        s.waiting.clear()
        _running(s, [400])  # the only slot frees in 4 s: over the 1 s budget for a first token
        with pytest.raises(ClientError) as shed:
            s.submit([0], 10, 1.0, 1, 0)
        return shed.value

    err = asyncio.run(asyncio.wait_for(main(), 10))
    assert err.status == 503 and err.reason == "over_budget"
    assert err.retry_after == 4  # 4.01 s forecast - 1 s budget, rounded up
    assert "EE559_TTFT_BUDGET_S" in err.message and "retry in 4 s" in err.message


def test_a_request_arriving_during_anothers_prompt_step_is_forecast_behind_it():
    """Between the queue and the batch (its prompt step) a generation is still work ahead: a burst
    arriving then must not find the scheduler idle and all be admitted alone."""

    async def main():
        s = _toy(max_running=1, budget=Budget(first_token_s=1.0, total_s=2.0), delay=0.2)
        s.costs = StepCosts(step_fixed=0.01, prompt_fixed=0.01)
        first = s.submit([0], 1000, 1.0, 1, 0)
        await asyncio.sleep(0.05)  # the loop took it from the queue and runs its prompt (0.2 s)
        assert not s.waiting and not s.running and s.admitting is first
        with pytest.raises(ClientError) as shed:
            s.submit([0], 10, 1.0, 1, 0)  # the only slot is first's for 10 s
        s.cancel(first)
        return shed.value

    err = asyncio.run(asyncio.wait_for(main(), 10))
    assert err.status == 503 and err.reason == "over_budget"


@pytest.mark.parametrize("remaining", [50, 150])
def test_the_total_budget_sheds_long_requests_that_would_start_in_time(remaining: int):
    s = _toy(max_running=2, budget=Budget(first_token_s=1.0, total_s=2.0))
    s.costs = StepCosts(step_fixed=0.01)
    _running(s, [remaining])  # a free slot: its first token at once

    async def submit(max_new: int):
        return s.submit([0], max_new, 1.0, 1, 0)

    assert asyncio.run(submit(150)).max_new == 150  # 1.5 s: within both budgets
    with pytest.raises(ClientError, match="EE559_GENERATION_BUDGET_S"):
        asyncio.run(submit(250))  # 2.5 s in all: over the total


def test_an_admitted_request_ends_at_its_deadline_with_the_tokens_it_has():
    async def main():
        s = _toy(max_running=4, budget=Budget(first_token_s=1.0, total_s=0.5), delay=0.01)
        gen = s.submit([0], 10_000, 1.0, 1, 0)
        tokens = [t async for t in s.tokens(gen)]
        return gen, tokens, time.perf_counter() - gen.arrived

    gen, tokens, seconds = asyncio.run(asyncio.wait_for(main(), 10))
    assert gen.finish_reason == "time_limit" and 0 < len(tokens) < 10_000
    assert 0.5 <= seconds < 0.6  # at the deadline, not at the end of 10,000 steps


def test_a_request_that_finishes_says_length():
    async def main():
        s = _toy(budget=Budget(1.0, 2.0))
        gen = s.submit([0], 5, 1.0, 1, 0)
        return gen, [t async for t in s.tokens(gen)]

    gen, tokens = asyncio.run(asyncio.wait_for(main(), 10))
    assert gen.finish_reason == "length" and len(tokens) == 5


def test_a_waiting_request_that_could_not_start_within_its_first_token_budget_gets_a_503():
    async def main():
        s = _toy(max_running=1, budget=Budget(first_token_s=0.1, total_s=0.5), delay=0.01)
        first = s.submit([0], 10_000, 1.0, 1, 0)  # holds the only slot until its deadline
        second = s.submit([0], 5, 1.0, 1, 0)  # admitted on the forecast (uncalibrated: zero)
        with pytest.raises(ClientError) as shed:
            _ = [t async for t in s.tokens(second)]
        shed_after = time.perf_counter() - second.arrived
        first_tokens = [t async for t in s.tokens(first)]
        return shed.value, shed_after, first_tokens, s

    err, shed_after, first_tokens, s = asyncio.run(asyncio.wait_for(main(), 10))
    assert err.status == 503 and err.retry_after >= 1 and "EE559_TTFT_BUDGET_S" in err.message
    assert 0.1 <= shed_after < 0.3  # at its first-token budget, not when the slot frees at 0.5 s
    assert first_tokens and not s.waiting and not s.running


def test_step_costs_follow_what_steps_really_take_within_bounds():
    c = StepCosts(step_fixed=0.001, step_row=0.001)
    for _ in range(50):
        c.observe_step(4, 0.010)  # twice the 5 ms the graph alone took
    assert c.step(4) == pytest.approx(0.010, rel=0.01)
    c = StepCosts(step_fixed=0.001)
    c.observe_step(1, 1000.0)  # slower: half way at once (a stall counts as at most 50x)
    assert c.step_load == pytest.approx(1 + 0.5 * 49)
    c.observe_step(1, 0.0)  # faster: a tenth of the way (down to at least 0.1x)
    assert c.step_load == pytest.approx(25.5 - 0.1 * (25.5 - 0.1))
    assert StepCosts().step(64) == 0 and StepCosts().prompt(100) == 0  # uncalibrated: everything fits


def test_calibration_times_the_graph():
    s = _toy(max_running=8, delay=0.005)
    s.calibrate(max_prompt=64)
    assert 0.003 < s.costs.step(1) < 0.05 and 0.003 < s.costs.prompt(3) < 0.05


@pytest.mark.parametrize(
    "env",
    [
        {"EE559_GENERATION_BUDGET_S": str(REQUEST_TIMEOUT_S)},  # no room before the 504
        {"EE559_GENERATION_BUDGET_S": "0"},
        {"EE559_TTFT_BUDGET_S": "21"},  # over the default total of 20
        {"EE559_TTFT_BUDGET_S": "nan"},
    ],
)
def test_budgets_that_cannot_hold_are_refused_at_start(env: dict[str, str]):
    with pytest.raises(SettingsError, match="EE559_"):
        Settings.from_env(env)


FLOOD = 240  # concurrent 256-token generations, like a class launching a script at once
BUDGET = {"EE559_TTFT_BUDGET_S": "1", "EE559_GENERATION_BUDGET_S": "3"}


def test_a_generation_flood_is_shed_at_once_and_every_admitted_request_is_answered_in_budget(exported, runs):
    """A worker flooded with text generations: every request gets a 200 within the generation
    budget or a quick 503 with Retry-After; none waits for the server's 30 s timeout (504)."""
    url, proc = start_server({"EE559_MODELS": "gpt", "EE559_WORKERS": "1", **BUDGET}, log=runs / "flood.log")

    async def one(client: httpx.AsyncClient, i: int):
        start = time.perf_counter()
        body = {"model": "gpt", "prompt": "The ", "max_new_tokens": 256, "seed": i, "stream": i % 4 == 0}
        r = await client.post(f"{url}/generate_text", json=body)
        return r, time.perf_counter() - start

    async def flood():
        limits = httpx.Limits(max_connections=FLOOD)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            return await asyncio.gather(*(one(client, i) for i in range(FLOOD)))

    try:
        wait_ready(url, proc)
        answers = asyncio.run(flood())
        after = httpx.post(f"{url}/generate_text", json={"model": "gpt", "prompt": "The ", "max_new_tokens": 8})
    finally:
        stop_server(proc)
    statuses = [r.status_code for r, _ in answers]
    assert set(statuses) <= {200, 503}, sorted(set(statuses))  # no 504, no 500
    served = [(r, s) for r, s in answers if r.status_code == 200]
    shed = [(r, s) for r, s in answers if r.status_code == 503]
    assert served and shed, (len(served), len(shed))  # the flood is over capacity, and not all of it
    for r, _ in shed:
        assert int(r.headers["Retry-After"]) >= 1 and "_BUDGET_S" in r.json()["error"]
    for r, seconds in served:
        if r.headers["content-type"].startswith("text/event-stream"):
            done = r.text.split("event: done\ndata: ")[1]
            summary = json.loads(done)
        else:
            summary = r.json()
        assert summary["finish_reason"] in ("length", "time_limit")
        assert summary["seconds"] <= 3.5, summary  # the budget and one step; no answer at the 30 s timeout
        assert summary["tokens"] == 256 or summary["finish_reason"] == "time_limit"
        assert seconds < REQUEST_TIMEOUT_S - 5
    assert max(s for _, s in shed) < 10  # shed at once, not after queueing
    assert after.status_code == 200, after.text
