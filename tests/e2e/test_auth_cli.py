"""``serialmuxd hash-password`` and ``serialmuxd new-token`` as people run them: the real program in a real
pseudo-terminal (a controlling terminal, so getpass does what it does at a login shell) and from a pipe.

Nothing here trusts the code under test for its expectations: hashes are checked with argon2-cffi, digests
with hashlib, the TOML with tomllib.
"""

from __future__ import annotations

import hashlib
import os
import pty
import re
import select
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import argon2
import pytest
from argon2.exceptions import VerifyMismatchError

ROOT = Path(__file__).resolve().parents[2]
SERIALMUXD = [sys.executable, "-m", "serialmuxd"]
HASH_RE = re.compile(rb"\$argon2id\$v=19\$m=65536,t=3,p=1\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+")
CANARY = "CANARY-pw 7"


class Terminal:
    """The program on the slave side of a new pty, as its controlling terminal; we hold the master."""

    def __init__(self, *args: str) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: nothing but exec (no Python-level cleanup in a forked test process)
            try:
                os.chdir(ROOT)
                os.execv(sys.executable, [*SERIALMUXD, *args])
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.output = b""

    def read_until(self, wanted: bytes, timeout_s: float = 30) -> bytes:
        """Read until ``wanted`` has been seen; everything read is kept in ``output``."""
        deadline = time.monotonic() + timeout_s
        while wanted not in self.output:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{wanted!r} not seen; got {self.output!r}")
            readable, _, _ = select.select([self.fd], [], [], remaining)
            if not readable:
                continue
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:  # EIO: the child closed the terminal (exited)
                chunk = b""
            if not chunk:
                raise AssertionError(f"{wanted!r} not seen before the end; got {self.output!r}")
            self.output += chunk
        return self.output

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode() + b"\r")  # Enter, as a terminal sends it (ICRNL makes it \n)

    def finish(self, timeout_s: float = 30) -> int:
        """Read the rest of the output and return the exit status."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            readable, _, _ = select.select([self.fd], [], [], deadline - time.monotonic())
            if not readable:
                continue
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            self.output += chunk
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status)


def verifies(stored: bytes | str, password: str) -> bool:
    try:
        return argon2.PasswordHasher().verify(stored, password)
    except VerifyMismatchError:
        return False


def test_on_a_terminal_the_password_is_asked_twice_without_echo_and_the_hash_verifies() -> None:
    terminal = Terminal("hash-password")
    terminal.read_until(b"Password: ")  # getpass has turned echo off before it prompts
    terminal.type(CANARY)
    terminal.read_until(b"Password again: ")
    terminal.type(CANARY)
    assert terminal.finish() == 0
    assert CANARY.encode() not in terminal.output, "the password was echoed"
    [printed] = HASH_RE.findall(terminal.output)
    assert verifies(printed, CANARY)
    assert not verifies(printed, CANARY + "x")


def test_on_a_terminal_a_mismatch_is_refused() -> None:
    terminal = Terminal("hash-password")
    terminal.read_until(b"Password: ")
    terminal.type(CANARY)
    terminal.read_until(b"Password again: ")
    terminal.type(CANARY + "typo")
    assert terminal.finish() == 1
    assert b"the two passwords do not match" in terminal.output
    assert b"$argon2" not in terminal.output
    assert CANARY.encode() not in terminal.output


def test_on_a_terminal_an_empty_password_is_refused() -> None:
    terminal = Terminal("hash-password")
    terminal.read_until(b"Password: ")
    terminal.type("")
    assert terminal.finish() == 1
    assert b"an empty password is refused" in terminal.output
    assert b"$argon2" not in terminal.output


def hash_from_pipe(data: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*SERIALMUXD, "hash-password"], input=data, capture_output=True, timeout=60, cwd=ROOT, check=False
    )


@pytest.mark.parametrize(
    ("piped", "password"),
    [
        (b"hunter2\n", "hunter2"),
        (b"hunter2", "hunter2"),  # no line end at all
        (b"hunter2\r\n", "hunter2"),  # a file written on Windows
        (b"  spaced out \t\n", "  spaced out \t"),  # only the line end is stripped
        ("pässwörd 🔑\n".encode(), "pässwörd 🔑"),
        (b"first line\nsecond line\n", "first line"),  # one line is read
    ],
)
def test_from_a_pipe_one_line_is_the_password(piped: bytes, password: str) -> None:
    result = hash_from_pipe(piped)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    printed = result.stdout.decode().strip()
    assert HASH_RE.fullmatch(printed.encode()), printed  # stdout is the hash and nothing else
    assert verifies(printed, password)


@pytest.mark.parametrize(
    ("piped", "reason"),
    [
        (b"", b"no password on stdin"),
        (b"\n", b"an empty password is refused"),
        (b"\r\n", b"an empty password is refused"),
        (b"\xff\xfe\n", b"not valid UTF-8"),
        (b"x" * 5000 + b"\n", b"longer than 4096 bytes"),
    ],
)
def test_from_a_pipe_unusable_input_is_refused(piped: bytes, reason: bytes) -> None:
    result = hash_from_pipe(piped)
    assert result.returncode == 1
    assert result.stdout == b""
    assert reason in result.stderr and result.stderr.count(b"\n") == 1


def test_new_token_prints_the_token_once_and_a_toml_entry_for_it() -> None:
    result = subprocess.run(
        [*SERIALMUXD, "new-token", "ci-bot.2"], capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert result.stdout == token + "\n"
    assert re.fullmatch(r"smx_[A-Za-z0-9_-]{43}", token)
    assert token not in result.stderr
    entry = tomllib.loads(result.stderr)  # the whole of stderr, comments and all, is TOML
    assert entry == {
        "tokens": [{"name": "ci-bot.2", "sha256": hashlib.sha256(token.encode()).hexdigest(), "grants": []}]
    }
    assert re.search(r"^grants = \[\]\s*#.*fill in", result.stderr, re.MULTILINE)

    again = subprocess.run(
        [*SERIALMUXD, "new-token", "ci-bot.2"], capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    assert again.stdout.strip() != token


@pytest.mark.parametrize("name", ["", "a b", "ålice", "-rf", "x" * 65, 'a"b'])
def test_new_token_refuses_a_name_that_is_not_a_user_name(name: str) -> None:
    result = subprocess.run(
        [*SERIALMUXD, "new-token", "--", name], capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    assert result.returncode == 2
    assert result.stdout == ""  # no token was made
    assert "letters, digits" in result.stderr


def test_help_and_readme_list_both_commands() -> None:
    helped = subprocess.run([*SERIALMUXD, "--help"], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert "hash-password" in helped.stdout and "new-token" in helped.stdout
    running_it = (ROOT / "README.md").read_text().split("## Running it", 1)[1].split("\n## ", 1)[0]
    assert "serialmuxd hash-password" in running_it
    assert "serialmuxd new-token NAME" in running_it
