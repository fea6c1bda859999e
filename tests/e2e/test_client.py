"""``serialmux`` end to end: the real console script in a real pseudo-terminal (pexpect) against a real
``serialmuxd run`` process, with a shell on a PTY (``exec:``) or a guest PTY held by the test (``tty:``),
and Debian's real ``telnet`` client as the other user.

Terminal restoration is checked from an outer ``/bin/sh`` (dash, which never touches the terminal settings
itself) that runs ``stty -g`` before and after the client."""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from serialmuxd import __version__

from .client_support import SERIALMUX, Guest, client_env, daemon, get_json, run_client, spawn, wait_until
from .test_cli import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("telnet") is None, reason="Debian telnet client not installed (./dev)"),
]
SHELL = "/bin/bash --noprofile --norc -i" if os.path.exists("/bin/bash") else "/bin/sh -i"
OUTER = "OUTER> "
STTY = re.compile(rb"\r\n([0-9a-f:]{20,})\r\nEND-STTY")


def _shell_port(telnet_port: int) -> str:
    return f"""
[[ports]]
name = "sh1"
device = "exec:{SHELL}"
telnet = "127.0.0.1:{telnet_port}"
replay_bytes = 0
"""


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[tuple[str, int, dict[str, str]]]:
    telnet_port = free_port()
    with daemon(tmp_path, _shell_port(telnet_port)) as (_, url):
        yield url, telnet_port, client_env(tmp_path, url, PS1=OUTER)


def outer_shell(env: dict[str, str], rows: int = 24, cols: int = 80) -> pexpect.spawn[bytes]:
    outer = spawn(["/bin/sh"], env, rows, cols)
    outer.expect_exact(OUTER)
    return outer


def stty_g(outer: pexpect.spawn[bytes]) -> bytes:
    outer.sendline("stty -g; echo END-STTY")
    outer.expect(STTY)
    assert isinstance(outer.match, re.Match)
    settings = outer.match.group(1)
    outer.expect_exact(OUTER)
    return bytes(settings)


def exit_status(outer: pexpect.spawn[bytes]) -> int:
    outer.sendline("echo rc=$?")
    outer.expect(rb"rc=(\d+)")
    assert isinstance(outer.match, re.Match)
    code = int(outer.match.group(1))
    outer.expect_exact(OUTER)
    return code


def test_connect_type_resize_detach_restores_the_terminal(shell: tuple[str, int, dict[str, str]]) -> None:
    _, _, env = shell
    outer = outer_shell(env, 24, 80)
    before = stty_g(outer)
    outer.sendline(f"{SERIALMUX} connect sh1")
    outer.send("echo early-$((6*7))\r")  # typed while the client is still starting: kept for the guest
    outer.expect_exact("you have write access")
    outer.expect_exact("early-42")
    outer.send("echo typed-$((6*7))\r")
    outer.expect_exact("typed-42")
    # The terminal's size was sent on connect, and a resize (SIGWINCH) is followed.
    outer.send("stty size\r")
    outer.expect_exact("24 80")
    outer.setwinsize(41, 133)
    outer.send("stty size\r")
    outer.expect_exact("41 133")
    outer.send("~?")
    outer.expect_exact("~~  send a literal ~")
    outer.send("~r")
    outer.expect_exact("you are now read-only")
    outer.send("not sent\r")  # the daemon's notice says what; the client names its own keys for it
    outer.expect_exact("read-only: input not sent (~f takes over)")
    outer.send("~f")
    outer.expect_exact("you have write access")
    outer.send("~B")  # a shell on a PTY has no serial line: the daemon says so, on the status line
    outer.expect_exact("BREAK not sent: not supported by exec:")
    outer.send("echo ~~tilde\r")
    outer.expect_exact("~tilde")
    outer.send("~.")
    outer.expect_exact("detached from sh1")
    outer.expect_exact(OUTER)
    assert exit_status(outer) == 0
    assert stty_g(outer) == before
    outer.close()


