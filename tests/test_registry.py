"""Meta-test: every registered model has an export spec, a parity test, an endpoint and a load-test task."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.registry import REGISTRY

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", list(REGISTRY))
def test_registered_model_is_covered_end_to_end(name: str):
    from core.card import ModelCard
    from loadtests.tasks import TASK_LOADS
    from service.tasks import TASKS
    from tests.export import test_parity

    entry = REGISTRY[name]
    assert entry.export.inputs and entry.export.outputs and entry.export.atol > 0
    assert len(entry.export.parity_batch_sizes) == 3
    http_tests = (ROOT / "tests" / "service" / "test_http.py").read_text()
    for graph in entry.graphs:
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
            assert f'"{task}"' in http_tests, f"{name}: no HTTP test of /{task}"
            assert task in TASK_LOADS, f"{name}: no Locust task for {task!r}"
            assert any(name in fn.__name__ for fn in TASK_LOADS[task](card)), f"{name}: no Locust task for /{task}"
    for graph in entry.extra_graphs:
        assert graph.name.startswith(f"{name}_") and set(graph.tasks) <= set(entry.tasks)
    served = [t for g in entry.graphs for t in g.tasks]
    assert sorted(served) == sorted(entry.tasks), f"{name}: each task must be served by exactly one graph"
    parity_tests = [f for f in dir(test_parity) if f.startswith("test_")]
    assert "test_card_records_parity_within_tolerance_at_three_batch_sizes" in parity_tests
    assert {"quick", "full"} <= set(entry.presets)


def test_every_registered_model_is_served(exported):
    from core import store
    from training.registry import served_graphs

    assert set(store.discover()) == set(served_graphs())


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
