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
    order = [line.split(":")[0] for line in printed.splitlines() if ": checkpoint " in line]
    assert sorted(order) == ["dcgan", "lenet", "mlp"] and order.index("lenet") < order.index("dcgan")
    for name in ("dcgan", "lenet", "mlp"):
        assert len(list((tmp_path / "train" / name).iterdir())) == 1
    metrics = json.loads((latest_checkpoint("dcgan", tmp_path).parent / "metrics.json").read_text())["metrics"]
    assert metrics["judge_samples"] == 100  # lenet was there when dcgan's training ended


def test_a_failing_job_fails_the_run(tmp_path: Path):
    from training.parallel import train_in_parallel

    args = {"dataset": "mnist", "data_dir": tmp_path / "nothing-here", "preset": "quick", "epochs": None}
    with pytest.raises(FileNotFoundError, match="IDX"):
        train_in_parallel(["lenet", "mlp"], 2, {**args, "out": tmp_path, "seed": 1234, "device": "cpu"})
    assert not (tmp_path / "train").exists()
