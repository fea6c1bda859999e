"""SSH limits and the host key: the cap on connections still authenticating, the login grace time (both
audited), ``serialmuxd ssh-host-key``, and a host key file others can read.  Real daemon, real OpenSSH
client, raw TCP connections for the idle ones."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from serialmuxd.config import parse_config
from serialmuxd.core.throttle import ConnectionGate
from serialmuxd.daemon import Daemon
from serialmuxd.errors import StartupError
from serialmuxd.frontends.ssh_hostkey import HOST_KEY_NAME

from .support import TcpClient
from .test_ssh import Rig, keygen, pub

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("ssh") is None, reason="needs openssh-client (./dev installs it)"),
]
GRACE_S = 3


def write_config(tmp_path: Path, key: Path, extra: str = "") -> Path:
    users = tmp_path / "users.toml"
    users.write_text(
        f'[[users]]\nname = "alice"\nssh_keys = ["{pub(key)}"]\n'
        'grants = [{ role = "operator", ports = ["vm1"] }]\n'
    )
    users.chmod(0o600)
    config = tmp_path / "serialmuxd.toml"
    config.write_text(
        f"""
[daemon]
log_level = "warning"
state_dir = "{tmp_path / "state"}"
[auth]
users_file = "{users}"
login_grace_s = {GRACE_S}
[audit]
file = "{tmp_path / "audit.jsonl"}"
[ssh]
listen = "127.0.0.1:0"
{extra}
[[ports]]
name = "vm1"
device = "exec:/bin/cat"
"""
    )
    return config


def keygen_fingerprint(key: Path) -> str:
    """What ssh-keygen -l says the key's fingerprint is (the same line a client prints on first contact)."""
    listed = subprocess.run(["ssh-keygen", "-lf", f"{key}.pub"], capture_output=True, text=True, check=True)
    return listed.stdout.split()[1]


def public_text(key: Path) -> str:
    return Path(f"{key}.pub").read_text()


def host_key_cli(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serialmuxd.cli", "ssh-host-key", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_idle_connections_are_capped_and_time_out(tmp_path: Path) -> None:
    key = keygen(tmp_path / "key_alice")
    config = write_config(tmp_path, key)
    daemon = Daemon(parse_config(config.read_text(), str(config)))
    await daemon.start()
    idle: list[TcpClient] = []
    try:
        assert daemon.ssh_address is not None
        host_key = (tmp_path / "state" / f"{HOST_KEY_NAME}.pub").read_text().split()
        known = tmp_path / "known_hosts"
        known.write_text(f"[127.0.0.1]:{daemon.ssh_address[1]} {host_key[0]} {host_key[1]}\n")
        rig = Rig(daemon, tmp_path, tmp_path / "audit.jsonl", known, {"alice": key})
        per_source = ConnectionGate().max_per_source
        for _ in range(per_source):  # connected, never authenticating: each holds a slot of the gate
            client = await TcpClient.connect("127.0.0.1", daemon.ssh_address[1])
            await client.expect(b"SSH-2.0-")
            idle.append(client)
        code, _out, err = await rig.run("vm1", key, "who")
        assert code == 255, err
        await rig.audited(
            "gate refusal",
            lambda line: (
                line["event"] == "login_failed"
                and line["reason"].startswith("too many connections are waiting to log in")
            ),
        )
        # The grace time ends every idle connection (audited), and the slots are free again.
        for client in idle:
            await client.wait_eof(GRACE_S + 10)
        timed_out = [
            line
            for line in rig.audit_lines()
            if line["event"] == "login_failed" and line["reason"] == f"login timed out after {GRACE_S} s"
        ]
        assert len(timed_out) == per_source
        code, out, err = await rig.run("vm1", key, "who")
        assert code == 0, err
        assert out.startswith(b"vm1: writer: nobody")
    finally:
        for client in idle:
            await client.close()
        await daemon.stop()


async def test_ssh_host_key_command_prints_the_key_the_daemon_uses(tmp_path: Path) -> None:
    key = keygen(tmp_path / "key_alice")
    config = write_config(tmp_path, key)
    first = host_key_cli(config)
    assert first.returncode == 0, first.stderr
    state_key = tmp_path / "state" / HOST_KEY_NAME
    assert state_key.stat().st_mode & 0o777 == 0o600
    assert first.stdout == f"ssh-ed25519 {keygen_fingerprint(state_key)}\n"
    assert host_key_cli(config).stdout == first.stdout, "the key is generated once, then kept"

    # The daemon serves that key: the client accepts it against a known_hosts line made from the .pub.
    daemon = Daemon(parse_config(config.read_text(), str(config)))
    await daemon.start()
    try:
        assert daemon.ssh_address is not None
        known = tmp_path / "known_hosts"
        known.write_text(f"[127.0.0.1]:{daemon.ssh_address[1]} {public_text(state_key)}")
        rig = Rig(daemon, tmp_path, tmp_path / "audit.jsonl", known, {"alice": key})
        code, _out, err = await rig.run("vm1", key, "who")
        assert code == 0, err
    finally:
        await daemon.stop()


async def test_a_host_key_others_can_read_is_refused(tmp_path: Path) -> None:
    key = keygen(tmp_path / "key_alice")
    host = keygen(tmp_path / "host_key")
    host.chmod(0o644)
    config = write_config(tmp_path, key, f'host_keys = ["{host}"]')
    daemon = Daemon(parse_config(config.read_text(), str(config)))
    with pytest.raises(StartupError) as caught:
        await daemon.start()
    assert str(caught.value) == (
        f"ssh host key {host}: is accessible by other users (mode 0644); chmod 600 {host}"
    )
    await daemon.stop()
    result = host_key_cli(config)
    assert result.returncode == 1
    assert f"ssh host key {host}: is accessible by other users" in result.stderr
    host.chmod(0o600)
    result = host_key_cli(config)
    assert result.returncode == 0 and result.stdout.startswith("ssh-ed25519 SHA256:")
