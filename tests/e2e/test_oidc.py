"""OIDC bearer tokens against a real OpenID provider: oidc-provider-mock, started here in a subprocess on
127.0.0.1 (a subprocess keeps its Authlib deprecation warnings out of this ``filterwarnings = error`` run).

Tokens are obtained the way a web application obtains them: the provider's authorization endpoint (its
consent form, then the user's answer with a subject), the redirect carrying a code, and the token endpoint
exchanging that code for an ID token signed with the provider's RSA key.  The provider copies a user's
claims into the ID token after its own, so claims set on the user (``exp``, ``nbf`` …) give real,
provider-signed tokens that are expired or not yet valid.  Forgeries (``alg: none``, HS256 keyed with the
provider's public key, another key pair, unknown ``kid``) are built here from a real token's claims.

Algorithms other than RS256, several keys, keys unfit for signatures and provider answers we cannot use
come from a small aiohttp server on loopback that serves a discovery document and key set we write.

Every fetch the verifier makes is counted by an aiohttp trace on its session, and the cache is aged with
a fake monotonic clock, so nothing sleeps to let time pass.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import aiohttp
import jwt
import pytest
import pytest_asyncio
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from serialmuxd.auth.oidc import (
    MAX_TOKEN_CHARS,
    REFETCH_INTERVAL_S,
    InvalidToken,
    JwtVerifier,
    OidcSettings,
    RefusalReason,
    VerifiedToken,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

AUDIENCE = "serialmuxd"  # the client id the tokens are issued to
REDIRECT_URI = "http://127.0.0.1:9/callback"  # never contacted: the redirect is read, not followed
DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/jwks"
MOVED_DISCOVERY_PATH = "/moved/openid-configuration"
START_TIMEOUT_S = 30.0


# -- the provider -----------------------------------------------------------------------------------------
@dataclass
class Provider:
    """A running oidc-provider-mock; every line it writes to stderr is kept (shown when a start fails)."""

    process: subprocess.Popen[str]
    port: int
    lines: list[str]

    @property
    def issuer(self) -> str:
        # The provider names itself after the Host header it is reached with: this exact spelling.
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self.process)


def stop_process(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def running_provider() -> Iterator[Provider]:
    process = subprocess.Popen(
        [sys.executable, "-m", "oidc_provider_mock", "--host", "127.0.0.1", "--port", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={"NO_COLOR": "1", "PATH": "/usr/bin:/bin"},
    )
    assert process.stderr is not None
    lines: list[str] = []
    ports: list[int] = []
    listening = threading.Event()

    def drain(stream: Any) -> None:
        # Read to EOF so the provider never blocks on a full pipe (it logs every request).
        for line in stream:
            lines.append(line)
            if not ports and (match := re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line)):
                ports.append(int(match.group(1)))
                listening.set()
        listening.set()  # EOF: it exited before listening

    reader = threading.Thread(target=drain, args=(process.stderr,), daemon=True)
    reader.start()
    try:
        if not listening.wait(START_TIMEOUT_S) or not ports:
            raise AssertionError("oidc-provider-mock did not start:\n" + "".join(lines[-20:]))
        yield Provider(process, ports[0], lines)
    finally:
        stop_process(process)
        reader.join(10)
        process.stderr.close()


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    with running_provider() as started:
        yield started


async def sign_in(
    http: aiohttp.ClientSession,
    provider: Provider,
    claims: dict[str, Any],
    *,
    client_id: str = AUDIENCE,
    scope: str = "openid profile",
    host: str | None = None,
) -> str:
    """The ID token the provider issues to ``client_id`` for a new user with ``claims``."""
    subject = f"user-{secrets.token_hex(6)}"
    async with http.put(f"{provider.issuer}/users/{quote(subject, safe='')}", json=claims) as response:
        assert response.status == 204, await response.text()
    state = secrets.token_urlsafe(12)
    query = {
        "client_id": client_id,
        "redirect_uri": REDIRECT_URI,
        "response_type": "code",
        "scope": scope,
        "state": state,
    }
    authorize = f"{provider.issuer}/oauth2/authorize"
    async with http.get(authorize, params=query) as response:  # the consent form a browser would show
        assert response.status == 200
        assert 'name="sub"' in await response.text()
    async with http.post(authorize, params=query, data={"sub": subject}, allow_redirects=False) as response:
        assert response.status == 302, await response.text()
        location = response.headers["Location"]
    assert location.startswith(REDIRECT_URI + "?")
    answer = parse_qs(urlsplit(location).query)
    assert answer["state"] == [state]
    exchange = {
        "grant_type": "authorization_code",
        "code": answer["code"][0],
        "redirect_uri": REDIRECT_URI,
        "client_id": client_id,
        "client_secret": "any secret: the provider accepts unregistered clients",
    }
    headers = {"Host": host} if host else {}
    async with http.post(f"{provider.issuer}/oauth2/token", data=exchange, headers=headers) as response:
        assert response.status == 200, await response.text()
        body = await response.json()
    token = body["id_token"]
    assert isinstance(token, str)
    return token


async def provider_jwk(http: aiohttp.ClientSession, provider: Provider) -> dict[str, Any]:
    async with http.get(provider.issuer + JWKS_PATH) as response:
        keys = (await response.json())["keys"]
    assert len(keys) == 1 and keys[0]["kty"] == "RSA"
    key: dict[str, Any] = keys[0]
    return key


# -- the verifier and what it fetches ---------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Fetches:
    """Every request the verifier's sessions started, by URL path."""

    paths: list[str] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)

    def session(self) -> aiohttp.ClientSession:
        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(self._request_started)
        return aiohttp.ClientSession(trace_configs=[trace])

    async def _request_started(
        self,
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceRequestStartParams,
    ) -> None:
        self.paths.append(params.url.path)
        self.started.set()

    def count(self, path: str) -> int:
        return self.paths.count(path)


