"""OidcSettings refuses what would make token checks unsafe or meaningless, when it is built."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from jwt.algorithms import get_default_algorithms

from serialmuxd.auth.oidc import (
    DEFAULT_ALGORITHMS,
    SUPPORTED_ALGORITHMS,
    OidcSettings,
    OidcSettingsError,
)

ISSUER = "https://login.example.com/realms/ops"


def settings(**overrides: Any) -> OidcSettings:
    values: dict[str, Any] = {"issuer": ISSUER, "audience": "serialmuxd", **overrides}
    return OidcSettings(**values)


def refusal(**overrides: Any) -> OidcSettingsError:
    with pytest.raises(OidcSettingsError) as refused:
        settings(**overrides)
    return refused.value


def test_defaults() -> None:
    built = settings()
    assert built.algorithms == ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA")
    assert built.algorithms == DEFAULT_ALGORITHMS
    assert (built.user_claim, built.groups_claim) == ("preferred_username", "groups")
    assert (built.leeway_s, built.jwks_cache_s) == (30, 300)
    assert 0 < built.fetch_timeout_s <= 10


def test_settings_are_frozen_and_hashable() -> None:
    built = settings(algorithms=["ES256", "RS256", "ES256"])
    assert built.algorithms == ("ES256", "RS256")  # a list becomes a tuple, duplicates dropped, order kept
    assert hash(built) == hash(settings(algorithms=("ES256", "RS256")))
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.issuer = "https://evil.example"  # type: ignore[misc]


def test_every_supported_algorithm_is_asymmetric_and_known_to_pyjwt() -> None:
    assert set(DEFAULT_ALGORITHMS) <= SUPPORTED_ALGORITHMS
    assert set(get_default_algorithms()) >= SUPPORTED_ALGORITHMS
    assert not {alg for alg in SUPPORTED_ALGORITHMS if alg.startswith("HS") or alg == "none"}
    assert settings(algorithms=sorted(SUPPORTED_ALGORITHMS)).algorithms == tuple(sorted(SUPPORTED_ALGORITHMS))


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_refused(alg: str) -> None:
    error = refusal(algorithms=("RS256", alg))
    assert error.field == "algorithms"
    assert "unsigned" in error.reason


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512", "hs256"])
def test_every_hmac_algorithm_is_refused(alg: str) -> None:
    error = refusal(algorithms=("RS256", alg))
    assert error.field == "algorithms"
    assert "HMAC" in error.reason and "public key" in error.reason


@pytest.mark.parametrize("algorithms", [(), ["RS1024"], ["rs256"], ["RS256", 256], "RS256", None], ids=repr)
def test_algorithms_must_be_a_non_empty_list_of_known_names(algorithms: object) -> None:
    assert refusal(algorithms=algorithms).field == "algorithms"


@pytest.mark.parametrize(
    "issuer",
    [
        "https://login.example.com",
        "https://login.example.com/",
        "https://login.example.com:8443/realms/ops",
        "http://127.0.0.1:9400",
        "http://127.8.9.10",
        "http://localhost:9400",
        "http://[::1]:9400/tenant",
    ],
)
def test_https_issuers_and_loopback_http_issuers_are_accepted(issuer: str) -> None:
    assert settings(issuer=issuer).issuer == issuer


@pytest.mark.parametrize(
    "issuer",
    [
        "http://login.example.com",  # plain http over a network: the key set could be swapped on the way
        "http://10.0.0.1:9400",
        "http://localhost.example.com",
        "http://[::2]:9400",
        "ftp://login.example.com",
        "login.example.com",
        "https://",
        "",
        "https://login.example.com?tenant=ops",
        "https://login.example.com#top",
        "https://user:secret@login.example.com",
        "https://login.example.com:99999",
        "https://login.example.com/realms/o ps",
        "https://login.example.com/\n",
        "https://lögin.example.com",
        None,
    ],
    ids=repr,
)
def test_other_issuers_are_refused(issuer: object) -> None:
    assert refusal(issuer=issuer).field == "issuer"


def test_plain_http_refusal_says_why() -> None:
    assert "https" in refusal(issuer="http://login.example.com").reason


def test_the_discovery_url_drops_the_trailing_slash_of_the_issuer() -> None:
    expected = ISSUER + "/.well-known/openid-configuration"
    assert settings().discovery_url == expected
    assert settings(issuer=ISSUER + "/").discovery_url == expected


@pytest.mark.parametrize("field", ["audience", "user_claim", "groups_claim"])
@pytest.mark.parametrize("value", ["", " padded", "tab\t", None, 7], ids=repr)
def test_names_must_be_plain_non_empty_strings(field: str, value: object) -> None:
    assert refusal(**{field: value}).field == field


def test_the_user_and_groups_claims_differ() -> None:
    assert refusal(user_claim="groups").field == "groups_claim"


@pytest.mark.parametrize(
    ("field", "accepted", "refused"),
    [
        ("leeway_s", [0, 0.5, 30, 300], [-1, 300.5, 3600]),
        ("jwks_cache_s", [30, 300, 86400], [0, 29.9, 86401]),
        ("fetch_timeout_s", [0.1, 5, 60], [0, -1, 61]),
    ],
)
def test_durations_stay_in_their_range(field: str, accepted: list[float], refused: list[float]) -> None:
    for value in accepted:
        assert getattr(settings(**{field: value}), field) == value
    for value in refused:
        error = refusal(**{field: value})
        assert error.field == field
        assert "seconds" in error.reason


@pytest.mark.parametrize("field", ["leeway_s", "jwks_cache_s", "fetch_timeout_s"])
@pytest.mark.parametrize("value", [True, "30", float("nan"), float("inf"), None], ids=repr)
def test_durations_must_be_finite_numbers(field: str, value: object) -> None:
    assert refusal(**{field: value}).field == field
