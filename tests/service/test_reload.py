"""A new export is served without a restart (EE559_RELOAD_S): under load, on two workers, with no
failed request during the swap; an export that fails its checks is refused and the served
version goes on."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import requests

from ..conftest import start_server, stop_server, wait_ready
from .test_versions import DIGIT, _home_with_two_versions, _store


def test_a_new_export_is_swapped_in_under_load_without_a_failed_request(exported, runs: Path, tmp_path: Path):
    home, v1, v2 = _home_with_two_versions(tmp_path)
    # Start from v1 alone: the second export is removed from the store before the server starts.
    _store(home, f"import bentoml; bentoml.models.delete('mlp:{v2}')")
    env = {"EE559_MODELS": "mlp", "EE559_WORKERS": "2", "EE559_RELOAD_S": "1"}
    log = runs / "reload.log"
    url, proc = start_server(env, log=log, home=home)
    answers: list[tuple[int, str]] = []
    stop = threading.Event()

    def load() -> None:
        with requests.Session() as s:
            while not stop.is_set():
                r = s.post(f"{url}/classify", json={"model": "mlp", "image": DIGIT}, timeout=10)
                answers.append((r.status_code, r.json().get("version", "") if r.status_code == 200 else r.text[:200]))

    def tail_is(version: str, n: int = 40) -> bool:
        recent = answers[-n:]
        return len(recent) == n and all(v == version for _, v in recent)

    try:
        wait_ready(url, proc)
        clients = [threading.Thread(target=load) for _ in range(3)]
        for c in clients:
            c.start()
        time.sleep(1.5)
        _store(  # export v2 while the server is under load
            home,
            "import dataclasses; from core import store\n"
            f"m = store.load('mlp:{v1}')\na = {{k: m.onnx_path.parent / e['file'] for k, e in m.card.artifacts.items()}}\n"
            f"store.save(dataclasses.replace(m.card, version='{v2}'), m.onnx_path, a)\n",
        )
        deadline = time.monotonic() + 30
        while not tail_is(v2) and time.monotonic() < deadline:
            time.sleep(0.2)
        swapped = len(answers)
        # A third export whose file does not match its card: refused, v2 goes on.
        _store(
            home,
            "import dataclasses; from core import store\n"
            f"m = store.load('mlp:{v1}')\n"
            f"a = {{k: m.onnx_path.parent / e['file'] for k, e in m.card.artifacts.items()}}\n"
            f"store.save(dataclasses.replace(m.card, version='v3{v1[2:]}', sha256='0' * 64), m.onnx_path, a)\n",
        )
        time.sleep(3)
        stop.set()
        for c in clients:
            c.join(20)
    finally:
        stop.set()
        stop_server(proc)
    assert answers and all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:5]
    assert answers[0][1] == v1 and tail_is(v2), answers[-5:]
    assert all(v == v2 for _, v in answers[swapped:])  # the refused export changed nothing
    text = log.read_text()
    assert "refused" in text and "sha256" in text
