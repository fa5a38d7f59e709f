"""Fixtures: a private runs directory and model store for the whole session, every registered
model trained (full preset: seconds on digits) and exported once, and a real `bentoml serve`."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtests.servers import free_port, wait_http
from loadtests.servers import stop as stop_server

ROOT = Path(__file__).resolve().parent.parent
# Before anything imports bentoml: the store and runs of this session are private and temporary.
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="ee559-tests-"))
os.environ["EE559_RUNS"] = str(_SESSION_DIR / "runs")
os.environ["BENTOML_HOME"] = str(_SESSION_DIR / "runs" / "bentoml")
os.environ["BENTOML_DO_NOT_TRACK"] = "true"
os.environ.pop("EE559_MODELS", None)


@pytest.fixture(scope="session")
def runs() -> Path:
    return Path(os.environ["EE559_RUNS"])


@pytest.fixture(scope="session")
def exported(runs: Path) -> dict[str, Path]:
    """Train (full preset) and export every registered model; served graph name -> model card path."""
    from export.__main__ import main as export_main
    from training.registry import REGISTRY, served_graphs
    from training.train import train_model

    for entry in REGISTRY.values():  # in registry order: the judge classifier before the generators
        train_model(entry, preset="ci" if "ci" in entry.presets else "full", out=runs)
    # The variants are made where a test needs them (variant_home): the session's store holds fp32 only.
    assert export_main(["all", "--runs", str(runs), "--variants", "none"]) == 0
    return {name: sorted((runs / "export" / name).glob("*/model_card.json"))[-1] for name in served_graphs()}


def processes() -> dict[int, dict[str, str]]:
    """Every process's /proc/PID/status fields (PPid, VmRSS, ...) and its command line, by pid."""
    table = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
            fields["cmdline"] = (status.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        table[int(status.parent.name)] = {k: v.strip() for k, v in fields.items()}
    return table


__all__ = ["free_port", "new_home", "processes", "serving", "start_server", "stop_server", "wait_ready"]


def wait_ready(url: str, proc: subprocess.Popen | None, timeout: float = 90) -> None:
    """Until the server at `url` is ready (/readyz 200); fails at once if `proc` exits."""
    wait_http(f"{url}/readyz", proc, timeout)


def start_server(
    env_extra: dict[str, str] | None = None, log: Path | None = None, host: str = "127.0.0.1", home: Path | None = None
) -> tuple[str, subprocess.Popen]:
    """`bentoml serve` on a free port, on a BENTOML_HOME of its own (`new_home()`) unless `home`
    names one to share. `host` is where it listens; the URL returned reaches it through loopback."""
    port = free_port()
    home = home or new_home()
    env = {**os.environ, "BENTOML_HOME": str(home), **(env_extra or {})}
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", "service.service:EE559", "--host", host, "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return f"http://127.0.0.1:{port}", proc


@contextlib.contextmanager
def serving(env_extra: dict[str, str], log: Path, timeout: float = 90, **kw) -> Iterator[str]:
    """A started and ready server (start_server's arguments) for the `with` block; its log's tail
    printed if anything fails."""
    url, proc = start_server(env_extra, log=log, **kw)
    try:
        wait_ready(url, proc, timeout)
        yield url
    except BaseException:
        print(log.read_text()[-5000:])
        raise
    finally:
        stop_server(proc)


def new_home() -> Path:
    """A BENTOML_HOME of its own, whose model store is the session's."""
    home = Path(tempfile.mkdtemp(prefix="home-", dir=_SESSION_DIR))
    (home / "models").symlink_to(Path(os.environ["BENTOML_HOME"]) / "models")
    return home


@pytest.fixture(scope="session")
def server(exported, runs: Path):
    """A real `bentoml serve` of every exported model on a free port; yields its base URL."""
    log = runs / "serve.log"
    # Text generation is fast (`make textbench`, 2026-11-26, commit 17b9498: 5,007 tokens/s for the GPT
    # and 11,716 for the LSTM at batch 1): long generations let the tests watch one run.
    with serving({"EE559_BODY_TIMEOUT_S": "3", "EE559_MAX_NEW_TOKENS": "20000"}, log) as url:
        yield url


@pytest.fixture(scope="session")
def variant_home(exported, tmp_path_factory) -> tuple[Path, dict[str, dict], str]:
    """A model store of its own holding the session's LeNet and its FP16 and INT8 variants, made by
    `python -m export.variants lenet` (the session's store stays as export left it): its
    BENTOML_HOME, precision -> stored card (JSON), and what the command printed."""
    import json
    import shutil

    home = tmp_path_factory.mktemp("variants")
    shutil.copytree(Path(os.environ["BENTOML_HOME"]) / "models" / "lenet", home / "models" / "lenet")
    run = subprocess.run(
        [sys.executable, "-m", "export.variants", "lenet", "--runs", str(home / "runs")],
        cwd=ROOT,
        env={**os.environ, "BENTOML_HOME": str(home), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    cards = [json.loads(p.read_text()) for p in (home / "models" / "lenet").glob("*/model_card.json")]
    return home, {c["precision"]: c for c in cards}, run.stdout
