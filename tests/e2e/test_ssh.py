"""The SSH front end against the real OpenSSH client (Debian ``openssh-client``) and a real daemon.

Keys and certificates are made with ssh-keygen in tmp_path; the client checks the daemon's generated host
key against a known_hosts file written from ``ssh_host_ed25519_key.pub`` (StrictHostKeyChecking=yes).
Interactive sessions run ``ssh`` on a PTY (``PtyChild``), the way a person at a terminal runs it; commands
and refusals run it as a plain subprocess.  Every wait is for bytes, an exit or an audit line, never a sleep.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import shutil
import signal
import struct
import sys
import termios
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from serialmuxd.auth.passwords import hash_password
from serialmuxd.config import parse_config
from serialmuxd.core.access import Identity
from serialmuxd.daemon import Daemon, _default_link_factory
from serialmuxd.devices.base import DeviceLink
from serialmuxd.frontends.ssh_hostkey import HOST_KEY_NAME
from serialmuxd.hub import PortHub, PortState

from .support import GuestPty, PtyChild, TcpClient, eventually

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("ssh") is None, reason="needs openssh-client (./dev installs it)"),
]
RECORD = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + chr(10))"
DENIED = b"Permission denied (publickey)"


def keygen(path: Path, *extra: str) -> Path:
    """A new ed25519 key pair at ``path`` (and ``path``.pub)."""
    import subprocess

    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path), *extra], check=True
    )
    return path


def sign(ca: Path, key: Path, principal: str, validity: str, *options: str) -> Path:
    """A user certificate for ``key`` (``key``-cert.pub, which ssh -i KEY picks up by itself)."""
    import subprocess

    subprocess.run(
        [
            "ssh-keygen",
            *options,
            "-q",
            "-s",
            str(ca),
            "-I",
            f"{key.name}-id",
            "-n",
            principal,
            "-V",
            validity,
            f"{key}.pub",
        ],
        check=True,
    )
    return Path(f"{key}-cert.pub")


def pub(key: Path) -> str:
    return Path(f"{key}.pub").read_text().strip()


@dataclass
class Rig:
    daemon: Daemon
    tmp: Path
    audit: Path
    known_hosts: Path
    keys: dict[str, Path]
    breaks: list[float] = field(default_factory=list)
    guest: GuestPty | None = None
    children: list[PtyChild] = field(default_factory=list)
    stopped: bool = False

    @property
    def port(self) -> int:
        assert self.daemon.ssh_address is not None
        return self.daemon.ssh_address[1]

    def argv(self, user: str, key: Path, *command: str, tty: bool = False) -> list[str]:
        return [
            "ssh",
            "-F",
            "/dev/null",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-i",
            str(key),
            "-p",
            str(self.port),
            *(["-tt"] if tty else []),
            f"{user}@127.0.0.1",
            *command,
        ]

    def attach(self, user: str, key: Path, cols: int = 0, rows: int = 0, *options: str) -> PtyChild:
        argv = self.argv(user, key)
        child = PtyChild([argv[0], *options, *argv[1:]])
        if cols:
            resize(child, cols, rows)
        self.children.append(child)
        return child

    async def run(
        self, user: str, key: Path, *command: str, timeout_s: float = 20
    ) -> tuple[int, bytes, bytes]:
        proc = await asyncio.create_subprocess_exec(
            *self.argv(user, key, *command),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
        assert proc.returncode is not None
        return proc.returncode, out, err

    def audit_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit.read_text().splitlines()]

    async def audited(self, what: str, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = [line for line in self.audit_lines() if match(line)]
            return bool(found)

        await eventually(seen, what)
        return found[-1]


def resize(child: PtyChild, cols: int, rows: int) -> None:
    """What a terminal emulator does on a resize: TIOCSWINSZ on the PTY, SIGWINCH to the program on it."""
    fcntl.ioctl(child.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    if child.proc.poll() is None:
        os.kill(child.proc.pid, signal.SIGWINCH)


def users_file(tmp: Path, keys: dict[str, Path], ca: Path) -> Path:
    path = tmp / "users.toml"
    path.write_text(
        f"""
