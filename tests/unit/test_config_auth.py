"""[auth], [tls], [audit], http.tls and the ports' telnet_tls and group: what is accepted, and the one-line
problem for each mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from serialmuxd.config import parse_config
from serialmuxd.core.access import Verb
from serialmuxd.core.grants import Grant
from serialmuxd.errors import ConfigError

SOURCE = "t.toml"
AUTH = '[auth]\nusers_file = "/etc/serialmuxd/users.toml"\n'
TLS = '[tls]\ncert_file = "/etc/s/cert.pem"\nkey_file = "/etc/s/key.pem"\n'


def port(extra: str = "", name: str = "vm1") -> str:
    return f'[[ports]]\nname = "{name}"\ndevice = "unix:/run/{name}.sock"\n{extra}\n'


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, SOURCE)
    return str(caught.value).splitlines()


def test_auth_tls_and_audit_are_read() -> None:
    config = parse_config(
        AUTH
        + 'anonymous = "viewer"\nlogin_grace_s = 10\n[auth.roles]\nauditor = ["view", "break"]\n'
        + TLS
        + 'client_ca_file = "/etc/s/ca.pem"\n[audit]\nfile = "/var/log/s/audit.jsonl"\n'
        + port('group = "web"\ntelnet = "127.0.0.1:0"\ntelnet_tls = true'),
        SOURCE,
    )
    assert config.auth is not None and config.auth.users_file == Path("/etc/serialmuxd/users.toml")
    assert config.auth.anonymous == "viewer" and config.auth.login_grace_s == 10.0
    assert config.auth.roles == (("auditor", frozenset({Verb.VIEW, Verb.BREAK})),)
    assert config.tls is not None and config.tls.client_ca_file == Path("/etc/s/ca.pem")
    assert config.audit.file == Path("/var/log/s/audit.jsonl")
    (vm1,) = config.ports
    assert vm1.group == "web" and vm1.telnet_tls


def test_without_auth_the_daemon_is_as_before() -> None:
    config = parse_config(port(), SOURCE)
    assert config.auth is None and config.tls is None and config.audit.file is None


def test_a_remote_listener_needs_auth_and_tls_and_gets_them() -> None:
    remote = 'telnet = "0.0.0.0:7001"'
    assert any("has no [auth] and TLS" in line for line in problems(port(remote)))
    assert any("has no TLS" in line for line in problems(AUTH + port(remote)))
    config = parse_config(AUTH + TLS + port(remote + "\ntelnet_tls = true"), SOURCE)
    assert config.ports[0].telnet_tls
    config = parse_config(AUTH + TLS + '[http]\nlisten = "0.0.0.0:8443"\ntls = true\n' + port(), SOURCE)
    assert config.http.tls
    # The explicit override still works (the daemon logs it loudly).
    parse_config("[daemon]\nallow_remote_unauthenticated = true\n" + port(remote), SOURCE)


def test_tls_without_a_tls_table() -> None:
    assert problems('[http]\nlisten = "127.0.0.1:0"\ntls = true\n' + port()) == [
        f"{SOURCE}: http.tls: needs a [tls] table with cert_file and key_file"
    ]
    assert problems(port('telnet = "127.0.0.1:0"\ntelnet_tls = true')) == [
        f"{SOURCE}: ports[0].telnet_tls: needs a [tls] table with cert_file and key_file"
    ]
    assert problems("[tls]\ncert_file = 'relative.pem'\n" + port()) == [
        f"{SOURCE}: tls.cert_file: must be an absolute path, got 'relative.pem'",
        f"{SOURCE}: tls.key_file: required key is missing",
    ]


def test_anonymous_only_on_loopback_and_only_a_known_role() -> None:
    assert problems(AUTH + 'anonymous = "viewr"\n' + port()) == [
        f"{SOURCE}: auth.anonymous: unknown role 'viewr'; did you mean 'viewer'? "
        "(roles: admin, operator, viewer)"
    ]
    lines = problems(
        AUTH + 'anonymous = "viewer"\n' + TLS + port('telnet = "0.0.0.0:7001"\ntelnet_tls = true')
    )
    assert lines == [
        f"{SOURCE}: auth.anonymous: anonymous access is allowed only when every listener is on loopback; "
        "ports[0].telnet is not"
    ]


def test_auth_needs_a_way_to_sign_in() -> None:
    assert problems("[auth]\n" + port()) == [
        f"{SOURCE}: auth: names no way to sign in: set users_file (local users and tokens) or [auth.oidc], "
        "or both"
    ]


def test_custom_roles() -> None:
    assert problems(AUTH + '[auth.roles]\nviewer = ["view"]\nx = []\ny = ["view", "fly"]\n' + port()) == [
        f"{SOURCE}: auth.roles.viewer: 'viewer' is a built-in role; give a custom role another name",
        f"{SOURCE}: auth.roles.x: must not be empty: a role needs at least one of view, write, takeover, "
        "break, nmi, reset, admin",
        f"{SOURCE}: auth.roles.y[1]: must be one of 'view', 'write', 'takeover', 'break', 'nmi', 'reset', "
        "'admin', got 'fly'",
    ]


def test_oidc_settings_and_group_grants() -> None:
    config = parse_config(
        '[auth.oidc]\nissuer = "https://idp.example/realm"\naudience = "smx"\n'
        '[auth.oidc.group_grants]\nops = [{ role = "operator", ports = ["vm*", "group:web"] }]\n'
        + port('group = "web"'),
        SOURCE,
    )
    assert config.auth is not None and config.auth.oidc is not None
    assert config.auth.oidc.group_grants == (("ops", (Grant("operator", ("vm*", "group:web")),)),)
    lines = problems(
        '[auth.oidc]\nissuer = "http://idp.example"\n'
        "[auth.oidc.group_grants]\n"
        'a = [{ role = "oprator", ports = ["vm1"] }]\n'
        'b = [{ role = "viewer", ports = [] }, { role = "viewer", port = ["x"] }]\n'
        'c = [{ role = "viewer", ports = ["group:wbe", "a b"] }]\n' + port('group = "web"')
    )
    assert lines == [
        f"{SOURCE}: auth.oidc.issuer: must be an https:// URL (http:// only for a loopback issuer), "
        "got 'http://idp.example'",
        f"{SOURCE}: auth.oidc.audience: required key is missing",
        f"{SOURCE}: auth.oidc.group_grants.a[0].role: unknown role 'oprator'; did you mean 'operator'? "
        "(roles: admin, operator, viewer)",
        f"{SOURCE}: auth.oidc.group_grants.b[0].ports: must not be empty: name the consoles this grant "
        "covers, or '*'",
        f"{SOURCE}: auth.oidc.group_grants.b[1].port: unknown key; did you mean 'ports'?",
        f"{SOURCE}: auth.oidc.group_grants.b[1].ports: required key is missing",
        f"{SOURCE}: auth.oidc.group_grants.c[0].ports[1]: must be a console name, a pattern such as 'vm*' "
        "(letters, digits, . _ - and * ? [ ] !), 'group:NAME' or '*', got 'a b'",
    ]
    parse_config('[auth.oidc]\nissuer = "http://127.0.0.1:9400"\naudience = "smx"\n' + port(), SOURCE)


def test_a_group_grant_for_a_group_no_console_has() -> None:
    lines = problems(
        '[auth.oidc]\nissuer = "https://idp.example"\naudience = "smx"\n'
        '[auth.oidc.group_grants]\nops = [{ role = "viewer", ports = ["group:wbe"] }]\n'
        + port('group = "web"')
    )
    assert lines == [
        f"{SOURCE}: auth.oidc.group_grants.ops[0].ports[0]: no console has group = 'wbe'; did you mean 'web'?"
    ]


def test_session_lifetimes_are_ordered() -> None:
    assert problems(AUTH + "session_idle_s = 7200\nsession_max_s = 3600\n" + port()) == [
        f"{SOURCE}: auth.session_idle_s: session_idle_s = 7200.0 must not exceed session_max_s = 3600.0 "
        "(set in auth.session_max_s)"
    ]


def test_group_is_per_port_and_named_like_a_port() -> None:
    assert problems('[defaults]\ngroup = "web"\n' + port()) == [
        f"{SOURCE}: defaults.group: belongs to one port; set it in each [[ports]] table, not in [defaults]"
    ]
    assert any(
        line.startswith(f"{SOURCE}: ports[0].group: must be 1-64") for line in problems(port('group = "a b"'))
    )


def test_oidc_redirect_uri() -> None:
    base = '[auth.oidc]\nissuer = "https://idp.example"\naudience = "smx"\n'
    config = parse_config(base + 'redirect_uri = "https://c.example/signin/oidc/callback"\n' + port(), SOURCE)
    assert config.auth is not None and config.auth.oidc is not None
    assert config.auth.oidc.redirect_uri == "https://c.example/signin/oidc/callback"
    assert problems(base + 'redirect_uri = "https://c.example/elsewhere"\n' + port()) == [
        f"{SOURCE}: auth.oidc.redirect_uri: must be this daemon's /signin/oidc/callback as the browser "
        "reaches it, got 'https://c.example/elsewhere'"
    ]
