"""Several versions of a model in the store: serve a chosen set (EE559_MODELS takes name:version),
two versions side by side (a request names one, or gets the first listed), and roll back by
pinning the old version or by deleting the new one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import requests

from core.card import ModelCard, TensorSpec
from core.images import png_bytes
from service.catalog import Catalog
from service.errors import ClientError

from ..conftest import ROOT, start_server, stop_server, wait_ready


def _card(name: str, version: str, tasks: tuple[str, ...] = ("classify",), family: str = "") -> ModelCard:
    spec = TensorSpec("x", ("batch_size", 4), "float32")
    return ModelCard(name, version, tasks, "m.onnx", "0" * 64, 18, (spec,), (spec,), 8, (), family=family or name)


def _catalog() -> Catalog:
    cards = [_card("lenet", "b2"), _card("lenet", "a1"), _card("vae", "c3", ("reconstruct",))]
    cards.append(_card("vae_decoder", "d4", ("generate",), family="vae"))
    return Catalog({c.tag: c for c in cards})


def test_the_first_listed_version_is_the_default_and_others_are_addressable():
    c = _catalog()
    assert c.for_task("lenet", "classify").version == "b2"
    assert c.for_task("lenet", "classify", "a1").version == "a1"
    assert c.graph("lenet", "a1").version == "a1" and c.graph("lenet").version == "b2"
    assert c.versions("lenet") == ["b2", "a1"]
    assert c.for_task("vae", "generate", "d4").name == "vae_decoder"  # the family's graph, in that version
    assert c.names_for("classify") == ["lenet"]


@pytest.mark.parametrize("version, status", [("zz", 404), ("", 404), (7, 400), (["a1"], 400), ("x" * 5000, 404)])
def test_an_unknown_or_malformed_version_is_a_client_error_naming_the_served_ones(version, status: int):
    with pytest.raises(ClientError) as err:
        _catalog().for_task("lenet", "classify", version)
    assert err.value.status == status and "b2, a1" in err.value.message and len(err.value.message) < 300


def test_a_version_is_checked_against_the_task_it_is_asked_for():
    cards = [_card("lenet", "b2", ("classify", "explain")), _card("lenet", "a1", ("classify",))]
    c = Catalog({card.tag: card for card in cards})
    assert c.for_task("lenet", "explain").version == "b2"
    with pytest.raises(ClientError) as err:
        c.for_task("lenet", "explain", "a1")  # a1 has no explain outputs: not run, a 400
    assert err.value.status == 400 and err.value.reason == "wrong_task"
    default_lacks = Catalog({card.tag: card for card in reversed(cards)})  # a1 is the default now
    assert default_lacks.for_task("lenet", "explain", "b2").version == "b2"


def _store(home: Path, script: str) -> str:
    """Run `script` against the model store in `home` (BentoML reads its home once per process)."""
    env = {**os.environ, "BENTOML_HOME": str(home)}
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def _home_with_two_versions(tmp_path: Path) -> tuple[Path, str, str]:
    """A store holding the exported mlp (v1) and a second export of it (v2, the newest)."""
    home = tmp_path / "home"
    shutil.copytree(Path(os.environ["BENTOML_HOME"]) / "models" / "mlp", home / "models" / "mlp")
    v1 = (home / "models" / "mlp" / "latest").read_text().strip()
    v2 = "v2" + v1[2:]
    _store(
        home,
        "import dataclasses; from pathlib import Path; from core import store\n"
        f"m = store.load('mlp:{v1}')\n"
        f"a = {{k: m.onnx_path.parent / e['file'] for k, e in m.card.artifacts.items()}}\n"
        f"store.save(dataclasses.replace(m.card, version='{v2}'), m.onnx_path, a)\n",
    )
    return home, v1, v2


def test_select_reads_names_and_versions(exported, tmp_path: Path):
    home, v1, v2 = _home_with_two_versions(tmp_path)
    script = "from core import store\nprint(store.select(({})))"
    assert _store(home, script.format("'mlp',")).strip() == f"['mlp:{v2}']"  # a name alone: the newest
    assert _store(home, script.format(f"'mlp:{v1}', 'mlp', 'mlp:{v1}'")).strip() == f"['mlp:{v1}', 'mlp:{v2}']"
    failed = subprocess.run(
        [sys.executable, "-c", script.format("'mlp:nope',")],
        cwd=ROOT,
        env={**os.environ, "BENTOML_HOME": str(home)},
        capture_output=True,
        text=True,
    )
    assert failed.returncode != 0 and f"stored versions of mlp, newest first: {v2}, {v1}" in failed.stderr


DIGIT = [[0.0] * 28 for _ in range(28)]


def _classify(url: str, **extra) -> requests.Response:
    return requests.post(f"{url}/classify", json={"model": "mlp", "image": DIGIT, **extra}, timeout=10)


def _serving(home: Path, models: str, log: Path):
    return start_server({"EE559_MODELS": models, "EE559_WORKERS": "1"}, log=log, home=home)


def test_two_versions_side_by_side_then_roll_back(exported, runs: Path, tmp_path: Path):
    home, v1, v2 = _home_with_two_versions(tmp_path)

    url, proc = _serving(home, "mlp", runs / "versions-newest.log")  # v2 exported: served by default
    try:
        wait_ready(url, proc)
        assert _classify(url).json()["version"] == v2
    finally:
        stop_server(proc)

    url, proc = _serving(home, f"mlp:{v1},mlp:{v2}", runs / "versions-both.log")  # both; v1 the default
    try:
        wait_ready(url, proc)
        assert _classify(url).json()["version"] == v1
        assert _classify(url, version=v2).json()["version"] == v2
        query = requests.post(
            f"{url}/classify?model=mlp&version={v2}",
            data=png_bytes(np.zeros((1, 28, 28))),
            headers={"Content-Type": "image/png"},
            timeout=10,
        )
        assert query.status_code == 200 and query.json()["version"] == v2
        listed = requests.get(f"{url}/models", timeout=10).json()["models"]
        assert [(m["version"], m["default"]) for m in listed] == [(v1, True), (v2, False)]
        assert requests.get(f"{url}/models/mlp?version={v2}", timeout=10).json()["version"] == v2
        body = {"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}]}
        r = requests.post(f"{url}/v2/models/mlp/versions/{v2}/infer", json=body, timeout=10)
        assert r.status_code == 200 and r.json()["model_version"] == v2
        assert requests.get(f"{url}/v2/models/mlp/versions/{v1}/ready", timeout=10).status_code == 200
        assert requests.get(f"{url}/v2/models/mlp", timeout=10).json()["versions"] == [v1, v2]
        unknown = _classify(url, version="nope")
        assert unknown.status_code == 404 and v1 in unknown.json()["error"] and v2 in unknown.json()["error"]
    finally:
        stop_server(proc)

    url, proc = _serving(home, f"mlp:{v1}", runs / "versions-pinned.log")  # roll back: one setting
    try:
        wait_ready(url, proc)
        assert _classify(url).json()["version"] == v1
        assert _classify(url, version=v2).status_code == 404
        assert requests.get(f"{url}/v2/models/mlp/versions/{v2}/ready", timeout=10).status_code == 404
    finally:
        stop_server(proc)

    # ... or one command: drop v2 from the store, and the newest is v1 again.
    bentoml = [sys.executable, "-m", "bentoml", "models", "delete", "-y", f"mlp:{v2}"]
    env = {**os.environ, "BENTOML_HOME": str(home)}
    assert subprocess.run(bentoml, env=env, capture_output=True, timeout=120).returncode == 0
    url, proc = _serving(home, "mlp", runs / "versions-dropped.log")
    try:
        wait_ready(url, proc)
        assert _classify(url).json()["version"] == v1
    finally:
        stop_server(proc)


def test_cards_keep_their_tag():
    card = _card("lenet", "a1")
    assert card.tag == "lenet:a1" and replace(card, version="b2").tag == "lenet:b2"
    assert json.loads(json.dumps(card.public()))["version"] == "a1"
