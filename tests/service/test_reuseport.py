"""Connections spread over every worker (service/patches.py `reuseport`): each worker listens on a
SO_REUSEPORT socket of its own on the server's port, so the kernel hands connections to all of
them, instead of one shared socket that the least busy event loop drains."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import requests

from ..conftest import ROOT, processes, serving
from .test_http import held_out  # noqa: F401  (the fixture)


def _listening(port: int) -> set[int]:
    """The inodes of the sockets listening on `port` (IPv4)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
            inodes.add(int(fields[9]))
    return inodes


def _sockets(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _workers(port: int) -> list[int]:
    table = processes()
    return [
        pid
        for pid, p in table.items()
        if "_bentoml_impl.worker.service" in p["cmdline"] and _sockets(pid) & _listening(port)
    ]


def test_every_worker_listens_on_its_own_socket_and_gets_connections(exported, runs: Path, held_out):  # noqa: F811
    log = runs / "reuseport.log"
    with serving({"EE559_WORKERS": "2", "EE559_MODELS": "lenet"}, log) as url:
        port = int(url.rsplit(":", 1)[1])
        listening = _listening(port)
        workers = _workers(port)
        assert len(listening) == 2 and len(workers) == 2, (listening, workers)
        # each worker holds exactly one of the listening sockets: not one shared by both
        assert [len(_sockets(pid) & listening) for pid in workers] == [1, 1]
        assert _sockets(workers[0]) & listening != _sockets(workers[1]) & listening
        before = {pid: _cpu_ticks(pid) for pid in workers}
        body = {"model": "lenet", "image": held_out[0][0, 0].tolist()}

        statuses: list[int] = []

        def client() -> None:
            with requests.Session() as s:  # one persistent connection each, as a proxy keeps
                for _ in range(40):
                    statuses.append(s.post(f"{url}/classify", json=body, timeout=30).status_code)

        clients = [threading.Thread(target=client) for _ in range(32)]
        for c in clients:
            c.start()
        for c in clients:
            c.join(120)
        assert not any(c.is_alive() for c in clients) and statuses == [200] * 32 * 40
        # 32 connections hashed over 2 sockets: one worker with at most one of them has odds of
        # 66 in 2**32; each worker's share of the CPU the load cost follows its connections
        spent = {pid: _cpu_ticks(pid) - before[pid] for pid in workers}
        assert all(t >= 0.05 * sum(spent.values()) for t in spent.values()), spent


def test_a_second_server_on_a_taken_port_fails_at_once_naming_it(exported, runs: Path):
    """Its workers would otherwise join the first server's SO_REUSEPORT group and share its traffic."""
    with serving({"EE559_MODELS": "lenet"}, runs / "reuseport-first.log") as url:
        port = url.rsplit(":", 1)[1]
        second = subprocess.run(
            [sys.executable, "-m", "bentoml", "serve", "service.service:EE559", "--host", "127.0.0.1", "--port", port],
            cwd=ROOT,
            env={**os.environ, "EE559_MODELS": "lenet"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode != 0
        assert f"cannot listen on 127.0.0.1:{port}" in second.stdout + second.stderr
        assert requests.get(f"{url}/readyz", timeout=5).status_code == 200  # the first one goes on
