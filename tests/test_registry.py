"""Meta-test: every registered model has an export spec, a parity test, an endpoint, an HTTP test
and a load-test task for each of its serving tasks.

Coverage is read from what pytest collects (`pytest --collect-only` in a subprocess, so the answer
does not depend on which files this run selected) and from the routes the Starlette app mounts,
not from the test sources as text: a parametrization that drops a model, a test renamed or marked
slow, or a route no longer mounted fails here."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from training.registry import REGISTRY, served_graphs

ROOT = Path(__file__).resolve().parent.parent

# The HTTP test (tests/service/test_http.py) that checks a task's answers against held-out data,
# parametrized by model name: each registered (model, task) must be collected as `test[model]`.
HTTP_TESTS = {
    "classify": "test_classify_json_on_unseen_images",
    "explain": "test_explain_heat_map_points_at_the_object",
    "segment": "test_segment_masks_match_the_shapes",
    "denoise": "test_denoise_gains_at_least_6_db",
    "embed": "test_embeddings_put_same_digits_together",
    "reconstruct": "test_reconstruct_is_close_to_the_input",
    "generate": "test_generate_is_deterministic_for_a_seed",
    "generate_text": "test_generate_text_is_deterministic_for_a_seed_and_streams_the_same_text",
}
# Tests parametrized by served graph (a model's graphs: itself and its extra graphs, e.g. vae_decoder).
PARITY = "tests/export/test_parity.py"
PARITY_TESTS = ("test_card_records_parity_within_tolerance_at_three_batch_sizes", "test_corrupted_export_is_rejected")
V2 = "tests/service/test_v2.py"
V2_TESTS = {  # by whether the graph generates text (described, pointing to /generate_text) or not
    False: "test_model_metadata_from_the_card",
    True: "test_text_models_are_described_and_point_to_generate_text",
}


@pytest.fixture(scope="module")
def collected() -> dict[tuple[str, str], set[str]]:
    """(file, test function) -> the parameter ids pytest collects for it in the default suite
    (`-m 'not slow'`, from pyproject.toml), read from `pytest --collect-only -q`."""
    files = ["tests/service/test_http.py", PARITY, V2]
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ids: dict[tuple[str, str], set[str]] = defaultdict(set)
    for line in out.stdout.splitlines():
        m = re.fullmatch(r"([\w/]+\.py)::(\w+)(?:\[(.*)\])?", line.strip())
        if m:
            ids[m[1], m[2]].add(m[3] or "")
    assert ids, f"nothing collected:\n{out.stdout[-3000:]}"
    return ids


def test_every_serving_task_names_its_http_test():
    from service.tasks import TASKS

    assert set(HTTP_TESTS) == set(TASKS), "a serving task without an HTTP test of its answers (or a stale entry)"


@pytest.mark.parametrize("name", list(REGISTRY))
def test_registered_model_is_covered_end_to_end(name: str, collected):
    from core.card import ModelCard
    from loadtests.tasks import TASK_LOADS
    from service.tasks import TASKS

    entry = REGISTRY[name]
    assert entry.export.inputs and entry.export.outputs and entry.export.atol > 0
    assert len(entry.export.parity_batch_sizes) == 3
    assert {"quick", "full"} <= set(entry.presets)
    served = [t for g in entry.graphs for t in g.tasks]
    assert sorted(served) == sorted(entry.tasks), f"{name}: each task must be served by exactly one graph"
    for graph in entry.extra_graphs:
        assert graph.name.startswith(f"{name}_") and set(graph.tasks) <= set(entry.tasks)

    missing = []
    for graph in entry.graphs:
        needed = [(PARITY, t) for t in PARITY_TESTS] + [(V2, V2_TESTS[graph.spec.generation is not None])]
        missing += [f"{path}::{t}[{graph.name}]" for path, t in needed if graph.name not in collected[path, t]]
        card = ModelCard(
            name=graph.name,
            family=name,
            version="0",
            tasks=graph.tasks,
            file="model.onnx",
            sha256="0",
            opset=graph.spec.opset,
            inputs=graph.spec.inputs,
            outputs=graph.spec.outputs,
            max_batch_size=graph.spec.max_batch_size,
            labels=("a", "b"),
        )
        for task in graph.tasks:
            assert task in TASKS, f"{name}: no serving task {task!r}"
            test = HTTP_TESTS.get(task, f"<no HTTP test named for {task!r}>")
            if name not in collected["tests/service/test_http.py", test]:
                missing.append(f"tests/service/test_http.py::{test}[{name}]")
            assert task in TASK_LOADS, f"{name}: no Locust task for {task!r}"
            assert any(name in fn.__name__ for fn in TASK_LOADS[task](card)), f"{name}: no Locust task for /{task}"
    assert not missing, f"{name}: not collected: {missing}"


def test_every_task_of_the_registry_is_a_mounted_route_and_every_task_route_has_a_model():
    """The Starlette app mounts POST /{task} for every task of the registry, and no task route that
    no registered model serves; every served graph is reachable through the v2 routes."""
    from starlette.routing import Route

    from service.app import http_app
    from service.tasks import TASKS

    posts = {r.path for r in http_app.routes if isinstance(r, Route) and "POST" in (r.methods or ())}
    registered = {t for e in REGISTRY.values() for t in e.tasks}
    assert {f"/{t}" for t in registered} <= posts, f"not mounted: {sorted({f'/{t}' for t in registered} - posts)}"
    task_routes = {p for p in posts if p.lstrip("/") in TASKS}
    assert task_routes == {f"/{t}" for t in registered}, "a task route that no registered model serves"
    assert {"/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer"} <= posts


def test_readme_table_lists_every_model_and_its_routes():
    """The README's "What is served" table: one row per registered model, with its task routes."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## What is served", 1)[1].split("\n## ", 1)[0]
    section = next(
        block for block in section.split("\n\n") if block.lstrip().startswith("| model |")
    )  # its first table
    rows = {
        m[1]: set(re.findall(r"`(/\w+)`", m[2]))
        for m in re.finditer(r"^\| `(\w+)` \|[^|]*\|(.*)\|$", section, flags=re.MULTILINE)
    }
    assert rows == {name: {f"/{t}" for t in e.tasks} for name, e in REGISTRY.items()}