@dataclass
class Harness:
    verifier: JwtVerifier
    fetches: Fetches
    clock: FakeClock
    http: aiohttp.ClientSession  # the test's own client, for the provider's endpoints

    async def refusal(self, token: str) -> RefusalReason:
        with pytest.raises(InvalidToken) as refused:
            await self.verifier.verify(token)
        # The message is the fixed reason alone, and no PyJWT exception (whose text may quote the token's
        # parts) rides along as its cause or context.
        assert str(refused.value) == refused.value.reason.value
        assert refused.value.__cause__ is None
        assert refused.value.__context__ is None or refused.value.__suppress_context__
        return refused.value.reason


@contextlib.asynccontextmanager
async def harness_for(settings: OidcSettings) -> AsyncIterator[Harness]:
    fetches, clock = Fetches(), FakeClock()
    async with (
        aiohttp.ClientSession() as http,
        JwtVerifier(settings, fetches.session, clock=clock) as verifier,
    ):
        yield Harness(verifier, fetches, clock, http)


@pytest_asyncio.fixture
async def harness(provider: Provider) -> AsyncIterator[Harness]:
    async with harness_for(OidcSettings(issuer=provider.issuer, audience=AUDIENCE)) as started:
        yield started


# -- forging ----------------------------------------------------------------------------------------------
def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_of(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def forge(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64url(sign(signing_input.encode()))}"


def hmac_signer(secret: bytes, digest: Callable[[], Any]) -> Callable[[bytes], bytes]:
    return lambda data: hmac.new(secret, data, digest).digest()


def another_key_pair() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def signed_elsewhere(claims: dict[str, Any], key: rsa.RSAPrivateKey, kid: str | None) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims, key, algorithm="RS256", headers=headers)


GOOD_CLAIMS = {"preferred_username": "alice", "groups": ["console-ops", "dev"]}


# -- accepted ---------------------------------------------------------------------------------------------
async def test_a_token_from_the_provider_verifies_with_its_user_groups_and_subject(
    provider: Provider, harness: Harness
) -> None:
    token = await sign_in(harness.http, provider, GOOD_CLAIMS)
    before = time.time()
    verified = await harness.verifier.verify(token)
    claims = claims_of(token)
    assert verified == VerifiedToken(
        user="alice",
        groups=frozenset({"console-ops", "dev"}),
        subject=claims["sub"],
        expires_at=float(claims["exp"]),
    )
    assert claims["sub"].startswith("user-")
    assert before + 3000 < verified.expires_at < before + 3700  # the provider's tokens live an hour
    # Discovery first, then the key set it names: one of each.
    assert harness.fetches.paths == [DISCOVERY_PATH, JWKS_PATH]


async def test_a_warm_cache_verifies_without_fetching_until_jwks_cache_s_has_passed(
    provider: Provider, harness: Harness
) -> None:
    token = await sign_in(harness.http, provider, GOOD_CLAIMS)
    await harness.verifier.verify(token)
    for _ in range(100):
        assert (await harness.verifier.verify(token)).user == "alice"
    harness.clock.advance(harness.verifier.settings.jwks_cache_s - 1)
    await harness.verifier.verify(token)
    assert not harness.verifier.refreshing
    assert harness.fetches.count(JWKS_PATH) == 1
    harness.clock.advance(2)  # now older than jwks_cache_s: verified with these keys, refreshed meanwhile
    await harness.verifier.verify(token)
    assert harness.verifier.refreshing
    assert await harness.verifier.refresh()  # joins the refresh that verify started, starts none
    assert not harness.verifier.refreshing
    assert harness.fetches.paths == [DISCOVERY_PATH, JWKS_PATH] * 2


async def test_refresh_fetches_the_keys_ahead_of_the_first_token(
    provider: Provider, harness: Harness
) -> None:
    assert await harness.verifier.refresh()
    assert await harness.verifier.refresh()  # within the interval: no second fetch
    assert harness.fetches.paths == [DISCOVERY_PATH, JWKS_PATH]
    token = await sign_in(harness.http, provider, GOOD_CLAIMS)
    assert (await harness.verifier.verify(token)).user == "alice"
    assert harness.fetches.paths == [DISCOVERY_PATH, JWKS_PATH]


