"""``GET /metrics`` through the real daemon with PTY guests: Debian's ``promtool check metrics`` accepts the
text, a real Prometheus server started here scrapes the daemon every second (with a bearer token under
``[auth]``) and a PromQL query returns exactly the bytes the guest wrote; without credentials the daemon
answers 401, with a token that may not view ``*`` 403.  Everything waits on an observable signal (the hub's
counter, Prometheus' HTTP API) with a deadline; Prometheus is stopped by its pid in a ``finally``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from serialmuxd.auth.tokens import new_token, token_digest
from serialmuxd.config import parse_config
from serialmuxd.control import ConsoleControl
from serialmuxd.core.access import Identity
from serialmuxd.frontends.http import build_app
from serialmuxd.hub import RefusalKind, Refused
from serialmuxd.obs.metrics import metrics_registry

from .support import GuestPty, eventually, running_daemon

pytestmark = pytest.mark.asyncio
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="Debian prometheus not installed"
)
needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="Debian prometheus not installed (./dev setup)"
)
DEADLINE_S = 60.0


def _config(guest: GuestPty, tmp_path: Path, auth: str = "") -> str:
    return f"""
[daemon]
log_level = "warning"
state_dir = "{tmp_path / "state"}"
{auth}
[http]
listen = "127.0.0.1:0"
[[ports]]
name = "vm1"
group = "web"
device = "tty:{guest.path}"
[[ports]]
name = "vm2"
device = "exec:/bin/cat"
"""


async def _scrape(base: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as http, http.get(base + "/metrics", headers=headers or {}) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


async def _promtool_check(text: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "promtool",
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(text.encode()), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def _sample(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        metric, _, value = line.rpartition(" ")
        if metric.startswith(name + "{") and all(f'{k}="{v}"' in metric for k, v in labels.items()):
            return float(value)
    raise AssertionError(f"no sample {name}{{{wanted}}} in the scrape")


@needs_promtool
async def test_metrics_pass_promtool_and_count_the_guest_bytes(tmp_path: Path) -> None:
    guest = GuestPty()
    async with running_daemon(_config(guest, tmp_path), online=("vm1", "vm2"), cleanup=guest.close) as daemon:
        assert daemon.http_address is not None
        base = "http://{}:{}".format(*daemon.http_address)
        payload = b"boot: " + bytes(range(256)) * 20 + b"\r\nKernel panic - not syncing: test\r\nlogin: "
        await guest.send(payload)
        hub = daemon.hubs["vm1"]
        await eventually(lambda: hub.output.bytes_from_device == len(payload), "the guest's bytes")
        status, content_type, text = await _scrape(base)  # no [auth]: open (loopback-only daemon)
        assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
        rc, out = await _promtool_check(text)
        assert rc == 0, out
        assert _sample(text, "serialmuxd_port_guest_output_bytes_total", port="vm1", group="web") == len(
            payload
        )
        assert _sample(text, "serialmuxd_port_state", port="vm1", state="online") == 1
        assert _sample(text, "serialmuxd_port_scrollback_bytes", port="vm1") == len(payload)
        assert 0 <= _sample(text, "serialmuxd_port_guest_output_age_seconds", port="vm1") < DEADLINE_S
        assert "process_resident_memory_bytes" in text and "python_info" in text
        assert _sample(text, "serialmuxd_port_guest_health_events_total", port="vm1", kind="panic") == 1
        assert _sample(text, "serialmuxd_port_guest_health_events_total", port="vm1", kind="oops") == 0
        assert "serialmuxd_logins_total" not in text  # no [auth]: no logins to count
        # Content negotiation: an OpenMetrics scraper gets OpenMetrics.
        status, content_type, text = await _scrape(
            base, {"Accept": "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5"}
        )
        assert status == 200 and content_type.startswith("application/openmetrics-text")
        assert text.endswith("# EOF\n")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _readme_scrape_config(target: str, token_file: Path) -> str:
    """The README's prometheus.yml, as written, for this daemon (plain HTTP here) and every second."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("```yaml\n# prometheus.yml\n", 1)[1].split("```", 1)[0]
    lines = [line for line in block.splitlines() if "scheme: https" not in line]
    text = "\n".join(lines).replace("/etc/prometheus/serialmuxd.token", str(token_file))
    text = text.replace('"console-host-1:8080"', f'"{target}"')
    assert str(token_file) in text and target in text, text
    return "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n" + text + "\n"


@contextlib.asynccontextmanager
async def _prometheus(tmp_path: Path, target: str, token_file: Path) -> AsyncIterator[str]:
    """A real Prometheus scraping ``target`` every second with a bearer token (the README's scrape
    config); yields its base URL."""
    port = _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(_readme_scrape_config(target, token_file))
    log = (tmp_path / "prometheus.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        "prometheus",
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        stdout=log,
        stderr=log,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, 15)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            os.kill(proc.pid, 9)
            await proc.wait()
        log.close()