def test_every_registered_model_is_served(exported):
    from core import store

    assert set(store.discover()) == set(served_graphs())


def test_running_server_serves_every_registered_graph_and_task(server):
    """GET /models of a real `bentoml serve`: every registered graph with exactly its tasks."""
    import requests

    listing = requests.get(f"{server}/models", timeout=30).json()["models"]
    assert {c["name"]: sorted(c["tasks"]) for c in listing} == {
        g.name: sorted(g.tasks) for e in REGISTRY.values() for g in e.graphs
    }


def test_stored_cards_read_back_as_written(exported):
    """The card is the contract: what the exporter wrote reads back into the same typed card, and
    every held-out example has the model's input shape."""
    import json

    import numpy as np

    from core.card import ModelCard

    for name, path in exported.items():
        data = json.loads(path.read_text())
        card = ModelCard.from_json(data)
        assert card.to_json() == data, name
        if card.examples.get("inputs"):
            x = np.asarray(card.examples["inputs"])
            assert x.shape[1:] == card.row_shape and len(x) == len(card.examples["targets"]) == 16, name
        assert "path" not in card.public()["checkpoint"] and "examples" not in card.public()


def test_every_exported_graph_carries_the_loss_curve_of_its_training_run(exported):
    """Export carries training's loss picture (training.train.LOSS_CURVE) into the model store beside
    each graph of the run, described by the card (its sha256), for GET /models/{name}/loss_curve.png."""
    import hashlib
    import io

    from PIL import Image

    from core import store
    from training.train import LOSS_CURVE

    for name, tag in store.discover(tuple(served_graphs())).items():
        card = store.load(tag).card
        assert set(card.artifacts) == {"loss_curve", "golden"}, name
        data = store.read_artifact(card, "loss_curve")
        assert data is not None and Image.open(io.BytesIO(data)).format == "PNG", name
        run = Path(card.checkpoint["path"]).parent
        assert hashlib.sha256(data).hexdigest() == store.sha256_file(run / LOSS_CURVE), f"{name}: not its run's curve"
