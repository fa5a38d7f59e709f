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
    """Train `names` `jobs` at a time, each in a fresh process (spawned: nothing shared with this
    one) with an equal share of the CPU's threads: small models use two threads poorly, so two
    trained at once finish sooner than one after the other. A generator starts once its judge, when
    that is in `names`, has its checkpoint (training scores the generator's samples with it). The
    first failure cancels what has not started and is raised; what runs finishes first."""
    jobs = min(jobs, len(names))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    pending, done = list(names), set()
    running: dict[Future[Path], str] = {}
    print(f"training {', '.join(names)}: {jobs} at a time, {threads} thread(s) each", flush=True)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        while pending or running:
            for name in list(pending):
                judge = registry.get(name).judge
                if len(running) < jobs and (judge not in names or judge in done):
                    running[pool.submit(train_one, name, train_args, threads)] = name
                    pending.remove(name)
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                path = future.result()  # raises the worker's exception; leaving `with` waits for the rest
                done.add(name)
                print(f"{name}: checkpoint {path}", flush=True)