async def test_a_cold_start_under_concurrent_tokens_fetches_once(
    provider: Provider, harness: Harness
) -> None:
    token = await sign_in(harness.http, provider, GOOD_CLAIMS)
    results = await asyncio.gather(*(harness.verifier.verify(token) for _ in range(50)))
    assert {result.user for result in results} == {"alice"}
    assert harness.fetches.paths == [DISCOVERY_PATH, JWKS_PATH]


async def test_a_caller_cancelled_during_the_first_fetch_does_not_cancel_it_for_others(
    provider: Provider, harness: Harness
) -> None:
    token = await sign_in(harness.http, provider, GOOD_CLAIMS)
    first = asyncio.create_task(harness.verifier.verify(token))
    await harness.fetches.started.wait()  # the discovery request is on its way
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    # Had the fetch died with its caller, this would be "provider unreachable" until the interval passed.
    assert (await harness.verifier.verify(token)).user == "alice"
    assert harness.fetches.paths == [DISCOVERY_PATH, JWKS_PATH]


async def test_expiry_within_the_leeway_is_accepted_and_beyond_it_refused(
    provider: Provider, harness: Harness
) -> None:
    leeway_s = harness.verifier.settings.leeway_s
    just_expired = await sign_in(harness.http, provider, {**GOOD_CLAIMS, "exp": int(time.time()) - 5})
    long_expired = await sign_in(
        harness.http, provider, {**GOOD_CLAIMS, "exp": int(time.time() - leeway_s) - 90}
    )
    assert (await harness.verifier.verify(just_expired)).user == "alice"
    assert await harness.refusal(long_expired) == RefusalReason.EXPIRED


async def test_a_token_not_valid_before_a_future_time_is_refused(
    provider: Provider, harness: Harness
) -> None:
    token = await sign_in(harness.http, provider, {**GOOD_CLAIMS, "nbf": int(time.time()) + 600})
    assert await harness.refusal(token) == RefusalReason.NOT_YET_VALID


# -- forged or misdirected --------------------------------------------------------------------------------
async def test_alg_none_is_refused(provider: Provider, harness: Harness) -> None:
    real = await sign_in(harness.http, provider, GOOD_CLAIMS)
    await harness.verifier.verify(real)  # the claims themselves are acceptable
    for alg in ("none", "None", "NONE"):
        unsigned = forge({"alg": alg, "typ": "JWT"}, claims_of(real), lambda _: b"")
        assert await harness.refusal(unsigned) == RefusalReason.ALG_NOT_ALLOWED


async def test_hs256_keyed_with_the_providers_public_key_is_refused(
    provider: Provider, harness: Harness
) -> None:
    real = await sign_in(harness.http, provider, GOOD_CLAIMS)
    jwk = await provider_jwk(harness.http, provider)
    public_key = jwt.PyJWK(jwk).key
    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    # The public key bytes an attacker can download, used as an HMAC secret: a verifier that hands its RSA
    # key to whatever algorithm the header names would check this "signature" and accept it.
    for secret in (pem, json.dumps(jwk).encode()):
        for alg, digest in (("HS256", hashlib.sha256), ("HS512", hashlib.sha512)):
            forged = forge(
                {"alg": alg, "typ": "JWT", "kid": jwk["kid"]},
                claims_of(real),
                hmac_signer(secret, digest),
            )
            assert await harness.refusal(forged) == RefusalReason.ALG_NOT_ALLOWED


async def test_a_token_for_another_audience_is_refused(provider: Provider, harness: Harness) -> None:
    token = await sign_in(harness.http, provider, GOOD_CLAIMS, client_id="another-app")
    assert claims_of(token)["aud"] == ["another-app"]
    assert await harness.refusal(token) == RefusalReason.WRONG_AUDIENCE


async def test_a_token_from_the_same_provider_under_another_issuer_name_is_refused(
    provider: Provider, harness: Harness
) -> None:
    # Reached as localhost, the provider calls itself http://localhost:PORT and signs that into iss.
    other_name = f"localhost:{provider.port}"
    token = await sign_in(harness.http, provider, GOOD_CLAIMS, host=other_name)
    assert claims_of(token)["iss"] == f"http://{other_name}"
    assert await harness.refusal(token) == RefusalReason.WRONG_ISSUER
    # The same token is fine for a verifier configured with that issuer: iss was the only thing wrong.
    async with harness_for(OidcSettings(issuer=f"http://{other_name}", audience=AUDIENCE)) as other:
        assert (await other.verifier.verify(token)).user == "alice"


async def test_a_token_signed_with_another_key_pair_is_refused(provider: Provider, harness: Harness) -> None:
    real = await sign_in(harness.http, provider, GOOD_CLAIMS)
    await harness.verifier.verify(real)
    provider_kid = (await provider_jwk(harness.http, provider))["kid"]
    attacker = another_key_pair()
    claims = claims_of(real)
    # Naming the provider's key, or no key (the provider itself signs without kid): the signature is wrong.
    assert (
        await harness.refusal(signed_elsewhere(claims, attacker, provider_kid)) == RefusalReason.BAD_SIGNATURE
    )
    assert await harness.refusal(signed_elsewhere(claims, attacker, None)) == RefusalReason.BAD_SIGNATURE
    # A tampered claim under the provider's own signature is refused the same way.
    header, _, signature = real.split(".")
    tampered = {**claims, "preferred_username": "root"}
    assert await harness.refusal(f"{header}.{b64url(json.dumps(tampered).encode())}.{signature}") == (
        RefusalReason.BAD_SIGNATURE
    )


