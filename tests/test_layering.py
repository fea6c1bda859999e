"""proto/ and core/ stay sans-I/O: protocols and policy take bytes and a clock value in and give decisions
out, so property tests drive them directly and no socket, timer or log call hides inside them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "serialmuxd"
FORBIDDEN = {
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
PURE_FILES = sorted([*(PACKAGE / "proto").glob("*.py"), *(PACKAGE / "core").glob("*.py")])


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
    assert not imported_modules(path) & FORBIDDEN
