"""A sitecustomize for subprocesses that must run without some packages: put this folder's
`blocked/` on PYTHONPATH with EE559_BLOCKED_IMPORTS=torch,training,... and importing any of them
(or a submodule) raises ImportError, as on a machine where they are not installed."""

from __future__ import annotations

import os
from pathlib import Path

SITECUSTOMIZE = """
import os, sys

class _Blocked:
    names = tuple(n for n in os.environ.get("EE559_BLOCKED_IMPORTS", "").split(",") if n)

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ImportError(f"{name} is blocked in this process (EE559_BLOCKED_IMPORTS)")
        return None

sys.meta_path.insert(0, _Blocked())
"""


def blocking_env(tmp: Path, names: tuple[str, ...], env: dict[str, str]) -> dict[str, str]:
    """`env` for a subprocess in which importing any of `names` fails."""
    folder = tmp / "blocked"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join(p for p in (str(folder), env.get("PYTHONPATH", "")) if p)
    return {**env, "PYTHONPATH": path, "EE559_BLOCKED_IMPORTS": ",".join(names)}
