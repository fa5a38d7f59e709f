"""Training's arithmetic: bf16 mixed precision where the hardware has it, fp32 otherwise, recorded
in the checkpoint; what is evaluated and exported stays float32."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from training import runtime
from training.data import Split
from training.registry import REGISTRY, TrainConfig
from training.train import latest_checkpoint, load_checkpoint, train_epoch


def test_precision_names_resolve_and_an_unknown_one_is_refused(monkeypatch):
    cpu = torch.device("cpu")
    assert runtime.resolve_precision("fp32", cpu) == "fp32"
    assert runtime.resolve_precision("bf16", cpu) == "bf16"
    monkeypatch.setattr(runtime, "native_bf16", lambda device: True)
    assert runtime.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(runtime, "native_bf16", lambda device: False)
    assert runtime.resolve_precision("auto", cpu) == "fp32"  # emulated bf16 is slower than fp32
    with pytest.raises(ValueError, match=r"'fp16'.*auto, fp32, bf16"):
        runtime.resolve_precision("fp16", cpu)


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_a_training_step_multiplies_in_its_precision_and_keeps_float32_weights(precision: str, dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))
    seen: list[torch.dtype] = []
    model[1].register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 256)
    x = (np.eye(3)[y] @ rng.normal(size=(3, 16)) + 0.1 * rng.normal(size=(256, 16))).astype(np.float32)
    split = Split(x.reshape(256, 1, 4, 4), y.astype(np.int64))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tc = TrainConfig(epochs=1, batch_size=32, precision=precision)
    losses = [train_epoch(model, split, opt, tc, torch.Generator().manual_seed(0), torch.device("cpu"), "t")]
    losses += [train_epoch(model, split, opt, tc, torch.Generator().manual_seed(1), torch.device("cpu"), "t")]
    assert set(seen) == {dtype}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert losses[1] < losses[0] * 0.7  # it learns


def test_the_checkpoint_and_the_card_record_the_precision_it_trained_in(tmp_path: Path, monkeypatch):
    from export.onnx_export import build_card
    from training.__main__ import main

    entry = REGISTRY["lenet"]
    monkeypatch.setitem(entry.presets, "quick", replace(entry.presets["quick"], limit_train=128))
    quick = ["lenet", "--preset", "quick", "--device", "cpu"]
    assert main([*quick, "--precision", "bf16", "--out", str(tmp_path / "bf16")]) == 0
    model, ckpt = load_checkpoint(latest_checkpoint("lenet", tmp_path / "bf16"), entry)
    assert ckpt["train"]["precision"] == "bf16"
    assert all(p.dtype == torch.float32 for p in model.state_dict().values() if p.is_floating_point())
    # auto is written as what it meant on this machine, never as "auto"
    monkeypatch.setattr(runtime, "native_bf16", lambda device: False)
    assert main([*quick, "--out", str(tmp_path / "auto")]) == 0
    path = latest_checkpoint("lenet", tmp_path / "auto")
    assert load_checkpoint(path, entry)[1]["train"]["precision"] == "fp32"
    ckpt = load_checkpoint(path, entry)[1]
    held_out = (np.zeros((2, 1, 28, 28), np.float32), np.zeros(2, np.int64))
    card = build_card(entry, entry.graphs[0], ckpt, path, path, [], held_out)  # the card of its graph
    assert card.checkpoint["trained_in"] == "fp32" and card.precision == "fp32"  # the graph's own: fp32
    assert "trained_in" in card.public()["checkpoint"]


def test_the_step_benchmark_prints_both_precisions_and_their_ratio(capsys):
    from training.stepbench import main

    assert main(["mlp", "autoencoder", "--steps", "1", "--rounds", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == ["mlp", "autoencoder"]
    for row in rows:
        batch, fp32, bf16, ratio = (cell.strip() for cell in row.split("|")[2:6])
        assert int(batch) > 0 and float(fp32) > 0 and float(bf16) > 0
        assert float(ratio.removesuffix("x")) == pytest.approx(float(fp32) / float(bf16), rel=0.05)
    with pytest.raises(SystemExit):
        main(["nosuchmodel"])