def test_status_lines_go_to_stderr_not_into_the_guest_bytes(
    shell: tuple[str, int, dict[str, str]], tmp_path: Path
) -> None:
    _, _, env = shell
    errors = tmp_path / "stderr.txt"
    outer = outer_shell(env)
    outer.sendline(f"{SERIALMUX} connect sh1 2>{errors}")
    wait_until(lambda: errors.exists() and b"you have write access" in errors.read_bytes(), "attached")
    terminal = io.BytesIO()  # everything the terminal shows from here on
    outer.logfile_read = terminal
    outer.send("echo separate-$((6*7))\r")
    outer.expect_exact("separate-42")
    # The shell exits: offline and online again (restarted) are status lines, on stderr only.
    outer.send("exit\r")
    wait_until(lambda: b"console sh1 online" in errors.read_bytes(), "sh1 offline and back")
    assert b"console sh1 offline" in errors.read_bytes()
    outer.send("\recho again-$((6*7))\r")
    outer.expect_exact("again-42")
    outer.send("~.")
    outer.expect_exact(OUTER)
    assert b"again-42" in terminal.getvalue() and b"[serialmux]" not in terminal.getvalue()
    text = errors.read_text()
    assert "[serialmux] sh1: attached to console sh1" in text and "[serialmux] detached from sh1" in text
    assert "separate-42" not in text
    outer.close()


def test_sigterm_restores_the_terminal(shell: tuple[str, int, dict[str, str]]) -> None:
    _, _, env = shell
    outer = outer_shell(env)
    before = stty_g(outer)
    outer.sendline(f"{SERIALMUX} connect sh1")
    outer.expect_exact("you have write access")
    found = subprocess.run(["pgrep", "-P", str(outer.pid)], capture_output=True, text=True, check=True)
    (client_pid,) = (int(pid) for pid in found.stdout.split())
    os.kill(client_pid, signal.SIGTERM)
    outer.expect_exact(OUTER)
    assert exit_status(outer) == 128 + signal.SIGTERM
    assert stty_g(outer) == before
    outer.close()


def test_take_over_from_telnet_and_back(shell: tuple[str, int, dict[str, str]]) -> None:
    _, telnet_port, env = shell
    telnet = spawn(["telnet", "127.0.0.1", str(telnet_port)], env)
    telnet.expect_exact("you have write access")
    outer = outer_shell(env)
    before = stty_g(outer)
    outer.sendline(f"{SERIALMUX} connect sh1")
    # Someone is writing: without --force the client watches, and says how to take over.
    outer.expect(rb"telnet 127\.0\.0\.1:\d+ is writing; you are read-only \(~f takes over")
    telnet.send("echo from-telnet-$((6*7))\r")
    outer.expect_exact("from-telnet-42")
    outer.send("~f")
    outer.expect_exact("you took over write access from telnet")
    telnet.expect_exact("taken over by ws")
    telnet.expect(pexpect.EOF)
    outer.send("echo from-client-$((6*7))\r")
    outer.expect_exact("from-client-42")
    # And back: a telnet user takes over (evict); the client says by whom and exits with 4 (conflict).
    telnet = spawn(["telnet", "127.0.0.1", str(telnet_port)], env)
    telnet.expect_exact("you took over write access from ws")
    outer.expect_exact("taken over by telnet")
    outer.expect_exact(OUTER)
    assert exit_status(outer) == 4
    assert stty_g(outer) == before
    telnet.send("echo telnet-again-$((6*7))\r")
    telnet.expect_exact("telnet-again-42")
    telnet.close()
    outer.close()


