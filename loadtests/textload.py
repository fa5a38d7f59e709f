"""python -m loadtests.textload [--models gpt char_lstm] [--concurrency 1 4 16 64] [--new-tokens 256]
                              [--repeat 3] [--workers 1] [--url URL] [--json PATH]

Text generation under load, through HTTP: what continuous batching (service/scheduler.py) buys.
Starts one real `bentoml serve` of the text models (or measures the server at --url), and for each
model and each concurrency c sends c streamed POST /generate_text requests at once, every one
greedy (top_k 1) and asking for the same number of new tokens from a fixed prompt, so the work is
the same whatever the order; then the same c requests one at a time (the sequential baseline).
Each pair of phases runs --repeat times, alternating. Per request, from the arrival times of the
streamed events: the time to first token (TTFT, from sending the request) and the time per output
token (TPOT: first token to last, over the tokens after the first). Per phase: tokens/s (tokens
received over the phase's wall time; one at a time, over the sum of the requests' times), the
median run of each reported (every run is in the JSON); the gain (at once / one at a time): the
median and range of the pairs' ratios, each pair run back to back (on a shared machine the load
from other work changes between pairs more than within one); the server's mean decode batch (its
`ee559_inference_batch_size` histogram over the phase); and every request counted: refused by the
admission budget (503: shed), cut at it (finish_reason "time_limit"), failed, and whether an
answer at once gave the same text as alone. The client's CPU and the machine's load
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


@dataclass
class Phase:
    """One phase's requests (their outcomes in prompt order) and what it took."""

    gens: list[Generation]
    seconds: float  # at once: wall time; one at a time: the sum of the requests' times
    batch: tuple[float, float] = (0.0, 0.0)  # the server's decode steps in it: (sum of batch sizes, steps)
    client_cpu: float = 0.0  # cores the client used

    @property
    def tokens(self) -> int:
        return sum(g.tokens for g in self.gens)

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


async def phase(url: str, model: str, concurrency: int, new_tokens: int, together: bool) -> Phase:
    """`concurrency` requests, all at once (together) or one after the other, the gaps between
    them left out of the phase's seconds."""
    import aiohttp

    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(concurrency)]
    connector = aiohttp.TCPConnector(limit=0)  # one connection per request, none waits for a free one
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        if together:
            start = time.perf_counter()
            gens = await asyncio.gather(*(generate(session, url, model, p, new_tokens) for p in prompts))
            return Phase(list(gens), time.perf_counter() - start)
        alone = [await generate(session, url, model, p, new_tokens) for p in prompts]
        return Phase(alone, sum(g.seconds for g in alone))


def percentile(values: list[float], q: float) -> float:
    """numpy's linear-interpolation percentile; NaN for no values."""
    return float(np.percentile(values, q)) if values else float("nan")


@dataclass
class Row:
    model: str
    concurrency: int
    repeats: int  # each phase ran this many times, alternating
    new_tokens: int
    tok_s: float  # the median run at once: tokens received over its wall time
    seq_tok_s: float  # the median run one at a time: tokens over the sum of the requests' times
    gain: float  # the median over the repeats of (at once / one at a time), each pair run back to back
    gain_range: tuple[float, float]  # the least and the most of those ratios
    tok_s_runs: list[float]  # every repeat, in order
    seq_tok_s_runs: list[float]
    # Over every concurrent repeat's answered requests:
    ttft_p50_ms: float
    ttft_p99_ms: float
    tpot_p50_ms: float
    tpot_p99_ms: float
    itl_p99_ms: float  # the 99th percentile of every gap between two tokens of a request
    seq_ttft_p50_ms: float
    seq_tpot_p50_ms: float
    # Counted over every repeat (requests: concurrency x repeats per phase):
    tokens: int  # received at once
    seq_tokens: int
    ok: int
    shed: int  # 503: refused by the admission budget (or the queue's cap)
    cut: int  # answered but ended at the generation budget (finish_reason "time_limit")
    errors: int  # anything else: another status, a broken stream
    seq_ok: int
    seq_shed: int
    seq_cut: int
    seq_errors: int
    same_text: int  # pairs (at once, alone) of complete answers with the same text
    mean_batch: float | None  # the server's decode steps in the concurrent phases
    seq_mean_batch: float | None
    client_cpu: float  # the most cores the client used in a concurrent phase
    error_samples: list[str] = field(default_factory=list)

    @property
    def void(self) -> bool:
        return self.client_cpu >= CLIENT_BUSY

    @property
    def requests(self) -> int:
        return self.concurrency * self.repeats


