"""Tests of the persisted state store (``serialmuxd/state.py``): round trips, the atomic replace (a save that
fails at any step leaves the previous file as it was), damaged files, permissions and unknown fields.

File I/O happens in ``tmp_path``; failures are injected by handing ``serialmuxd.state`` an ``os`` whose
``write``/``fsync``/``replace`` misbehave, so nothing else in the process is affected.  The fallback for a
damaged file is the documented one: defaults, plus an error in the log.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from serialmuxd import state as state_module
from serialmuxd.errors import StartupError
from serialmuxd.state import STATE_FILE, DaemonState, PortSwitch, StateStore


class _OsWith:
    """The ``os`` module with some functions replaced; patched in as ``serialmuxd.state.os`` only."""

    def __init__(self, **overrides: Callable[..., Any]) -> None:
        self._overrides = overrides

    def __getattr__(self, name: str) -> Any:
        return self._overrides[name] if name in self._overrides else getattr(os, name)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _store(directory: Path) -> StateStore:
    store = StateStore(directory)
    store.load()  # creates the directory, as the daemon's start does
    return store


def _sample() -> DaemonState:
    return DaemonState(
        console_enabled=False,
        console_reason='host maintenance until 18:00 — "ask ops"\n\x1b[31m',
        ports={
            "vm1": PortSwitch(False, "disk replacement"),
            "vm-2.example": PortSwitch(True, ""),
            "ünïcode": PortSwitch(True, "ok"),
        },
        offsets={"vm1": 0, "vm-2.example": 4_294_967_296, "ünïcode": 2**63 - 1},
    )


def _unreadable_events(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == "state_file_unreadable"]


# -- no directory, no file ---------------------------------------------------------------------------------


def test_without_a_directory_the_state_lives_in_memory_only(tmp_path: Path) -> None:
    store = StateStore(None)
    assert store.path is None
    assert store.load() == DaemonState()
    store.save(_sample())  # nowhere to write: a no-op, not an error
    assert store.load() == DaemonState()


def test_a_missing_file_gives_the_defaults_and_creates_the_directory(tmp_path: Path, umask_022: None) -> None:
    directory = tmp_path / "var" / "lib" / "serialmuxd"
    store = StateStore(directory)
    assert store.path == directory / STATE_FILE
    assert store.load() == DaemonState(console_enabled=True, console_reason="", ports={}, offsets={})
    assert directory.is_dir()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o750
    assert list(directory.iterdir()) == []  # loading writes nothing


# -- round trip --------------------------------------------------------------------------------------------


def test_round_trip_through_a_fresh_store(tmp_path: Path) -> None:
    _store(tmp_path).save(_sample())
    assert _store(tmp_path).load() == _sample()  # a new store, as after a restart


def test_a_save_replaces_the_whole_state(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.save(_sample())
    newer = DaemonState(ports={"vm3": PortSwitch(False, "new")}, offsets={"vm3": 12})
    store.save(newer)
    assert store.load() == newer  # vm1 and its offset are gone, not merged in


def test_the_file_is_versioned_json(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.save(_sample())
    assert store.path is not None
    raw = json.loads(store.path.read_text("utf-8"))
    assert raw["version"] == 1
    assert raw["console"] == {"enabled": False, "reason": _sample().console_reason}
    assert raw["ports"]["vm1"] == {"enabled": False, "reason": "disk replacement"}
    assert raw["offsets"]["ünïcode"] == 2**63 - 1


names = st.text(max_size=20)
switches = st.builds(PortSwitch, st.booleans(), st.text(max_size=40))
states = st.builds(
    DaemonState,
    console_enabled=st.booleans(),
    console_reason=st.text(max_size=40),
    ports=st.dictionaries(names, switches, max_size=5),
    offsets=st.dictionaries(names, st.integers(min_value=0, max_value=2**63 - 1), max_size=5),
)


@settings(max_examples=200, deadline=None)
@given(first=states, second=states)
def test_property_round_trip_of_any_state(first: DaemonState, second: DaemonState) -> None:
    with tempfile.TemporaryDirectory() as directory:
        store = _store(Path(directory))
        store.save(first)
        assert _store(Path(directory)).load() == first
        store.save(second)
        assert _store(Path(directory)).load() == second


# -- atomic save -------------------------------------------------------------------------------------------


def _failing(name: str) -> Callable[..., Any]:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, f"injected: {name} failed")

    return fail


@pytest.mark.parametrize("step", ["write", "fsync", "replace"])
def test_a_failed_save_raises_and_leaves_the_old_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    store = _store(tmp_path)
    store.save(_sample())
    assert store.path is not None
    before = store.path.read_bytes()

    monkeypatch.setattr(state_module, "os", _OsWith(**{step: _failing(step)}))
    with pytest.raises(OSError, match=f"injected: {step} failed"):  # the daemon logs it: it must see it
        store.save(DaemonState(console_enabled=True, ports={"other": PortSwitch(True)}))
    monkeypatch.undo()

    assert store.path.read_bytes() == before
    assert _store(tmp_path).load() == _sample()


def test_a_failed_save_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(tmp_path)
    store.save(_sample())
    monkeypatch.setattr(state_module, "os", _OsWith(fsync=_failing("fsync")))
    with pytest.raises(OSError):
        store.save(DaemonState())
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]


def test_a_short_write_never_replaces_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(tmp_path)
    store.save(_sample())

    def write_at_most_16_bytes(fd: int, data: bytes) -> int:
        # What write(2) does when the disk fills up mid-way: it writes what fits and says how much.
        return os.write(fd, bytes(data)[:16])

    monkeypatch.setattr(state_module, "os", _OsWith(write=write_at_most_16_bytes))
    newer = DaemonState(ports={"vm9": PortSwitch(False, "x" * 100)})
    try:
        store.save(newer)  # either the whole of it gets written (by writing again) ...
    except OSError:
        monkeypatch.undo()
        assert _store(tmp_path).load() == _sample()  # ... or the old state survives
    else:
        monkeypatch.undo()
        assert _store(tmp_path).load() == newer


def test_the_new_file_is_synced_before_the_rename_and_the_directory_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(tmp_path)
    calls: list[str] = []
    kinds: dict[int, str] = {}

    def recording_open(path: Any, flags: int, *args: Any) -> int:
        fd = os.open(path, flags, *args)
        kinds[fd] = "dir" if flags & os.O_DIRECTORY else "file"
        return fd

    def recording_write(fd: int, data: bytes) -> int:
        calls.append(f"write {kinds[fd]}")
        return os.write(fd, data)

    def recording_fsync(fd: int) -> None:
        calls.append(f"fsync {kinds[fd]}")
        os.fsync(fd)

    def recording_replace(src: Any, dst: Any) -> None:
        calls.append("replace")
        os.replace(src, dst)

    monkeypatch.setattr(
        state_module,
        "os",
        _OsWith(open=recording_open, write=recording_write, fsync=recording_fsync, replace=recording_replace),
    )
    store.save(_sample())
    monkeypatch.undo()
    # A crash at any point leaves the old or the new file: the data is on disk before the name points at it,
    # and the directory entry is on disk before save() returns.
    assert calls == ["write file", "fsync file", "replace", "fsync dir"]
    assert _store(tmp_path).load() == _sample()


def test_a_stale_temporary_file_is_overwritten_not_appended_to(tmp_path: Path) -> None:
    store = _store(tmp_path)
    (tmp_path / "state.tmp").write_bytes(b"\xff" * 100_000)  # left by a crash during an earlier save
    store.save(_sample())
    assert _store(tmp_path).load() == _sample()
    assert not (tmp_path / "state.tmp").exists()


# -- permissions -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_the_file_is_never_readable_by_others(tmp_path: Path, umask: int) -> None:
    store = _store(tmp_path)
    old = os.umask(umask)
    try:
        store.save(_sample())
    finally:
        os.umask(old)
    assert store.path is not None
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o640 & ~umask


def test_a_stale_temporary_file_does_not_lend_its_mode(tmp_path: Path, umask_022: None) -> None:
    store = _store(tmp_path)
    stale = tmp_path / "state.tmp"
    stale.write_bytes(b"")
    stale.chmod(0o666)
    store.save(_sample())
    assert store.path is not None
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o640


def test_a_directory_that_is_a_file_is_a_startup_error(tmp_path: Path) -> None:
    occupied = tmp_path / "state"
    occupied.write_text("not a directory")
    for directory in (occupied, occupied / "below"):
        with pytest.raises(StartupError, match=f"cannot create state directory {directory}"):
            StateStore(directory).load()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only directory")
def test_a_read_only_directory_is_a_startup_error(tmp_path: Path) -> None:
    directory = tmp_path / "ro"
    directory.mkdir(mode=0o500)
    try:
        with pytest.raises(StartupError, match="is not writable"):
            StateStore(directory).load()
    finally:
        directory.chmod(0o700)


# -- damaged files: defaults, and an error in the log ------------------------------------------------------


def test_every_truncation_of_a_good_file_falls_back_to_the_defaults(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.save(_sample())
    assert store.path is not None
    whole = store.path.read_bytes()
    for size in range(len(whole)):
        store.path.write_bytes(whole[:size])
        with structlog.testing.capture_logs() as logs:
            assert store.load() == DaemonState(), size
        (event,) = _unreadable_events(logs)
        assert event["log_level"] == "error" and event["path"] == str(store.path)
    store.path.write_bytes(whole)
    assert store.load() == _sample()


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00" * 64, b"\xff\xfe{", b'{"version": 1,', b"not json at all", b'{"console": }'],
)
def test_a_corrupt_file_falls_back_to_the_defaults_with_an_error(tmp_path: Path, content: bytes) -> None:
    store = _store(tmp_path)
    assert store.path is not None
    store.path.write_bytes(content)
    with structlog.testing.capture_logs() as logs:
        assert store.load() == DaemonState()
    assert len(_unreadable_events(logs)) == 1


def test_a_state_file_that_is_a_directory_falls_back_to_the_defaults(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert store.path is not None
    store.path.mkdir()
    with structlog.testing.capture_logs() as logs:
        assert store.load() == DaemonState()
    assert len(_unreadable_events(logs)) == 1


def test_deeply_nested_json_falls_back_to_the_defaults(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert store.path is not None
    store.path.write_text('{"ports": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert store.load() == DaemonState()


@pytest.mark.parametrize("content", ["[]", "7", '"state"', "null", "true"])
def test_json_that_is_not_an_object_gives_the_defaults(tmp_path: Path, content: str) -> None:
    store = _store(tmp_path)
    assert store.path is not None
    store.path.write_text(content)
    assert store.load() == DaemonState()


def test_bad_values_are_dropped_one_by_one(tmp_path: Path) -> None:
    """Each bad entry falls back on its own (to the config's switch, to offset 0); good ones survive."""
    store = _store(tmp_path)
    assert store.path is not None
    store.path.write_text(
        json.dumps(
            {
                "version": 1,
                "clean_stop": True,
                "console": {"enabled": False, "reason": "kept"},
                "ports": {
                    "good": {"enabled": False, "reason": "kept"},
                    "no-reason": {"enabled": True},
                    "string": {"enabled": "false"},
                    "number": {"enabled": 0},
                    "missing": {"reason": "no switch"},
                    "not-a-dict": True,
                },
                "offsets": {
                    "good": 42,
                    "max": 2**63 - 1,
                    "negative": -1,
                    "too-big": 2**63,
                    "float": 1.5,
                    "bool": True,
                    "string": "7",
                    "null": None,
                },
            }
        )
    )
    assert store.load() == DaemonState(
        console_enabled=False,
        console_reason="kept",
        ports={"good": PortSwitch(False, "kept"), "no-reason": PortSwitch(True, "")},
        offsets={"good": 42, "max": 2**63 - 1},
    )


@pytest.mark.parametrize("section", ["ports", "offsets", "console"])
def test_a_section_of_the_wrong_type_is_ignored(tmp_path: Path, section: str) -> None:
    saved = _sample()
    store = _store(tmp_path)
    store.save(saved)
    assert store.path is not None
    raw = json.loads(store.path.read_text("utf-8"))
    raw[section] = ["not", "a", "mapping"]
    store.path.write_text(json.dumps(raw))
    expected = _sample()
    if section == "ports":
        expected.ports = {}
    elif section == "offsets":
        expected.offsets = {}
    else:
        expected.console_enabled, expected.console_reason = True, ""
    assert store.load() == expected


@pytest.mark.parametrize("value", [None, 0, "", []])
def test_a_non_boolean_console_switch_does_not_disable_the_consoles(tmp_path: Path, value: object) -> None:
    store = _store(tmp_path)
    assert store.path is not None
    store.path.write_text(json.dumps({"version": 1, "console": {"enabled": value}}))
    assert store.load().console_enabled is True


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    raw=st.dictionaries(
        st.sampled_from(["version", "console", "ports", "offsets", "extra"]), json_values, max_size=5
    )
    | json_values
)
def test_property_any_json_loads_to_a_valid_state(raw: object) -> None:
    with tempfile.TemporaryDirectory() as directory:
        store = _store(Path(directory))
        assert store.path is not None
        store.path.write_text(json.dumps(raw))
        loaded = store.load()
    assert isinstance(loaded.console_enabled, bool) and isinstance(loaded.console_reason, str)
    assert all(isinstance(s.enabled, bool) and isinstance(s.reason, str) for s in loaded.ports.values())
    assert all(type(v) is int and 0 <= v < 2**63 for v in loaded.offsets.values())


@settings(max_examples=200, deadline=None)
@given(content=st.binary(max_size=200))
def test_property_any_bytes_load_without_an_exception(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        store = _store(Path(directory))
        assert store.path is not None
        store.path.write_bytes(content)
        assert isinstance(store.load(), DaemonState)


# -- unknown fields ----------------------------------------------------------------------------------------


def test_unknown_fields_are_ignored(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert store.path is not None
    store.path.write_text(
        json.dumps(
            {
                "version": 1,
                "clean_stop": True,
                "written_by": "serialmuxd 9.9",
                "console": {"enabled": False, "reason": "r", "until": "tomorrow"},
                "ports": {"vm1": {"enabled": False, "reason": "p", "owner": "ops"}},
                "offsets": {"vm1": 7},
                "sessions": [{"id": 1}],
            }
        )
    )
    assert store.load() == DaemonState(
        console_enabled=False, console_reason="r", ports={"vm1": PortSwitch(False, "p")}, offsets={"vm1": 7}
    )
