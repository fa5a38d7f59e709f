"""`bentoml build` turns bentofile.yaml into a Bento that holds the service and every exported model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from training.registry import served_graphs

ROOT = Path(__file__).resolve().parent.parent


def test_bentoml_build_packs_service_and_models(exported):
    r = subprocess.run([sys.executable, "-m", "bentoml", "build", "--output", "tag"], cwd=ROOT, env=os.environ,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    import bentoml

    bento = bentoml.bentos.get("ee559:latest")
    info = yaml.safe_load((Path(bento.path) / "bento.yaml").read_text())
    public = next(s for s in info["services"] if s["name"] == "ee559")
    packed = {m["tag"].split(":")[0] for m in public["models"]}
    assert packed == set(served_graphs())
    src = Path(bento.path) / "src"
    assert (src / "service" / "service.py").exists()
    assert not (src / "training").exists() and not (src / "tests").exists()
    requirements = (Path(bento.path) / "env" / "python" / "requirements.txt").read_text().splitlines()
    packages = [line for line in requirements if line and not line.startswith("#")]
    assert any(p.startswith("onnxruntime") for p in packages)
    assert not any(p.startswith("torch") for p in packages), "the serving image must not carry torch"
