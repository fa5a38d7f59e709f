"""The soak: a real `bentoml serve` at 70% of its measured capacity for EE559_SOAK_SECONDS
(default 1800): resident memory of the serving processes grows less than 5% after warm-up, and
every request sent is answered 200: one answered with another status, one never answered (a
connection refused or reset, a timeout) and a client thread that dies all fail it. Slow: `make soak` (pytest -m slow), not part of the default suite."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

import pytest
import requests

from ..conftest import free_port, processes, start_server, stop_server, wait_ready

DIGIT = [[0.0] * 28 for _ in range(28)]


def _tree_rss_bytes(root: int) -> int:
    """Resident memory of `root` and every process below it."""
    table = processes()
    tree, grew = {root}, True
    while grew:
        grew = False
        for pid, fields in table.items():
            if int(fields.get("PPid", "0")) in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return sum(int(table[p].get("VmRSS", "0 kB").split()[0]) * 1024 for p in tree if p in table)


@dataclass
class Outcomes:
    """Every request a client thread sent, by how it ended: answered 200, answered with another
    status, or no answer at all (a transport error: connection refused or reset, timeout), by the
    exception's class. A thread that stops for any other reason counts as `crashed`."""

    sent: int = 0
    ok: int = 0
    failed: dict[int, int] = field(default_factory=dict)  # status -> count
    transport: dict[str, int] = field(default_factory=dict)  # exception class -> count
    crashed: list[str] = field(default_factory=list)
    first_errors: list[str] = field(default_factory=list)  # a few, for the failure message

    @property
    def counted(self) -> int:
        return self.ok + sum(self.failed.values()) + sum(self.transport.values())

    def add(self, other: Outcomes) -> None:
        self.sent += other.sent
        self.ok += other.ok
        for status, n in other.failed.items():
            self.failed[status] = self.failed.get(status, 0) + n
        for name, n in other.transport.items():
            self.transport[name] = self.transport.get(name, 0) + n
        self.crashed += other.crashed
        self.first_errors += other.first_errors[: max(0, 5 - len(self.first_errors))]

    def problems(self) -> str:
        """Empty when every request sent was answered 200 and every thread ran to the end."""
        lines = []
        if self.failed:
            lines.append(f"answered with another status: {self.failed}")
        if self.transport:
            lines.append(f"transport errors (no answer): {self.transport}")
        if self.crashed:
            lines.append(f"client threads crashed: {self.crashed}")
        if self.counted != self.sent:
            lines.append(f"{self.sent} sent but {self.counted} counted")
        if lines and self.first_errors:
            lines.append(f"first errors: {self.first_errors}")
        return "; ".join(lines)


def _drive(url: str, seconds: float, rate: float | None, threads: int = 4) -> Outcomes:
    """Requests (a mix of classification and text generation) for `seconds`, paced to `rate`
    requests/s in all (None: as fast as they are answered). Every request sent is counted, whether
    it was answered or not."""
    stop = time.monotonic() + seconds
    total = Outcomes()
    lock = threading.Lock()
    interval = threads / rate if rate else 0.0

    def send(s: requests.Session, i: int) -> requests.Response:
        if i % 10 == 9:
            return s.post(
                f"{url}/generate_text",
                json={"model": "gpt", "prompt": "Return the ", "max_new_tokens": 16, "seed": i},
                timeout=30,
            )
        return s.post(f"{url}/classify", json={"model": "lenet", "image": DIGIT}, timeout=30)

    def worker(k: int) -> None:
        mine = Outcomes()
        try:
            i, next_at = 0, time.monotonic()
            with requests.Session() as s:
                while time.monotonic() < stop:
                    mine.sent += 1
                    try:
                        r = send(s, i)
                    except requests.RequestException as e:  # ConnectionError, Timeout, ...
                        name = type(e).__name__
                        mine.transport[name] = mine.transport.get(name, 0) + 1
                        if len(mine.first_errors) < 5:
                            mine.first_errors.append(f"{name}: {e}")
                    else:
                        if r.status_code == 200:
                            mine.ok += 1
                        else:
                            mine.failed[r.status_code] = mine.failed.get(r.status_code, 0) + 1
                            if len(mine.first_errors) < 5:
                                mine.first_errors.append(f"{r.status_code}: {r.text[:200]}")
                    i += 1
                    if interval:
                        next_at += interval
                        time.sleep(max(0.0, next_at - time.monotonic()))
        except BaseException as e:  # anything else would end this thread uncounted
            mine.crashed.append(f"thread {k}: {type(e).__name__}: {e}")
        finally:
            with lock:
                total.add(mine)

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return total


@pytest.mark.slow
def test_soak_at_70_percent_of_capacity_keeps_memory_flat(exported, runs):
    seconds = float(os.environ.get("EE559_SOAK_SECONDS", "1800"))
    url, proc = start_server({}, log=runs / "serve-soak.log")
    try:
        wait_ready(url, proc)
        probe = _drive(url, 10, None)  # capacity, as this client measures it
        assert not probe.problems(), f"measuring capacity: {probe.problems()}"
        capacity = probe.ok / 10
        rate = 0.7 * capacity
        warm = min(120.0, seconds / 10)
        warmup = _drive(url, warm, rate)
        assert not warmup.problems(), f"warm-up: {warmup.problems()}"
        start_rss = _tree_rss_bytes(proc.pid)
        run = Outcomes()
        trail = [start_rss]  # every tenth of the run, to tell a leak (a slope) from a plateau
        for _ in range(10):
            run.add(_drive(url, seconds / 10, rate))
            trail.append(_tree_rss_bytes(proc.pid))
        end_rss = trail[-1]
        growth = end_rss / start_rss - 1
        print(
            f"\nsoak: {seconds:.0f} s at {rate:.0f} req/s (70% of {capacity:.0f}); {run.sent} sent, {run.ok} answered 200, "
            f"{sum(run.failed.values())} answered otherwise {run.failed}, {sum(run.transport.values())} transport "
            f"errors {run.transport}; resident memory {start_rss / 2**20:.1f} MiB after {warm:.0f} s of warm-up -> "
            f"{end_rss / 2**20:.1f} MiB ({100 * growth:+.2f}%); every tenth: "
            f"{' '.join(f'{r / 2**20:.0f}' for r in trail)} MiB"
        )
        assert run.sent > 0
        assert not run.problems(), run.problems()
        assert growth < 0.05
    finally:
        stop_server(proc)


def test_drive_counts_requests_that_get_no_answer():
    """Fast, in the default suite: a request that gets no answer (here: nothing listens on the
    port) is counted as a transport error and fails the soak, instead of ending its thread uncounted."""
    url = f"http://127.0.0.1:{free_port()}"
    outcomes = _drive(url, 0.3, None, threads=2)
    assert outcomes.sent > 0
    assert outcomes.counted == outcomes.sent
    assert outcomes.ok == 0
    assert outcomes.transport.get("ConnectionError") == outcomes.sent
    assert "transport errors" in outcomes.problems()
    assert not outcomes.crashed
