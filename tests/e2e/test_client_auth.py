"""``serialmux`` against a daemon with ``[auth]``: a token file (and its permissions), a user with
``$SERIALMUX_PASSWORD`` or the password prompt (no echo, in a real pseudo-terminal), the client config file,
TLS verified with ``--ca-file`` and a client certificate, and the daemon's refusals as exit codes: 3
unauthorized/forbidden, 2 a console the caller may not see."""

from __future__ import annotations

from pathlib import Path

import pexpect
import pytest
import trustme

from serialmuxd.auth.passwords import hash_password
from serialmuxd.auth.tokens import new_token, token_digest

from .client_support import SERIALMUX, Guest, client_env, daemon, run_client, spawn
from .support import read_until

pytestmark = [pytest.mark.slow]
PASSWORD = "correct horse battery staple"


def _users(tmp_path: Path, admin: str, viewer: str) -> Path:
    path = tmp_path / "users.toml"
    path.write_text(
        f"""
[[users]]
name = "alice"
password_hash = "{hash_password(PASSWORD)}"
grants = [{{ role = "operator", ports = ["vm*"] }}]

[[tokens]]
name = "ci-bot"
sha256 = "{token_digest(admin)}"
grants = [{{ role = "admin", ports = ["*"] }}]

[[tokens]]
name = "dashboard"
sha256 = "{token_digest(viewer)}"
grants = [{{ role = "viewer", ports = ["vm1"] }}]
"""
    )
    path.chmod(0o600)
    return path


def _token_file(tmp_path: Path, name: str, token: str) -> Path:
    path = tmp_path / name
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


def test_credentials_and_refusals(tmp_path: Path) -> None:
    guest = Guest()
    admin, viewer = new_token(), new_token()
    users = _users(tmp_path, admin, viewer)
    ports = f"""
[[ports]]
name = "vm1"
device = "tty:{guest.path}"

[[ports]]
name = "web1"
device = "exec:/bin/cat"
group = "web"
"""
    try:
        with daemon(tmp_path, ports, extra=f'[auth]\nusers_file = "{users}"\n') as (_, url):
            env = client_env(tmp_path, url)
            nobody = run_client(env, "ports")
            assert nobody.returncode == 3 and b"(unauthorized)" in nobody.stderr, nobody

            viewer_file = str(_token_file(tmp_path, "viewer.token", viewer))
            listed = run_client(env, "--token-file", viewer_file, "ports", "--names")
            assert listed.returncode == 0 and listed.stdout == b"vm1\n", listed
            forbidden = run_client(env, "send", "nmi", "vm1", "--token-file", viewer_file)
            assert forbidden.returncode == 3 and b"(forbidden)" in forbidden.stderr, forbidden
            hidden = run_client(env, "log", "web1", "--token-file", viewer_file)
            assert hidden.returncode == 2 and b"(unknown_port)" in hidden.stderr, hidden
            assert run_client(env, "log", "vm1", "--token-file", viewer_file).returncode == 0

            loose = _token_file(tmp_path, "loose.token", admin)
            loose.chmod(0o644)
            refused = run_client(env, "ports", "--token-file", str(loose))
            assert refused.returncode == 1 and b"chmod 600" in refused.stderr

            wrong = run_client({**env, "SERIALMUX_PASSWORD": "wrong"}, "--user", "alice", "ports")
            assert wrong.returncode == 3 and b"(unauthorized)" in wrong.stderr
            alice = {**env, "SERIALMUX_USER": "alice", "SERIALMUX_PASSWORD": PASSWORD}
            sent = run_client(alice, "send", "key", "F8", "vm1")
            assert sent.returncode == 0 and sent.stderr == b"key sent to vm1 (5 bytes)\n", sent
            read_until(guest.master, b"\x1b[19~")  # xterm's F8, on the guest's line
            not_admin = run_client(alice, "disable", "vm1")
            assert not_admin.returncode == 3, not_admin

            # The password prompt, in a real terminal: asked once, not echoed.
            prompt = spawn([SERIALMUX, "--user", "alice", "ports"], env)
            prompt.expect_exact("password for alice: ")
            prompt.sendline(PASSWORD)
            prompt.expect(rb"vm1\s+online")
            prompt.expect(pexpect.EOF)
            assert PASSWORD.encode() not in (prompt.before or b"")
            prompt.close()
            assert prompt.exitstatus == 0
            # ... except for ports --names, which shell completion runs: a prompt there would hang it.
            completing = spawn([SERIALMUX, "--user", "alice", "ports", "--names"], env)
            completing.expect_exact("set SERIALMUX_PASSWORD or run from a terminal")
            completing.expect(pexpect.EOF)
            completing.close()
            assert completing.exitstatus == 1

            # The config file: url and token file (a relative path is taken from the file's directory).
            config_dir = tmp_path / "xdg" / "serialmux"
            config_dir.mkdir(parents=True)
            _token_file(config_dir, "admin.token", admin)
            (config_dir / "config.toml").write_text(f'url = "{url}"\ntoken_file = "admin.token"\n')
            bare = {k: v for k, v in env.items() if k != "SERIALMUX_URL"}
            web = run_client(bare, "ports", "--group", "web", "--names")
            assert web.returncode == 0 and web.stdout == b"web1\n", web
            assert run_client(bare, "disable", "vm1", "--reason", "maintenance").returncode == 0
            assert run_client(bare, "enable", "vm1").returncode == 0
            (config_dir / "config.toml").write_text('url = "http://x"\ntokenfile = "t"\n')
            bad = run_client(bare, "ports")
            assert bad.returncode == 1 and b"config.toml: tokenfile: unknown key" in bad.stderr
    finally:
        guest.close()


