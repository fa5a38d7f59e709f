"""Text corpora for the character-level language models, all offline: the docstrings of the
running interpreter's own standard library (extracted with `ast`, cached after the first run) or
any UTF-8 text file. Windows of `block + 1` characters become (input, next-character) pairs."""

from __future__ import annotations

import ast
import hashlib
import sysconfig
from pathlib import Path

import numpy as np

from .runtime import runs_dir

BLOCK = 128  # characters per training window (the GPT's context)
SKIPPED_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "turtledemo"}


def stdlib_docstrings() -> str:
    """Every distinct module, class and function docstring of the stdlib's .py files, in file order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    docs: list[str] = []
    for path in sorted(root.rglob("*.py")):
        if SKIPPED_DIRS & set(path.relative_to(root).parts[:-1]):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError):  # a few files are deliberately broken or unreadable
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=True)
                if doc and doc not in seen:
                    seen.add(doc)
                    docs.append(doc)
    return "\n\n".join(docs) + "\n"


def corpus_text(path: Path | None = None) -> tuple[str, str]:
    """(text, source description): the file at `path` (UTF-8), or the cached stdlib docstrings."""
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        if len(text) < 4 * BLOCK:
            raise ValueError(f"{path} holds {len(text)} characters; a corpus needs at least {4 * BLOCK}")
        return text, f"{path} ({len(text):,} characters)"
    import sys

    cache = runs_dir() / "cache" / f"stdlib_docstrings_py{sys.version_info.major}{sys.version_info.minor}.txt"
    if cache.exists():
        text = cache.read_text(encoding="utf-8")
    else:
        text = stdlib_docstrings()
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(text, encoding="utf-8")
    return text, f"Python {sys.version.split()[0]} standard library docstrings ({len(text):,} characters)"


def vocabulary(text: str) -> tuple[str, ...]:
    """Every character of the corpus, sorted: token i is vocabulary[i]."""
    return tuple(sorted(set(text)))


def encode(text: str, vocab: tuple[str, ...]) -> np.ndarray:
    index = {ch: i for i, ch in enumerate(vocab)}
    return np.fromiter((index[ch] for ch in text), dtype=np.int64, count=len(text))


def windows(ids: np.ndarray, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows: x = ids[i:i+block], y = ids[i+1:i+block+1]; (N, block) each."""
    n = (len(ids) - 1) // block
    x = ids[: n * block].reshape(n, block)
    y = ids[1 : n * block + 1].reshape(n, block)
    return x, y


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