async def _poll(http: aiohttp.ClientSession, url: str, check: Any, what: str, log: Path) -> Any:
    """GET ``url`` until ``check(json)`` returns something truthy; fails at the deadline with Prometheus'
    log."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    last: object = None
    while loop.time() < deadline:
        try:
            async with http.get(url) as resp:
                last = await resp.json() if resp.status == 200 else resp.status
        except (aiohttp.ClientError, ValueError) as exc:
            last = exc  # not listening yet
        found = check(last) if isinstance(last, dict) else None
        if found:
            return found
        await asyncio.sleep(0.1)  # polling an external server: its API has no push
    raise AssertionError(f"timeout waiting for {what}; last answer {last!r}; log: {_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]


def _query(promql: str) -> str:
    return "/api/v1/query?query=" + quote(promql)


def _target_up(doc: dict[str, Any]) -> bool:
    targets = doc.get("data", {}).get("activeTargets", [])
    return any(t.get("health") == "up" for t in targets)


def _value_is(expected: int) -> Any:
    def check(doc: dict[str, Any]) -> bool:
        results = doc.get("data", {}).get("result", [])
        return len(results) == 1 and float(results[0]["value"][1]) == expected

    return check


@needs_prometheus
async def test_a_real_prometheus_scrapes_with_a_bearer_token(tmp_path: Path) -> None:
    scraper, dashboard = new_token(), new_token()
    users = tmp_path / "users.toml"
    users.write_text(
        f"""
[[tokens]]
name = "prometheus"
sha256 = "{token_digest(scraper)}"
grants = [{{ role = "viewer", ports = ["*"] }}]

[[tokens]]
name = "dashboard"
sha256 = "{token_digest(dashboard)}"
grants = [{{ role = "viewer", ports = ["vm*"] }}]
"""
    )
    users.chmod(0o600)
    token_file = tmp_path / "token"
    token_file.write_text(scraper + "\n")
    token_file.chmod(0o600)
    guest = GuestPty()
    auth = f'[auth]\nusers_file = "{users}"\n'
    async with running_daemon(
        _config(guest, tmp_path, auth), online=("vm1", "vm2"), cleanup=guest.close
    ) as daemon:
        assert daemon.http_address is not None
        target = "{}:{}".format(*daemon.http_address)
        base = "http://" + target
        # The rule: credentials, and the policy's view on "*" (every console and the host).
        status, _, _ = await _scrape(base)
        assert status == 401
        status, _, _ = await _scrape(base, {"Authorization": "Bearer smx_not-a-real-token"})
        assert status == 401
        status, _, text = await _scrape(base, {"Authorization": f"Bearer {dashboard}"})
        assert status == 403 and "dashboard may not view" in text  # vm* covers the consoles, not the host
        first = b"first boot line\r\n" * 37
        await guest.send(first)
        hub = daemon.hubs["vm1"]
        await eventually(lambda: hub.output.bytes_from_device == len(first), "the guest's bytes")
        log = tmp_path / "prometheus.log"
        query = _query('serialmuxd_port_guest_output_bytes_total{port="vm1"}')
        async with _prometheus(tmp_path, target, token_file) as prom, aiohttp.ClientSession() as http:
            await _poll(http, prom + "/api/v1/targets", _target_up, "the target to be up", log)
            await _poll(http, prom + query, _value_is(len(first)), f"{len(first)} bytes in PromQL", log)
            second = b"# echo c > /proc/sysrq-trigger\r\n" * 11
            await guest.send(second)
            total = len(first) + len(second)
            await _poll(http, prom + query, _value_is(total), f"{total} bytes in PromQL", log)
            # The group label and the login counter come through the same scrape.
            grouped = _query('serialmuxd_port_guest_output_bytes_total{group="web"}')
            await _poll(http, prom + grouped, _value_is(total), "the group label", log)
            logins = _query('serialmuxd_logins_total{method="token",result="failed"}')
            await _poll(http, prom + logins, _value_is(1), "the failed token login", log)
        status, _, text = await _scrape(base, {"Authorization": f"Bearer {scraper}"})
        assert status == 200
        rc, out = await _promtool_check(text) if shutil.which("promtool") else (0, "")
        assert rc == 0, out


class _Control:
    """Just what the route uses: no [auth], and ``metrics`` deciding like the daemon (here: a flag)."""

    authentication = None

    def __init__(self) -> None:
        self.allowed = True
        self.asked: list[Identity] = []
        self.registry = metrics_registry(lambda: (), process=False)

    def metrics(self, identity: Identity) -> Any:
        self.asked.append(identity)
        if not self.allowed:
            raise Refused(RefusalKind.FORBIDDEN, "nobody may view on *")
        return self.registry


async def test_the_route_asks_the_control_and_negotiates_the_format() -> None:
    control = _Control()
    toml = '[http]\nlisten = "127.0.0.1:0"\n[[ports]]\nname = "vm1"\ndevice = "exec:/bin/cat"\n'
    settings = parse_config(toml, "<test>").http
    app = build_app(cast(ConsoleControl, control), settings)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/metrics")
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert resp.headers["Cache-Control"] == "no-store"
        resp = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
        assert (await resp.text()).endswith("# EOF\n")
        assert [who.transport for who in control.asked] == ["http", "http"]
        control.allowed = False
        resp = await client.get("/metrics")
        assert resp.status == 403 and (await resp.json())["code"] == "forbidden"
    # A control surface without metrics gets no route at all.
    plain = build_app(cast(ConsoleControl, type("NoMetrics", (), {"authentication": None})()), settings)
    assert all(str(r.resource.canonical) != "/metrics" for r in plain.router.routes() if r.resource)
