"""The two Bentos: bentofile.yaml (the CPU image, ONNX Runtime's CPU build) and bentofile-gpu.yaml
(the GPU image, onnxruntime-gpu with CUDA 13 and cuDNN 9 from NVIDIA's pip wheels). Offline: the
two bentofiles agree but for name, lock and provider, and the locks hold what each image needs and
nothing of the other's. With the exported models: `bentoml build` of each packs the service and
every model (seconds each)."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from core.session import PROVIDERS
from training.registry import served_graphs

ROOT = Path(__file__).resolve().parent.parent
BENTOFILES = {"cpu": ROOT / "bentofile.yaml", "gpu": ROOT / "bentofile-gpu.yaml"}
# The only nvidia-* package the CPU image may carry: NVML's Python bindings (pure Python, a
# dependency of BentoML), not a CUDA library.
NVML = "nvidia-ml-py"


def bentofile(kind: str) -> dict:
    return yaml.safe_load(BENTOFILES[kind].read_text())


def envs(config: dict) -> dict[str, str]:
    return {e["name"]: str(e["value"]) for e in config.get("envs", [])}


def pins(lock: Path) -> dict[str, str]:
    """A pip-compile lock's `name==version` lines, by canonical name."""
    found = {}
    for line in lock.read_text().splitlines():
        if line and not line.startswith((" ", "#", "-")):
            name, _, version = line.partition("==")
            assert version and "[" not in name, f"{lock.name}: not a plain pin: {line!r}"
            found[canonicalize_name(name)] = version.split()[0]
    return found


def lock_of(kind: str) -> dict[str, str]:
    return pins(ROOT / bentofile(kind)["python"]["requirements_txt"])


def cuda_wheels(packages: dict[str, str]) -> set[str]:
    return {name for name in packages if name.startswith("nvidia-") and name != NVML}


def test_the_two_bentofiles_agree_but_for_name_lock_and_provider():
    cpu, gpu = bentofile("cpu"), bentofile("gpu")
    for key in ("service", "include", "exclude", "docker"):
        assert cpu[key] == gpu[key], key  # the same service, files and base: only the ORT build differs
    assert cpu["python"]["lock_packages"] is False and gpu["python"]["lock_packages"] is False  # locks already
    assert cpu["name"] != gpu["name"]
    assert cpu["labels"].items() <= gpu["labels"].items()
    assert cpu["python"]["requirements_txt"] != gpu["python"]["requirements_txt"]
    for kind in BENTOFILES:
        lock = ROOT / bentofile(kind)["python"]["requirements_txt"]
        assert lock.exists() and lock.with_suffix(".in").exists(), lock  # each a lock compiled by `make lock`
        assert lock.stem in re.search(r"^LOCKS := (.*)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    cpu_env, gpu_env = envs(cpu), envs(gpu)
    # The CPU image runs anywhere (auto: CUDA if ever present, else the CPU with one log line); the
    # GPU image requires CUDA, so a pod without a GPU stops at start-up rather than serve on the CPU.
    assert cpu_env["EE559_PROVIDER"] == "auto" and gpu_env["EE559_PROVIDER"] == "cuda"
    assert set(PROVIDERS) >= {cpu_env["EE559_PROVIDER"], gpu_env["EE559_PROVIDER"]}
    assert {k: v for k, v in cpu_env.items() if k != "EE559_PROVIDER"}.items() <= gpu_env.items()
    # What NVIDIA's CUDA base images set for the NVIDIA Container Toolkit, which mounts libcuda in.
    assert set(gpu_env) - set(cpu_env) == {"NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES"}
    assert "compute" in gpu_env["NVIDIA_DRIVER_CAPABILITIES"].split(",")


def test_the_cpu_lock_has_onnxruntimes_cpu_build_and_no_cuda():
    cpu = lock_of("cpu")
    assert "onnxruntime" in cpu
    assert "onnxruntime-gpu" not in cpu and not cuda_wheels(cpu)
    assert "torch" not in cpu


def test_the_gpu_lock_has_onnxruntime_gpu_with_cuda_13_and_cudnn_9_from_pip():
    cpu, gpu = lock_of("cpu"), lock_of("gpu")
    assert "onnxruntime" not in gpu  # both install the `onnxruntime` package: one would overwrite the other
    assert gpu["onnxruntime-gpu"] == cpu["onnxruntime"]  # one ONNX Runtime version in both images
    assert "torch" not in gpu
    # What the wheel's cuda and cudnn extras require, read from its own metadata (the dev venv's
    # onnxruntime-gpu, the same version), each satisfied by a pin of the lock.
    assert importlib.metadata.version("onnxruntime-gpu") == gpu["onnxruntime-gpu"]
    extras = [
        Requirement(r)
        for r in importlib.metadata.requires("onnxruntime-gpu") or []
        if Requirement(r).marker is not None
        and any(Requirement(r).marker.evaluate({"extra": e}) for e in ("cuda", "cudnn"))
    ]
    assert {canonicalize_name(r.name) for r in extras} >= {"nvidia-cuda-runtime", "nvidia-cudnn-cu13"}
    for r in extras:
        name = canonicalize_name(r.name)
        assert name in gpu and r.specifier.contains(gpu[name]), (str(r), gpu.get(name))
    assert gpu["nvidia-cuda-runtime"].split(".")[0] == "13" and gpu["nvidia-cudnn-cu13"].split(".")[0] == "9"
    # Apart from the ONNX Runtime build and its CUDA wheels, the GPU image has the CPU image's packages
    # at the same versions (the GPU lock is compiled under the CPU one).
    assert set(cpu) - set(gpu) == {"onnxruntime"}
    assert set(gpu) - set(cpu) == {"onnxruntime-gpu"} | cuda_wheels(gpu)
    assert {n: v for n, v in gpu.items() if n in cpu} == {n: v for n, v in cpu.items() if n in gpu}


def test_the_dev_lock_runs_the_gpu_build_without_cuda_wheels_at_the_images_versions():
    dev, cpu, gpu = pins(ROOT / "requirements-dev.txt"), lock_of("cpu"), lock_of("gpu")
    assert dev["onnxruntime-gpu"] == gpu["onnxruntime-gpu"]
    assert "onnxruntime" not in dev and not cuda_wheels(dev)
    for lock in (cpu, gpu):
        assert {n: v for n, v in lock.items() if n in dev} == {n: v for n, v in dev.items() if n in lock}


def test_the_kubernetes_gpu_overlay_runs_the_gpu_image():
    """The image is named after its Bento (`bentoml containerize NAME:latest`): the base's `ee559`,
    renamed to the GPU Bento's name in overlays/gpu, whose EE559_PROVIDER=cuda the CPU image refuses."""
    kubernetes = ROOT / "service" / "deploy" / "kubernetes"
    base = yaml.safe_load((kubernetes / "base" / "kustomization.yaml").read_text())
    gpu = yaml.safe_load((kubernetes / "overlays" / "gpu" / "kustomization.yaml").read_text())
    cpu = yaml.safe_load((kubernetes / "overlays" / "cpu" / "kustomization.yaml").read_text())
    assert [i["name"] for i in base["images"]] == [bentofile("cpu")["name"]]
    assert [(i["name"], i["newName"]) for i in gpu["images"]] == [(bentofile("cpu")["name"], bentofile("gpu")["name"])]
    assert "images" not in cpu


def test_every_pin_is_written_once_in_the_in_files():
    pinned: dict[str, list[str]] = {}
    for path in sorted(ROOT.glob("requirements*.in")):
        for line in path.read_text().splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith(("#", "-")):
                r = Requirement(line)
                if any(s.operator == "==" for s in r.specifier):
                    pinned.setdefault(canonicalize_name(r.name), []).append(path.name)
    assert "onnxruntime" in pinned and "onnxruntime-gpu" in pinned
    assert {name: files for name, files in pinned.items() if len(files) > 1} == {}


def build(kind: str) -> Path:
    """`bentoml build -f` one bentofile; the Bento's directory."""
    r = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "-f", str(BENTOFILES[kind]), "--output", "tag"],
        cwd=ROOT,
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    import bentoml

    tag = re.search(r"__tag__:(\S+)", r.stdout)
    assert tag, r.stdout
    bento = bentoml.bentos.get(tag.group(1))
    assert bento.tag.name == bentofile(kind)["name"]
    return Path(bento.path)


