"""The one way serialmuxd checks its TOML configuration: typed keys, every problem found, one wording.

Theory of operation.  A document is checked table by table.  A table's schema is the ``Key``s it accepts; a
``Key[T]`` is a TOML key name plus a *check*: a function that turns one TOML value into a ``T`` or raises
``Invalid(reason)``.  ``check_table`` runs the check of every key present, in file order, records each
failure in ``Problems`` against its key path (``ports[1].takeover``, ``http.allowed_hosts[2]``) and carries
on, so one run finds every problem.  An unknown key is a problem too, with a "did you mean" hint drawn from
the table's schema.  ``serialmuxd.config`` (the daemon's tables) and ``serialmuxd.adapters``
(``[ports.hypervisor]``) both check with it; nothing else in the configuration produces a message.

Typed values.  A ``CheckedTable`` gives values back only through their ``Key``, so a value comes out with the
type its check produced and settings are built with explicit keywords::

    values = Layered(own, defaults)
    PortConfig(raw=values.value(RAW, BUILTIN.raw), ...)

``mypy --strict`` then sees a renamed field, and a key whose check returns the wrong type.  (The alternative,
a ``dict[str, Any]`` splatted with ``**``, hides both until run time.)

Layers.  ``Layered(own, defaults)`` answers a key from the first table that has it, else from the built-in
default the caller passes: the dataclass's own default, so each default is written once.  A table that holds
an *invalid* value for a key answers "invalid" (``Layered.ok`` turns False) rather than letting a lower
layer stand in for it silently; a caller that wants invalid values to fall through ([defaults], reported
once, after which ports use the built-in value) passes ``table.without_invalid()``.  A ``Setting`` remembers
which key path set its value, for cross-key messages: ``(set in defaults.replay_bytes)``, ``(built-in
default)``.

Wording.  One function per kind of problem, so the same mistake reads the same in every table::

    expected string, got integer 5
    unknown key; did you mean 'socket'?          unknown key (known keys: a, b, c)
    required key is missing
    must be one of 'evict', 'demote', got 'kick'; did you mean 'evict'?
    must be between 1 and 65535, got 70000       must be greater than 0 and at most 300, got 0
    must be an absolute path, got 'run/x'        cannot contain NUL, got 'a\\x00'
    a unix socket path can be at most 107 bytes, this one is 121: '/...'

A bad value is shown the way TOML spells it where that differs from Python (``true``), escaped (``repr``:
no terminal control characters reach the operator's screen) and cut at 60 characters.

Why hand-written: STACK.md measured pydantic at 134-224 ms of import, and msgspec stops at the first error.
This module has no I/O and imports nothing else from serialmuxd, so both config and adapters can use it.
"""

from __future__ import annotations

import datetime
import difflib
import enum
import functools
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

T = TypeVar("T")
E = TypeVar("E", bound=enum.StrEnum)
N = TypeVar("N", int, float)

Check = Callable[[object], T]  # TOML value in, parsed value out, or raises Invalid; never returns None

# The longest unix socket path, in bytes, that serialmuxd can connect to (unix: devices, QMP sockets).
# sun_path is 108 bytes on Linux, but CPython keeps one byte for the terminating NUL: measured on this
# machine (Python 3.11.7, Linux 6.18), connect() and bind() with a 107-byte path work, with a 108-byte path
# they fail with "AF_UNIX path too long", on asyncio's own loop and on uvloop alike.
UNIX_PATH_MAX_BYTES = 107

SHOW_MAX = 60  # a bad value is echoed in the message, but a 10 KiB string must not flood the terminal

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")


# ----------------------------------------------------------------------------------------------------
# Problems


class Invalid(Exception):
    """Raised by a check.  Each ``(at, reason)`` is recorded at the key path plus ``at`` (``""``, ``"[2]"``).

    A check of an array raises one ``Invalid`` naming every bad item, so those are all reported too.
    """

    def __init__(self, reason: str, at: str = "") -> None:
        super().__init__(reason)
        self.found: list[tuple[str, str]] = [(at, reason)]

    @classmethod
    def of_items(cls, found: list[tuple[str, str]]) -> Invalid:
        error = cls(found[0][1], found[0][0])
        error.found = found
        return error