def test_tls_verified_by_default_with_ca_file_and_a_client_certificate(tmp_path: Path) -> None:
    ca, guest = trustme.CA(), Guest()
    server = ca.issue_cert("127.0.0.1", "localhost")
    cert, key, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    key.write_bytes(server.private_key_pem.bytes())
    key.chmod(0o600)
    ca.cert_pem.write_to_path(str(ca_file))
    alice = ca.issue_cert("alice@example.com", common_name="alice")
    alice_cert, alice_key = tmp_path / "alice.pem", tmp_path / "alice.key"
    alice_cert.write_bytes(b"".join(blob.bytes() for blob in alice.cert_chain_pems))
    alice_key.write_bytes(alice.private_key_pem.bytes())
    alice_key.chmod(0o600)
    users = tmp_path / "users.toml"
    users.write_text('[[users]]\nname = "alice"\ngrants = [{ role = "operator", ports = ["vm1"] }]\n')
    users.chmod(0o600)
    extra = f"""tls = true
[auth]
users_file = "{users}"
[tls]
cert_file = "{cert}"
key_file = "{key}"
client_ca_file = "{ca_file}"
"""
    ports = f'[[ports]]\nname = "vm1"\ndevice = "tty:{guest.path}"\nreplay_bytes = 0\n'
    try:
        with daemon(tmp_path, ports, extra=extra) as (_, url):
            env = client_env(tmp_path, url.replace("http://", "https://"))
            untrusted = run_client(env, "ports")
            assert untrusted.returncode == 5 and b"TLS certificate not trusted" in untrusted.stderr, untrusted
            anonymous = run_client(env, "--ca-file", str(ca_file), "ports")
            assert anonymous.returncode == 3 and b"(unauthorized)" in anonymous.stderr, anonymous

            env.update(
                SERIALMUX_CA_FILE=str(ca_file),
                SERIALMUX_CERT_FILE=str(alice_cert),
                SERIALMUX_KEY_FILE=str(alice_key),
            )
            listed = run_client(env, "ports", "--names")
            assert listed.returncode == 0 and listed.stdout == b"vm1\n", listed
            client = spawn([SERIALMUX, "connect", "vm1"], env)  # wss://, signed in by the certificate
            client.expect_exact("you have write access")
            client.send("typed-over-tls")
            read_until(guest.master, b"typed-over-tls")
            guest.write(b"answer-over-tls\r\n")
            client.expect_exact("answer-over-tls")
            client.send("\r~.")
            client.expect(pexpect.EOF)
            client.close()
            assert client.exitstatus == 0
    finally:
        guest.close()