ssh_ca_keys = ["{pub(ca)}"]
[[users]]
name = "alice"
password_hash = "{hash_password("pw-alice")}"
ssh_keys = ["{pub(keys["alice"])}", "restrict {pub(keys["alice2"])}"]
grants = [{{ role = "operator", ports = ["vm*"] }}]
[[users]]
name = "vic"
ssh_keys = ["{pub(keys["vic"])}"]
grants = [{{ role = "viewer", ports = ["vm*"] }}]
[[users]]
name = "nora"
ssh_keys = ["{pub(keys["nora"])}"]
grants = [{{ role = "operator", ports = ["elsewhere"] }}]
[[users]]
name = "carol"
ssh_principals = ["carol@example.com"]
grants = [{{ role = "operator", ports = ["vm*"] }}]
"""
    )
    path.chmod(0o600)
    return path


def config_text(tmp: Path, users: Path, audit: Path, record: Path, guest: str) -> str:
    nmi = f'["{sys.executable}", "-c", "{RECORD}", "{record}", "nmi"]'
    return f"""
[daemon]
log_level = "warning"
state_dir = "{tmp / "state"}"
[auth]
users_file = "{users}"
login_grace_s = 10
[audit]
file = "{audit}"
[ssh]
listen = "127.0.0.1:0"
[[ports]]
name = "vm1"
device = "exec:/bin/sh -i"
telnet = "127.0.0.1:0"
raw = true
replay_bytes = 0
[ports.hypervisor]
type = "command"
nmi = {nmi}
[[ports]]
name = "vm.two"
device = "exec:/bin/cat"
takeover = "refuse"
[[ports]]
name = "vm-tty"
device = "tty:{guest}"
replay_bytes = 0
"""


class BreakSpy:
    """The daemon's real device links, with ``send_break`` recorded and reported as sent: a PTY cannot
    carry a BREAK (the tty backend says so), so this is the "BREAK event on the device link"."""

    def __init__(self, breaks: list[float]) -> None:
        self.breaks = breaks

    def __call__(self, hub: PortHub) -> DeviceLink:
        link = _default_link_factory(hub)

        def send_break(duration_s: float = 0.25) -> bool:
            self.breaks.append(duration_s)
            return True

        link.send_break = send_break  # type: ignore[method-assign]
        return link


@pytest_asyncio.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    names = ("alice", "alice2", "vic", "nora", "stranger", "carol", "carol_old", "carol_cmd", "mallory")
    keys = {name: keygen(tmp_path / f"key_{name}") for name in names}
    ca, other_ca = keygen(tmp_path / "ca"), keygen(tmp_path / "other_ca")
    sign(ca, keys["carol"], "carol@example.com", "-5m:+1h")
    sign(ca, keys["carol_old"], "carol@example.com", "20200101:20200102")  # expired
    sign(ca, keys["carol_cmd"], "carol@example.com", "-5m:+1h", "-O", "force-command=who")
    sign(other_ca, keys["mallory"], "carol@example.com", "-5m:+1h")  # a CA nobody trusts
    audit = tmp_path / "audit.jsonl"
    guest = GuestPty()
    toml = config_text(tmp_path, users_file(tmp_path, keys, ca), audit, tmp_path / "actions", guest.path)
    breaks: list[float] = []
    daemon = Daemon(parse_config(toml, "<test>"), link_factory=BreakSpy(breaks))
    await daemon.start()
    rig = Rig(daemon, tmp_path, audit, tmp_path / "known_hosts", keys, breaks, guest=guest)
    try:
        await eventually(lambda: daemon.hubs["vm1"].state is PortState.ONLINE, "vm1 online")
        host_key = (tmp_path / "state" / f"{HOST_KEY_NAME}.pub").read_text().split()
        rig.known_hosts.write_text(f"[127.0.0.1]:{rig.port} {host_key[0]} {host_key[1]}\n")
        assert (tmp_path / "state" / HOST_KEY_NAME).stat().st_mode & 0o777 == 0o600
        yield rig
    finally:
        for child in rig.children:
            child.close()
        if not rig.stopped:
            await daemon.stop()
        guest.close()


async def test_attach_type_resize_break_read_only_and_force(rig: Rig) -> None:
    alice = rig.attach("vm1", rig.keys["alice"], 80, 24)
    await alice.expect(b"[serialmuxd] attached to console vm1")
    await alice.expect(b"you have write access")
    alice.write(b"echo hel''lo-ssh\r")
    await alice.expect(b"hello-ssh")  # typed, run by the guest's shell, its output back: the echo

    # The terminal's size from pty-req, then a resize: the guest's PTY follows (stty reads it there).
    mark = len(alice.buffer)
    alice.write(b"stty size\r")
    await alice.expect(b"24 80", start=mark)
    resize(alice, 100, 37)
    await eventually(lambda: rig.daemon.hubs["vm1"].window_size == (100, 37), "window-change reached the hub")
    mark = len(alice.buffer)
    alice.write(b"stty size\r")
    await alice.expect(b"37 100", start=mark)

    # OpenSSH's ~B (after a newline) is the SSH break request: a serial BREAK on the device link.
    alice.write(b"\r~B")
    await alice.expect(b"[serialmuxd] BREAK sent")
    assert rig.breaks == [0.25]
    await rig.audited("break audited", lambda line: line["event"] == "break" and line["transport"] == "ssh")

    # Read-only: vic's typing never reaches the guest, and he is told so.
    vic = rig.attach("vm1.ro", rig.keys["vic"])
    await vic.expect(b"read-only: your input is not sent to the guest")
    vic.write(b"echo vic-was-here\r")
    await vic.expect(b"read-only: input not sent\r\n")  # a read-only login cannot take over: no hint
    sent = rig.daemon.hubs["vm1"].input.bytes_to_device
    mark = len(alice.buffer)
    alice.write(b"echo still-alice\r")
    await alice.expect(b"still-alice", start=mark)
    assert b"vic-was-here" not in alice.buffer
    assert rig.daemon.hubs["vm1"].input.bytes_to_device == sent + len(b"echo still-alice\r")

    # A telnet writer (same user, password login) takes the lease; vm1.force over SSH takes it back at once
    # and the telnet user is told who took it.
    telnet = await TcpClient.connect("127.0.0.1", rig.daemon.listener("vm1", "raw").tcp_port)
    try:
        await telnet.expect(b"login: ")
        await telnet.send(b"alice\npw-alice\n")
        await telnet.expect(b"you took over write access")
        force = rig.attach("vm1.force", rig.keys["alice2"])
        await force.expect(b"you took over write access")
        await telnet.expect(re.compile(rb"taken over by alice \(ssh 127\.0\.0\.1:\d+\)"))
        await telnet.wait_eof()
        force.write(b"echo forced-in\r")
        await force.expect(b"forced-in")
    finally:
        await telnet.close()

    # The escape key works as on telnet.  A writer that chose read-only and types is told which keys
    # take over (the hub's notice says what; the SSH front end names the port's escape keys, Ctrl-E).
    force.write(b"\x05cr")
    await force.expect(b"you are now read-only")
    mark = len(force.buffer)
    force.write(b"echo not-sent\r")
    await force.expect(b"read-only: input not sent (Ctrl-E c f takes over)\r\n", start=mark)
    force.write(b"\x05cf")
    await force.expect(b"you have write access", start=mark)
    # Ctrl-E c . detaches, and ssh exits.
    force.write(b"\x05c.")
    await force.expect(b"[serialmuxd] detached")
    await force.wait_eof()


async def test_exec_commands(rig: Rig) -> None:
    code, out, err = await rig.run("vm1", rig.keys["alice"], "who")
    assert code == 0, err
    assert out.startswith(b"vm1: writer: nobody; viewers: 0")

    code, out, err = await rig.run("vm1", rig.keys["vic"], "state")
    assert code == 0, err
    assert b"console vm1: online" in out and b"machine: " in out

    alice = rig.attach("vm1", rig.keys["alice"])
    await alice.expect(b"you have write access")
    alice.write(b"echo logged-line\r")
    await alice.expect(b"logged-line")
    code, out, err = await rig.run("vm1", rig.keys["vic"], "log")
    assert code == 0, err
    assert b"logged-line" in out
    await rig.audited(
        "scrollback audited", lambda line: line["event"] == "scrollback_download" and line["user"] == "vic"
    )
    code, out, err = await rig.run("vm1", rig.keys["alice"], "who")
    assert re.match(rb"vm1: writer: alice \(ssh 127\.0\.0\.1:\d+\) since ", out), out

    # Actions: the hub's policy decides, the hypervisor runs it, both are audited.
    code, out, err = await rig.run("vm1", rig.keys["alice"], "nmi", "--follow", "0")
    assert code == 0, err
    assert out == b"vm1: nmi done\n"
    assert (rig.tmp / "actions").read_text() == "nmi\n"
    await rig.audited(
        "nmi audited", lambda line: line["event"] == "vm_action" and line.get("user") == "alice"
    )
    code, out, err = await rig.run("vm1", rig.keys["vic"], "nmi")
    assert code == 1
    assert b"vic may not send an NMI on vm1" in err
    await rig.audited(
        "refusal audited",
        lambda line: line["event"] == "access_denied" and line["user"] == "vic" and line["verb"] == "nmi",
    )
    code, out, err = await rig.run("vm1", rig.keys["alice"], "reset")
    assert code == 1 and b"reset failed: unsupported" in err  # the command hypervisor has only nmi
    code, out, err = await rig.run("vm1", rig.keys["alice"], "reboot")
    assert code == 2 and b"unknown command 'reboot'; commands: nmi reset restart start state log who" in err
    code, out, err = await rig.run("vm1", rig.keys["alice"], "nmi", "--follow", "lots")
    assert code == 2 and b"--follow wants seconds" in err
    assert (rig.tmp / "actions").read_text() == "nmi\n", "a refused or malformed command ran nothing"


async def test_certificates_and_refusals(rig: Rig) -> None:
    # A certificate from the trusted CA, principal carol@example.com: carol, on a console named with a dot.
    code, out, err = await rig.run("vm.two", rig.keys["carol"], "who")
    assert code == 0, err
    ok = await rig.audited(
        "certificate login", lambda line: line["event"] == "login_ok" and line["user"] == "carol"
    )
    assert ok["method"] == "certificate" and ok["transport"] == "ssh"

    # The CA's force-command holds: an interactive login with that certificate runs only "who".
    code, out, err = await rig.run("vm.two", rig.keys["carol_cmd"])
    assert code == 0, err
    assert out.startswith(b"vm.two: writer: nobody")

    refusals = {
        "unknown key": ("vm1", rig.keys["stranger"]),
        "untrusted CA": ("vm1", rig.keys["mallory"]),
        "expired certificate": ("vm1", rig.keys["carol_old"]),
        "no grant": ("vm1", rig.keys["nora"]),
        "unknown console": ("vm9", rig.keys["alice"]),
    }
    answers = {}
    for what, (user, key) in refusals.items():
        code, out, err = await rig.run(user, key, "who")
        answers[what] = (code, out, err.replace(user.encode(), b"USER"))
        assert code == 255 and DENIED in err, (what, err)
    # Each refusal counted for the address in the same throttle as telnet and HTTP logins: the next
    # connection from it waits before its first key is looked at.
    assert rig.daemon.front_door is not None
    authenticator = rig.daemon.front_door.authenticator
    assert authenticator.source_delay_s(Identity("ssh", "127.0.0.1:1")) > 0
    # ... and in serialmuxd_logins_total by method (read from these counts at scrape time).
    assert authenticator.login_counts[("certificate", "ok")] == 2
    assert authenticator.login_counts[("publickey", "failed")] == 3  # stranger, nora, alice on vm9
    assert authenticator.login_counts[("certificate", "failed")] == 2  # other CA, expired
    # A console that does not exist is refused exactly like a key nobody knows: nothing to probe.
    assert answers["unknown console"] == answers["unknown key"]
    assert answers["no grant"] == answers["unknown key"]

    def failed(reason: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
        return lambda line: (
            line["event"] == "login_failed"
            and reason in line["reason"]
            and all(line.get(k) == v for k, v in fields.items())
        )

    await rig.audited("unknown key", failed("unknown key SHA256:", method="publickey", transport="ssh"))
    # A certificate asyncssh refused names no user (anyone can write one); its claims are in the reason.
    claims = "(principals ['carol@example.com'])"
    untrusted = await rig.audited("untrusted CA", failed("certificate from an untrusted CA", user=None))
    assert untrusted["method"] == "certificate" and untrusted["reason"].endswith(claims)
    expired = await rig.audited("expired", failed("certificate refused: certificate expired", user=None))
    assert expired["method"] == "certificate" and expired["reason"].endswith(claims)
    await rig.audited("no grant", failed("no console 'vm1' that nora may view", user="nora"))
    await rig.audited("unknown console", failed("no console 'vm9' that alice may view", user="alice"))

    # A malformed user name: the client is told why (grammar only), and it is audited.
    code, out, err = await rig.run("vm1.sideways=3", rig.keys["alice"], "who")
    assert code == 255
    assert b"serialmuxd: unknown option 'sideways'" in err
    await rig.audited("malformed", failed("malformed user name: unknown option 'sideways'"))


async def test_replay_lines_option(rig: Rig) -> None:
    writer = rig.attach("vm1", rig.keys["alice"])
    await writer.expect(b"you have write access")
    writer.write(b"for i in 1 2 3 4 5; do echo line-$i-x; done\r")
    await writer.expect(b"line-5-x")
    viewer = rig.attach("vm1.ro.replay-lines=3", rig.keys["vic"])
    await viewer.expect(b"read-only: your input is not sent")
    await viewer.expect(b"line-5-x")
    assert b"line-3-x" not in viewer.buffer and b"line-4-x" in viewer.buffer


async def test_eight_bit_clean_both_ways_and_told_at_shutdown(rig: Rig) -> None:
    guest = rig.guest
    assert guest is not None
    client = rig.attach("vm-tty", rig.keys["alice"], 80, 24, "-e", "none")  # no ssh escapes: raw bytes
    await client.expect(b"you have write access")
    # Every byte value from the guest arrives unchanged (no line editor, no charset conversion).
    everything = bytes(range(256))
    mark = len(client.buffer)
    await guest.send(b"<<" + everything + b">>")
    found = await client.expect(
        re.compile(re.escape(b"<<") + b"(.*)" + re.escape(b">>"), re.DOTALL), start=mark
    )
    assert found.group(1) == everything
    # And 8-bit input reaches the guest whole (the escape key, Ctrl-E, is the console's, so it is left out).
    typed = bytes(b for b in range(256) if b != 0x05)
    await client.send(b"[" + typed + b"]")
    await guest.expect(b"[" + typed + b"]")

    # A daemon that stops tells the SSH session why before the connection goes.
    await rig.daemon.stop()
    rig.stopped = True
    await client.expect(b"[serialmuxd] disconnected: serialmuxd is shutting down")
    await client.wait_eof()


async def test_force_overrides_a_refuse_policy(rig: Rig) -> None:
    first = rig.attach("vm.two", rig.keys["alice"])
    await first.expect(b"you have write access")
    refused = rig.attach("vm.two", rig.keys["alice2"])  # takeover = "refuse": a plain attach only watches
    await refused.expect(b"takeover policy: refuse")
    forced = rig.attach("vm.two.force", rig.keys["alice2"])
    await forced.expect(b"you took over write access")
    await first.expect(b"disconnected: taken over by alice")
    await first.wait_eof()
    takeover = await rig.audited("forced takeover", lambda line: line["event"] == "takeover")
    assert takeover["forced"] is True and takeover["action"] == "evict"
    # A viewer may not force: the takeover verb is the hub's to check.
    viewer = rig.attach("vm.two.force", rig.keys["vic"])
    await viewer.expect(b"vic may not type into this console on vm.two")
    writer = rig.daemon.hubs["vm.two"].status().writer
    assert writer is not None and writer.who.startswith("alice")
