"""The two images, really built and run (slow: `make container-test`; needs root and Podman, runc
and debootstrap from Debian's packages, which the make target installs). `bentoml containerize
--backend podman` builds each image from its Bento and the test prints its size.

The CPU image (bentofile.yaml): the container answers on its published port (so the server inside
listens on 0.0.0.0), refuses requests without the token it generated (its log says where the key
file is), runs as an unprivileged user, serves a classification with it on the CPU, stops cleanly
on `podman stop` (SIGTERM through --init: exit 0), carries ONNX Runtime's CPU build and no CUDA,
and refuses EE559_PROVIDER=cuda saying that its build has no CUDA provider.

The GPU image (bentofile-gpu.yaml) on this machine, which has no GPU: it carries onnxruntime-gpu
and every library its CUDA provider links against but the driver (CUDA 13 and cuDNN 9 from pip,
loaded by onnxruntime.preload_dlls()); with its own EE559_PROVIDER=cuda it exits at start-up
saying that there is no NVIDIA driver; with EE559_PROVIDER=auto it serves on the CPU and its log
says why."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from .conftest import ROOT, free_port, wait_ready

HERE = Path(__file__).resolve().parent / "container"
DEBIAN = "localhost/ee559-debian:bookworm"
BASE = "localhost/ee559-python:3.11"  # stands in for python:3.11-slim, BentoML's FROM
BENTOFILES = {"cpu": "bentofile.yaml", "gpu": "bentofile-gpu.yaml"}
ENV = {**os.environ, "CONTAINERS_CONF": str(HERE / "containers.conf")}
DIGIT = [[0.0] * 28 for _ in range(28)]
NO_DRIVER = "no NVIDIA driver (libcuda.so.1) on this machine"  # core/session.py's reason
# What onnxruntime-gpu's CUDA provider loads: CUDA 13's runtime, cuBLAS, cuRAND, cuFFT, and cuDNN 9.
CUDA_LIBRARIES = {"libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10", "libcufft.so.12"}
CUDNN = "libcudnn.so.9"


def podman(*args: str, check: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess:
    r = subprocess.run(["podman", *args], env=ENV, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def base_image(work: Path) -> None:
    """No registry is reachable: a Debian root file system from debootstrap, then Python on it.
    Kept between runs (podman image rm localhost/ee559-python:3.11 to rebuild)."""
    if podman("image", "exists", BASE, check=False).returncode == 0:
        return
    if podman("image", "exists", DEBIAN, check=False).returncode != 0:
        rootfs, tar = work / "rootfs", work / "rootfs.tar"
        subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(rootfs)], check=True, capture_output=True, timeout=900
        )
        subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(tar), "."], check=True, timeout=300)
        podman("import", str(tar), DEBIAN)
    context = work / "base"
    context.mkdir()
    shutil.copy(HERE / "python-base.Containerfile", context / "Containerfile")
    shutil.copy(os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"), context / "host-ca.crt")
    podman("build", "-t", BASE, str(context))


def image(kind: str, work: Path) -> str:
    """`bentoml build -f` the bentofile, then `bentoml containerize` its Bento; the image's tag.
    Prints the build time and the image's size (what the README reports)."""
    base_image(work)
    build = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "-f", BENTOFILES[kind], "--output", "tag"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    bento = re.search(r"__tag__:(\S+)", build.stdout)
    assert bento, build.stdout
    tag = f"localhost/{bento.group(1).split(':')[0]}:container-test"
    started = time.monotonic()
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "bentoml",
            "containerize",
            bento.group(1),
            "--backend",
            "podman",
            "-t",
            tag,
            "--opt",
            f"from={BASE}",
        ],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert made.returncode == 0, made.stdout[-5000:] + made.stderr[-5000:]
    size = int(podman("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())
    print(f"\nimage {tag} ({BENTOFILES[kind]}): built in {time.monotonic() - started:.0f} s, {size / 2**20:,.0f} MiB")
    return tag


def in_image(tag: str, script: str) -> str:
    """Python run in a throw-away container of the image (its venv, its user); the last line it printed."""
    r = podman("run", "--rm", "--entrypoint", "python", tag, "-c", script, timeout=300)
    return r.stdout.strip().splitlines()[-1]


def distributions(tag: str) -> set[str]:
    names = in_image(
        tag, "import importlib.metadata as m; print(' '.join(d.metadata['Name'] for d in m.distributions()))"
    )
    return {name.lower().replace("_", "-") for name in names.split()}


def logs(cid: str) -> str:
    r = podman("logs", cid, check=False)
    return r.stdout + r.stderr


def refused(tag: str, *env: str) -> str:
    """The image started with `env` must exit non-zero by itself; its log."""
    cid = podman("run", "-d", "--init", *(a for e in env for a in ("-e", e)), tag).stdout.strip()
    try:
        try:
            code = podman("wait", cid, timeout=180).stdout.strip()
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after 180 s\n{logs(cid)[-3000:]}") from None
        assert code not in ("", "0"), f"exit code {code!r}\n{logs(cid)[-3000:]}"
        return logs(cid)
    finally:
        podman("rm", "-f", cid, check=False)


def started(tag: str, *env: str) -> tuple[str, str]:
    """The image running with `env`, published on a loopback port and ready; its id and URL."""
    port = free_port()
    run = podman("run", "-d", "--init", "-p", f"127.0.0.1:{port}:3000", *(a for e in env for a in ("-e", e)), tag)
    cid, url = run.stdout.strip(), f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, None, timeout=180)
    except TimeoutError:
        tail = logs(cid)[-3000:]
        podman("rm", "-f", cid, check=False)
        raise AssertionError(tail) from None
    return cid, url


def token(cid: str) -> dict[str, str]:
    """Exposed (0.0.0.0) with no EE559_API_TOKEN, the server generated a token; the log says where."""
    key = re.search(r"the token is in (\S+)", logs(cid))
    assert key, logs(cid)[-3000:]
    return {"Authorization": f"Bearer {podman('exec', cid, 'cat', key.group(1)).stdout.strip()}"}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("podman") is None, reason="needs podman (make container-test installs it)")