def test_resume_after_daemon_restart_without_loss_and_with_an_exact_missed_count(tmp_path: Path) -> None:
    guest = Guest()
    port = f"""
[[ports]]
name = "vm1"
device = "tty:{guest.path}"
replay_bytes = 0
scrollback_bytes = 65536
reconnect_initial_s = 0.05
reconnect_max_s = 0.2
"""
    try:
        with daemon(tmp_path, port) as (process, url):
            env = client_env(tmp_path, url)
            client = spawn([SERIALMUX, "connect", "vm1"], env)
            assert client.pid is not None
            client.expect_exact("you have write access")
            guest.write(b"before-restart\r\n")
            client.expect_exact("before-restart")

            process.stop()
            client.expect_exact("connection to vm1 lost; retrying")
            guest.write(b"written-while-down\r\n")  # waits in the PTY for the daemon
            process.start()
            client.expect(rb"resumed from offset \d+: no bytes missed")
            client.expect_exact("written-while-down")
            assert b"before-restart" not in (client.before or b"")

            # Away long enough for the ring to wrap: the client is stopped, the daemon restarted, and
            # three times the scrollback written; it must be told exactly how much it cannot have.
            os.kill(client.pid, signal.SIGSTOP)
            process.stop()
            process.start()
            status = get_json(f"{url}/api/v1/ports/vm1")
            start = status["scrollback"]["start"]
            assert status["scrollback"]["end"] == start
            payload = b"".join(b"line %06d\r\n" % i for i in range(18000)) + b"final-marker\r\n"
            guest.write(payload)

            def all_read() -> bool:
                end = int(get_json(f"{url}/api/v1/ports/vm1")["scrollback"]["end"])
                return bool(end == start + len(payload))

            wait_until(all_read, "the payload in the scrollback")
            missed = get_json(f"{url}/api/v1/ports/vm1")["scrollback"]["start"] - start
            assert missed == len(payload) - 65536
            os.kill(client.pid, signal.SIGCONT)
            client.expect(rb"resumed from offset \d+: " + str(missed).encode() + rb" bytes of console output")
            client.expect_exact("final-marker")
            client.send("~.")
            client.expect(pexpect.EOF)
            client.close()
            assert client.exitstatus == 0
    finally:
        guest.close()


def test_log_follow_and_visible_control_characters(tmp_path: Path) -> None:
    guest = Guest()
    port = f"""
[[ports]]
name = "vm1"
device = "tty:{guest.path}"
"""
    try:
        with daemon(tmp_path, port) as (_, url):
            env = client_env(tmp_path, url)
            first = b"plain \x1b[1mbold\x1b[0m bell\x07\r\n"
            guest.write(first)

            def stored() -> int:
                scrollback = get_json(f"{url}/api/v1/ports/vm1")["scrollback"]
                return int(scrollback["end"] - scrollback["start"])

            wait_until(lambda: stored() == len(first), "the output in the scrollback")
            shown = run_client(env, "log", "vm1")
            assert shown.returncode == 0, shown.stderr
            assert shown.stdout == b"plain ^[[1mbold^[[0m bell^G\n"
            start = get_json(f"{url}/api/v1/ports/vm1")["scrollback"]["start"]
            raw = run_client(env, "log", "vm1", "--raw", "--from", str(start + 6))
            assert raw.stdout == b"\x1b[1mbold\x1b[0m bell\x07\r\n"

            # connect --from: the stream from that offset (no replay), then live.
            watch = spawn([SERIALMUX, "connect", "vm1", "--read-only", "--from", str(start + 6)], env)
            watch.expect_exact(b"\x1b[1mbold\x1b[0m bell")
            assert b"plain" not in (watch.before or b"")
            watch.send("~.")
            watch.expect(pexpect.EOF)
            watch.close()
            assert watch.exitstatus == 0

            follow = spawn([SERIALMUX, "log", "vm1", "--follow"], env)
            follow.expect_exact("plain ^[[1mbold")
            guest.write(b"new line \x1b!\r\n")
            follow.expect_exact("new line ^[!")
            follow.kill(signal.SIGINT)
            follow.expect(pexpect.EOF)
            follow.close()
            assert follow.exitstatus == 130
    finally:
        guest.close()


