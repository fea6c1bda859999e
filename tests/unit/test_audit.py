"""The audit trail on files in tmp_path (and /dev/full): the line's shape, the closed event set, escaping,
refused field names, the file's mode and append-only use, failures counted and never raised, recovery with
a count of what was lost, and a scan of the sources so every event the daemon emits is classified."""

from __future__ import annotations

import ast
import contextlib
import errno
import inspect
import json
import os
import stat
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from serialmuxd.errors import StartupError
from serialmuxd.obs import audit as audit_module
from serialmuxd.obs.audit import MAX_TEXT_CHARS, AuditEvent, AuditLog

PACKAGE = Path(__file__).resolve().parents[2] / "serialmuxd"
T0 = 1767225600.123  # 2026-01-01T00:00:00.123Z
AUDIT_CALLEES = {"audit", "_audit", "_audit_to_log", "audit_refusal"}  # the HTTP guard's


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="ascii").splitlines()


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines(path)]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "audit.jsonl"


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


# -- the line --------------------------------------------------------------------------------------------
def test_a_line_is_time_then_event_then_the_fields_and_also_a_log_event(path: Path) -> None:
    log = AuditLog(path, clock=FakeClock())
    with structlog.testing.capture_logs() as logged:
        log("attach", port="vm1", session=7, peer="alice@127.0.0.1:5000", mode=AuditEvent.ATTACH)
        log(AuditEvent.DETACH, port="vm1", session=7, missed=0, ok=True, ratio=0.5, gone=None)
    log.close()
    text = lines(path)
    assert len(text) == 2
    first = json.loads(text[0])
    assert list(first) == ["time", "event", "port", "session", "peer", "mode"]
    assert first == {
        "time": "2026-01-01T00:00:00.123Z",
        "event": "attach",
        "port": "vm1",
        "session": 7,
        "peer": "alice@127.0.0.1:5000",
        "mode": "attach",
    }
    assert json.loads(text[1])["event"] == "detach" and json.loads(text[1])["gone"] is None
    assert [(e["event"], e["log_level"], e.get("port")) for e in logged] == [
        ("attach", "info", "vm1"),
        ("detach", "info", "vm1"),
    ]


@pytest.mark.parametrize(
    ("timestamp", "text"),
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (T0, "2026-01-01T00:00:00.123Z"),
        (1767225599.9996, "2026-01-01T00:00:00.000Z"),  # rounds into the next second, not to ".1000"
        (1767225600.0004, "2026-01-01T00:00:00.000Z"),
    ],
)
def test_times_are_rfc3339_utc_with_milliseconds(timestamp: float, text: str) -> None:
    assert audit_module.rfc3339_ms(timestamp) == text


def test_without_a_file_events_go_to_the_log_only(tmp_path: Path) -> None:
    log = AuditLog(None)
    log.open()
    with structlog.testing.capture_logs() as logged:
        log("port_enabled", port="vm1")
    assert [e["event"] for e in logged] == ["port_enabled"]
    assert list(tmp_path.iterdir()) == []


# -- the closed set --------------------------------------------------------------------------------------
def test_an_unknown_event_is_a_programming_error(path: Path) -> None:
    log = AuditLog(path)
    with structlog.testing.capture_logs() as logged, pytest.raises(ValueError, match="add it to AuditEvent"):
        log("attached", port="vm1")
    assert logged == [] and not path.exists()


def test_the_set_holds_the_access_control_events() -> None:
    expected = {
        "login_ok",
        "login_failed",
        "logout",
        "session_expired",
        "ticket_issued",
        "ticket_used",
        "ticket_refused",
        "access_denied",
        "origin_refused",
        "host_refused",
        "ws_protocol_close",
        "heartbeat_cut",
        "scrollback_download",
        "config_problem",
    }
    assert expected <= {str(event) for event in AuditEvent}


def test_every_event_has_a_one_line_comment() -> None:
    source = inspect.getsource(AuditEvent)
    members = [line for line in source.splitlines() if line.strip().split(" = ")[0].isupper()]
    assert len(members) == len(AuditEvent)
    assert [line for line in members if "  # " not in line] == []


