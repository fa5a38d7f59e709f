"""python -m loadtests.textload [--models gpt char_lstm] [--concurrency 1 4 16 64] [--new-tokens 256]
                              [--workers 1] [--url URL] [--json PATH]

Text generation under load, through HTTP: what continuous batching (service/scheduler.py) buys.
Starts one real `bentoml serve` of the text models (or measures the server at --url), and for each
model and each concurrency c sends c streamed POST /generate_text requests at once, every one
greedy (top_k 1) and asking for the same number of new tokens from a fixed prompt, so the work is
the same whatever the order; then the same c requests one at a time (the sequential baseline).
Per request, from the arrival times of the streamed events: the time to first token (TTFT, from
sending the request) and the time per output token (TPOT: first token to last, over the tokens
after the first). Per phase: tokens/s (tokens received over the phase's wall time; the sequential
one over the sum of the requests' times), the gain (concurrent / sequential), the server's mean
decode batch (its `ee559_inference_batch_size` histogram over the phase), the requests refused
by the admission budget (503: shed), cut at it (finish_reason "time_limit") or failed, and how many
concurrent answers gave the sequential answer's text. The client's CPU and the machine's load
average are printed with the table: on a shared machine they say what the figures are worth.

One worker by default (EE559_WORKERS=1): the scheduler batches per worker, so with several workers
the c generations split between them (as the accept loop hands out connections) and the batch
measured is no longer the c requests; the sequential baseline runs on the same one worker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from loadtests.topology import metric, scrape, serve, stop

ROOT = Path(__file__).resolve().parent.parent
TEXT_MODELS = ("gpt", "char_lstm")
CONCURRENCY = (1, 4, 16, 64)
# Docstring openings, in both models' vocabulary (every character of the stdlib's docstrings);
# request i of a phase continues PROMPTS[i % len(PROMPTS)], in both phases.
PROMPTS = (
    "Return the ",
    "If the ",
    "Raise ValueError if ",
    "The default is ",
    "This function ",
    "Create a new ",
    "Set the ",
    "See also ",
)
CLIENT_BUSY = 0.9  # cores: a client this busy is measuring itself


@dataclass
class Generation:
    """One request, as the client saw it."""

    prompt: str
    status: int  # HTTP status; 0 when the connection failed
    tokens: int = 0  # token events received
    finish_reason: str = ""  # the done event's: "length" or "time_limit"
    text: str = ""
    ttft_s: float | None = None
    tpot_s: float | None = None  # None with fewer than two tokens
    seconds: float = 0.0  # sending to the end of the answer
    gaps_s: list[float] = field(default_factory=list)  # between consecutive token events
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error

    @property
    def shed(self) -> bool:
        return self.status == 503


def timings(arrivals: list[float], sent: float) -> tuple[float | None, float | None, list[float]]:
    """TTFT, TPOT and the gaps between tokens from the token events' arrival times (perf_counter)
    and the time the request was sent."""
    if not arrivals:
        return None, None, []
    gaps = list(np.diff(arrivals)) if len(arrivals) > 1 else []
    tpot = (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1) if len(arrivals) > 1 else None
    return arrivals[0] - sent, tpot, [float(g) for g in gaps]


async def generate(session: Any, url: str, model: str, prompt: str, new_tokens: int) -> Generation:
    """One streamed greedy generation; every outcome is returned, none raised."""
    import aiohttp

    body = {"model": model, "prompt": prompt, "max_new_tokens": new_tokens, "top_k": 1, "seed": 0, "stream": True}
    gen, arrivals = Generation(prompt, 0), []
    sent = time.perf_counter()
    try:
        async with session.post(f"{url}/generate_text", json=body) as r:
            gen.status = r.status
            if r.status != 200:
                gen.error = (await r.text())[:300]
            else:
                event = "message"
                async for raw in r.content:  # server-sent events, a line at a time
                    line = raw.rstrip(b"\r\n")
                    if not line:
                        event = "message"
                    elif line.startswith(b"event:"):
                        event = line[6:].strip().decode()
                    elif line.startswith(b"data:"):
                        if event == "message":
                            arrivals.append(time.perf_counter())
                        elif event == "done":
                            summary = json.loads(line[5:])
                            gen.finish_reason, gen.text = summary["finish_reason"], summary["text"]
                            if summary["tokens"] != len(arrivals):
                                gen.error = f"done says {summary['tokens']} tokens, {len(arrivals)} streamed"
                        else:
                            gen.error = f"event {event}: {line[5:].decode(errors='replace')[:200]}"
                if not gen.finish_reason and not gen.error:
                    gen.error = "the stream ended without its done event"
    except (TimeoutError, aiohttp.ClientError, ValueError, KeyError) as exc:
        gen.error = f"{type(exc).__name__}: {exc}"[:300]
    gen.seconds = time.perf_counter() - sent
    gen.tokens = len(arrivals)
    gen.ttft_s, gen.tpot_s, gen.gaps_s = timings(arrivals, sent)
    return gen


async def phase(
    url: str, model: str, concurrency: int, new_tokens: int, together: bool
) -> tuple[list[Generation], float]:
    """`concurrency` requests, all at once (together) or one after the other; their outcomes in
    prompt order and the phase's seconds (together: wall time; one at a time: the sum of the
    requests' times, the gaps between them left out)."""
    import aiohttp

    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(concurrency)]
    connector = aiohttp.TCPConnector(limit=0)  # one connection per request, none waits for a free one
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        if together:
            start = time.perf_counter()
            gens = await asyncio.gather(*(generate(session, url, model, p, new_tokens) for p in prompts))
            return list(gens), time.perf_counter() - start
        gens = [await generate(session, url, model, p, new_tokens) for p in prompts]
        return gens, sum(g.seconds for g in gens)


