"""HTTP authentication and authorisation through the real daemon and the real ``curl``: Basic (password, and a
token as the password), Bearer tokens, 401 with a challenge, 403 for an identity without the verb, 404 for a
console the caller may not view (no name probing), a listing of only what the caller may view, 429 once an
address failed too often — and a canary password that never shows up in the daemon's log."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from serialmuxd.auth.passwords import hash_password
from serialmuxd.auth.tokens import new_token, token_digest

from .support import GuestPty, running_daemon

pytestmark = pytest.mark.asyncio  # curl comes from ./dev's Debian packages: missing it is a failure

PASSWORD = "canary-Pa55word-7f3a"  # a canary: it must never appear in the daemon's output
OTHER_PASSWORD = "second-secret-91b2"


@dataclass
class Env:
    base: str
    token: str
    viewer_token: str
    guest: GuestPty
    audit: Path


def _users_file(tmp_path: Path, token: str, viewer_token: str) -> Path:
    path = tmp_path / "users.toml"
    path.write_text(
        f"""
[[users]]
name = "alice"
password_hash = "{hash_password(PASSWORD)}"
grants = [{{ role = "operator", ports = ["vm*"] }}]

[[users]]
name = "bob"
password_hash = "{hash_password(OTHER_PASSWORD)}"
grants = [{{ role = "viewer", ports = ["group:web"] }}]

[[tokens]]
name = "ci-bot"
sha256 = "{token_digest(token)}"
grants = [{{ role = "admin", ports = ["*"] }}]

[[tokens]]
name = "dashboard"
sha256 = "{token_digest(viewer_token)}"
grants = [{{ role = "viewer", ports = ["vm1"] }}]
"""
    )
    path.chmod(0o600)
    return path


@pytest_asyncio.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    guest = GuestPty()
    token, viewer_token = new_token(), new_token()
    users = _users_file(tmp_path, token, viewer_token)
    config = f"""
