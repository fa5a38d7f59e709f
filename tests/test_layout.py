"""The floor plan: arrows run one way.

core/ imports no torch and nothing else of the project; training/ -> core; export/ -> training,
core; service/ -> core only; the Locust side of loadtests/ -> core only (the benchmarks, which
compare with PyTorch, may import training and export). Checked on the source (every import
statement, including those inside functions) and by importing in processes where the forbidden
packages cannot be imported at all.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .blocked_imports import blocking_env

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ("core", "training", "export", "service", "loadtests", "tests")
ALLOWED = {  # folder -> project packages its modules may import
    "core": {"core"},
    "training": {"core", "training"},
    "export": {"core", "training", "export"},
    "service": {"core", "service"},
    "loadtests": {"core", "loadtests"},
}
# The benchmarks compare with PyTorch: they may import training and export.
LOADTEST_BENCHMARKS = {"bench.py", "devicebench.py", "textbench.py"}
HEAVY_FOR_CORE = {"torch", "torchvision", "sklearn", "locust", "fastapi", "tritonclient"}


def imported_packages(path: Path) -> set[str]:
    """The top-level package of every import in the file, relative imports resolved to its own."""
    own = path.relative_to(ROOT).parts[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add(own if node.level else (node.module or "").split(".")[0])
    return found


def modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("folder", list(ALLOWED))
def test_imports_follow_the_arrows(folder: str):
    wrong = {}
    for path in modules(folder):
        allowed = ALLOWED[folder]
        if folder == "loadtests" and path.name in LOADTEST_BENCHMARKS:
            allowed = allowed | {"training", "export"}
        if folder == "loadtests" and path.parent.name == "baselines":
            allowed = set()
        bad = {p for p in imported_packages(path) if p in PROJECT and p not in allowed}
        if folder == "core":
            bad |= imported_packages(path) & HEAVY_FOR_CORE
        if bad:
            wrong[str(path.relative_to(ROOT))] = sorted(bad)
    assert not wrong, f"imports against the arrows: {wrong}"


def test_the_check_sees_a_wrong_import(tmp_path: Path):
    """The AST check above fails on a module that imports what it must not (guards the guard)."""
    probe = ROOT / "core" / "_layout_probe.py"
    probe.write_text("def f():\n    from service import settings\n    import torch\n")
    try:
        assert imported_packages(probe) == {"service", "torch"}
    finally:
        probe.unlink()


def _run_blocked(tmp_path: Path, names: tuple[str, ...], code: str) -> subprocess.CompletedProcess:
    env = blocking_env(tmp_path, names, dict(os.environ))
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_blocking_really_blocks(tmp_path: Path):
    r = _run_blocked(tmp_path, ("torch",), "import torch")
    assert r.returncode != 0 and "blocked" in r.stderr


def test_core_and_the_load_generator_import_without_torch_bentoml_or_onnxruntime(tmp_path: Path):
    code = (
        "import core.card, core.spec, core.paths, core.textgen, core.images, core.store\n"
        "import loadtests.tasks, loadtests.locustfile, loadtests.sample, loadtests.__main__\n"
    )
    r = _run_blocked(tmp_path, ("torch", "bentoml", "onnxruntime", "onnx", "training", "export", "service"), code)
    assert r.returncode == 0, r.stderr[-3000:]


def test_service_imports_neither_torch_nor_training_nor_export(exported, tmp_path: Path):
    r = _run_blocked(tmp_path, ("torch", "training", "export", "loadtests"), "import service.service")
    assert r.returncode == 0, r.stderr[-3000:]


def test_training_imports_neither_service_nor_export(tmp_path: Path):
    code = "import training.registry, training.train, training.data, training.__main__"
    r = _run_blocked(tmp_path, ("service", "export", "bentoml", "onnxruntime"), code)
    assert r.returncode == 0, r.stderr[-3000:]