def percentile(values: list[float], q: float) -> float:
    """numpy's linear-interpolation percentile; NaN for no values."""
    return float(np.percentile(values, q)) if values else float("nan")


@dataclass
class Row:
    model: str
    concurrency: int
    new_tokens: int
    tokens: int  # received in the concurrent phase
    seconds: float
    tok_s: float
    seq_tokens: int
    seq_seconds: float
    seq_tok_s: float
    gain: float  # tok_s / seq_tok_s
    ttft_p50_ms: float
    ttft_p99_ms: float
    tpot_p50_ms: float
    tpot_p99_ms: float
    itl_p99_ms: float  # the 99th percentile of every gap between two tokens of a request
    seq_ttft_p50_ms: float
    seq_tpot_p50_ms: float
    ok: int
    shed: int  # 503: refused by the admission budget (or the queue's cap)
    cut: int  # finished at the generation budget (finish_reason "time_limit")
    errors: int  # anything else: another status, a broken stream
    seq_shed: int
    seq_cut: int
    seq_errors: int
    same_text: int  # concurrent answers with the sequential answer's text (both complete)
    mean_batch: float | None  # the server's decode steps in the concurrent phase
    seq_mean_batch: float | None
    client_cpu: float  # cores the client used in the concurrent phase
    error_samples: list[str] = field(default_factory=list)

    @property
    def void(self) -> bool:
        return self.client_cpu >= CLIENT_BUSY


