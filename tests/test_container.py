"""The container, really built and run (slow: `make container-test`; needs root and Podman, runc
and debootstrap from Debian's packages, which the make target installs): `bentoml containerize
--backend podman` builds the image from the Bento; the container answers on its published port
(so the server inside listens on 0.0.0.0), refuses requests without the token it generated (its
log says where the key file is), runs as an unprivileged user, serves a classification with it,
and stops cleanly on `podman stop` (SIGTERM through --init: exit 0)."""

from __future__ import annotations

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
TAG = "localhost/ee559:container-test"
ENV = {**os.environ, "CONTAINERS_CONF": str(HERE / "containers.conf")}
DIGIT = [[0.0] * 28 for _ in range(28)]


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


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("podman") is None, reason="needs podman (make container-test installs it)")
def test_container_serves_as_non_root_on_all_interfaces_with_a_token_and_stops_cleanly(exported, tmp_path: Path):
    base_image(tmp_path)
    build = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "--output", "tag"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    started = time.monotonic()
    image = subprocess.run(
        [
            sys.executable,
            "-m",
            "bentoml",
            "containerize",
            "ee559:latest",
            "--backend",
            "podman",
            "-t",
            TAG,
            "--opt",
            f"from={BASE}",
        ],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert image.returncode == 0, image.stdout[-5000:] + image.stderr[-5000:]
    size = podman("image", "inspect", "--format", "{{.Size}}", TAG).stdout.strip()
    print(f"\nimage {TAG}: built in {time.monotonic() - started:.0f} s, {int(size) / 2**20:.0f} MiB")
    port = free_port()
    cid = podman("run", "-d", "--init", "-p", f"127.0.0.1:{port}:3000", TAG).stdout.strip()
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_ready(url, None, timeout=120)
        except TimeoutError:
            raise AssertionError(podman("logs", cid, check=False).stdout[-3000:]) from None
        body = {"model": "lenet", "image": DIGIT}
        # Exposed (0.0.0.0) with no EE559_API_TOKEN: the server generated a token; the log says where.
        assert requests.post(f"{url}/classify", json=body, timeout=10).status_code == 401
        logs = podman("logs", cid).stdout + podman("logs", cid).stderr
        key = re.search(r"the token is in (\S+)", logs)
        assert key, logs[-3000:]
        token = podman("exec", cid, "cat", key.group(1)).stdout.strip()
        auth = {"Authorization": f"Bearer {token}"}
        r = requests.post(f"{url}/classify", json=body, headers=auth, timeout=10)
        assert r.status_code == 200 and r.json()["model"] == "lenet" and "label" in r.json(), r.text[:300]
        assert podman("exec", cid, "id", "-u").stdout.strip() == "1034"
        users = podman("top", cid, "user", "args").stdout.splitlines()[1:]  # every process in the container
        servers = [u for u in users if "bentoml" in u.split(None, 1)[-1]]
        assert servers and all(u.split()[0] == "bentoml" for u in servers), users
        podman("stop", "-t", "30", cid)
        assert podman("inspect", "--format", "{{.State.ExitCode}}", cid).stdout.strip() == "0"
    finally:
        podman("rm", "-f", cid, check=False)
        podman("image", "rm", TAG, check=False)
