"""The parity gate: every registered model passes at three batch sizes; a corrupted export fails."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from core.store import sha256_file as sha256
from export.onnx_export import ParityError, parity_inputs, validate
from training.data import load_dataset
from training.registry import REGISTRY, served_graphs
from training.train import latest_checkpoint, load_checkpoint

GRAPHS = served_graphs()


@pytest.mark.parametrize("name", list(GRAPHS))
def test_card_records_parity_within_tolerance_at_three_batch_sizes(exported, name: str):
    card = json.loads(exported[name].read_text())
    entry, graph = GRAPHS[name]
    spec = graph.spec
    assert card["family"] == entry.name and card["tasks"] == list(graph.tasks)
    assert [o["name"] for o in card["outputs"]] == list(card["parity"]["batches"][0]["outputs"])
    assert [b["batch_size"] for b in card["parity"]["batches"]] == list(spec.parity_batch_sizes)
    assert len(set(spec.parity_batch_sizes)) == 3 and 1 in spec.parity_batch_sizes
    for batch in card["parity"]["batches"]:
        for out in batch["outputs"].values():
            assert out["max_abs_error"] <= spec.atol
            assert out.get("top1_agreement", 1.0) == 1.0
    assert card["sha256"] == sha256(exported[name].with_name(card["file"]))
    for key in ("name", "version", "inputs", "outputs", "opset", "preprocessing", "metrics", "libraries"):
        assert key in card
    assert card["inputs"][0]["shape"][0] == "batch_size"


def _reload(name: str, runs: Path):
    """The graph's spec, its model rebuilt from the checkpoint, and the parity inputs."""
    entry, graph = GRAPHS[name]
    model, ckpt = load_checkpoint(latest_checkpoint(entry.name, runs), entry)
    x = load_dataset(ckpt["dataset"], ckpt["seed"]).test.x
    spec = graph.spec.resolve(ckpt["config"])
    return spec, model, parity_inputs(spec, x, model)


@pytest.mark.parametrize("name", list(GRAPHS))
def test_corrupted_export_is_rejected(exported, runs: Path, tmp_path: Path, name: str):
    spec, model, inputs = _reload(name, runs)
    good = exported[name].with_name("model.onnx")
    validate(name, spec, model, good, inputs)  # the real export passes

    graph = onnx.load(str(good))
    init = max(graph.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    w = numpy_helper.to_array(init).copy()
    w += 0.5  # every weight of the largest tensor: no dead unit can hide it
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    bad = tmp_path / "model.onnx"
    onnx.save(graph, str(bad))
    with pytest.raises(ParityError, match=rf"{name}: \d+ parity check\(s\) failed") as info:
        validate(name, spec, model, bad, inputs)
    # every failure is listed, not only the first: each batch size fails, each named in the message
    failed = {f.batch_size for f in info.value.failures if f.kind in ("value", "top1")}
    assert failed == {len(x[0]) if isinstance(x, tuple) else len(x) for x in inputs}
    for f in info.value.failures:
        assert f"{f.kind}: {f.output} at batch size {f.batch_size}" in str(info.value)


def test_renamed_output_is_rejected(exported, runs: Path, tmp_path: Path):
    spec, model, inputs = _reload("lenet", runs)
    graph = onnx.load(str(exported["lenet"].with_name("model.onnx")))
    old = graph.graph.output[0].name
    graph.graph.output[0].name = "scores"
    for node in graph.graph.node:
        node.output[:] = ["scores" if o == old else o for o in node.output]
    bad = tmp_path / "model.onnx"
    onnx.save(graph, str(bad))
    with pytest.raises(ParityError, match="spec says"):
        validate("lenet", spec, model, bad, inputs)


def test_export_cli_fails_with_nonzero_exit_when_the_gate_fails(exported, runs: Path, monkeypatch, capsys):
    import export.onnx_export as ox
    from export.__main__ import main

    real_validate = ox.validate

    def strict(name, spec, *a, **kw):
        from dataclasses import replace

        return real_validate(name, replace(spec, atol=-1.0), *a, **kw)

    monkeypatch.setattr(ox, "validate", strict)
    assert main(["mlp", "--runs", str(runs)]) == 1
    err = capsys.readouterr().err
    assert "parity gate FAILED" in err and "mlp" in err and "batch size 1" in err


def test_export_on_cuda_without_a_gpu_fails_before_any_work_naming_why(monkeypatch, capsys):
    from core import session
    from export.__main__ import main

    monkeypatch.setattr(session, "cuda_unavailable_reason", lambda: "no NVIDIA driver (libcuda.so.1) on this machine")
    assert main(["lenet", "--provider", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "CUDA was required (provider=cuda) but cannot be used: no NVIDIA driver" in err


def test_export_is_reused_when_checkpoint_unchanged(exported, runs: Path, capsys):
    from export.__main__ import main

    assert main(["all", "--runs", str(runs), "--if-missing", "--variants", "none"]) == 0  # the store stays fp32
    assert capsys.readouterr().out.count("skipping") == len(REGISTRY)


def test_model_store_holds_every_model(exported):
    import bentoml

    stored = {m.tag.name for m in bentoml.models.list() if m.info.labels.get("project") == "ee559"}
    assert stored == set(GRAPHS)