def test_bentoml_build_packs_service_and_models_in_both_bentos(exported):
    sources = {}
    for kind in BENTOFILES:
        path = build(kind)
        info = yaml.safe_load((path / "bento.yaml").read_text())
        public = next(s for s in info["services"] if s["name"] == "ee559")
        packed = {m["tag"].split(":")[0] for m in public["models"]}
        assert packed == set(served_graphs())
        src = path / "src"
        assert (src / "service" / "service.py").exists() and (src / "service" / "tasks" / "classify.py").exists()
        # what the service stands on
        assert (src / "core" / "card.py").exists() and (src / "core" / "session.py").exists()
        assert not (src / "training").exists() and not (src / "tests").exists() and not (src / "export").exists()
        sources[kind] = sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file())
        # What the image installs is the bentofile's lock, pin for pin: no torch, one ONNX Runtime build.
        installed = pins(path / "env" / "python" / "requirements.txt")
        assert installed == lock_of(kind)
        assert not any(name.startswith("torch") for name in installed), "the serving image must not carry torch"
        dockerfile = (path / "env" / "docker" / "Dockerfile").read_text()
        provider = envs(bentofile(kind))["EE559_PROVIDER"]
        assert re.search(rf"^ARG EE559_PROVIDER={provider}$", dockerfile, re.M), kind
    assert sources["cpu"] == sources["gpu"]  # the same service files in both


@pytest.mark.parametrize("kind", list(BENTOFILES))
def test_container_runs_as_non_root_and_binds_all_interfaces(exported, kind: str):
    """What `bentoml containerize` builds from each Bento: the Dockerfile BentoML generated drops
    to an unprivileged user, and the server inside listens on 0.0.0.0:3000 (BentoML's default,
    not overridden by our configuration), while `make run` binds 127.0.0.1."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    dockerfile = (build(kind) / "env" / "docker" / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.M)
    assert users and users[-1] not in ("root", "0"), users
    assert re.search(r"useradd .*-u \$BENTO_USER_UID", dockerfile) and "ARG BENTO_USER_UID=1034" in dockerfile
    assert "EXPOSE 3000" in dockerfile
    assert BentoMLContainer.http.host.get() == "0.0.0.0"
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^HOST \?= 127\.0\.0\.1", makefile, flags=re.M)