[daemon]
log_level = "info"
[auth]
users_file = "{users}"
[audit]
file = "{tmp_path / "audit.jsonl"}"
[http]
listen = "127.0.0.1:0"
[[ports]]
name = "vm1"
device = "tty:{guest.path}"
[[ports]]
name = "web-ss-0"
device = "exec:/bin/cat"
group = "web"
"""
    async with running_daemon(config, online=("vm1",), cleanup=guest.close) as daemon:
        assert daemon.http_address is not None
        host, port = daemon.http_address
        yield Env(f"http://{host}:{port}", token, viewer_token, guest, tmp_path / "audit.jsonl")


async def curl(*args: str) -> tuple[int, dict[str, str], str]:
    """Run the real curl; returns (status, lower-cased headers, body).  Credentials go through a config
    file on stdin (-K -), never through curl's own argv where other users could read them in ps."""
    secret_args = [a for a in args if a.startswith(("user = ", "header = "))]
    plain_args = [a for a in args if a not in secret_args]
    proc = await asyncio.create_subprocess_exec(
        "curl", "-s", "-i", "-K", "-", *plain_args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate("\n".join(secret_args).encode() + b"\n")
    assert proc.returncode == 0, err
    head, _, body = out.decode().partition("\r\n\r\n")
    lines = head.split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def basic(user: str, password: str) -> str:
    return f'user = "{user}:{password}"'


def bearer(token: str) -> str:
    return f'header = "Authorization: Bearer {token}"'


async def test_no_credentials_is_401_with_a_challenge_and_open_paths_stay_open(env: Env) -> None:
    status, headers, body = await curl(f"{env.base}/api/v1/ports")
    assert status == 401 and json.loads(body)["code"] == "unauthorized"
    assert headers["www-authenticate"].startswith('Basic realm="serialmuxd"')
    for path in ("/healthz", "/api/v1/openapi.json", "/static/style.css"):
        status, _, _ = await curl(f"{env.base}{path}")
        assert status == 200, path
    status, _, _ = await curl(f"{env.base}/console/vm1")  # the page itself asks the browser to sign in
    assert status == 401


async def test_basic_and_bearer_see_only_what_they_may(env: Env) -> None:
    status, _, body = await curl(basic("alice", PASSWORD), f"{env.base}/api/v1/ports")
    assert status == 200 and [p["name"] for p in json.loads(body)["ports"]] == ["vm1"]
    status, _, body = await curl(basic("bob", OTHER_PASSWORD), f"{env.base}/api/v1/ports")
    assert status == 200 and [p["name"] for p in json.loads(body)["ports"]] == ["web-ss-0"]
    status, _, body = await curl(bearer(env.token), f"{env.base}/api/v1/ports?group=web")
    assert status == 200 and [p["name"] for p in json.loads(body)["ports"]] == ["web-ss-0"]
    # A token typed as the password of its own name works too (for scripts that only speak Basic).
    status, _, _ = await curl(basic("dashboard", env.viewer_token), f"{env.base}/api/v1/ports/vm1")
    assert status == 200


async def test_a_console_one_may_not_view_is_404_and_a_verb_one_lacks_is_403(env: Env) -> None:
    status, _, body = await curl(basic("bob", OTHER_PASSWORD), f"{env.base}/api/v1/ports/vm1")
    assert status == 404 and json.loads(body)["code"] == "unknown_port"
    unknown = json.loads((await curl(basic("bob", OTHER_PASSWORD), f"{env.base}/api/v1/ports/nope"))[2])
    assert unknown["message"] == json.loads(body)["message"].replace("vm1", "nope")  # indistinguishable
    status, _, body = await curl(bearer(env.viewer_token), "-X", "POST", f"{env.base}/api/v1/ports/vm1/break")
    assert status == 403 and json.loads(body)["code"] == "forbidden"
    assert "dashboard may not send BREAK" in json.loads(body)["message"]
    status, _, body = await curl(
        basic("alice", PASSWORD), "-X", "POST", "-H", "Content-Type: application/json",
        "-d", '{"enabled": false}', f"{env.base}/api/v1/console",
    )  # fmt: skip
    assert status == 403  # alice operates vm*, she does not run the host
    status, _, _ = await curl(
        bearer(env.token), "-X", "POST", "-H", "Content-Type: application/json",
        "-d", '{"enabled": true}', f"{env.base}/api/v1/console",
    )  # fmt: skip
    assert status == 200


async def test_wrong_credentials_then_429_from_that_address_only(env: Env) -> None:
    statuses = []
    for _ in range(8):  # 3 free failures, then each one makes the next wait: 1 s, 2 s, 4 s ...
        status, headers, body = await curl(basic("alice", "wrong"), f"{env.base}/api/v1/ports")
        statuses.append(status)
        if status == 429:
            break
    assert statuses[:4] == [401] * 4 and statuses[-1] == 429, statuses
    assert int(headers["retry-after"]) >= 1 and json.loads(body)["code"] == "too_many_attempts"
    # Held back means not even checked: the right password from this address waits too.
    status, _, _ = await curl(basic("alice", PASSWORD), f"{env.base}/api/v1/ports")
    assert status == 429
    # The address itself is throttled, whatever it presents next; another address is not (127.0.0.2 is
    # loopback too, so this runs anywhere).
    status, _, _ = await curl("--interface", "127.0.0.2", bearer(env.token), f"{env.base}/api/v1/ports")
    assert status == 200


async def test_the_canary_password_is_never_logged(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    await curl(basic("alice", PASSWORD), f"{env.base}/api/v1/ports")
    await curl(basic("alice", PASSWORD + "x"), f"{env.base}/api/v1/ports")
    await curl(bearer(env.token), f"{env.base}/api/v1/ports")
    out = capsys.readouterr()
    text = out.out + out.err
    assert "login_ok" in text and "login_failed" in text
    assert PASSWORD not in text and env.token not in text
    audit = [json.loads(line) for line in env.audit.read_text().splitlines()]
    logins = [(e["event"], e.get("method"), e.get("user")) for e in audit if e["event"].startswith("login")]
    assert ("login_ok", "password", "alice") in logins and ("login_failed", "password", "alice") in logins
    assert ("login_ok", "token", "ci-bot") in logins
    assert all(
        e["time"].endswith("Z") and e["source"].startswith("127.0.0.1:")
        for e in audit
        if e["event"].startswith("login")
    )
    raw = env.audit.read_text()
    assert PASSWORD not in raw and env.token not in raw