def test_exit_codes_not_found_conflict_disabled_unreachable_usage(tmp_path: Path) -> None:
    guest = Guest()
    telnet_port = free_port()
    port = f"""
[[ports]]
name = "vm1"
device = "tty:{guest.path}"
telnet = "127.0.0.1:{telnet_port}"
"""
    try:
        with daemon(tmp_path, port) as (_, url):
            env = client_env(tmp_path, url)
            for args in (["log", "nope"], ["connect", "nope"], ["send", "break", "nope"]):
                result = run_client(env, *args)
                assert result.returncode == 2, (args, result)
                assert b"no console named 'nope' (unknown_port)" in result.stderr

            telnet = spawn(["telnet", "127.0.0.1", str(telnet_port)], env)
            telnet.expect_exact("you have write access")
            busy = run_client(env, "send", "break", "vm1")
            assert busy.returncode == 4 and b"(console_in_use)" in busy.stderr, busy
            ports = run_client(env, "ports")
            assert re.search(rb"vm1\s+online\s+telnet 127\.0\.0\.1:\d+\s+0\s+-", ports.stdout), ports.stdout
            names = run_client(env, "ports", "--names")
            assert names.stdout == b"vm1\n"
            telnet.close()

            assert run_client(env, "disable", "vm1", "--reason", "maintenance").returncode == 0
            listing = run_client(env, "ports", "--json")
            assert b'"state": "disabled"' in listing.stdout
            refused = run_client(env, "connect", "vm1")
            assert refused.returncode == 5 and b"maintenance" in refused.stderr, refused
            enabled = run_client(env, "enable", "vm1")
            assert enabled.returncode == 0 and enabled.stdout in (b"vm1: connecting\n", b"vm1: online\n")
            wait_until(lambda: get_json(f"{url}/api/v1/ports/vm1")["state"] == "online", "vm1 enabled")

            # Every console at once (the host-wide switch).
            assert run_client(env, "disable", "--reason", "host maintenance").returncode == 0
            off = run_client(env, "status")
            assert b"console access: disabled: host maintenance" in off.stdout, off
            assert run_client(env, "connect", "vm1").returncode == 5
            assert run_client(env, "enable").stdout == b"console access on this host: enabled\n"
            wait_until(lambda: get_json(f"{url}/api/v1/ports/vm1")["state"] == "online", "vm1 back")

            status = run_client(env, "status")
            assert status.returncode == 0, status
            assert status.stdout.decode().splitlines()[:3] == [
                f"serialmuxd {__version__} at {url}: ok",  # the daemon's version, from its API
                "consoles: 1 (1 online); you may see 1",
                "console access: enabled",
            ]
            assert run_client(env, "send", "frobnicate", "vm1").returncode == 1
            beyond = run_client(env, "connect", "vm1", "--from", str(2**62))
            assert beyond.returncode == 1 and b"is beyond the end of vm1's stream" in beyond.stderr, beyond
            assert run_client(env, "--url", "ftp://x", "ports").returncode == 1
        down = run_client(client_env(tmp_path, url), "ports")
        assert down.returncode == 5 and b"cannot reach serialmuxd" in down.stderr
    finally:
        guest.close()


def test_completion_script_completes_console_names(shell: tuple[str, int, dict[str, str]]) -> None:
    _, _, env = shell
    script = run_client(env, "completion", "bash").stdout.decode()
    bin_dir = str(Path(SERIALMUX).parent)
    probe = (
        f'PATH="{bin_dir}:$PATH"; {script}\n'
        'COMP_WORDS=(serialmux connect s); COMP_CWORD=2; _serialmux; echo "${COMPREPLY[@]}"\n'
        'COMP_WORDS=(serialmux se); COMP_CWORD=1; _serialmux; echo "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(
        ["bash", "--norc", "-c", probe], env=env, capture_output=True, text=True, timeout=20
    )
    assert done.stdout.splitlines() == ["sh1", "send"], done


def test_takeover_ask_is_answered_with_n_then_y(tmp_path: Path) -> None:
    telnet_port = free_port()
    port = _shell_port(telnet_port) + 'takeover = "ask"\nask_timeout_s = 30\n'
    with daemon(tmp_path, port) as (_, url):
        env = client_env(tmp_path, url)
        client = spawn([SERIALMUX, "connect", "sh1"], env)
        client.expect_exact("you have write access")
        telnet = spawn(["telnet", "127.0.0.1", str(telnet_port)], env)
        client.expect_exact("press y to hand over write access, n to keep it")
        client.send("n")  # the answer, not typed into the guest
        telnet.expect_exact("keeps write access to sh1; you stay read-only")
        client.expect_exact("you keep write access")
        client.send("echo kept-$((6*7))\r")
        client.expect_exact("kept-42")
        telnet.send("\x05cf")  # telnet's escape: Ctrl-E c f, take over
        client.expect_exact("press y to hand over write access, n to keep it")
        client.send("y")
        client.expect_exact("you are now read-only")
        telnet.expect_exact("you took over write access from ws")
        telnet.send("echo handed-$((6*7))\r")
        client.expect_exact("handed-42")  # the client watches on
        client.send("~.")
        client.expect(pexpect.EOF)
        client.close()
        telnet.close()


