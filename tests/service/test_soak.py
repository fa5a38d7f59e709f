"""The soak: a real `bentoml serve` at 70% of its measured capacity for EE559_SOAK_SECONDS
(default 1800): resident memory of the serving processes grows less than 5% after warm-up, and
no request fails. Slow: `make soak` (pytest -m slow), not part of the default suite."""

from __future__ import annotations

import os
import threading
import time

import pytest
import requests

from ..conftest import processes, start_server, stop_server, wait_ready

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


def _drive(url: str, seconds: float, rate: float | None, threads: int = 4) -> tuple[int, int]:
    """Requests (a mix of classification and text generation) for `seconds`, paced to `rate`
    requests/s in all (None: as fast as they are answered). Returns (answered, failed)."""
    stop = time.monotonic() + seconds
    counts = {"ok": 0, "failed": 0}
    lock = threading.Lock()
    interval = threads / rate if rate else 0.0

    def worker(k: int) -> None:
        i, next_at = 0, time.monotonic()
        with requests.Session() as s:
            while time.monotonic() < stop:
                if i % 10 == 9:
                    r = s.post(
                        f"{url}/generate_text",
                        json={"model": "gpt", "prompt": "Return the ", "max_new_tokens": 16, "seed": i},
                        timeout=30,
                    )
                else:
                    r = s.post(f"{url}/classify", json={"model": "lenet", "image": DIGIT}, timeout=30)
                with lock:
                    counts["ok" if r.status_code == 200 else "failed"] += 1
                i += 1
                if interval:
                    next_at += interval
                    time.sleep(max(0.0, next_at - time.monotonic()))

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return counts["ok"], counts["failed"]


@pytest.mark.slow
def test_soak_at_70_percent_of_capacity_keeps_memory_flat(exported, runs):
    seconds = float(os.environ.get("EE559_SOAK_SECONDS", "1800"))
    url, proc = start_server({}, log=runs / "serve-soak.log")
    try:
        wait_ready(url, proc)
        ok, _ = _drive(url, 10, None)  # capacity, as this client measures it
        capacity = ok / 10
        rate = 0.7 * capacity
        warm = min(120.0, seconds / 10)
        _drive(url, warm, rate)
        start_rss = _tree_rss_bytes(proc.pid)
        ok = failed = 0
        trail = [start_rss]  # every tenth of the run, to tell a leak (a slope) from a plateau
        for _ in range(10):
            answered, lost = _drive(url, seconds / 10, rate)
            ok, failed = ok + answered, failed + lost
            trail.append(_tree_rss_bytes(proc.pid))
        end_rss = trail[-1]
        growth = end_rss / start_rss - 1
        print(
            f"\nsoak: {seconds:.0f} s at {rate:.0f} req/s (70% of {capacity:.0f}); {ok} answered, {failed} failed; "
            f"resident memory {start_rss / 2**20:.1f} MiB after {warm:.0f} s of warm-up -> "
            f"{end_rss / 2**20:.1f} MiB ({100 * growth:+.2f}%); every tenth: "
            f"{' '.join(f'{r / 2**20:.0f}' for r in trail)} MiB"
        )
        assert failed == 0
        assert growth < 0.05
    finally:
        stop_server(proc)
