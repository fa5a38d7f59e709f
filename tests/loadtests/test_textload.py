"""The text-under-load benchmark (loadtests/textload.py): its arithmetic and table, its reading of
streams against a fake server (every outcome counted), a tiny run against the session's real
server (every request reported) and a run against a server with a tight budget (refusals counted,
not hidden). No assertion on a time."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from loadtests import textload
from loadtests.servers import free_port
from loadtests.textload import Generation, Phase, summarize, table, timings

from ..conftest import serving


def test_ttft_tpot_and_gaps_from_arrival_times():
    ttft, tpot, gaps = timings([1.0, 1.5, 2.0, 3.0], sent=0.25)
    assert ttft == pytest.approx(0.75)
    assert tpot == pytest.approx(2.0 / 3)  # first token to last, over the three tokens after the first
    assert gaps == pytest.approx([0.5, 0.5, 1.0])
    assert timings([2.0], sent=1.0) == (1.0, None, [])  # one token: no time per output token
    assert timings([], sent=1.0) == (None, None, [])


def gen(prompt: str, tokens: int, ttft: float, text: str = "abc", status: int = 200, **kw) -> Generation:
    return Generation(
        prompt, status, tokens=tokens, finish_reason="length", text=text, ttft_s=ttft, tpot_s=ttft / 10, **kw
    )


def test_rates_gain_percentiles_and_every_outcome_counted():
    together = [
        gen("a", 10, 0.1),
        gen("b", 10, 0.2),
        gen("c", 10, 0.3, text="other"),  # not the sequential answer's text
        gen("d", 4, 0.4),
        Generation("e", 503, error="over budget"),
        Generation("f", 500, error="generation failed"),
    ]
    together[3].finish_reason = "time_limit"  # cut at the generation budget: answered, not complete
    alone = [gen(p, 10, 0.05) for p in "abcdef"]
    row = summarize("gpt", 10, [Phase(together, 2.0, (35.0, 10.0), 0.2)], [Phase(alone, 12.0, (60.0, 60.0))])
    assert (row.concurrency, row.repeats, row.requests) == (6, 1, 6)
    assert row.tok_s == pytest.approx(17.0) and row.seq_tok_s == pytest.approx(5.0)  # 34 tokens in 2 s, 60 in 12 s
    assert row.gain == pytest.approx(3.4) and row.gain_range == pytest.approx((3.4, 3.4))
    # four answered requests: TTFT 0.1, 0.2, 0.3, 0.4 s; numpy's linear interpolation
    assert row.ttft_p50_ms == pytest.approx(250.0) and row.ttft_p99_ms == pytest.approx(397.0)
    assert row.tpot_p50_ms == pytest.approx(25.0)
    assert (row.tokens, row.seq_tokens) == (34, 60)
    assert (row.ok, row.shed, row.cut, row.errors) == (4, 1, 1, 1)
    assert (row.seq_ok, row.seq_shed, row.seq_cut, row.seq_errors) == (6, 0, 0, 0)
    assert row.same_text == 2  # a and b; c's text differs, d was cut, e and f have none
    assert (row.mean_batch, row.seq_mean_batch) == (3.5, 1.0)
    assert row.error_samples == ["500: generation failed"]  # the shed one is counted as shed, not as an error
    assert not row.void


def test_median_rates_gain_of_back_to_back_pairs_latencies_and_outcomes_over_all():
    def at_once(seconds: float) -> Phase:  # 20 tokens, one request shed
        return Phase([gen("a", 10, 0.1), gen("b", 10, 0.1), Generation("c", 503, error="over budget")], seconds)

    together = [at_once(1.0), at_once(2.0), at_once(0.5)]  # 20, 10, 40 tok/s
    alone = [Phase([gen(p, 10, 0.05) for p in "abc"], s) for s in (3.0, 3.0, 1.0)]  # 10, 10, 30 tok/s
    row = summarize("gpt", 10, together, alone)
    assert (row.repeats, row.requests) == (3, 9)
    assert (row.tok_s, row.seq_tok_s) == (20.0, 10.0)  # the medians
    assert row.tok_s_runs == [20.0, 10.0, 40.0] and row.seq_tok_s_runs == [10.0, 10.0, 30.0]
    # pairs: 2.0, 1.0, 1.33: the median ratio of pairs, not the ratio of medians (2.0)
    assert row.gain == pytest.approx(4 / 3) and row.gain_range == pytest.approx((1.0, 2.0))
    assert (row.ok, row.shed, row.seq_ok, row.same_text) == (6, 3, 9, 6)
    assert "| 1.33x (1.00-2.00) |" in table([row])


def test_a_phase_with_nothing_answered_has_no_percentiles_and_no_gain():
    shed = Phase([Generation("a", 503, error="x")], 0.01)
    row = summarize("gpt", 10, [shed], [shed])
    assert row.tok_s == 0 and math.isnan(row.gain) and math.isnan(row.ttft_p50_ms) and row.mean_batch is None
    assert (row.shed, row.seq_shed, row.errors) == (1, 1, 0)
    line = table([row]).splitlines()[-1]
    assert "| nanx |" not in line and "n/a / n/a" in line and "| 1 + 1 one at a time |" in line


def test_the_table_shows_every_column_and_flags_a_busy_client():
    together = [gen("a", 10, 0.1), gen("b", 10, 0.3), Generation("c", 503, error="over budget")]
    alone = [gen(p, 10, 0.05) for p in "abc"]
    row = summarize("char_lstm", 10, [Phase(together, 1.0, (4.0, 2.0), 0.95)], [Phase(alone, 3.0)])
    header, rule, line = table([row]).splitlines()
    assert header.count("|") == rule.count("|") == line.count("|")
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[0] == "char_lstm VOID (client CPU-bound)"
    assert cells[1:5] == ["3", "20", "10", "2.00x"]
    assert cells[5] == "200.0 / 298.0"  # TTFT p50 / p99 ms of the two answered requests
    assert cells[7:] == ["2.0", "1", "0", "0", "2/3"]


class FakeServer:
    """An aiohttp server answering /generate_text by the prompt: a whole stream, a 503, a stream
    without its done event, one whose done event miscounts, one ending in an error event."""

    def __init__(self) -> None:
        self.port = free_port()

    async def handle(self, request):
        from aiohttp import web

        prompt = (await request.json())["prompt"]
        if prompt == "shed":
            return web.json_response({"error": "at capacity"}, status=503, headers={"Retry-After": "1"})
        r = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await r.prepare(request)
        for ch in "ab\n":
            await r.write(b"data: " + json.dumps({"token": ch}).encode() + b"\n\n")
        if prompt in ("whole", "miscount"):
            done = {"tokens": 3 if prompt == "whole" else 4, "finish_reason": "length", "text": "ab\n"}
            await r.write(b"event: done\ndata: " + json.dumps(done).encode() + b"\n\n")
        elif prompt == "error":
            await r.write(b'event: error\ndata: {"error": "generation failed; retry"}\n\n')
        await r.write_eof()
        return r

    async def run(self, prompts: list[str]) -> list[Generation]:
        import aiohttp
        from aiohttp import web

        app = web.Application()
        app.router.add_post("/generate_text", self.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        try:
            async with aiohttp.ClientSession() as session:
                url = f"http://127.0.0.1:{self.port}"
                return [await textload.generate(session, url, "gpt", p, 3) for p in prompts]
        finally:
            await runner.cleanup()


def test_streams_are_read_event_by_event_and_every_failure_is_named():
    whole, shed, no_done, miscount, error = asyncio.run(
        FakeServer().run(["whole", "shed", "no_done", "miscount", "error"])
    )
    assert whole.ok and (whole.tokens, whole.text, whole.finish_reason) == (3, "ab\n", "length")
    assert whole.ttft_s is not None and whole.tpot_s is not None and len(whole.gaps_s) == 2
    assert shed.shed and not shed.ok and shed.tokens == 0 and "at capacity" in shed.error
    assert not no_done.ok and "without its done event" in no_done.error
    assert not miscount.ok and "done says 4 tokens, 3 streamed" in miscount.error
    assert not error.ok and "event error" in error.error and not error.shed
    closed = asyncio.run(textload.phase(f"http://127.0.0.1:{free_port()}", "gpt", 2, 3, together=True)).gens
    assert [g.status for g in closed] == [0, 0] and all("Connect" in g.error for g in closed)  # nothing listening


def test_a_tiny_run_against_the_real_server_reports_every_request(server, tmp_path, capsys):
    out = tmp_path / "textload.json"
    args = f"--url {server} --models gpt char_lstm --concurrency 1 2 --new-tokens 5 --repeat 2 --json {out}"
    rc = textload.main(args.split())
    assert rc == 0, capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["concurrency"]) for r in rows] == [(m, c) for m in ("gpt", "char_lstm") for c in (1, 2)]
    for r in rows:
        c, n = r["concurrency"], 2 * r["concurrency"]  # two runs of each phase
        assert (r["repeats"], len(r["tok_s_runs"]), len(r["seq_tok_s_runs"])) == (2, 2, 2)
        assert (r["ok"], r["shed"], r["cut"], r["errors"]) == (n, 0, 0, 0), r  # 5 tokens are far within budget
        assert (r["seq_ok"], r["seq_shed"], r["seq_cut"], r["seq_errors"]) == (n, 0, 0, 0), r
        assert r["tokens"] == r["seq_tokens"] == 5 * n  # every token of every request
        assert r["same_text"] == n  # greedy: batched or alone, the same continuation
        assert r["seq_mean_batch"] == 1.0  # one at a time really is one at a time
        assert 1.0 <= r["mean_batch"] <= c
    assert "| gpt | 2 |" in capsys.readouterr().out


def test_generations_refused_or_cut_by_the_budget_are_counted(exported, runs):
    """One worker with a 1 s budget and 20,000-token requests: of two at once, the first is admitted
    and cut at its deadline, the second is forecast far over budget and shed; one at a time, both
    are admitted (nothing ahead) and cut."""
    env = {
        "EE559_MODELS": "gpt",
        "EE559_WORKERS": "1",
        "EE559_TTFT_BUDGET_S": "1",
        "EE559_GENERATION_BUDGET_S": "1",
        "EE559_MAX_NEW_TOKENS": "20000",
    }
    with serving(env, runs / "textload-budget.log") as url:
        (row,) = textload.measure(url, ["gpt"], [2], 20000, repeats=1)
    assert (row.ok, row.shed, row.cut, row.errors) == (1, 1, 1, 0), row
    assert (row.seq_ok, row.seq_shed, row.seq_cut, row.seq_errors) == (2, 0, 2, 0), row
    assert 0 < row.tokens < 20000 and row.same_text == 0  # cut: no complete answer to compare
    assert "| gpt | 2 |" in table([row]) and "| 1 | 3 | 0 | 0/2 |" in table([row])