def summarize(
    model: str,
    new_tokens: int,
    together: tuple[list[Generation], float],
    alone: tuple[list[Generation], float],
    mean_batch: float | None = None,
    seq_mean_batch: float | None = None,
    client_cpu: float = 0.0,
) -> Row:
    """One table row from the two phases' outcomes (same prompts, same order)."""
    gens, seconds = together
    seq, seq_seconds = alone
    tokens, seq_tokens = sum(g.tokens for g in gens), sum(g.tokens for g in seq)
    tok_s = tokens / seconds if seconds > 0 else 0.0
    seq_tok_s = seq_tokens / seq_seconds if seq_seconds > 0 else 0.0

    def ms(values: list[float | None], q: float) -> float:
        return 1e3 * percentile([v for v in values if v is not None], q)

    def complete(g: Generation) -> bool:
        return g.ok and g.finish_reason == "length"

    return Row(
        model=model,
        concurrency=len(gens),
        new_tokens=new_tokens,
        tokens=tokens,
        seconds=seconds,
        tok_s=tok_s,
        seq_tokens=seq_tokens,
        seq_seconds=seq_seconds,
        seq_tok_s=seq_tok_s,
        gain=tok_s / seq_tok_s if seq_tok_s > 0 else float("nan"),
        ttft_p50_ms=ms([g.ttft_s for g in gens if g.ok], 50),
        ttft_p99_ms=ms([g.ttft_s for g in gens if g.ok], 99),
        tpot_p50_ms=ms([g.tpot_s for g in gens if g.ok], 50),
        tpot_p99_ms=ms([g.tpot_s for g in gens if g.ok], 99),
        itl_p99_ms=ms([x for g in gens if g.ok for x in g.gaps_s], 99),
        seq_ttft_p50_ms=ms([g.ttft_s for g in seq if g.ok], 50),
        seq_tpot_p50_ms=ms([g.tpot_s for g in seq if g.ok], 50),
        ok=sum(g.ok for g in gens),
        shed=sum(g.shed for g in gens),
        cut=sum(g.ok and g.finish_reason == "time_limit" for g in gens),
        errors=sum(not g.ok and not g.shed for g in gens),
        seq_shed=sum(g.shed for g in seq),
        seq_cut=sum(g.ok and g.finish_reason == "time_limit" for g in seq),
        seq_errors=sum(not g.ok and not g.shed for g in seq),
        same_text=sum(complete(a) and complete(b) and a.text == b.text for a, b in zip(gens, seq)),
        mean_batch=mean_batch,
        seq_mean_batch=seq_mean_batch,
        client_cpu=client_cpu,
        error_samples=sorted({f"{g.status}: {g.error}" for g in [*gens, *seq] if g.error and not g.shed})[:3],
    )


