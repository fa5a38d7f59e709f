"""The device micro-benchmark (`python -m loadtests.bench --device`), on the CPU provider: every
cell measured the three ways, the three agreeing within the export's parity tolerance, the JSON
written; CUDA refused with one line where it cannot run; checkpoints found in a moved runs folder."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest

from core import store
from core.session import cuda_unavailable_reason
from loadtests import bench, devicebench


def test_the_cpu_dry_run_measures_every_cell_three_ways(exported, tmp_path: Path, capsys):
    out = tmp_path / "device.json"
    assert bench.main(["--device", "cpu", "--quick", "--models", "lenet,unet", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["gpu"] is None
    assert {m: v["provider"] for m, v in result["models"].items()} == {
        "lenet": "CPUExecutionProvider",
        "unet": "CPUExecutionProvider",
    }
    cells = {(c["model"], c["batch"]): c for c in result["cells"]}
    assert set(cells) == {("lenet", 1), ("lenet", 8), ("unet", 1), ("unet", 8)}
    for (model, batch), cell in cells.items():
        rates = cell["calls_per_s"]
        assert set(rates) == set(devicebench.WAYS) and all(r > 0 for r in rates.values())
        assert cell["images_per_s"]["pytorch"] == pytest.approx(rates["pytorch"] * batch)
        assert cell["iobinding_over_pytorch"] == pytest.approx(rates["ort_iobinding"] / rates["pytorch"])
        atol = store.newest_card(model).parity["tolerance_abs"]  # the export's gate for this graph
        assert 0 <= cell["max_abs_diff"]["ort_iobinding"] <= atol, (model, batch)
        assert 0 <= cell["max_abs_diff"]["ort_numpy"] <= atol, (model, batch)
    printed = capsys.readouterr().out
    assert "| lenet | 8 |" in printed and "IO binding / PyTorch" in printed


@pytest.mark.skipif(cuda_unavailable_reason() is None, reason="CUDA may run here")
def test_cuda_without_a_gpu_is_refused_in_one_line(exported, tmp_path: Path, capsys):
    out = tmp_path / "device.json"
    assert bench.main(["--device", "cuda", "--quick", "--models", "lenet", "--json", str(out)]) == 1
    assert not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bench --device cuda" in err[0]


def test_a_checkpoint_is_found_in_a_moved_runs_folder(tmp_path: Path):
    from training.train import checkpoint_of

    moved = tmp_path / "elsewhere" / "runs"
    ckpt = moved / "train" / "lenet" / "20260101-000000" / "checkpoint.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"weights")
    card = types.SimpleNamespace(
        name="lenet",
        tag="lenet:v1",
        checkpoint={
            "path": "/nowhere/project/runs/train/lenet/20260101-000000/checkpoint.pt",
            "sha256": store.sha256_file(ckpt),
        },
    )
    assert checkpoint_of(card, moved) == ckpt
    card.checkpoint["sha256"] = "0" * 64
    with pytest.raises(ValueError, match="sha256"):
        checkpoint_of(card, moved)
    with pytest.raises(FileNotFoundError):
        checkpoint_of(card, tmp_path / "empty")
