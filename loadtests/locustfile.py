"""Locust users for every served model, with real held-out inputs and content checks.

The users learn what to call from the server itself (its model cards and their examples, fetched
once per Locust process at start-up), so any machine with requirements-loadtest.txt can generate
load: no torch, no dataset, no model store. Run headless through `python -m loadtests` (CSV +
HTML reports, SLO gate), or by hand, on one machine or as master and workers:
    locust -f loadtests/locustfile.py --host http://127.0.0.1:3000
The SLOs (--slo-p95-ms, --slo-fail-ratio) set the exit code when Locust quits.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from typing import Any

from locust import FastHttpUser, HttpUser, constant_throughput, events, task
from locust.exception import StopUser
from locust.runners import MasterRunner, WorkerRunner

from loadtests.slo import MET, verdict
from loadtests.tasks import ACCURACY, auth_headers, prompts, served_cards, weighted_tasks

log = logging.getLogger("ee559.locust")
TEXT: dict[str, list[str]] = {}  # text model -> held-out prompts, filled at start-up
WORKER_REQUESTS: dict[str, int] = {}  # on a master: worker id -> requests it reported


@events.test_start.add_listener
def _discover(environment: Any, **_kw: Any) -> None:
    """Ask the server what it serves, before any user starts: on every node that runs users, once
    the host is known (a worker learns it from the master, the web UI from its form)."""
    if not environment.host:
        raise RuntimeError("give the server's address: --host http://HOST:PORT")
    if isinstance(environment.runner, MasterRunner):  # runs no users
        WORKER_REQUESTS.clear()
        return
    cards = served_cards(environment.host)
    TEXT.clear()
    CourseModelUser.tasks = weighted_tasks(cards)
    CourseModelUser.default_headers = auth_headers()  # read by each user's client as it is made
    TEXT.update({c.family: prompts(c) for c in cards if c.is_text})
    log.info("load for %d served graphs: %s", len(cards), ", ".join(c.name for c in cards))


@events.init_command_line_parser.add_listener
def _slo_options(parser) -> None:
    parser.add_argument("--slo-p95-ms", type=float, default=500.0, help="fail the run if p95 latency exceeds this")
    parser.add_argument("--slo-fail-ratio", type=float, default=0.01, help="fail the run above this failure ratio")
    parser.add_argument(
        "--per-user-rps",
        type=float,
        default=0.0,
        help="pace each user to this many requests/s (0: as fast as the server answers)",
    )


def paced_wait(user: Any) -> float:
    """--per-user-rps R paces each user to R requests/s; 0: as fast as the server answers."""
    opts = user.environment.parsed_options
    rate = getattr(opts, "per_user_rps", 0.0) if opts is not None else 0.0
    return constant_throughput(rate)(user) if rate > 0 else 0.0


class CourseModelUser(FastHttpUser):
    """Every served model, each with its serving task's requests (tasks set by _discover)."""

    weight = 3

    def wait_time(self) -> float:
        return paced_wait(self)


class StreamingTextUser(HttpUser):
    """Streamed generation (server-sent events), as a chat client reads it: reports the time to
    the first token as its own entry ("TTFT"), and the whole stream as the request."""

    weight = 1  # against CourseModelUser's 3: a quarter of the users stream text
    counter = itertools.count()

    def on_start(self) -> None:
        self.client.headers.update(auth_headers())

    def wait_time(self) -> float:
        return paced_wait(self)

    @task
    def stream(self) -> None:
        if not TEXT:
            raise StopUser()  # no text model served: this user has nothing to do (rather than spin)
        i = next(self.counter)
        model = sorted(TEXT)[i % len(TEXT)]
        texts = TEXT[model]
        body = {"model": model, "prompt": texts[i % len(texts)], "max_new_tokens": 64, "seed": i, "stream": True}
        start = time.perf_counter()
        with self.client.post(
            "/generate_text",
            data=json.dumps(body),
            headers={"Content-Type": "application/json"},
            name=f"/generate_text [{model}, stream]",
            stream=True,
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
                return
            tokens, done = 0, False
            for line in resp.iter_lines(decode_unicode=True):
                if line.startswith("data: ") and not done:
                    if tokens == 0:
                        events.request.fire(
                            request_type="TTFT",
                            name=f"/generate_text [{model}] first token",
                            response_time=1000 * (time.perf_counter() - start),
                            response_length=0,
                            exception=None,
                            context={},
                        )
                    tokens += 1
                done = done or line == "event: done"
            resp.success() if done and tokens == 64 else resp.failure(f"stream ended after {tokens} tokens")


@events.worker_report.add_listener
def _count_worker_requests(client_id: str, data: dict, **_kw: Any) -> None:
    """The master's share of each worker in its totals (the reports it adds up)."""
    WORKER_REQUESTS[client_id] = WORKER_REQUESTS.get(client_id, 0) + data["stats_total"]["num_requests"]


@events.quitting.add_listener
def _slo_gate(environment, **_kw) -> None:
    """Logs the share of right answers, then sets the exit code from the SLOs: on a single node or
    the master, whose stats are every worker's; a worker's stats go to the master as it runs."""
    opts = environment.parsed_options
    total = environment.stats.total
    for model, s in ACCURACY.items():
        if s["answered"]:
            log.info(
                "%s: %d/%d answers right (%.2f%%), over the %d held-out examples of its card, cycled",
                model,
                s["correct"],
                s["answered"],
                100 * s["correct"] / s["answered"],
                s["examples"],
            )
    runner = environment.runner
    if isinstance(runner, WorkerRunner) or opts is None or total.num_requests == 0:
        return
    if isinstance(runner, MasterRunner):
        shares = ", ".join(f"{w} {n}" for w, n in sorted(WORKER_REQUESTS.items()))
        log.info("%d workers sent the %d requests of this report: %s", len(WORKER_REQUESTS), total.num_requests, shares)
    p95 = total.get_response_time_percentile(0.95)
    cpu_bound = runner is not None and (
        runner.cpu_warning_emitted or getattr(runner, "worker_cpu_warning_emitted", False)
    )
    code, message = verdict(total.fail_ratio, p95, opts.slo_fail_ratio, opts.slo_p95_ms, cpu_bound)
    (log.info if code == MET else log.error)("%s", message)
    environment.process_exit_code = code
