"""SSH in the configuration: [ssh] in the main file, ssh_keys / ssh_principals / ssh_ca_keys in the users
file; every problem names file, key and reason."""

from __future__ import annotations

from pathlib import Path

import asyncssh
import pytest

from serialmuxd.auth.ssh_keys import parse_public_key_line
from serialmuxd.auth.users import load_users
from serialmuxd.config import ListenAddress, parse_config
from serialmuxd.errors import ConfigError


def public_line(algorithm: str = "ssh-ed25519", comment: str = "k", **kwargs: int) -> str:
    key = asyncssh.generate_private_key(algorithm, comment=comment, **kwargs)
    return key.export_public_key("openssh").decode().strip()


ALICE, BOB, CA = public_line(comment="alice"), public_line(comment="bob"), public_line(comment="ca")


def users(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "users.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_users(path)
    return str(caught.value).splitlines()


def test_keys_principals_and_cas_are_read(tmp_path: Path) -> None:
    path = users(
        tmp_path,
        f'ssh_ca_keys = ["{CA}"]\n'
        f'[[users]]\nname = "alice"\nssh_keys = ["{ALICE}"]\n'
        f'[[users]]\nname = "bob"\nssh_keys = ["no-agent-forwarding,no-port-forwarding {BOB}"]\n'
        'ssh_principals = ["bob@example.com", "robert"]\n',
    )
    directory = load_users(path)
    alice_blob = parse_public_key_line(ALICE).blob
    bob_blob = parse_public_key_line(BOB).blob
    assert directory.ssh_keys() == {alice_blob: "alice", bob_blob: "bob"}
    assert directory.ssh_principals() == {"alice": "alice", "bob@example.com": "bob", "robert": "bob"}
    assert [key.blob for key in directory.ssh_ca_keys] == [parse_public_key_line(CA).blob]


def test_every_ssh_problem_names_its_key(tmp_path: Path) -> None:
    rsa_small = public_line("ssh-rsa", key_size=1024)
    path = users(
        tmp_path,
        'ssh_ca_keys = ["ssh-ed25519 AAAAnotakey"]\n'
        f'[[users]]\nname = "alice"\nssh_keys = ["{ALICE}", "command=\\"/bin/sh\\" {BOB}", "{rsa_small}"]\n'
        f'[[users]]\nname = "bob"\nssh_keys = ["{ALICE}"]\nssh_principals = ["alice"]\n'
        f'[[users]]\nname = "carl"\nssh_keys = ["from=\\"10.0.0.0/8\\" {BOB}", "",\n'
        '  "ssh-ed25519-cert-v01@openssh.com A"]\n',
    )
    text = "\n".join(problems(path))
    assert f"{path}: ssh_ca_keys[0]: is not an SSH public key" in text
    assert f"{path}: users[0].ssh_keys[1]: option 'command=\"/bin/sh\"' is not supported in ssh_keys" in text
    assert f"{path}: users[0].ssh_keys[2]: is a 1024-bit RSA key; at least 2048 bits are needed" in text
    # alice's own array had bad entries (so it counts as unset); bob's copy of her key is then the first.
    assert f"{path}: users[1].ssh_principals: principal 'alice' already means the user of users[0]" in text
    assert f"{path}: users[2].ssh_keys[0]: option 'from=\"10.0.0.0/8\"' is not supported" in text
    assert f"{path}: users[2].ssh_keys[1]: must not be empty" in text
    assert f"{path}: users[2].ssh_keys[2]: is a certificate, not a key" in text


def test_the_same_key_under_two_users_is_refused(tmp_path: Path) -> None:
    path = users(
        tmp_path,
        f'[[users]]\nname = "alice"\nssh_keys = ["{ALICE}"]\n'
        f'[[users]]\nname = "bob"\nssh_keys = ["{ALICE} copy"]\n',
    )
    (line,) = problems(path)
    fingerprint = parse_public_key_line(ALICE).fingerprint
    assert line == (
        f"{path}: users[1].ssh_keys[0]: key {fingerprint} is already listed at users[0].ssh_keys[0]: "
        "each key belongs to one user"
    )


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("ssh-dss AAAAB3NzaC1kc3M= k", "is not an SSH public key"),
        ("restrict", "has options but no key"),
        ("no-pty " + ALICE, "option 'no-pty' is not supported"),
        ("cert-authority " + ALICE, "option 'cert-authority' is not supported in ssh_keys"),
        ("x" * 20000, "is longer than"),
    ],
)
def test_key_lines_refused_with_reasons(line: str, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_public_key_line(line)
    assert reason in str(caught.value)


def test_cert_authority_is_allowed_in_ca_keys() -> None:
    assert parse_public_key_line("cert-authority " + CA, ca=True).blob == parse_public_key_line(CA).blob


SSH_BASE = """
[daemon]
state_dir = "/var/lib/serialmuxd"
[auth]
users_file = "/etc/serialmuxd/users.toml"
[[ports]]
name = "vm1"
device = "exec:/bin/cat"
"""


def test_ssh_section_is_read() -> None:
    config = parse_config(SSH_BASE + '[ssh]\nlisten = "127.0.0.1:2222"\n', "c.toml")
    assert config.ssh.listen == ListenAddress("127.0.0.1", 2222)
    assert config.ssh.host_keys == ()
    keys = parse_config(SSH_BASE + '[ssh]\nlisten = "[::1]:22"\nhost_keys = ["/etc/k"]\n', "c.toml")
    assert keys.ssh.host_keys == (Path("/etc/k"),)
    assert parse_config(SSH_BASE, "c.toml").ssh.listen is None


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            '[[ports]]\nname = "vm1"\ndevice = "exec:/bin/cat"\n[ssh]\nlisten = "127.0.0.1:22"\n',
            [
                "c.toml: ssh.listen: the SSH front end needs [auth] with a users_file",
                "c.toml: ssh.host_keys: no host key: list OpenSSH private key files here, or set daemon.",
            ],
        ),
        (SSH_BASE + '[ssh]\nlisten = "0.0.0.0:22"\nport = 2\n', ["c.toml: ssh.port: unknown key"]),
        (SSH_BASE + '[ssh]\nlisten = "127.0.0.1"\n', ["c.toml: ssh.listen: expected HOST:PORT"]),
        (SSH_BASE + '[ssh]\nlisten = "127.0.0.1:22"\nhost_keys = "k"\n', ["c.toml: ssh.host_keys: expected"]),
        (
            SSH_BASE.replace("[auth]", "[auth]\nanonymous = 'viewer'") + '[ssh]\nlisten = "0.0.0.0:22"\n',
            ["c.toml: auth.anonymous: anonymous access is allowed only when every listener is on loopback"],
        ),
    ],
)
def test_ssh_section_problems(toml: str, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(toml, "c.toml")
    lines = str(caught.value).splitlines()
    for want in expected:
        assert any(line.startswith(want) for line in lines), (want, lines)


def test_ssh_off_loopback_needs_only_auth() -> None:
    # SSH encrypts by itself: no [tls] is asked for, unlike telnet and HTTP off loopback.
    config = parse_config(SSH_BASE + '[ssh]\nlisten = "0.0.0.0:2222"\n', "c.toml")
    assert config.ssh.listen == ListenAddress("0.0.0.0", 2222)
