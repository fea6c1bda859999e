"""Roles and grants (core/grants.py) decide per verb and console; deny by default."""

from __future__ import annotations

import pytest

from serialmuxd.core.access import AccessPolicy, AttachMode, Identity, Verb
from serialmuxd.core.grants import BUILTIN_ROLES, Grant, RoleGrants

ALICE = Identity("http", "10.0.0.1:1", user="alice")
BOB = Identity("http", "10.0.0.2:1", user="bob", groups=frozenset({"ops"}))
NOBODY = Identity("telnet", "127.0.0.1:9")


def grants(**kwargs: object) -> RoleGrants:
    defaults: dict[str, object] = {
        "roles": {"auditor": frozenset({Verb.VIEW, Verb.BREAK})},
        "user_grants": {
            "alice": [Grant("viewer", ("vm*",)), Grant("operator", ("vm2", "group:web"))],
            "carol": [Grant("admin", ("*",))],
            "dave": [Grant("admin", ("vm*",))],
        },
        "group_grants": {"ops": [Grant("auditor", ("db?",))]},
        "port_groups": {"web-ss-0": "web", "web-ss-1": "web", "vm2": "other"},
    }
    defaults.update(kwargs)
    return RoleGrants(**defaults)  # type: ignore[arg-type]


def test_builtin_roles_nest() -> None:
    assert BUILTIN_ROLES["viewer"] < BUILTIN_ROLES["operator"] < BUILTIN_ROLES["admin"]
    assert BUILTIN_ROLES["operator"] == {
        Verb.VIEW,
        Verb.WRITE,
        Verb.TAKE_OVER,
        Verb.BREAK,
        Verb.NMI,
        Verb.RESET,
    }


@pytest.mark.parametrize(
    ("identity", "port", "verbs"),
    [
        (ALICE, "vm1", {Verb.VIEW}),  # pattern
        (ALICE, "vm2", BUILTIN_ROLES["operator"]),  # union of both grants
        (ALICE, "web-ss-1", BUILTIN_ROLES["operator"]),  # group:web
        (ALICE, "db1", set()),  # nothing covers it: deny by default
        (ALICE, "VM1", set()),  # patterns are case-sensitive, like console names
        (BOB, "db1", {Verb.VIEW, Verb.BREAK}),  # through an identity-provider group
        (BOB, "db10", set()),
        (NOBODY, "vm1", set()),  # no credentials and no anonymous role
        (Identity("http", "x", user="stranger"), "vm1", set()),
    ],
)
def test_verbs(identity: Identity, port: str, verbs: set[Verb]) -> None:
    assert grants().verbs(identity, port) == frozenset(verbs)


def test_host_scope_needs_a_star_grant() -> None:
    rg = grants()
    carol, dave = Identity("http", "x", user="carol"), Identity("http", "x", user="dave")
    assert rg.allows(carol, Verb.ADMIN, "*") and rg.allows(carol, Verb.ADMIN, "anything")
    assert rg.allows(dave, Verb.ADMIN, "vm1") and not rg.allows(dave, Verb.ADMIN, "*")


def test_anonymous_role() -> None:
    rg = grants(anonymous="viewer")
    assert rg.verbs(NOBODY, "vm1") == {Verb.VIEW} and rg.verbs(NOBODY, "db1") == {Verb.VIEW}


def test_unknown_roles_are_programming_errors() -> None:
    with pytest.raises(ValueError):
        grants(user_grants={"x": [Grant("root", ("*",))]})
    with pytest.raises(ValueError):
        grants(anonymous="root")


def test_the_policy_combines_grants_and_attach_mode() -> None:
    policy = AccessPolicy(grants())
    assert policy.decide(ALICE, Verb.WRITE, "vm2")
    refused = policy.decide(ALICE, Verb.WRITE, "vm2", AttachMode.READ_ONLY)
    assert not refused and "read-only" in refused.reason
    refused = policy.decide(ALICE, Verb.WRITE, "vm1")
    assert not refused and refused.reason == "alice may not type into this console on vm1"