def event_names(source: str, filename: str) -> Iterator[tuple[str, str | None]]:
    """``(where, event name)`` for every call of an audit function in ``source``; the name is None when
    it is not a literal (or an ``AuditEvent.X``), which the closed set cannot check."""
    for node in ast.walk(ast.parse(source, filename=filename)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        callee = (
            func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        )
        if callee not in AUDIT_CALLEES:
            continue
        first = node.args[0] if node.args else None
        name: str | None = None
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            name = first.value
        elif (
            isinstance(first, ast.Attribute)
            and isinstance(first.value, ast.Name)
            and first.value.id == "AuditEvent"
        ):
            name = AuditEvent[first.attr].value if first.attr in AuditEvent.__members__ else first.attr
        yield f"{filename}:{node.lineno}", name


def unclassified(names: Iterator[tuple[str, str | None]]) -> list[str]:
    members = {str(event) for event in AuditEvent}
    return [
        f"{where}: event name is not a literal" if name is None else f"{where}: {name!r} is not an AuditEvent"
        for where, name in names
        if name not in members
    ]


def test_every_event_the_daemon_emits_is_in_the_closed_set() -> None:
    found: list[tuple[str, str | None]] = []
    for file in sorted(PACKAGE.rglob("*.py")):
        found += event_names(file.read_text(encoding="utf-8"), str(file.relative_to(PACKAGE.parent)))
    assert unclassified(iter(found)) == []
    # The scan itself works: it sees the hubs' and the daemon's events.
    assert {"attach", "detach", "takeover", "port_switch", "vm_action"} <= {name for _, name in found}


def test_the_scan_reports_an_unknown_literal_and_a_computed_name() -> None:
    snippet = (
        "self._audit('attach', port=p)\n"
        "audit(AuditEvent.DETACH)\n"
        "hub.audit('attach_later')\n"
        "_audit_to_log(name, port=p)\n"
        "print('not_an_event')\n"
    )
    assert unclassified(event_names(snippet, "x.py")) == [
        "x.py:3: 'attach_later' is not an AuditEvent",
        "x.py:4: event name is not a literal",
    ]


# -- what a line may hold --------------------------------------------------------------------------------
HOSTILE = 'mallory\r\n{"time":"x","event":"login_ok"}\x1b]0;pwned\x07\x9b2J\u2028\u202e\udcff\x7f\tend'
HOSTILE_ESCAPED = (
    r'mallory\x0d\x0a{"time":"x","event":"login_ok"}\x1b]0;pwned\x07' + r"\x9b2J\u2028\u202e\udcff\x7f\x09end"
)


def test_control_characters_are_escaped_in_the_file_and_the_log(path: Path) -> None:
    log = AuditLog(path)
    with structlog.testing.capture_logs() as logged:
        log("login_failed", method="password", user=HOSTILE, peer="10.0.0.1:2", detail={"why": HOSTILE})
    log.close()
    raw = path.read_bytes()
    assert raw.count(b"\n") == 1 and raw.endswith(b"\n")
    assert all(0x20 <= byte < 0x7F for byte in raw[:-1])  # ASCII JSON, nothing a terminal interprets
    (record,) = records(path)
    assert record["user"] == HOSTILE_ESCAPED and record["detail"] == {"why": HOSTILE_ESCAPED}
    assert logged[0]["user"] == HOSTILE_ESCAPED


def test_printable_text_in_any_script_is_kept() -> None:
    assert audit_module.escape_text("José Ωμέγα 東京 🙂 a\\b") == "José Ωμέγα 東京 🙂 a\\b"
    assert audit_module.escape_text("José 東京\x07") == "José 東京\\x07"  # the slow path keeps them too


def test_long_text_is_cut_and_marked(path: Path) -> None:
    log = AuditLog(path)
    log("login_failed", user="u" * (MAX_TEXT_CHARS + 500), reason="x")
    log.close()
    (record,) = records(path)
    assert record["user"] == "u" * MAX_TEXT_CHARS + "...[500 more characters]"


def test_bytes_are_recorded_by_length_only(path: Path) -> None:
    log = AuditLog(path)
    log("api_input", port="vm1", what="keys", data=b"CANARY-S3CRET\r")
    log.close()
    assert "CANARY" not in path.read_text() and records(path)[0]["data"] == "<14 bytes>"


def test_other_values_become_json(path: Path) -> None:
    log = AuditLog(path)
    groups = [f"group-{n:02d}" for n in range(20)]
    log("access_denied", groups=frozenset(groups), grants=("x", 1), nan=float("nan"), path=Path("/p"))
    log.close()
    (record,) = records(path)
    assert record["groups"] == groups  # a set is sorted, so equal sets give equal lines
    assert (record["grants"], record["nan"], record["path"]) == (["x", 1], "nan", "/p")


@pytest.mark.parametrize(
    "fields",
    [
        {"password": "x"},
        {"new_password": "x"},
        {"api_token": "x"},
        {"Ticket": "x"},
        {"client_secret": "x"},
        {"authorization": "Basic eA=="},
        {"Cookie": "sid=1"},
        {"passwd": "x"},
        {"headers": {"Authorization": "Bearer x"}},  # nested too
    ],
)
def test_field_names_that_could_hold_a_secret_are_refused(path: Path, fields: dict[str, Any]) -> None:
    log = AuditLog(path)
    with structlog.testing.capture_logs() as logged, pytest.raises(ValueError, match="secret"):
        log("login_failed", user="alice", **fields)
    assert logged == [] and not path.exists()


@pytest.mark.parametrize("name", ["time", "event", "level", "timestamp"])
def test_field_names_of_the_record_itself_are_refused(path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="reserved"):
        AuditLog(path)("attach", **{name: "x"})


# -- the file --------------------------------------------------------------------------------------------
def test_the_file_is_created_0600_and_appended_to(path: Path) -> None:
    with umask(0):  # the mode must be ours, not the umask's
        log = AuditLog(path)
        log.open()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    log("attach", port="a")
    log.close()
    log = AuditLog(path)
    log("attach", port="b")
    log.close()
    assert [r["port"] for r in records(path)] == ["a", "b"]


def test_an_existing_file_keeps_its_mode(path: Path) -> None:
    path.write_bytes(b"")
    path.chmod(0o640)  # e.g. readable by an auditors group: the operator's choice
    AuditLog(path)("attach", port="a")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_open_names_the_file_it_cannot_open(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "audit.jsonl"
    with pytest.raises(StartupError, match=str(missing)):
        AuditLog(missing).open()


def test_a_line_cut_by_a_killed_run_stands_alone(path: Path) -> None:
    path.write_bytes(b'{"time":"2026-01-01T00:00:00.000Z","event":"att')
    log = AuditLog(path)
    log("attach", port="vm1")
    log("detach", port="vm1")
    log.close()
    cut, *rest = lines(path)
    assert cut == '{"time":"2026-01-01T00:00:00.000Z","event":"att'
    assert [json.loads(line)["event"] for line in rest] == ["attach", "detach"]  # and no blank lines


def test_reopen_follows_log_rotation(path: Path) -> None:
    log = AuditLog(path)
    log("attach", port="a")
    path.rename(path.with_suffix(".1"))
    log.reopen()
    log("attach", port="b")
    log.close()
    assert [r["port"] for r in records(path)] == ["b"]
    assert [r["port"] for r in records(path.with_suffix(".1"))] == ["a"]


def test_after_close_events_reach_the_log_only(path: Path) -> None:
    log = AuditLog(path)
    log("attach", port="a")
    log.close()
    with structlog.testing.capture_logs() as logged:
        log("detach", port="a")
    assert [r["event"] for r in records(path)] == ["attach"]
    assert [e["event"] for e in logged] == ["detach"]


# -- failures --------------------------------------------------------------------------------------------
def test_a_full_disk_is_counted_logged_once_and_never_raised(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.symlink_to("/dev/full")  # every write: ENOSPC
    clock, monotonic = FakeClock(), FakeClock(0.0)
    log = AuditLog(path, clock=clock, monotonic=monotonic)
    log.open()  # opening works; writing does not
    with structlog.testing.capture_logs() as logged:
        for n in range(3):
            log("attach", port="vm1", session=n)
            monotonic.now += 1.0
        monotonic.now += audit_module.FAILURE_LOG_INTERVAL_S
        log("attach", port="vm1", session=3)
    assert log.write_errors == 4 and log.failing
    failures = [e for e in logged if e["event"] == "audit_write_failed"]
    assert [(e["errno"], e["write_errors"], e["suppressed"]) for e in failures] == [
        ("ENOSPC", 1, 0),
        ("ENOSPC", 4, 2),  # the next interval's line counts the two it held back
    ]
    # Every event still reached the daemon's log.
    assert [e.get("session") for e in logged if e["event"] == "attach"] == [0, 1, 2, 3]

    # Space returns (the path now names a regular file): writing resumes, and the gap is on record.
    path.unlink()
    clock.now = T0 + 60
    with structlog.testing.capture_logs() as logged:
        log("detach", port="vm1", session=3)
    log.close()
    assert not log.failing and log.write_errors == 4
    gap, event = records(path)
    assert gap == {
        "time": "2026-01-01T00:01:00.123Z",
        "event": "audit_lost",
        "lost": 4,
        "since": "2026-01-01T00:00:00.123Z",
    }
    assert event["event"] == "detach"
    assert [(e["event"], e.get("lost")) for e in logged] == [("audit_write_recovered", 4), ("detach", None)]


class _ShortWriteOs(types.ModuleType):
    """``os`` as the audit module sees it, with a ``write`` that stops after ``allow`` bytes and then fails
    with ENOSPC once (a disk filling up mid-line)."""

    def __init__(self, allow: int) -> None:
        super().__init__("os")
        self.allow: int | None = allow

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if self.allow is None:
            return os.write(fd, data)
        if self.allow == 0:
            self.allow = None
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = os.write(fd, bytes(data)[: self.allow])
        self.allow -= written
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def test_a_line_cut_by_a_failing_write_stands_alone(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_module, "os", _ShortWriteOs(allow=20))
    log = AuditLog(path, clock=FakeClock())
    log("attach", port="vm1", session=1)  # 20 bytes reach the file, then ENOSPC
    assert log.write_errors == 1
    log("attach", port="vm1", session=2)
    log.close()
    cut, *rest = lines(path)
    assert cut == '{"time":"2026-01-01T'
    assert [json.loads(line)["event"] for line in rest] == ["audit_lost", "attach"]
