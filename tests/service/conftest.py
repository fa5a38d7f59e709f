"""Fixtures of the service tests beyond the session's (tests/conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def served_provider(exported: dict[str, Path]) -> str:
    """The execution provider a test server must report: the one EE559_PROVIDER selects on this
    machine (read as the service reads it, chosen as core/session.py chooses it), which is the CPU
    wherever CUDA cannot be used. The test servers inherit this process's environment."""
    from core.session import CPU, cuda_unavailable_reason, make_session
    from service.settings import Settings

    setting = Settings.from_env(os.environ).provider
    if setting == "cpu" or cuda_unavailable_reason() is not None:
        return CPU
    return make_session(exported["lenet"].with_name("model.onnx"), setting)[1]  # CUDA only where it really runs
