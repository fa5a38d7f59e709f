"""`python -m training all --jobs 2`: models trained at once in worker processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.train import latest_checkpoint


def test_jobs_train_each_model_once_and_a_generator_after_its_judge(tmp_path: Path, capsys):
    from training.parallel import train_in_parallel

    # dcgan first in the list: it must still wait for lenet, whose checkpoint scores its samples

    args = {"dataset": None, "data_dir": None, "preset": "quick", "epochs": None, "out": tmp_path, "seed": 1234}
    train_in_parallel(["dcgan", "lenet", "mlp"], 2, {**args, "device": "cpu"})
    printed = capsys.readouterr().out
    assert "2 at a time" in printed
    lines = printed.splitlines()
    order = [line.split(":")[0] for line in lines if ": checkpoint " in line]
    assert sorted(order) == ["dcgan", "lenet", "mlp"]
    # lenet and mlp start together; dcgan only once lenet's checkpoint is written
    started = [line.split(":")[0] for line in lines if line.endswith(": training started")]
    assert started[:2] == ["lenet", "mlp"] and started[2] == "dcgan"
    assert lines.index("dcgan: training started") > next(
        i for i, x in enumerate(lines) if x.startswith("lenet: checkpoint")
    )
    for name in ("dcgan", "lenet", "mlp"):
        assert len(list((tmp_path / "train" / name).iterdir())) == 1
    metrics = json.loads((latest_checkpoint("dcgan", tmp_path).parent / "metrics.json").read_text())["metrics"]
    assert metrics["judge_samples"] == 100  # lenet was there when dcgan's training ended


def test_a_failing_job_fails_the_run(tmp_path: Path, capsys):
    from training.parallel import train_in_parallel

    args = {"dataset": "mnist", "data_dir": tmp_path / "nothing-here", "preset": "quick", "epochs": None}
    with pytest.raises(FileNotFoundError, match="IDX"):  # the third never starts
        train_in_parallel(["lenet", "mlp", "autoencoder"], 2, {**args, "out": tmp_path, "seed": 1234, "device": "cpu"})
    assert not (tmp_path / "train").exists()
    printed = capsys.readouterr().out
    assert "training failed: FileNotFoundError" in printed and "autoencoder: training started" not in printed