def summarize(model: str, new_tokens: int, together: list[Phase], alone: list[Phase]) -> Row:
    """One table row from the repeats of both phases (same prompts, same order; paired by repeat):
    each phase's median rate, the median of the pairs' ratios (a pair ran back to back, under
    about the same load from the machine's other work), latencies and outcomes over all runs."""
    gens = [g for p in together for g in p.gens]
    seq = [g for p in alone for g in p.gens]
    gains = [t.tok_s / a.tok_s for t, a in zip(together, alone) if a.tok_s > 0]

    def ms(values: list[float | None], q: float) -> float:
        return 1e3 * percentile([v for v in values if v is not None], q)

    def complete(g: Generation) -> bool:
        return g.ok and g.finish_reason == "length"

    def mean_batch(phases: list[Phase]) -> float | None:
        steps = sum(p.batch[1] for p in phases)
        return sum(p.batch[0] for p in phases) / steps if steps else None

    answered, seq_answered = [g for g in gens if g.ok], [g for g in seq if g.ok]
    return Row(
        model=model,
        concurrency=len(together[0].gens),
        repeats=len(together),
        new_tokens=new_tokens,
        tok_s=float(np.median([p.tok_s for p in together])),
        seq_tok_s=float(np.median([p.tok_s for p in alone])),
        gain=float(np.median(gains)) if gains else float("nan"),
        gain_range=(min(gains), max(gains)) if gains else (float("nan"), float("nan")),
        tok_s_runs=[p.tok_s for p in together],
        seq_tok_s_runs=[p.tok_s for p in alone],
        ttft_p50_ms=ms([g.ttft_s for g in answered], 50),
        ttft_p99_ms=ms([g.ttft_s for g in answered], 99),
        tpot_p50_ms=ms([g.tpot_s for g in answered], 50),
        tpot_p99_ms=ms([g.tpot_s for g in answered], 99),
        itl_p99_ms=ms([x for g in answered for x in g.gaps_s], 99),
        seq_ttft_p50_ms=ms([g.ttft_s for g in seq_answered], 50),
        seq_tpot_p50_ms=ms([g.tpot_s for g in seq_answered], 50),
        tokens=sum(g.tokens for g in gens),
        seq_tokens=sum(g.tokens for g in seq),
        ok=len(answered),
        shed=sum(g.shed for g in gens),
        cut=sum(g.finish_reason == "time_limit" for g in answered),
        errors=sum(not g.ok and not g.shed for g in gens),
        seq_ok=len(seq_answered),
        seq_shed=sum(g.shed for g in seq),
        seq_cut=sum(g.finish_reason == "time_limit" for g in seq_answered),
        seq_errors=sum(not g.ok and not g.shed for g in seq),
        same_text=sum(complete(a) and complete(b) and a.text == b.text for a, b in zip(gens, seq)),
        mean_batch=mean_batch(together),
        seq_mean_batch=mean_batch(alone),
        client_cpu=max(p.client_cpu for p in together),
        error_samples=sorted({f"{g.status}: {g.error}" for g in [*gens, *seq] if g.error and not g.shed})[:3],
    )