def test_a_reconnect_does_not_take_write_access_from_whoever_attached_meanwhile(tmp_path: Path) -> None:
    telnet_port = free_port()
    with daemon(tmp_path, _shell_port(telnet_port)) as (process, url):
        env = client_env(tmp_path, url)
        client = spawn([SERIALMUX, "connect", "sh1"], env)
        assert client.pid is not None
        client.expect_exact("you have write access")
        os.kill(client.pid, signal.SIGSTOP)  # away while the daemon restarts and someone else comes
        process.stop()
        process.start()
        telnet = spawn(["telnet", "127.0.0.1", str(telnet_port)], env)
        telnet.expect_exact("you have write access")
        os.kill(client.pid, signal.SIGCONT)
        client.expect(rb"telnet 127\.0\.0\.1:\d+ is writing; you are read-only")
        client.expect(rb"resumed from offset \d+: no bytes missed")
        telnet.send("echo still-mine-$((6*7))\r")
        telnet.expect_exact("still-mine-42")
        client.expect_exact("still-mine-42")
        assert b"taken over" not in (telnet.before or b"")
        client.send("~.")
        client.expect(pexpect.EOF)
        client.close()
        telnet.close()


def test_python_m_and_the_client_loads_none_of_the_daemon() -> None:
    probe = (
        "import sys, serialmuxd.client.main as m\n"
        "print(sorted(n for n in sys.modules if n.startswith('serialmuxd') and not n.startswith("
        "('serialmuxd.client', 'serialmuxd.core.backoff')) and n not in ('serialmuxd', 'serialmuxd.core')))\n"
        "print('structlog' in sys.modules, 'serial' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=20
    )
    assert done.stdout.splitlines() == ["[]", "False False"]
    version = subprocess.run(
        [sys.executable, "-m", "serialmuxd.client", "--version"], capture_output=True, text=True, timeout=20
    )
    assert version.returncode == 0 and version.stdout == f"serialmux {__version__}\n"


def test_falling_behind_while_attached_is_reported_with_the_daemons_count(tmp_path: Path) -> None:
    guest = Guest()
    port = f"""
[[ports]]
name = "vm1"
device = "tty:{guest.path}"
replay_bytes = 0
scrollback_bytes = 65536
client_buffer_bytes = 4096
"""
    try:
        with daemon(tmp_path, port) as (_, url):
            env = client_env(tmp_path, url)
            client = spawn([SERIALMUX, "connect", "vm1", "--read-only"], env)
            assert client.pid is not None
            client.expect_exact("read-only")
            client.searchwindowsize = 4096  # megabytes arrive after the flood; search only the tail
            # Reads nothing while the guest writes more than the kernel's socket buffers hold (a few MiB
            # on loopback) and many rings' worth.
            os.kill(client.pid, signal.SIGSTOP)
            payload = b"".join(b"row %07d\r\n" % i for i in range(1_200_000))
            guest.write(payload)

            def missed() -> int:
                return int(get_json(f"{url}/api/v1/ports/vm1")["bytes_missed"])

            wait_until(
                lambda: get_json(f"{url}/api/v1/ports/vm1")["bytes_from_device"] >= len(payload), "read"
            )
            os.kill(client.pid, signal.SIGCONT)
            guest.write(b"after-the-flood\r\n")
            client.expect_exact("after-the-flood", timeout=60)
            # Told on the status line (live resync, or a reconnect after 4003), and the count is the daemon's.
            told = re.compile(
                rb"\[serialmux\] [^\r\n]*?(\d+) bytes of console output (?:skipped|were missed)"
            )
            shown = [int(n) for n in told.findall(client.before or b"")]
            assert shown and sum(shown) == missed() > 0, (shown, missed())
            client.send("~.")
            client.expect(pexpect.EOF)
            client.close()
    finally:
        guest.close()