async def test_unknown_kids_refetch_the_key_set_at_most_once_per_interval(
    provider: Provider, harness: Harness
) -> None:
    real = await sign_in(harness.http, provider, GOOD_CLAIMS)
    await harness.verifier.verify(real)
    assert harness.fetches.count(JWKS_PATH) == 1
    attacker = another_key_pair()
    claims = claims_of(real)
    burst = [signed_elsewhere(claims, attacker, f"rotated-{n}") for n in range(200)]

    # Right after the first fetch an unknown kid is refused without asking the provider again.
    assert await harness.refusal(burst[0]) == RefusalReason.UNKNOWN_KEY
    assert harness.fetches.count(JWKS_PATH) == 1

    harness.clock.advance(REFETCH_INTERVAL_S)
    refusals = await asyncio.gather(*(harness.refusal(token) for token in burst[:100]))
    assert set(refusals) == {RefusalReason.UNKNOWN_KEY}
    assert harness.fetches.count(JWKS_PATH) == 2  # one refetch for the whole concurrent burst

    harness.clock.advance(REFETCH_INTERVAL_S - 1)
    for token in burst[100:]:  # another hundred, one after the other, inside the interval
        assert await harness.refusal(token) == RefusalReason.UNKNOWN_KEY
    assert harness.fetches.count(JWKS_PATH) == 2
    assert (await harness.verifier.verify(real)).user == "alice"  # real tokens unaffected throughout

    harness.clock.advance(1)
    assert await harness.refusal(burst[0]) == RefusalReason.UNKNOWN_KEY
    assert harness.fetches.count(JWKS_PATH) == 3


async def test_a_discovery_document_naming_another_issuer_is_not_trusted(provider: Provider) -> None:
    # Configured with a trailing slash, the issuer differs from the provider's own spelling: exact match only.
    async with harness_for(OidcSettings(issuer=provider.issuer + "/", audience=AUDIENCE)) as harness:
        token = await sign_in(harness.http, provider, GOOD_CLAIMS)
        assert await harness.refusal(token) == RefusalReason.PROVIDER_UNREACHABLE
        assert harness.fetches.paths == [DISCOVERY_PATH]  # its jwks_uri was never followed


# -- claims -----------------------------------------------------------------------------------------------
async def test_a_token_without_the_user_claim_is_refused(provider: Provider, harness: Harness) -> None:
    # Without the profile scope the provider leaves preferred_username out of the ID token.
    token = await sign_in(harness.http, provider, GOOD_CLAIMS, scope="openid")
    claims = claims_of(token)
    assert "preferred_username" not in claims and claims["sub"]  # sub is there: no fallback to it
    assert await harness.refusal(token) == RefusalReason.NO_USER_CLAIM


@pytest.mark.parametrize(
    "name",
    [123, "", " alice", "alice\n", "ali\x1bce", "ali\u202ece", "a" * 257, ["alice"]],
    ids=["number", "empty", "leading-space", "newline", "escape", "bidi-override", "too-long", "list"],
)
async def test_a_user_claim_that_is_not_a_plain_name_is_refused(
    provider: Provider, harness: Harness, name: object
) -> None:
    token = await sign_in(harness.http, provider, {**GOOD_CLAIMS, "preferred_username": name})
    assert claims_of(token)["preferred_username"] == name
    assert await harness.refusal(token) == RefusalReason.NO_USER_CLAIM


@pytest.mark.parametrize(
    "groups",
    ["console-ops", ["console-ops", 7], [["console-ops"]], {"console-ops": True}, None],
    ids=["string", "mixed-list", "nested-list", "object", "null"],
)
async def test_a_groups_claim_that_is_not_a_list_of_strings_gives_no_groups(
    provider: Provider, harness: Harness, groups: object
) -> None:
    token = await sign_in(harness.http, provider, {**GOOD_CLAIMS, "groups": groups})
    verified = await harness.verifier.verify(token)
    assert verified.user == "alice"
    assert verified.groups == frozenset()


async def test_the_claim_names_come_from_the_settings(provider: Provider) -> None:
    settings = OidcSettings(
        issuer=provider.issuer, audience=AUDIENCE, user_claim="email", groups_claim="roles"
    )
    async with harness_for(settings) as harness:
        token = await sign_in(
            harness.http,
            provider,
            {**GOOD_CLAIMS, "email": "alice@example.com", "roles": ["console-admin"]},
            scope="openid profile email",  # the provider puts email in the ID token only for this scope
        )
        verified = await harness.verifier.verify(token)
    assert verified.user == "alice@example.com"
    assert verified.groups == frozenset({"console-admin"})


