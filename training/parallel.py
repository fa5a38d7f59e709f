"""`python -m training all --jobs N`: several models trained at once, each in its own process."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from . import registry


def train_one(name: str, train_args: dict[str, Any], threads: int | None = None) -> Path:
    """training.train.train_model for a registered model; with `threads`, that many intra-op
    threads (a worker process of train_in_parallel)."""
    from .train import train_model

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return train_model(registry.get(name), **train_args)


def train_in_parallel(names: list[str], jobs: int, train_args: dict[str, Any]) -> None:
    """Train `names` `jobs` at a time, each in a fresh process (spawned, one model per process:
    nothing shared with this one or with another model) with an equal share of the CPU cores this
    process may use: small models use two threads poorly, so two trained at once finish sooner
    than one after the other. A generator starts once its judge, when that is in `names`, has its
    checkpoint (training scores the generator's samples with it); judges start first, then the
    models that take longest (CourseModel.train_seconds). The first failure is printed at
    once, cancels what has not started, and is raised once the running models have finished."""
    jobs = min(jobs, len(names))
    # A judge first (its generators wait for it), then the longest: the last to start are the shortest.
    judges = {registry.get(n).judge for n in names}
    names = sorted(names, key=lambda n: (n not in judges, -registry.get(n).train_seconds))
    threads = max(1, len(os.sched_getaffinity(0)) // jobs)
    pending, done = list(names), set()
    running: dict[Future[Path], str] = {}
    print(f"training {', '.join(names)}: {jobs} at a time, {threads} thread(s) each", flush=True)
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=spawn, max_tasks_per_child=1) as pool:
        while pending or running:
            for name in list(pending):
                judge = registry.get(name).judge
                if len(running) < jobs and (judge not in names or judge in done or judge == name):
                    print(f"{name}: training started", flush=True)
                    running[pool.submit(train_one, name, train_args, threads)] = name
                    pending.remove(name)
            if not running:  # judges waiting on each other: never the case in the registry
                raise ValueError(f"cannot order {', '.join(pending)}: each waits for another's judge")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                error = future.exception()
                if error is not None:
                    waiting = ", ".join(running.values()) or "nothing"
                    print(f"{name}: training failed: {error!r}; waiting for {waiting} to finish", flush=True)
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise error
                done.add(name)
                print(f"{name}: checkpoint {future.result()}", flush=True)
