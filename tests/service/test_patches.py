"""The fix to BentoML's TimeoutMiddleware (service/patches.py): no timer outlives its request,
an application error surfaces at once, and a request past the timeout is still answered 504."""

from __future__ import annotations

import asyncio

import pytest
from bentoml._internal.server.http.traffic import TimeoutMiddleware

from service import patches

patches.apply()


async def _call(app, path: str = "/") -> list[dict]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await app({"type": "http", "path": path, "method": "GET", "headers": []}, receive, send)
    return sent


async def _ok(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_no_timer_outlives_its_request():
    async def main() -> int:
        app = TimeoutMiddleware(_ok, timeout=30)
        for _ in range(500):
            assert (await _call(app))[0]["status"] == 200
        loop = asyncio.get_running_loop()
        return sum(not h.cancelled() for h in loop._scheduled)  # BentoML's own left 500 here

    assert asyncio.run(main()) == 0


def test_an_application_error_surfaces_at_once_not_after_the_timeout():
    async def broken(scope, receive, send) -> None:
        raise RuntimeError("boom")

    async def main() -> None:
        await asyncio.wait_for(_call(TimeoutMiddleware(broken, timeout=30)), 5)

    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(main())


def test_a_request_past_the_timeout_is_answered_504():
    async def slow(scope, receive, send) -> None:
        await asyncio.sleep(10)

    sent = asyncio.run(_call(TimeoutMiddleware(slow, timeout=0.2)))
    assert sent[0]["status"] == 504


def test_the_patch_refuses_a_bentoml_it_was_not_checked_against():
    """An upgrade of BentoML fails loudly until someone re-reads the middleware it replaces."""
    with pytest.raises(patches.UncheckedVersion, match=r"1\.4\.40.*this is 9\.9\.9"):
        patches.apply("9.9.9")
    import bentoml

    assert bentoml.__version__ in patches.CHECKED_VERSIONS  # the pinned version is one it was checked against
