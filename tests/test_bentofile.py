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
    r = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "--output", "tag"],
        cwd=ROOT,
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    import bentoml

    bento = bentoml.bentos.get("ee559:latest")
    info = yaml.safe_load((Path(bento.path) / "bento.yaml").read_text())
    public = next(s for s in info["services"] if s["name"] == "ee559")
    packed = {m["tag"].split(":")[0] for m in public["models"]}
    assert packed == set(served_graphs())
    src = Path(bento.path) / "src"
    assert (src / "service" / "service.py").exists() and (src / "service" / "tasks" / "classify.py").exists()
    assert (src / "core" / "card.py").exists() and (src / "core" / "session.py").exists()  # what the service stands on
    assert not (src / "training").exists() and not (src / "tests").exists() and not (src / "export").exists()
    requirements = (Path(bento.path) / "env" / "python" / "requirements.txt").read_text().splitlines()
    packages = [line for line in requirements if line and not line.startswith("#")]
    assert any(p.startswith("onnxruntime") for p in packages)
    assert not any(p.startswith("torch") for p in packages), "the serving image must not carry torch"


def test_container_runs_as_non_root_and_binds_all_interfaces(exported):
    """What `bentoml containerize` builds from the Bento: the Dockerfile BentoML generated drops
    to an unprivileged user, and the server inside listens on 0.0.0.0:3000 (BentoML's default,
    not overridden by our configuration), while `make run` binds 127.0.0.1."""
    import re

    import bentoml
    from bentoml._internal.configuration.containers import BentoMLContainer

    if not list(bentoml.bentos.list("ee559")):
        test_bentoml_build_packs_service_and_models(exported)
    dockerfile = (Path(bentoml.bentos.get("ee559:latest").path) / "env" / "docker" / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.M)
    assert users and users[-1] not in ("root", "0"), users
    assert re.search(r"useradd .*-u \$BENTO_USER_UID", dockerfile) and "ARG BENTO_USER_UID=1034" in dockerfile
    assert "EXPOSE 3000" in dockerfile
    assert BentoMLContainer.http.host.get() == "0.0.0.0"
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^HOST \?= 127\.0\.0\.1", makefile, flags=re.M)