# -- malformed input --------------------------------------------------------------------------------------
async def test_malformed_tokens_are_refused_as_malformed(provider: Provider, harness: Harness) -> None:
    real = await sign_in(harness.http, provider, GOOD_CLAIMS)
    header, payload, signature = real.split(".")

    def with_header(value: bytes) -> str:
        return f"{b64url(value)}.{payload}.{signature}"

    malformed = [
        "",
        "Bearer",
        "a.b.c",
        real + ".",
        f"{header}.{payload}",
        f"{header}.{payload}.{signature}.x.y",  # JWE-shaped
        real.replace(".", "..", 1),
        real + "é",
        "e" * 20_000 + real,
        with_header(b"[1, 2]"),
        with_header(b"not json"),
        with_header(b'{"typ": "JWT"}'),  # no alg
        with_header(b'{"alg": 256}'),
        with_header(b'{"alg": "RS256", "kid": 7}'),
        with_header(b'{"alg": "RS256", "crit": ["exp"]}'),
        with_header(b"[" * 5000 + b"]" * 5000),
    ]
    for token in malformed:
        assert await harness.refusal(token) == RefusalReason.MALFORMED, token[:80]


async def test_a_token_longer_than_max_token_chars_is_refused_unread(
    provider: Provider, harness: Harness
) -> None:
    # Real and validly signed, but a bearer token this long is not parsed (nor its signature checked).
    filler = "x" * MAX_TOKEN_CHARS
    token = await sign_in(harness.http, provider, {**GOOD_CLAIMS, "filler": filler})
    assert len(token) > MAX_TOKEN_CHARS
    assert jwt.decode(token, options={"verify_signature": False})["filler"] == filler
    assert await harness.refusal(token) == RefusalReason.MALFORMED


async def test_every_single_character_change_to_a_token_is_refused_or_decodes_to_the_same_token(
    provider: Provider, harness: Harness
) -> None:
    real = await sign_in(harness.http, provider, GOOD_CLAIMS)
    expected = await harness.verifier.verify(real)
    segments = [base64.urlsafe_b64decode(part + "==") for part in real.split(".")]
    alphabet = "AZaz09-_.=+/ \x00"
    for position in range(len(real)):
        for replacement in alphabet[position % len(alphabet)], alphabet[(position * 7) % len(alphabet)]:
            if replacement == real[position]:
                continue
            changed = real[:position] + replacement + real[position + 1 :]
            try:
                verified = await harness.verifier.verify(changed)
            except InvalidToken:
                continue
            # base64url's last character carries spare bits: a change there may decode to the same bytes.
            changed_segments = [base64.urlsafe_b64decode(part + "==") for part in changed.split(".")]
            assert (verified, changed_segments) == (expected, segments), (position, replacement)


# -- an unreachable provider ------------------------------------------------------------------------------
async def test_a_silent_provider_is_cut_off_by_the_fetch_timeout_and_not_retried_within_the_interval(
    provider: Provider,
) -> None:
    connections: list[asyncio.StreamWriter] = []
    hold = asyncio.Event()

    async def accept_and_say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await hold.wait()
        writer.close()

    server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = OidcSettings(issuer=f"http://127.0.0.1:{port}", audience=AUDIENCE, fetch_timeout_s=0.5)
    try:
        async with harness_for(settings) as harness:
            token = await sign_in(harness.http, provider, GOOD_CLAIMS)
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert await harness.refusal(token) == RefusalReason.PROVIDER_UNREACHABLE
            assert 0.5 <= loop.time() - started < 10
            assert len(connections) == 1
            # Within the interval the refusal is immediate and the provider is left alone.
            assert await harness.refusal(token) == RefusalReason.PROVIDER_UNREACHABLE
            assert len(connections) == 1
            harness.clock.advance(REFETCH_INTERVAL_S)
            assert await harness.refusal(token) == RefusalReason.PROVIDER_UNREACHABLE
            assert len(connections) == 2
    finally:
        hold.set()
        server.close()
        await server.wait_closed()


async def test_keys_already_fetched_keep_working_while_the_provider_is_down() -> None:
    with running_provider() as short_lived:
        async with harness_for(OidcSettings(issuer=short_lived.issuer, audience=AUDIENCE)) as harness:
            token = await sign_in(harness.http, short_lived, GOOD_CLAIMS)
            await harness.verifier.verify(token)
            short_lived.stop()
            harness.clock.advance(harness.verifier.settings.jwks_cache_s + 1)
            # The cache is stale and the refresh fails (connection refused): the old keys still verify.
            assert (await harness.verifier.verify(token)).user == "alice"
            assert await harness.verifier.refresh()  # joins that failed refresh; the old keys are at hand
            assert harness.fetches.paths == [DISCOVERY_PATH, JWKS_PATH, DISCOVERY_PATH]
            # A forgery is still refused: stale keys are the provider's keys, not no keys.
            forged = signed_elsewhere(claims_of(token), another_key_pair(), None)
            assert await harness.refusal(forged) == RefusalReason.BAD_SIGNATURE
            assert harness.fetches.count(DISCOVERY_PATH) == 2  # and no retry within the interval