class Problems:
    """Every ``(key path, reason)`` found, in discovery order, each once.

    Once, because a bad value inherited from ``[defaults]`` would otherwise be reported for every port.
    """

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], None] = {}
        self._warned: dict[tuple[str, str], None] = {}

    @property
    def items(self) -> list[tuple[str, str]]:
        return list(self._seen)

    @property
    def warnings(self) -> list[tuple[str, str]]:
        """What is accepted but should change (a deprecated key): shown, never fatal."""
        return list(self._warned)

    def warn(self, path: str, reason: str) -> None:
        self._warned.setdefault((path, reason), None)

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, path: str, reason: str) -> None:
        self._seen.setdefault((path, reason), None)

    def invalid(self, path: str, error: Invalid) -> None:
        for at, reason in error.found:
            self.add(path + at, reason)


# ----------------------------------------------------------------------------------------------------
# Showing values and keys


def show(value: object) -> str:
    """The bad value for a message: ``repr`` escapes control characters; long values are cut."""
    if isinstance(value, bool):
        return "true" if value else "false"  # as TOML spells it, not Python's True
    try:
        text = repr(value)
    except ValueError:
        # An integer past Python's 4300-digit limit for str(): TOML's hex, octal and binary literals have
        # no such limit, so `x = 0xfff...` parses and would crash here.  Hex has no limit either.
        text = hex(value) if isinstance(value, int) else type(value).__name__
    return text if len(text) <= SHOW_MAX else text[: SHOW_MAX - 3] + "..."


def toml_type(value: object) -> str:
    """The TOML name of a parsed value's type (bool before int, datetime before date: they are subclasses)."""
    for kind, name in (
        (bool, "boolean"),
        (int, "integer"),
        (float, "float"),
        (str, "string"),
        (dict, "table"),
        (list, "array"),
        (datetime.datetime, "datetime"),
        (datetime.date, "date"),
        (datetime.time, "time"),
    ):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def got(value: object) -> str:
    """``got string 'x'``: the tail of every type message."""
    return f"got {toml_type(value)} {show(value)}"


def key_path(parent: str, key: str) -> str:
    """``parent.key``, quoting a key that TOML only allows quoted (it may hold anything, even escapes)."""
    segment = _segment(key)
    return f"{parent}.{segment}" if parent else segment


@functools.lru_cache(maxsize=1024)
def _segment(key: str) -> str:
    return key if _BARE_KEY_RE.fullmatch(key) else show(key)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """'; did you mean 'x'?' for a near miss (case-insensitive), else ''."""
    by_lower = {candidate.lower(): candidate for candidate in candidates}
    close = difflib.get_close_matches(word.lower(), by_lower, n=1)
    return f"; did you mean {by_lower[close[0]]!r}?" if close else ""


def unknown_key(key: str, known: Iterable[str]) -> str:
    names = sorted(known)
    return "unknown key" + (did_you_mean(key, names) or f" (known keys: {', '.join(names)})")


REQUIRED = "required key is missing"