def test_cpu_container_serves_as_non_root_on_all_interfaces_with_a_token_and_stops_cleanly(exported, tmp_path: Path):
    tag = image("cpu", tmp_path)
    try:
        packages = distributions(tag)
        assert "onnxruntime" in packages and "onnxruntime-gpu" not in packages
        assert not {p for p in packages if p.startswith("nvidia-") and p != "nvidia-ml-py"}, packages
        why = refused(tag, "EE559_PROVIDER=cuda")
        reason = r"CUDA was required \(provider=cuda\) but cannot be used: this onnxruntime build \(.+\) has no CUDA"
        assert re.search(reason, why), why[-3000:]
        cid, url = started(tag)
        try:
            body = {"model": "lenet", "image": DIGIT}
            assert requests.post(f"{url}/classify", json=body, timeout=10).status_code == 401
            r = requests.post(f"{url}/classify", json=body, headers=token(cid), timeout=10)
            assert r.status_code == 200 and r.json()["model"] == "lenet" and "label" in r.json(), r.text[:300]
            assert r.json()["provider"] == "CPUExecutionProvider"
            assert podman("exec", cid, "id", "-u").stdout.strip() == "1034"
            users = podman("top", cid, "user", "args").stdout.splitlines()[1:]  # every process in the container
            servers = [u for u in users if "bentoml" in u.split(None, 1)[-1]]
            assert servers and all(u.split()[0] == "bentoml" for u in servers), users
            podman("stop", "-t", "30", cid)
            assert podman("inspect", "--format", "{{.State.ExitCode}}", cid).stdout.strip() == "0"
        finally:
            podman("rm", "-f", cid, check=False)
    finally:
        podman("image", "rm", tag, check=False)


# Run in the GPU image: preload_dlls() as core/session.py calls it, then which CUDA libraries the
# process mapped, and which libraries the CUDA provider links against are still missing (ldd).
CUDA_PROBE = """
import json, os, re, subprocess
import onnxruntime as ort
ort.preload_dlls()
maps = open("/proc/self/maps").read()
loaded = sorted(set(re.findall(r"/\\S+/lib(?:cudart|cublasLt|cublas|curand|cufft|nvrtc|cudnn)\\.so\\.\\d+", maps)))
provider = os.path.join(os.path.dirname(ort.__file__), "capi", "libonnxruntime_providers_cuda.so")
env = {**os.environ, "LD_LIBRARY_PATH": ":".join(sorted({os.path.dirname(p) for p in loaded}))}
ldd = subprocess.run(["ldd", provider], env=env, capture_output=True, text=True).stdout
missing = sorted(line.split()[0] for line in ldd.splitlines() if "not found" in line)
print(json.dumps({"loaded": [os.path.basename(p) for p in loaded], "missing": missing,
                  "providers": ort.get_available_providers(), "version": ort.__version__}))
"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("podman") is None, reason="needs podman (make container-test installs it)")
def test_gpu_container_carries_cuda_13_and_cudnn_9_and_refuses_or_falls_back_as_its_provider_says(
    exported, tmp_path: Path
):
    tag = image("gpu", tmp_path)
    try:
        packages = distributions(tag)
        assert "onnxruntime-gpu" in packages and "onnxruntime" not in packages
        assert {"nvidia-cuda-runtime", "nvidia-cublas", "nvidia-cudnn-cu13"} <= packages, packages
        probe = json.loads(in_image(tag, CUDA_PROBE))
        print(f"GPU image: ONNX Runtime {probe['version']}, preload_dlls() loaded {', '.join(probe['loaded'])}")
        assert "CUDAExecutionProvider" in probe["providers"], probe
        assert CUDA_LIBRARIES | {CUDNN} <= set(probe["loaded"]), probe
        assert probe["missing"] == ["libcuda.so.1"], probe  # the driver: the host's, mounted in by the toolkit
        # Its own setting, EE559_PROVIDER=cuda: no GPU here, so it stops at start-up and says why.
        why = refused(tag)
        assert f"CUDA was required (provider=cuda) but cannot be used: {NO_DRIVER}" in why, why[-3000:]
        # auto: the CPU, said once in the log, and by each answer's provider.
        cid, url = started(tag, "EE559_PROVIDER=auto")
        try:
            assert f"execution provider: CPU (CUDA not used: {NO_DRIVER})" in logs(cid), logs(cid)[-3000:]
            r = requests.post(
                f"{url}/classify", json={"model": "lenet", "image": DIGIT}, headers=token(cid), timeout=10
            )
            assert r.status_code == 200 and r.json()["provider"] == "CPUExecutionProvider", r.text[:300]
            podman("stop", "-t", "30", cid)
            assert podman("inspect", "--format", "{{.State.ExitCode}}", cid).stdout.strip() == "0"
        finally:
            podman("rm", "-f", cid, check=False)
    finally:
        podman("image", "rm", tag, check=False)