async def test_no_provider_at_all_is_provider_unreachable(provider: Provider) -> None:
    with socket_without_listener() as port:
        settings = OidcSettings(issuer=f"http://127.0.0.1:{port}", audience=AUDIENCE)
        async with harness_for(settings) as harness:
            token = await sign_in(harness.http, provider, GOOD_CLAIMS)
            assert await harness.refusal(token) == RefusalReason.PROVIDER_UNREACHABLE
            assert harness.fetches.paths == [DISCOVERY_PATH]


@contextlib.contextmanager
def socket_without_listener() -> Iterator[int]:
    """A loopback port bound but not listening, so connecting is refused and nobody else takes it."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# -- a key set we control ---------------------------------------------------------------------------------
# The provider above signs with one RSA key and RS256 only.  For the other algorithms, several keys, keys
# unfit for signatures and odd provider answers, this serves discovery and a key set we write, over real
# HTTP on loopback, and signs tokens with keys we hold.
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def public_jwk(key: PrivateKey, **members: Any) -> dict[str, Any]:
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    assert isinstance(jwk, dict)
    return {**jwk, **members}


@dataclass
class KeyServer:
    """``/.well-known/openid-configuration`` and ``/jwks`` with whatever the test puts in them."""

    port: int = 0
    keys: list[object] = field(default_factory=list)  # JWKs, and whatever else a key set may hold
    discovery: dict[str, Any] | None = None  # None: the correct document for this server
    discovery_status: int = 200
    raw_jwks: bytes | None = None  # served instead of ``keys`` when set

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": "subject-bob",
            "iat": now,
            "exp": now + 300,
            "preferred_username": "bob",
            "groups": ["console-ops"],
            **overrides,
        }
        return {name: value for name, value in claims.items() if value is not None}

    chunked: bool = False  # send ``raw_jwks`` without Content-Length
    silent: bool = False  # hold discovery requests unanswered until the server stops
    asked: asyncio.Event = field(default_factory=asyncio.Event)  # a held request has arrived
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def _discovery(self, request: web.Request) -> web.StreamResponse:
        if self.silent:
            self.asked.set()
            await self._stopping.wait()
        if self.discovery_status == 302 and request.path == DISCOVERY_PATH:
            # Elsewhere is the right document: only a client that follows redirects would get it.
            raise web.HTTPFound(MOVED_DISCOVERY_PATH)
        document = self.discovery or {"issuer": self.issuer, "jwks_uri": self.issuer + JWKS_PATH}
        return web.json_response(
            document, status=200 if request.path == MOVED_DISCOVERY_PATH else self.discovery_status
        )

    async def _jwks(self, request: web.Request) -> web.StreamResponse:
        if self.raw_jwks is None:
            return web.json_response({"keys": self.keys})
        if not self.chunked:
            return web.Response(body=self.raw_jwks, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(self.raw_jwks), 64 * 1024):
            await response.write(self.raw_jwks[start : start + 64 * 1024])
        await response.write_eof()
        return response


@contextlib.asynccontextmanager
async def key_server() -> AsyncIterator[KeyServer]:
    server = KeyServer()
    app = web.Application()
    app.router.add_get(DISCOVERY_PATH, server._discovery)
    app.router.add_get(MOVED_DISCOVERY_PATH, server._discovery)
    app.router.add_get(JWKS_PATH, server._jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        server.port = runner.addresses[0][1]
        yield server
    finally:
        server._stopping.set()
        await runner.cleanup()


@contextlib.asynccontextmanager
async def own_keys(**settings: Any) -> AsyncIterator[tuple[KeyServer, Harness]]:
    async with (
        key_server() as server,
        harness_for(OidcSettings(issuer=server.issuer, audience=AUDIENCE, **settings)) as harness,
    ):
        yield server, harness


def sign(claims: dict[str, Any], key: PrivateKey, alg: str, kid: str | None) -> str:
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid is not None else None)


KEY_MAKERS: dict[str, Callable[[], PrivateKey]] = {
    "RSA": another_key_pair,
    "P-256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "P-384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "Ed25519": ed25519.Ed25519PrivateKey.generate,
}


@pytest.mark.parametrize(
    ("alg", "kind"),
    [
        ("RS256", "RSA"),
        ("RS384", "RSA"),
        ("RS512", "RSA"),
        ("PS256", "RSA"),
        ("ES256", "P-256"),
        ("ES384", "P-384"),
        ("EdDSA", "Ed25519"),
    ],
)
async def test_every_default_algorithm_verifies_with_a_key_of_its_kind(alg: str, kind: str) -> None:
    async with own_keys() as (server, harness):
        key = KEY_MAKERS[kind]()
        server.keys = [public_jwk(key, kid="k1", use="sig")]  # no "alg": the key type decides
        verified = await harness.verifier.verify(sign(server.claims(), key, alg, "k1"))
        assert (verified.user, verified.groups, verified.subject) == (
            "bob",
            frozenset({"console-ops"}),
            "subject-bob",
        )


async def test_a_token_without_kid_is_tried_against_every_key_that_can_check_it() -> None:
    async with own_keys() as (server, harness):
        ec_key, named, unnamed = KEY_MAKERS["P-256"](), another_key_pair(), another_key_pair()
        server.keys = [public_jwk(ec_key, kid="a"), public_jwk(named, kid="b"), public_jwk(unnamed)]
        for key in (named, unnamed):
            assert (await harness.verifier.verify(sign(server.claims(), key, "RS256", None))).user == "bob"
        assert (await harness.verifier.verify(sign(server.claims(), ec_key, "ES256", None))).user == "bob"
        # A kid names exactly one key: the right signature under the wrong kid is no signature.
        wrong_kid = sign(server.claims(), unnamed, "RS256", "b")
        assert await harness.refusal(wrong_kid) == RefusalReason.BAD_SIGNATURE
        # And claims are checked once a key's signature matched, whichever key it was.
        expired = sign(server.claims(exp=int(time.time()) - 600), unnamed, "RS256", None)
        assert await harness.refusal(expired) == RefusalReason.EXPIRED


async def test_the_key_decides_which_algorithms_it_checks() -> None:
    async with own_keys(algorithms=("RS256", "PS256", "ES256")) as (server, harness):
        rsa_key, p256, p384 = another_key_pair(), KEY_MAKERS["P-256"](), KEY_MAKERS["P-384"]()
        server.keys = [public_jwk(rsa_key, kid="rsa", alg="RS256"), public_jwk(p256, kid="p256")]
        assert (await harness.verifier.verify(sign(server.claims(), rsa_key, "RS256", "rsa"))).user == "bob"
        # The same RSA key, a valid PS256 signature: the key said RS256 only.
        assert (
            await harness.refusal(sign(server.claims(), rsa_key, "PS256", "rsa")) == RefusalReason.UNKNOWN_KEY
        )
        # ES384 is not allowed here at all; ES256 naming the RSA key is a key of the wrong type.
        assert await harness.refusal(sign(server.claims(), p384, "ES384", "p256")) == (
            RefusalReason.ALG_NOT_ALLOWED
        )
        assert await harness.refusal(sign(server.claims(), p256, "ES256", "rsa")) == RefusalReason.UNKNOWN_KEY
        assert (await harness.verifier.verify(sign(server.claims(), p256, "ES256", "p256"))).user == "bob"


async def test_keys_unfit_for_signatures_are_skipped_and_the_rest_still_work() -> None:
    async with own_keys() as (server, harness):
        good, enc, ops, private = (another_key_pair() for _ in range(4))
        short = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        curveless = ec.generate_private_key(ec.SECP256R1())
        secret = b"s" * 32
        published_private = RSAAlgorithm.to_jwk(private, as_dict=True)
        assert isinstance(published_private, dict) and "d" in published_private  # published by mistake
        del published_private["key_ops"]  # PyJWT marks it ["sign"]; a careless provider would not
        server.keys = [
            {"kty": "oct", "kid": "symmetric", "k": b64url(secret)},
            public_jwk(enc, kid="enc", use="enc"),
            public_jwk(ops, kid="ops", key_ops=["encrypt"]),
            {**published_private, "kid": "private"},
            public_jwk(short, kid="short"),
            {**public_jwk(curveless, kid="curveless"), "crv": None},
            "not a key",
            public_jwk(good, kid="good"),
        ]
        claims = server.claims()
        hs256 = forge({"alg": "HS256", "kid": "symmetric"}, claims, hmac_signer(secret, hashlib.sha256))
        assert await harness.refusal(hs256) == RefusalReason.ALG_NOT_ALLOWED
        # Each signature below is right for the key named; the key is not one we check signatures with.
        for kid, key, alg in (
            ("enc", enc, "RS256"),
            ("ops", ops, "RS256"),
            ("private", private, "RS256"),
            ("symmetric", good, "RS256"),
            ("curveless", curveless, "ES256"),
        ):
            assert await harness.refusal(sign(claims, key, alg, kid)) == RefusalReason.UNKNOWN_KEY, kid
        # PyJWT warns when signing with a 1024-bit key: sign with cryptography directly.
        pkcs1 = forge(
            {"alg": "RS256", "kid": "short"},
            claims,
            lambda data: short.sign(data, padding.PKCS1v15(), hashes.SHA256()),
        )
        assert await harness.refusal(pkcs1) == RefusalReason.UNKNOWN_KEY
        assert (await harness.verifier.verify(sign(claims, good, "RS256", "good"))).user == "bob"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"exp": None}, RefusalReason.MALFORMED),
        ({"iat": None}, RefusalReason.MALFORMED),
        ({"sub": None}, RefusalReason.MALFORMED),
        ({"iss": None}, RefusalReason.WRONG_ISSUER),
        ({"aud": None}, RefusalReason.WRONG_AUDIENCE),
        ({"exp": "4102444800"}, RefusalReason.MALFORMED),  # a string, though PyJWT would read it as a number
        ({"iat": int(time.time()) + 3600}, RefusalReason.NOT_YET_VALID),
        ({"aud": ["another-app", AUDIENCE]}, None),  # one of several audiences is enough
        ({"iss": "http://evil.example"}, RefusalReason.WRONG_ISSUER),
    ],
    ids=repr,
)
async def test_required_claims(overrides: dict[str, Any], reason: RefusalReason | None) -> None:
    async with own_keys() as (server, harness):
        key = another_key_pair()
        server.keys = [public_jwk(key, kid="k1")]
        token = sign(server.claims(**overrides), key, "RS256", "k1")
        if reason is None:
            assert (await harness.verifier.verify(token)).user == "bob"
        else:
            assert await harness.refusal(token) == reason


@pytest.mark.parametrize(
    "answer",
    [
        "discovery status 500",
        "discovery redirect",
        "discovery names no jwks_uri",
        "jwks_uri over http to another host",
        "key set not JSON",
        "key set without a keys list",
        "key set larger than 1 MiB",
        "key set larger than 1 MiB, chunked",
    ],
)
async def test_a_provider_answer_we_cannot_use_is_provider_unreachable(answer: str) -> None:
    async with own_keys() as (server, harness):
        key = another_key_pair()
        server.keys = [public_jwk(key, kid="k1")]
        if answer == "discovery status 500":
            server.discovery_status = 500
        elif answer == "discovery redirect":
            server.discovery_status = 302
        elif answer == "discovery names no jwks_uri":
            server.discovery = {"issuer": server.issuer}
        elif answer == "jwks_uri over http to another host":
            server.discovery = {"issuer": server.issuer, "jwks_uri": "http://keys.example.com/jwks"}
        elif answer == "key set not JSON":
            server.raw_jwks = b"<html>sign in</html>"
        elif answer == "key set without a keys list":
            server.raw_jwks = b'{"keys": {"kid": "k1"}}'
        else:
            jwk = json.dumps(public_jwk(key, kid="k1")).encode()
            server.raw_jwks = b'{"keys": [' + jwk + b', "' + b"x" * (1024 * 1024) + b'"]}'
            server.chunked = answer.endswith("chunked")
        token = sign(server.claims(), key, "RS256", "k1")
        assert await harness.refusal(token) == RefusalReason.PROVIDER_UNREACHABLE
        fetched_jwks = answer.startswith("key set")
        assert harness.fetches.paths == [DISCOVERY_PATH] + [JWKS_PATH] * fetched_jwks
        # The same provider, answering properly once the interval has passed: accepted.
        server.discovery, server.discovery_status, server.raw_jwks = None, 200, None
        harness.clock.advance(REFETCH_INTERVAL_S)
        assert (await harness.verifier.verify(token)).user == "bob"


async def test_a_stale_key_set_is_used_at_once_while_a_slow_provider_is_asked_for_a_new_one() -> None:
    async with own_keys(fetch_timeout_s=60) as (server, harness):
        key = another_key_pair()
        server.keys = [public_jwk(key, kid="k1")]
        token = sign(server.claims(), key, "RS256", "k1")
        await harness.verifier.verify(token)
        server.silent = True  # from now on the provider takes the whole fetch timeout to answer nothing
        harness.clock.advance(harness.verifier.settings.jwks_cache_s)
        # Had verify waited for the refresh it started, this would take the 60 s fetch timeout.
        verified = await asyncio.wait_for(harness.verifier.verify(token), 10)
        assert verified.user == "bob"
        await asyncio.wait_for(server.asked.wait(), 10)
        assert harness.fetches.paths == [DISCOVERY_PATH, JWKS_PATH, DISCOVERY_PATH]


async def test_the_daemon_accepts_a_bearer_id_token_and_its_groups(provider: Provider, tmp_path: Any) -> None:
    """Through the real daemon's HTTP API: an ID token from the real provider is a Bearer credential; the
    groups claim grants consoles through [auth.oidc] group_grants; a token of another audience is 401."""
    from .support import running_daemon

    config = f"""