def size_text(number: int) -> str:
    """A byte count for a message, with its binary unit when it has one: ``4096 (4 KiB)``."""
    for unit, name in ((GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")):
        if number >= unit and number % unit == 0:
            return f"{number} ({number // unit} {name})"
    return str(number)


# ----------------------------------------------------------------------------------------------------
# Value checks: each takes a TOML value and returns the parsed value or raises Invalid.


def boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"expected boolean, {got(value)}")
    return value


def string(value: object) -> str:
    if not isinstance(value, str):
        raise Invalid(f"expected string, {got(value)}")
    return value


def no_nul(text: str, what: str = "") -> str:
    """Strings reach argv, file names and the environment, none of which can hold NUL."""
    if "\0" in text:
        raise Invalid(f"{what + ' ' if what else ''}cannot contain NUL, got {show(text)}")
    return text


def text(value: object) -> str:
    """A non-empty string without NUL (host names, user names, program names, URIs)."""
    result = no_nul(string(value))
    if not result:
        raise Invalid("must not be empty")
    return result


def integer(low: int, high: int, *, size: bool = False) -> Check[int]:
    """An integer in [low, high]; ``size`` shows byte bounds as KiB/MiB/GiB too."""
    show_bound = size_text if size else str

    def check(value: object) -> int:
        # TOML booleans are not numbers: `replay_lines = true` is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"expected integer, {got(value)}")
        if not low <= value <= high:
            raise Invalid(f"must be between {show_bound(low)} and {show_bound(high)}, got {show(value)}")
        return value

    return check


def seconds(high: float) -> Check[float]:
    """A duration in (0, high]; an integer is accepted (``5`` means 5.0)."""

    def check(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid(f"expected number, {got(value)}")
        # Written so that nan fails too (every comparison with nan is false); inf fails the upper bound.
        if not (0 < value <= high):
            raise Invalid(f"must be greater than 0 and at most {high:g}, got {show(value)}")
        return float(value)

    return check


def choice(allowed: Sequence[str]) -> Check[str]:
    def check(value: object) -> str:
        word = string(value)
        if word not in allowed:
            listing = ", ".join(repr(item) for item in allowed)
            raise Invalid(f"must be one of {listing}, got {show(word)}{did_you_mean(word, allowed)}")
        return word

    return check


def enum_choice(kind: type[E]) -> Check[E]:
    choose = choice([member.value for member in kind])
    return lambda value: kind(choose(value))


def require_absolute_path(path: str) -> str:
    """For a path already known to be a string (``tty:PATH`` after its scheme, a ``password_file``)."""
    no_nul(path, "a path")
    if not os.path.isabs(path):
        raise Invalid(f"must be an absolute path, got {show(path)}")
    return path


def absolute_path(value: object) -> str:
    return require_absolute_path(string(value))


def require_unix_socket_path(path: str) -> str:
    require_absolute_path(path)
    size = len(os.fsencode(path))
    if size > UNIX_PATH_MAX_BYTES:
        raise Invalid(
            f"a unix socket path can be at most {UNIX_PATH_MAX_BYTES} bytes, this one is {size}: {show(path)}"
        )
    return path


def unix_socket_path(value: object) -> str:
    return require_unix_socket_path(string(value))


def array_of(item: Check[T], what: str) -> Check[tuple[T, ...]]:
    """An array whose every item passes ``item``; each bad item is reported at its index."""

    def check(value: object) -> tuple[T, ...]:
        if not isinstance(value, list):
            raise Invalid(f"expected an array of {what}, {got(value)}")
        items: list[T] = []
        found: list[tuple[str, str]] = []
        for index, element in enumerate(value):
            try:
                items.append(item(element))
            except Invalid as exc:
                found.extend((f"[{index}]{at}", reason) for at, reason in exc.found)
        if found:
            raise Invalid.of_items(found)
        return tuple(items)

    return check


_strings = array_of(lambda item: no_nul(string(item)), "strings")


def argv(value: object) -> tuple[str, ...]:
    """A program and its arguments, run without a shell (so no quoting rules apply)."""
    if isinstance(value, str):
        raise Invalid(
            f"expected an array of strings (argv, run without a shell), {got(value)}; "
            f"write it as {value.split()!r}"
        )
    result = _strings(value)
    if not result:
        raise Invalid("must not be empty: the first string is the program to run")
    if result[0] == "":
        raise Invalid("the program name cannot be empty", "[0]")
    return result


# ----------------------------------------------------------------------------------------------------
# Tables


@dataclass(frozen=True, slots=True, eq=False)
class Key(Generic[T]):
    """A TOML key and the check that parses its value.  Compared by identity: one object per key."""

    name: str
    check: Check[T]


@dataclass(frozen=True, slots=True)
class Setting(Generic[T]):
    """A value and where it was set: a key path, or None for the built-in default."""

    value: T
    origin: str | None


class CheckedTable:
    """One TOML table after ``check_table``: valid values by ``Key``, and the keys present but invalid."""

    def __init__(self, path: str) -> None:
        self.path = path
        # Invariant: the value stored under a Key is what that Key's check returned, so it is a T.
        self._valid: dict[Key[Any], object] = {}
        self._invalid: set[Key[Any]] = set()

    def _store(self, key: Key[Any], value: object) -> None:
        self._valid[key] = value

    def _fail(self, key: Key[Any]) -> None:
        self._invalid.add(key)

    @property
    def ok(self) -> bool:
        """No key of this table had an invalid value (unknown keys and cross-key checks not counted)."""
        return not self._invalid

    def has(self, key: Key[Any]) -> bool:
        """The table sets ``key``, validly or not."""
        return key in self._valid or key in self._invalid

    def get(self, key: Key[T]) -> T | None:
        """The valid value of ``key``; None when it is absent or invalid (no valid value is None)."""
        if key in self._valid:
            return cast(T, self._valid[key])
        return None

    def setting(self, key: Key[T]) -> Setting[T] | None:
        value = self.get(key)
        return None if value is None else Setting(value, key_path(self.path, key.name))

    def without_invalid(self) -> CheckedTable:
        """This table as a lower layer: an invalid value was reported once; let the next layer answer."""
        copy = CheckedTable(self.path)
        copy._valid = dict(self._valid)
        return copy


def as_table(value: object, path: str, problems: Problems) -> Mapping[str, object] | None:
    if isinstance(value, dict):
        return value
    problems.add(path, f"expected a table, {got(value)}")
    return None


def check_table(
    table: Mapping[str, object],
    path: str,
    keys: Iterable[Key[Any]],
    problems: Problems,
    *,
    sub_tables: Iterable[str] = (),
    refused: Mapping[str, str] | None = None,
) -> CheckedTable:
    """Check every key of one table in file order, recording each problem.

    ``sub_tables`` are known keys the caller checks itself; ``refused`` are keys that are known but not
    allowed here, with the reason (better than "unknown key": "belongs to one port", "keep the password out
    of the config").  Unknown keys get a hint from all three.
    """
    by_name = {key.name: key for key in keys}
    sub_tables = tuple(sub_tables)
    refused = refused or {}
    checked = CheckedTable(path)
    for name, value in table.items():
        at = key_path(path, name)
        key = by_name.get(name)
        if key is not None:
            try:
                checked._store(key, key.check(value))
            except Invalid as exc:
                checked._fail(key)
                problems.invalid(at, exc)
        elif name in refused:
            problems.add(at, refused[name])
        elif name not in sub_tables:
            problems.add(at, unknown_key(name, [*by_name, *sub_tables, *refused]))
    return checked


def require(checked: CheckedTable, keys: Iterable[Key[Any]], problems: Problems) -> bool:
    """Report each of ``keys`` that the table does not set; True when it sets them all."""
    complete = True
    for key in keys:
        if not checked.has(key):
            problems.add(key_path(checked.path, key.name), REQUIRED)
            complete = False
    return complete


class Layered:
    """A key's value from the first table that sets it (a port's own, then [defaults]), else the built-in.

    ``ok`` turns False when the winning table's value was invalid.  ``value`` then still returns a value of
    the right type (the built-in), so the caller can finish building and then discard the result: the
    problem is already recorded.
    """

    def __init__(self, *tables: CheckedTable) -> None:
        self._tables = tables
        self.ok = True

    def setting(self, key: Key[T], builtin: T) -> Setting[T] | None:
        for table in self._tables:
            if table.has(key):
                found = table.setting(key)
                if found is None:
                    self.ok = False
                return found
        return Setting(builtin, None)

    def value(self, key: Key[T], builtin: T) -> T:
        # ``setting(key, builtin).value`` without building the Setting and its key path (41 keys per port:
        # this is most of validating a 10,000-port file).
        for table in self._tables:
            if table.has(key):
                found = table.get(key)
                if found is None:
                    self.ok = False
                    return builtin
                return found
        return builtin

    def is_set(self, key: Key[Any]) -> bool:
        """Some table sets ``key``: its built-in default is not in play."""
        return any(table.has(key) for table in self._tables)


def check_not_above(
    low_name: str,
    low: Setting[N] | None,
    high_name: str,
    high: Setting[N] | None,
    scope: str,
    problems: Problems,
) -> None:
    """``low <= high`` on the values a port (``scope``) ends up with, wherever each was set.

    Skipped when either is invalid: that is reported already, and a built-in standing in for it would make
    a second, confusing message.
    """
    if low is None or high is None or low.value <= high.value:
        return
    # Report at the key the user most likely has to change: one set in this scope, else one in [defaults].
    origins = [origin for origin in (low.origin, high.origin) if origin is not None]
    own = [origin for origin in origins if origin.startswith(scope + ".")]
    at = (own or origins or [scope])[0]
    problems.add(
        at,
        f"{low_name} = {low.value!r}{_origin_note(low.origin, at)} must not exceed "
        f"{high_name} = {high.value!r}{_origin_note(high.origin, at)}",
    )


def _origin_note(origin: str | None, at: str) -> str:
    if origin is None:
        return " (built-in default)"
    return "" if origin == at else f" (set in {origin})"
