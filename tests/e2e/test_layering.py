"""proto/ and core/ stay sans-I/O: protocols and policy take bytes and a clock value in and give decisions
out, so property tests drive them directly and no socket, timer or log call hides inside them.

Two checks.  The direct one reads each module's own imports (it catches ``import time`` too, which every
interpreter has loaded anyway).  The transitive one imports each module in a fresh interpreter and looks at
``sys.modules``: a pure module that imports ``config`` (which imports the adapters, which import asyncio)
passes the first check and fails this one.  It starts interpreters, so it lives with the e2e tests.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "serialmuxd"
FORBIDDEN_DIRECT = {
    "asyncio",
    "socket",
    "selectors",
    "time",
    "logging",
    "structlog",
    "os",
    "subprocess",
    "threading",
}
# Modules whose presence after the import means that I/O machinery came along, directly or not.
FORBIDDEN_LOADED = {
    "asyncio",
    "socket",
    "selectors",
    "subprocess",
    "threading",
    "logging",
    "structlog",
    "aiohttp",
    "serial",
    "ssl",
    "termios",
    "tomllib",
    "serialmuxd.config",
    "serialmuxd.adapters",
    "serialmuxd.devices",
}
PURE_FILES = sorted([*(PACKAGE / "proto").glob("*.py"), *(PACKAGE / "core").glob("*.py")])


def _module_name(path: Path) -> str:
    parts = ["serialmuxd", path.parent.name]
    if path.stem != "__init__":
        parts.append(path.stem)
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_there_are_pure_modules_to_check() -> None:
    assert {p.name for p in PURE_FILES} >= {"telnet.py", "escape.py", "ring.py", "lease.py", "pacing.py"}


@pytest.mark.parametrize("path", PURE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_pure_module_imports_no_io(path: Path) -> None:
    assert not imported_modules(path) & FORBIDDEN_DIRECT


_PROBE = """
import importlib, json, sys
before = set(sys.modules)
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(set(sys.modules) - before)))
"""


@pytest.mark.parametrize("path", PURE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_pure_module_loads_no_io_transitively(path: Path) -> None:
    # -I: isolated (no user site, no PYTHONPATH surprises); -S would hide the editable install's path hook.
    result = subprocess.run(
        [sys.executable, "-I", "-c", _PROBE, _module_name(path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=PACKAGE.parent,
    )
    loaded = set(json.loads(result.stdout))
    offending = {
        name for name in loaded if name in FORBIDDEN_LOADED or name.split(".")[0] in FORBIDDEN_LOADED
    }
    assert not offending, f"{_module_name(path)} loads {sorted(offending)}"


def test_the_probe_detects_a_leak() -> None:
    """The transitive check can fail: serialmuxd.hub is not pure and must be caught."""
    result = subprocess.run(
        [sys.executable, "-I", "-c", _PROBE, "serialmuxd.hub"],
        capture_output=True,
        text=True,
        check=True,
        cwd=PACKAGE.parent,
    )
    assert "asyncio" in json.loads(result.stdout)