[daemon]
log_level = "warning"
[auth.oidc]
issuer = "{provider.issuer}"
audience = "{AUDIENCE}"
[auth.oidc.group_grants]
console-ops = [{{ role = "operator", ports = ["group:web"] }}]
[http]
listen = "127.0.0.1:0"
[[ports]]
name = "web-ss-0"
group = "web"
device = "exec:/bin/cat"
[[ports]]
name = "db1"
device = "exec:/bin/cat"
"""
    async with running_daemon(config, online=("web-ss-0",)) as daemon, aiohttp.ClientSession() as http:
        assert daemon.http_address is not None
        base = "http://{}:{}".format(*daemon.http_address)
        token = await sign_in(http, provider, {"preferred_username": "olga", "groups": ["console-ops"]})
        auth = {"Authorization": f"Bearer {token}"}
        async with http.get(f"{base}/api/v1/ports", headers=auth) as response:
            assert response.status == 200
            assert [p["name"] for p in (await response.json())["ports"]] == ["web-ss-0"]
        async with http.get(f"{base}/api/v1/ports/db1", headers=auth) as response:
            assert response.status == 404
        other = await sign_in(http, provider, {"preferred_username": "olga"}, client_id="someone-else")
        async with http.get(f"{base}/api/v1/ports", headers={"Authorization": f"Bearer {other}"}) as response:
            assert response.status == 401