def table(rows: list[Row]) -> str:
    def num(x: float | None, fmt: str) -> str:
        return "n/a" if x is None or x != x else format(x, fmt)

    out = [
        "| model | c | tok/s concurrent | tok/s one at a time | gain | TTFT p50 / p99 ms | TPOT p50 / p99 ms | "
        "mean batch | shed (503) | cut (time limit) | errors | same text |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        seq_extra = [f"{n} one at a time" for n in (r.seq_shed,) if n]
        out.append(
            f"| {r.model}{' VOID (client CPU-bound)' if r.void else ''} | {r.concurrency} | {r.tok_s:,.0f} | "
            f"{r.seq_tok_s:,.0f} | {num(r.gain, '.2f')}x | {num(r.ttft_p50_ms, '.1f')} / {num(r.ttft_p99_ms, '.1f')} | "
            f"{num(r.tpot_p50_ms, '.2f')} / {num(r.tpot_p99_ms, '.2f')} | {num(r.mean_batch, '.1f')} | "
            f"{r.shed}{' + ' + seq_extra[0] if seq_extra else ''} | {r.cut + r.seq_cut} | "
            f"{r.errors + r.seq_errors} | {r.same_text}/{r.concurrency} |"
        )
    return "\n".join(out)


def batch_counts(port: int, model: str) -> tuple[float, float]:
    samples = scrape(port)
    return (
        metric(samples, "ee559_inference_batch_size_sum", model=model) or 0.0,
        metric(samples, "ee559_inference_batch_size_count", model=model) or 0.0,
    )


def mean_between(before: tuple[float, float], after: tuple[float, float]) -> float | None:
    """The mean of a histogram's observations between two scrapes of its (sum, count)."""
    count = after[1] - before[1]
    return (after[0] - before[0]) / count if count else None


def measure(url: str, models: list[str], concurrency: list[int], new_tokens: int, metrics: bool = True) -> list[Row]:
    """Every (model, c) against the server at `url`: a warm-up, then both phases; a row each,
    printed as it comes. `metrics`: scrape the server's /metrics for the mean decode batch."""
    port = urlsplit(url).port or 80
    rows = []
    for model in models:
        asyncio.run(phase(url, model, 4, min(new_tokens, 32), together=True))  # warm-up: sessions, allocators
        for c in concurrency:
            before = batch_counts(port, model) if metrics else None
            cpu0, wall0 = time.process_time(), time.perf_counter()
            together = asyncio.run(phase(url, model, c, new_tokens, together=True))
            cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
            middle = batch_counts(port, model) if metrics else None
            alone = asyncio.run(phase(url, model, c, new_tokens, together=False))
            after = batch_counts(port, model) if metrics else None
            row = summarize(
                model,
                new_tokens,
                together,
                alone,
                mean_between(before, middle) if before and middle else None,
                mean_between(middle, after) if middle and after else None,
                cpu,
            )
            print(table([row]).splitlines()[-1], flush=True)
            rows.append(row)
    return rows


def load_average() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.textload", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", nargs="*", default=list(TEXT_MODELS))
    p.add_argument("--concurrency", nargs="*", type=int, default=list(CONCURRENCY))
    p.add_argument("--new-tokens", type=int, default=256, help="per request (greedy: the same work every time)")
    p.add_argument("--workers", type=int, default=1, help="EE559_WORKERS of the server started")
    p.add_argument("--url", help="measure this running server instead of starting one")
    p.add_argument("--json", type=Path, help="default runs/bench/textload.json")
    args = p.parse_args(argv)
    if not args.models or not args.concurrency or min(args.concurrency) < 1 or args.new_tokens < 1:
        p.error("expected at least one model, concurrencies of at least 1 and --new-tokens of at least 1")
    os.environ.setdefault("BENTOML_HOME", str(ROOT / "runs" / "bentoml"))
    from core.paths import runs_dir

    out = args.json or runs_dir() / "bench" / "textload.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {
        "EE559_MODELS": ",".join(args.models),
        "EE559_WORKERS": str(args.workers),
        "EE559_AUTH": "off",
        "EE559_MAX_NEW_TOKENS": str(max(512, args.new_tokens)),
    }
    load_before, started = load_average(), time.perf_counter()
    print(
        f"greedy streamed generations of {args.new_tokens} new tokens, "
        + (f"server {args.url}" if args.url else f"bentoml serve with {args.workers} worker(s)")
        + f"; load average {load_before} on {os.cpu_count()} cores",
        flush=True,
    )
    print("\n".join(table([]).splitlines()[:2]), flush=True)
    proc = None
    if args.url:
        url = args.url.rstrip("/")
    else:
        proc, port = serve(env, out.parent / "textload-serve.log")
        url = f"http://127.0.0.1:{port}"
    try:
        rows = measure(url, args.models, args.concurrency, args.new_tokens)
    finally:
        if proc is not None:
            stop(proc)
    load_after = load_average()
    print("\n" + table(rows))
    print(
        "\nc requests at once, then the same c one at a time, on one server; tok/s one at a time: their tokens "
        "over the sum of their times. TTFT from sending; TPOT per request, first token to last; percentiles "
        "over the concurrent phase's answered requests; mean batch: the server's decode steps in the "
        f"concurrent phase. Load average before {load_before}, after {load_after}; client CPU at most "
        f"{max((r.client_cpu for r in rows), default=0):.2f} cores; {time.perf_counter() - started:.0f} s in all."
    )
    for r in rows:
        for sample in r.error_samples:
            print(f"{r.model} c={r.concurrency}: {sample}")
    out.write_text(
        json.dumps(
            {
                "server": args.url or {"workers": args.workers, "env": env},
                "new_tokens": args.new_tokens,
                "load_average": {"before": load_before, "after": load_after},
                "seconds": time.perf_counter() - started,
                "cpu_count": os.cpu_count(),
                "rows": [asdict(r) | {"void": r.void} for r in rows],
            },
            indent=2,
        )
        + "\n"
    )
    print(f"json: {out}")
    return 1 if any(r.errors or r.seq_errors for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
