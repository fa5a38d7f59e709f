"""Secure by default where exposed: a server listening beyond loopback with no EE559_API_TOKEN
generates a token into a key file (mode 600, shared by its workers) and answers 401 without it;
EE559_AUTH=off serves openly on purpose; on 127.0.0.1 (`make run`) nothing changes."""

from __future__ import annotations

import multiprocessing
import os
import socket
import stat
from pathlib import Path

import pytest
import requests

from service.auth import exposed, key_file_token, listening_address, required_token
from service.settings import Settings, SettingsError

from ..conftest import start_server, stop_server, wait_ready


@pytest.mark.parametrize(
    "address, public",
    [
        ("0.0.0.0", True),
        ("::", True),
        ("10.1.2.3", True),
        ("fe80::1%eth0", True),
        ("127.0.0.1", False),
        ("127.3.2.1", False),
        ("::1", False),
        ("unix:/run/ee559.sock", False),
        (None, False),
    ],
)
def test_exposed_means_any_address_but_loopback(address, public: bool):
    assert exposed(address) is public


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_the_listening_address_is_read_from_the_socket_the_worker_was_handed(host: str):
    with socket.socket() as sock:
        sock.bind((host, 0))
        sock.listen()
        assert listening_address(["worker.py", "service.service:EE559", "--fd", str(sock.fileno())]) == host
    assert listening_address(["bentoml", "serve"]) is None  # not a worker: nothing listens
    assert listening_address(["worker.py", "--fd", "not-a-number"]) is None


def test_exposed_without_a_token_generates_one_with_mode_600_and_reuses_it(tmp_path: Path):
    settings = Settings(api_token_file=str(tmp_path / "key"))
    token = required_token(settings, "0.0.0.0")
    assert len(token) >= 32
    assert stat.S_IMODE(os.stat(tmp_path / "key").st_mode) == 0o600
    assert required_token(settings, "0.0.0.0") == token  # a restart keeps it
    assert not [p for p in tmp_path.iterdir() if p.name != "key"]  # no drafts left behind


def test_who_needs_a_token(tmp_path: Path):
    key = str(tmp_path / "key")
    assert required_token(Settings(api_token_file=key), "127.0.0.1") == ""  # make run: open
    assert required_token(Settings(api_token_file=key), None) == ""
    assert required_token(Settings(auth="off", api_token_file=key), "0.0.0.0") == ""  # explicitly open
    assert required_token(Settings(api_token="chosen", api_token_file=key), "0.0.0.0") == "chosen"
    assert required_token(Settings(api_token="chosen", api_token_file=key), "127.0.0.1") == "chosen"
    assert not (tmp_path / "key").exists()
    assert required_token(Settings(auth="token", api_token_file=key), "127.0.0.1") != ""  # asked for
    assert (tmp_path / "key").exists()


def test_an_empty_key_file_is_refused_not_taken_as_no_token(tmp_path: Path):
    (tmp_path / "key").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        required_token(Settings(api_token_file=str(tmp_path / "key")), "0.0.0.0")


def test_auth_off_with_a_token_is_a_contradiction_refused_at_start():
    with pytest.raises(SettingsError, match="EE559_AUTH=off"):
        Settings.from_env({"EE559_AUTH": "off", "EE559_API_TOKEN": "x"})
    with pytest.raises(SettingsError, match="EE559_AUTH"):
        Settings.from_env({"EE559_AUTH": "maybe"})


def _worker_token(path: str, start, out) -> None:
    start.wait()
    out.put(key_file_token(Path(path)))


def test_workers_starting_together_agree_on_one_token(tmp_path: Path):
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_worker_token, args=(str(tmp_path / "key"), start, out)) for _ in range(6)]
    for p in procs:
        p.start()
    start.set()
    results = [out.get(timeout=20) for _ in procs]
    for p in procs:
        p.join(10)
    assert len({token for token, _ in results}) == 1
    assert sum(generated for _, generated in results) == 1


def test_a_server_on_all_interfaces_needs_the_generated_token_and_off_opens_it(exported, runs: Path, tmp_path: Path):
    key = tmp_path / "key"
    env = {"EE559_MODELS": "mlp", "EE559_WORKERS": "2", "EE559_API_TOKEN_FILE": str(key)}
    url, proc = start_server(env, log=runs / "auth-exposed.log", host="0.0.0.0")
    try:
        wait_ready(url, proc)  # probes stay open for the orchestrator
        assert requests.get(f"{url}/livez", timeout=10).status_code == 200
        assert requests.get(f"{url}/metrics", timeout=10).status_code == 200
        refused = requests.get(f"{url}/models", timeout=10)
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
        token = key.read_text().strip()
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        auth = {"Authorization": f"Bearer {token}"}
        for _ in range(6):  # both workers hold the same token
            assert requests.get(f"{url}/models", headers=auth, timeout=10).status_code == 200
    finally:
        stop_server(proc)
    logged = (runs / "auth-exposed.log").read_text()
    assert str(key) in logged and token not in logged  # where to find it, never the token itself

    url, proc = start_server({**env, "EE559_AUTH": "off"}, log=runs / "auth-off.log", host="0.0.0.0")
    try:
        wait_ready(url, proc)
        assert requests.get(f"{url}/models", timeout=10).status_code == 200
    finally:
        stop_server(proc)
    assert "EE559_AUTH=off" in (runs / "auth-off.log").read_text()


def test_a_key_file_others_can_read_is_refused(tmp_path: Path):
    key = tmp_path / "key"
    key.write_text("s3cret-token\n")
    key.chmod(0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        required_token(Settings(api_token_file=str(key)), "0.0.0.0")
    key.chmod(0o600)
    assert required_token(Settings(api_token_file=str(key)), "0.0.0.0") == "s3cret-token"


def test_a_token_from_a_secret_file_loses_its_newline_and_whitespace_inside_is_refused():
    assert Settings.from_env({"EE559_API_TOKEN": "abc123\n"}).api_token == "abc123"
    for bad in ("abc 123", "abc\t123"):
        with pytest.raises(SettingsError, match="EE559_API_TOKEN"):
            Settings.from_env({"EE559_API_TOKEN": bad})