def table(rows: list[Row]) -> str:
    def num(x: float | None, fmt: str) -> str:
        return "n/a" if x is None or x != x else format(x, fmt)

    out = [
        "| model | c | tok/s at once | tok/s one at a time | gain | TTFT p50 / p99 ms | TPOT p50 / p99 ms | "
        "mean batch | shed (503) | cut (time limit) | errors | same text |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        seq_shed = f" + {r.seq_shed} one at a time" if r.seq_shed else ""
        spread = f" ({r.gain_range[0]:.2f}-{r.gain_range[1]:.2f})" if r.repeats > 1 and r.gain == r.gain else ""
        out.append(
            f"| {r.model}{' VOID (client CPU-bound)' if r.void else ''} | {r.concurrency} | {r.tok_s:,.0f} | "
            f"{r.seq_tok_s:,.0f} | {num(r.gain, '.2f')}x{spread} | {num(r.ttft_p50_ms, '.1f')} / {num(r.ttft_p99_ms, '.1f')} | "
            f"{num(r.tpot_p50_ms, '.2f')} / {num(r.tpot_p99_ms, '.2f')} | {num(r.mean_batch, '.1f')} | "
            f"{r.shed}{seq_shed} | {r.cut + r.seq_cut} | {r.errors + r.seq_errors} | {r.same_text}/{r.requests} |"
        )
    return "\n".join(out)


def batch_counts(port: int, model: str) -> tuple[float, float]:
    """The server's `ee559_inference_batch_size` histogram for `model`: (sum, count), every worker."""
    samples = scrape(port)
    return (
        metric(samples, "ee559_inference_batch_size_sum", model=model) or 0.0,
        metric(samples, "ee559_inference_batch_size_count", model=model) or 0.0,
    )


def measured(url: str, model: str, c: int, new_tokens: int, together: bool, metrics: bool) -> Phase:
    """One phase, with the client's CPU and (`metrics`) the server's decode steps over it."""
    port = urlsplit(url).port or 80
    before = batch_counts(port, model) if metrics else (0.0, 0.0)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = asyncio.run(phase(url, model, c, new_tokens, together))
    result.client_cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    after = batch_counts(port, model) if metrics else (0.0, 0.0)
    result.batch = (after[0] - before[0], after[1] - before[1])
    return result


def measure(
    url: str, models: list[str], concurrency: list[int], new_tokens: int, repeats: int = 3, metrics: bool = True
) -> list[Row]:
    """Every (model, c) against the server at `url`: a warm-up, then `repeats` times the
    concurrent phase followed by the same requests one at a time; a row each, printed as it
    comes. `metrics`: scrape the server's /metrics for its decode batches."""
    rows = []
    for model in models:
        asyncio.run(phase(url, model, 4, min(new_tokens, 32), together=True))  # warm-up: sessions, allocators
        for c in concurrency:
            together, alone = [], []
            for _ in range(repeats):
                together.append(measured(url, model, c, new_tokens, True, metrics))
                alone.append(measured(url, model, c, new_tokens, False, metrics))
            row = summarize(model, new_tokens, together, alone)
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
    p.add_argument("--repeat", type=int, default=3, help="runs of each phase, alternating; rates: the median")
    p.add_argument("--workers", type=int, default=1, help="EE559_WORKERS of the server started")
    p.add_argument("--url", help="measure this running server instead of starting one")
    p.add_argument("--json", type=Path, help="default runs/bench/textload.json")
    args = p.parse_args(argv)
    if not args.models or not args.concurrency or min(args.concurrency) < 1 or min(args.new_tokens, args.repeat) < 1:
        p.error("expected at least one model, concurrencies, --new-tokens and --repeat of at least 1")
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
        rows = measure(url, args.models, args.concurrency, args.new_tokens, args.repeat)
    finally:
        if proc is not None:
            stop(proc)
    load_after = load_average()
    print("\n" + table(rows))
    print(
        f"\nc requests at once, then the same c one at a time, {args.repeat} times alternating, on one server. "
        "tok/s: the median run of each phase (one at a time: their tokens over the sum of their times); gain: "
        "the median (least-most) of the runs' ratios, each pair run back to back. TTFT from sending; TPOT per request, first token to last; percentiles over "
        "every run's answered requests at once; mean batch: the server's decode steps then; outcomes counted "
        f"over every run of both phases. Load average before {load_before}, after {load_after}; client CPU at most "
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
                "repeat": args.repeat,
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
