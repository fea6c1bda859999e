"""OIDC bearer tokens: a JWT checked against the identity provider's published keys.

Theory of operation
-------------------
An operator's identity provider (Keycloak, Entra ID, Okta, Dex …) signs JWTs with a private key and
publishes the public half as a JWK Set.  ``JwtVerifier.verify`` accepts a token only if all of these hold,
in this order (the first one that fails names the refusal, see ``RefusalReason``):

1. it is three base64url segments of bounded length whose header is JSON with a string ``alg``;
2. ``alg`` is in ``OidcSettings.algorithms``.  That list is asymmetric-only by construction: ``none`` would
   accept an unsigned token, and an HS* token "signed" with the provider's *public* key (which anybody can
   download) is the classic algorithm-confusion forgery, so both are refused when the settings are built
   and never reach PyJWT;
3. the key named by the header's ``kid`` is in the provider's key set and can check that ``alg`` (an RSA key
   for RS*/PS*, an EC key of the matching curve for ES*, an Ed25519/Ed448 key for EdDSA, and the key's own
   ``alg`` if it declares one).  Each key is held as one ``PyJWK`` per algorithm it may check, so the key,
   not the token, decides the algorithm that verifies the signature.  A token without ``kid`` is tried
   against every key that can check its ``alg``;
4. the signature verifies, and PyJWT finds ``exp``, ``iat``, ``iss``, ``aud`` and ``sub`` present, ``exp``
   and ``nbf``/``iat`` within ``leeway_s`` of now, ``iss`` equal to the configured issuer and the configured
   audience in ``aud`` (``algorithms``, ``audience`` and ``issuer`` are always passed);
5. the user claim is a plain, non-empty string.  The groups claim is used only if it is a list of strings;
   anything else gives no groups rather than an error: a provider that sends groups in another shape still
   lets its users in with their own grants, and a half-understood claim never grants anything;
6. only for an ID token from the page's sign-in (``verify(token, nonce=...)``): its ``nonce`` claim equals,
   in constant time, the one the sign-in put into its authorization request.  That binds the token to the
   browser's own sign-in, so an ID token issued for another sign-in (one leaked, or one an attacker
   obtained for themselves) is refused.  Bearer tokens carry no nonce of ours and are not checked.

The same discovery document also names the endpoints of the page's sign-in (authorization and token
endpoints, the client authentication methods the token endpoint takes): ``endpoints()`` returns them from
the last fetch (with the same https rule as ``jwks_uri``), so the sign-in needs no fetch of its own.  A
document without them is still good for bearer tokens: only the sign-in is then unavailable.

Keys come from ``{issuer}/.well-known/openid-configuration`` (whose ``issuer`` must equal the configured one
exactly, per OpenID Connect Discovery §4.3, so a document served for another tenant is not trusted) and
its ``jwks_uri``, fetched with aiohttp (PyJWT's ``PyJWKClient`` uses blocking urllib and would stall the
event loop) with a timeout around each whole request, no redirects, and a size cap on each body.  One
refresh is the discovery document plus the key set; at most one is in flight at any time (concurrent callers
join it, shielded, so a caller that goes away does not cancel it for the others), and a new one starts at
most once per ``REFETCH_INTERVAL_S``, whatever asks for it, and whether the last one worked or not (a
provider that is down is not hammered either).  What asks for one:

* no key set yet (the first token, or ``refresh()`` at start-up): the token waits for it, and is refused as
  ``provider unreachable`` only when there are no keys at all;
* a key set older than ``jwks_cache_s``: the refresh runs in the background and the token is checked with
  the keys at hand, so a slow or unreachable provider never holds a login up for the fetch timeout, and
  until the provider answers again the keys fetched last keep working;
* a token that names a ``kid`` the set does not have: the provider may have rotated its keys, so the token
  waits for the refresh (or is refused at once within the interval).  A flood of tokens with made-up
  ``kid`` values costs the provider one request per interval, not one per token.

A provider that signs without ``kid`` (the test provider does) gets its rotated keys when the cache
expires, not sooner: without a ``kid`` nothing distinguishes a token signed by a new key from a forgery.

Verifying costs one signature check plus PyJWT's parsing (about 80 µs for RS256 with a 2048-bit key, of
which PyJWT's own decode is 50), so it runs on the event loop; only the fetches await.  Refusal reasons
are short fixed strings meant for the audit trail; nothing from the token is ever put into them.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, TypeGuard
from urllib.parse import SplitResult, urlsplit

import aiohttp
import jwt
import structlog
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.types import Options

from serialmuxd.errors import RemoteError

log = structlog.get_logger("serialmuxd.auth")

# Which algorithms a key of each type (and curve) can check.  HMAC is absent on purpose: an ``oct`` key in a
# JWK Set is skipped, and HS* is refused in the settings.
_ALGORITHMS_FOR_KEY: Final[Mapping[tuple[str, str | None], frozenset[str]]] = {
    ("RSA", None): frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
    ("EC", "P-256"): frozenset({"ES256"}),
    ("EC", "P-384"): frozenset({"ES384"}),
    ("EC", "P-521"): frozenset({"ES512", "ES521"}),
    ("EC", "secp256k1"): frozenset({"ES256K"}),
    ("OKP", "Ed25519"): frozenset({"EdDSA"}),
    ("OKP", "Ed448"): frozenset({"EdDSA"}),
}
SUPPORTED_ALGORITHMS: Final[frozenset[str]] = frozenset(
    alg for algs in _ALGORITHMS_FOR_KEY.values() for alg in algs
)
DEFAULT_ALGORITHMS: Final[tuple[str, ...]] = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA")

REFETCH_INTERVAL_S: Final = 30.0  # at most one discovery + key-set fetch per this many seconds
MAX_TOKEN_CHARS: Final = 16 * 1024  # an Authorization header this long is not a token we will parse
MAX_DOCUMENT_BYTES: Final = 1024 * 1024  # discovery document or key set
MAX_KEYS: Final = 32  # a kid-less token is tried against each key: bound that work
MAX_USER_CHARS: Final = 256
MIN_RSA_BITS: Final = 2048  # RFC 7518 §3.3
MAX_LEEWAY_S: Final = 300.0  # "small leeway": more is a typo (3600) that would accept hour-old tokens
MIN_JWKS_CACHE_S: Final = REFETCH_INTERVAL_S
MAX_JWKS_CACHE_S: Final = 86400.0
MAX_FETCH_TIMEOUT_S: Final = 60.0
_MAX_LOGGED_ERROR_CHARS: Final = 200
# Claims every accepted token must carry; PyJWT checks presence, then each one's value.
_REQUIRED_CLAIMS: Final = ("exp", "iat", "iss", "aud", "sub")


class RefusalReason(StrEnum):
    """Why a token was refused: a closed set of short strings for the audit trail."""

    MALFORMED = "malformed"
    ALG_NOT_ALLOWED = "alg not allowed"
    UNKNOWN_KEY = "unknown key"
    BAD_SIGNATURE = "bad signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not yet valid"
    WRONG_ISSUER = "wrong issuer"
    WRONG_AUDIENCE = "wrong audience"
    NO_USER_CLAIM = "no user claim"
    WRONG_NONCE = "wrong nonce"
    PROVIDER_UNREACHABLE = "provider unreachable"


class InvalidToken(RemoteError):
    """The bearer token is not accepted.  ``reason`` is safe to log and to show; it never quotes the token."""

    def __init__(self, reason: RefusalReason) -> None:
        self.reason = reason
        super().__init__(reason.value)


class OidcSettingsError(ValueError):
    """An ``OidcSettings`` value is unusable; ``field`` names it so the config loader can point at the key."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


@dataclass(frozen=True)
class OidcSettings:
    """What a token must satisfy, validated when built (the ``[auth.oidc]`` table, once parsed).

    ``issuer`` must be an ``https`` URL.  Plain ``http`` is accepted only for a loopback issuer
    (``localhost``, ``127.0.0.0/8``, ``::1``): that is where a test's provider runs, and on loopback there is
    no network path on which the key set could be replaced.  ``algorithms`` is an allowlist of asymmetric
    JWS algorithms; ``none`` and every ``HS*`` are refused (see the module docstring).  A token without
    ``user_claim`` is refused; there is no fallback to another claim, because a fallback (say ``sub``) would
    give a user a name nobody granted anything to, or worse, somebody else's.
    """

    issuer: str
    audience: str
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    user_claim: str = "preferred_username"
    groups_claim: str = "groups"
    leeway_s: float = 30.0
    jwks_cache_s: float = 300.0
    fetch_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        _require_issuer(self.issuer)
        _require_text("audience", self.audience)
        # Stored as a tuple whatever iterable was passed: the settings stay hashable and immutable.
        object.__setattr__(self, "algorithms", _require_algorithms(self.algorithms))
        _require_text("user_claim", self.user_claim)
        _require_text("groups_claim", self.groups_claim)
        if self.user_claim == self.groups_claim:
            raise OidcSettingsError("groups_claim", "must differ from user_claim")
        _require_seconds("leeway_s", self.leeway_s, 0.0, MAX_LEEWAY_S)
        _require_seconds("jwks_cache_s", self.jwks_cache_s, MIN_JWKS_CACHE_S, MAX_JWKS_CACHE_S)
        _require_seconds("fetch_timeout_s", self.fetch_timeout_s, 0.0, MAX_FETCH_TIMEOUT_S, open_low=True)

    @property
    def discovery_url(self) -> str:
        # OpenID Connect Discovery §4: the issuer with any trailing "/" removed, then the well-known path.
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"


def _require_text(name: str, value: object) -> None:
    if not isinstance(value, str) or not value or value != value.strip() or not value.isprintable():
        raise OidcSettingsError(name, "must be a non-empty string without surrounding spaces")


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name other than localhost: it may resolve anywhere
        return False


def _parse_url(url: str) -> SplitResult | None:
    """``url`` split, or None when it is not an absolute http(s) URL with a host and a valid port."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        return None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return None
    return parts


def _require_issuer(issuer: object) -> None:
    if not isinstance(issuer, str) or not issuer or not issuer.isascii() or not issuer.isprintable():
        raise OidcSettingsError("issuer", "must be an https URL")
    if any(c.isspace() for c in issuer):
        raise OidcSettingsError("issuer", "must not contain spaces")
    parts = _parse_url(issuer)
    if parts is None:
        raise OidcSettingsError("issuer", f"must be an https URL, not {issuer!r}")
    # OpenID Connect Core §2: the issuer has no query or fragment; credentials in it would end up in logs.
    if parts.query or parts.fragment or "?" in issuer or "#" in issuer:
        raise OidcSettingsError("issuer", "must have no query or fragment")
    if parts.username is not None or parts.password is not None:
        raise OidcSettingsError("issuer", "must not carry a user name or password")
    if parts.scheme == "http" and not _is_loopback_host(parts.hostname or ""):
        raise OidcSettingsError("issuer", "must use https (plain http only for a loopback issuer, in tests)")


def _require_algorithms(algorithms: object) -> tuple[str, ...]:
    if isinstance(algorithms, str) or not isinstance(algorithms, Iterable):
        raise OidcSettingsError("algorithms", "must be a list of algorithm names")
    result: list[str] = []
    for alg in algorithms:
        if not isinstance(alg, str):
            raise OidcSettingsError("algorithms", "must be a list of algorithm names")
        if alg.lower() == "none":
            raise OidcSettingsError("algorithms", "'none' is refused: it accepts unsigned tokens")
        if alg.upper().startswith("HS"):
            raise OidcSettingsError(
                "algorithms",
                f"{alg!r} is refused: HMAC checked with the provider's public key lets anyone forge a token",
            )
        if alg not in SUPPORTED_ALGORITHMS:
            raise OidcSettingsError(
                "algorithms", f"{alg!r} is not one of {', '.join(sorted(SUPPORTED_ALGORITHMS))}"
            )
        if alg not in result:
            result.append(alg)
    if not result:
        raise OidcSettingsError("algorithms", "must name at least one algorithm")
    return tuple(result)


def _require_seconds(name: str, value: object, low: float, high: float, *, open_low: bool = False) -> None:
    # bool is an int: `leeway_s = true` in TOML is a mistake, not one second.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise OidcSettingsError(name, "must be a number of seconds")
    if value < low or (open_low and value == low) or value > high:
        bound = f"more than {low:g}" if open_low else f"at least {low:g}"
        raise OidcSettingsError(name, f"must be {bound} and at most {high:g} seconds, not {value:g}")


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """What an accepted token says about its bearer."""

    user: str  # the user claim: the name grants refer to
    groups: frozenset[str]  # the groups claim, empty when absent or not a list of strings
    subject: str  # ``sub``: the provider's stable id for the user, for the audit trail
    expires_at: float  # ``exp``, Unix time in seconds: a session built on this token ends no later


@dataclass(frozen=True, slots=True)
class ProviderEndpoints:
    """What the page's sign-in needs from the provider's discovery document (OpenID Connect Discovery §3)."""

    authorization_endpoint: str
    token_endpoint: str
    # token_endpoint_auth_methods_supported; the spec's default when absent is client_secret_basic.
    token_auth_methods: tuple[str, ...] = ("client_secret_basic",)


@dataclass(frozen=True, slots=True)
class _KeySet:
    """A provider's usable keys: ``kid`` → algorithm → key, plus every key for tokens without ``kid``."""

    by_kid: Mapping[str, Mapping[str, jwt.PyJWK]] = field(default_factory=dict)
    every: tuple[Mapping[str, jwt.PyJWK], ...] = ()

    def candidates(self, kid: str | None, alg: str) -> list[jwt.PyJWK] | None:
        """The keys that may have signed a token with this header; None when ``kid`` is not in the set."""
        if kid is None:
            return [key[alg] for key in self.every if alg in key]
        key = self.by_kid.get(kid)
        if key is None:
            return None
        return [key[alg]] if alg in key else []


class _FetchError(Exception):
    """A discovery or key-set fetch failed; the message is for the operator's log."""


class JwtVerifier:
    """Checks OIDC bearer tokens against one issuer (see the module docstring).

    ``session_factory`` makes the aiohttp session used for every fetch (``aiohttp.ClientSession`` will do);
    it is called on the first fetch, inside the running loop, and the session is closed by ``close``.
    ``clock`` is monotonic seconds; tests pass their own to age the cache without sleeping.
    """

    def __init__(
        self,
        settings: OidcSettings,
        session_factory: Callable[[], aiohttp.ClientSession],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._session_factory = session_factory
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._keys: _KeySet | None = None
        self._endpoints: ProviderEndpoints | None = None
        self._fetched_at = -math.inf  # when the current key set arrived
        self._attempted_at = -math.inf  # when the last refresh (successful or not) started
        self._refresh_task: asyncio.Task[None] | None = None
        self._algorithms = list(settings.algorithms)
        self._options: Options = {"require": list(_REQUIRED_CLAIMS), "enforce_minimum_key_length": True}

    async def __aenter__(self) -> JwtVerifier:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Cancel a refresh in flight and close the session; the verifier must not be used afterwards."""
        task, self._refresh_task = self._refresh_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    @property
    def refreshing(self) -> bool:
        """A fetch of discovery and key set is in flight (in the background or awaited by a token)."""
        return self._refresh_task is not None

    async def refresh(self) -> bool:
        """Fetch the keys now unless a fetch started under REFETCH_INTERVAL_S ago (or join the one in flight).

        True when keys are at hand afterwards.  The daemon can call it at start-up so that the first login
        does not wait for the provider and a misconfigured issuer shows in the log at once.
        """
        await self._refresh_if_allowed()
        return self._keys is not None

    async def endpoints(self) -> ProviderEndpoints | None:
        """The sign-in endpoints from the last discovery document (fetched now if there is none yet, within
        REFETCH_INTERVAL_S like any refresh); None while the provider is unreachable or names none usable."""
        if self._keys is None:
            await self._refresh_if_allowed()
        elif self._clock() - self._fetched_at >= self.settings.jwks_cache_s:
            self._start_refresh()  # stale: refreshed in the background, these used meanwhile (as for keys)
        return self._endpoints

    async def verify(self, token: str, *, nonce: str | None = None) -> VerifiedToken:
        """The bearer of ``token``, or ``InvalidToken`` with the first reason it is refused.  ``nonce``: the
        value an ID token from the page's sign-in must carry (step 6 in the module docstring)."""
        alg, kid = _read_header(token)
        if alg not in self.settings.algorithms:
            raise InvalidToken(RefusalReason.ALG_NOT_ALLOWED)
        keys = await self._current_keys()
        candidates = keys.candidates(kid, alg)
        if candidates is None:
            # An unknown kid may be a key the provider has just rotated in: refresh (rate-limited), retry.
            await self._refresh_if_allowed()
            if self._keys is not None:
                keys = self._keys
            candidates = keys.candidates(kid, alg)
        if not candidates:
            raise InvalidToken(RefusalReason.UNKNOWN_KEY)
        claims = self._decode(token, candidates)
        verified = self._identity(claims)
        if nonce is not None:
            presented = claims.get("nonce")
            if not isinstance(presented, str) or not hmac.compare_digest(
                presented.encode("utf-8", "surrogatepass"), nonce.encode("utf-8", "surrogatepass")
            ):
                raise InvalidToken(RefusalReason.WRONG_NONCE)
        return verified

    # -- the token ---------------------------------------------------------------------------------------
    def _decode(self, token: str, candidates: list[jwt.PyJWK]) -> dict[str, Any]:
        for key in candidates[:-1]:
            try:
                return self._decode_with(token, key)
            except InvalidToken as exc:
                # Only a signature that does not match says "try the next key"; any other refusal comes
                # after the signature verified, so it is the answer.
                if exc.reason is not RefusalReason.BAD_SIGNATURE:
                    raise
        return self._decode_with(token, candidates[-1])

    def _decode_with(self, token: str, key: jwt.PyJWK) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key,
                algorithms=self._algorithms,
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                leeway=self.settings.leeway_s,
                options=self._options,
            )
        except jwt.InvalidSignatureError:  # a DecodeError subclass: before the generic branch
            raise InvalidToken(RefusalReason.BAD_SIGNATURE) from None
        except jwt.ExpiredSignatureError:
            raise InvalidToken(RefusalReason.EXPIRED) from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken(RefusalReason.NOT_YET_VALID) from None
        except jwt.InvalidIssuerError:
            raise InvalidToken(RefusalReason.WRONG_ISSUER) from None
        except jwt.InvalidAudienceError:
            raise InvalidToken(RefusalReason.WRONG_AUDIENCE) from None
        except jwt.MissingRequiredClaimError as exc:
            # No iss is no issuer we trust, no aud is not meant for us; a missing exp/iat/sub is malformed.
            reason = {"iss": RefusalReason.WRONG_ISSUER, "aud": RefusalReason.WRONG_AUDIENCE}.get(
                exc.claim, RefusalReason.MALFORMED
            )
            raise InvalidToken(reason) from None
        except jwt.InvalidAlgorithmError:
            raise InvalidToken(RefusalReason.ALG_NOT_ALLOWED) from None
        except jwt.InvalidKeyError:  # e.g. a key below the minimum length slipped through
            raise InvalidToken(RefusalReason.UNKNOWN_KEY) from None
        except (jwt.PyJWTError, ValueError, TypeError, OverflowError, RecursionError):
            raise InvalidToken(RefusalReason.MALFORMED) from None

    def _identity(self, claims: dict[str, Any]) -> VerifiedToken:
        user = claims.get(self.settings.user_claim)
        if not _is_plain_name(user):
            raise InvalidToken(RefusalReason.NO_USER_CLAIM)
        raw_groups = claims.get(self.settings.groups_claim)
        groups: frozenset[str] = frozenset()
        if isinstance(raw_groups, list) and all(isinstance(group, str) for group in raw_groups):
            groups = frozenset(raw_groups)
        expires_at = claims["exp"]
        # PyJWT accepts anything int() takes (a numeric string too); RFC 7519 says a JSON number.
        if isinstance(expires_at, bool) or not isinstance(expires_at, int | float):
            raise InvalidToken(RefusalReason.MALFORMED)
        return VerifiedToken(user=user, groups=groups, subject=claims["sub"], expires_at=float(expires_at))

    # -- the keys ----------------------------------------------------------------------------------------
    async def _current_keys(self) -> _KeySet:
        """The key set; with none yet, the first fetch is awaited."""
        keys = self._keys
        if keys is not None:
            if self._clock() - self._fetched_at >= self.settings.jwks_cache_s:
                # Stale: refresh in the background and use these meanwhile, so that a slow or unreachable
                # provider never holds a login up for the fetch timeout.
                self._start_refresh()
            return keys
        await self._refresh_if_allowed()
        if self._keys is None:
            raise InvalidToken(RefusalReason.PROVIDER_UNREACHABLE)
        return self._keys

    async def _refresh_if_allowed(self) -> None:
        task = self._start_refresh()
        if task is not None:
            # Shielded: a caller that goes away (a closed connection) does not cancel the fetch others await.
            await asyncio.shield(task)

    def _start_refresh(self) -> asyncio.Task[None] | None:
        """The refresh in flight, or a new one unless the last started under REFETCH_INTERVAL_S ago."""
        if self._refresh_task is None:
            now = self._clock()
            if now - self._attempted_at < REFETCH_INTERVAL_S:
                return None
            # Decided and started without an await in between: concurrent callers see the task and join it.
            self._attempted_at = now
            self._refresh_task = asyncio.get_running_loop().create_task(self._refresh())
            self._refresh_task.add_done_callback(self._refresh_finished)
        return self._refresh_task

    def _refresh_finished(self, task: asyncio.Task[None]) -> None:
        if self._refresh_task is task:
            self._refresh_task = None
        # _refresh handles every failure it expects; anything else is a bug, reported here because a refresh
        # started in the background has nobody else to report it to.
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error(
                "oidc_refresh_crashed", issuer=self.settings.issuer, error=repr(exc)[:_MAX_LOGGED_ERROR_CHARS]
            )

    async def _refresh(self) -> None:
        """Fetch discovery and key set; on any failure keep the keys we have and log why."""
        url = self.settings.discovery_url
        try:
            if self._session is None:
                self._session = self._session_factory()
            discovery = await self._fetch_json(self._session, url)
            url = self._jwks_uri(discovery)
            keys = self._parse_key_set(await self._fetch_json(self._session, url))
            endpoints = self._sign_in_endpoints(discovery)
        except (_FetchError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:_MAX_LOGGED_ERROR_CHARS]
            log.warning(
                "oidc_provider_unreachable",
                issuer=self.settings.issuer,
                url=url,
                error=error,
                using_cached_keys=self._keys is not None,
                retry_in_s=REFETCH_INTERVAL_S,
            )
            return
        self._keys = keys
        self._endpoints = endpoints
        self._fetched_at = self._clock()
        log.info("oidc_keys_fetched", issuer=self.settings.issuer, keys=len(keys.every))

    async def _fetch_json(self, session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
        # The timeout covers connecting, the headers and the body: a provider that trickles bytes is cut too.
        async with (
            asyncio.timeout(self.settings.fetch_timeout_s),
            session.get(url, allow_redirects=False, headers={"Accept": "application/json"}) as response,
        ):
            if response.status != 200:
                raise _FetchError(f"HTTP status {response.status}")
            if response.content_length is not None and response.content_length > MAX_DOCUMENT_BYTES:
                raise _FetchError(f"document larger than {MAX_DOCUMENT_BYTES} bytes")
            body = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise _FetchError(f"document larger than {MAX_DOCUMENT_BYTES} bytes")
        try:
            document = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise _FetchError("not JSON") from exc
        if not isinstance(document, dict):
            raise _FetchError("not a JSON object")
        return document

    def _jwks_uri(self, discovery: dict[str, Any]) -> str:
        if discovery.get("issuer") != self.settings.issuer:
            raise _FetchError(f"discovery document names issuer {discovery.get('issuer')!r}")
        return self._endpoint(discovery, "jwks_uri")

    def _endpoint(self, discovery: dict[str, Any], name: str) -> str:
        url = discovery.get(name)
        parts = _parse_url(url) if isinstance(url, str) else None
        if parts is None or not isinstance(url, str):
            raise _FetchError(f"discovery document has no usable {name}")
        # Keys (or codes and tokens) over plain http could be read or swapped on the way; allowed only where
        # the issuer itself may be http.
        if parts.scheme != "https" and not (
            urlsplit(self.settings.issuer).scheme == "http" and _is_loopback_host(parts.hostname or "")
        ):
            raise _FetchError(f"{name} is not https")
        return url

    def _sign_in_endpoints(self, discovery: dict[str, Any]) -> ProviderEndpoints | None:
        """The page's sign-in endpoints, or None (logged): a provider used only for bearer tokens may
        publish none, and its tokens are still good."""
        try:
            authorization = self._endpoint(discovery, "authorization_endpoint")
            token = self._endpoint(discovery, "token_endpoint")
            if "#" in authorization or "#" in token:  # RFC 6749 §3.1, §3.2: no fragment
                raise _FetchError("a sign-in endpoint has a fragment")
        except _FetchError as exc:
            log.info("oidc_sign_in_unavailable", issuer=self.settings.issuer, reason=str(exc))
            return None
        methods = discovery.get("token_endpoint_auth_methods_supported")
        if isinstance(methods, list) and methods and all(isinstance(m, str) for m in methods):
            return ProviderEndpoints(authorization, token, tuple(methods))
        return ProviderEndpoints(authorization, token)

    def _parse_key_set(self, document: dict[str, Any]) -> _KeySet:
        entries = document.get("keys")
        if not isinstance(entries, list):
            raise _FetchError("key set has no 'keys' list")
        by_kid: dict[str, dict[str, jwt.PyJWK]] = {}
        every: list[Mapping[str, jwt.PyJWK]] = []
        for entry in entries:
            if len(every) >= MAX_KEYS:
                log.warning("oidc_keys_ignored", issuer=self.settings.issuer, beyond=MAX_KEYS)
                break
            parsed = self._parse_key(entry)
            if isinstance(parsed, str):
                # Skipping one odd key keeps the others usable; the reason comes from our own strings.
                log.info("oidc_key_skipped", issuer=self.settings.issuer, reason=parsed)
                continue
            kid, key = parsed
            every.append(key)
            if kid is not None:
                merged = by_kid.setdefault(kid, {})
                for alg, one in key.items():
                    merged.setdefault(alg, one)  # a duplicate kid: the first key listed wins
        if not every:
            log.warning("oidc_no_usable_keys", issuer=self.settings.issuer)
        return _KeySet(by_kid=by_kid, every=tuple(every))

    def _parse_key(self, entry: object) -> tuple[str | None, dict[str, jwt.PyJWK]] | str:
        """``(kid, {alg: key})`` for a usable signing key, or why it is skipped."""
        if not isinstance(entry, dict):
            return "not a JSON object"
        if entry.get("use", "sig") != "sig":
            return "not a signing key"
        key_ops = entry.get("key_ops")
        if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
            return "not a verification key"
        if "d" in entry:
            # A private key in a public key set: whoever else fetched it can sign tokens too.
            return "private key published"
        kid = entry.get("kid")
        if kid is not None and not isinstance(kid, str):
            return "kid is not a string"
        kty, crv = entry.get("kty"), entry.get("crv")
        possible = (
            _ALGORITHMS_FOR_KEY.get((kty, None if kty == "RSA" else crv)) if isinstance(kty, str) else None
        )
        if possible is None:
            return "unsupported key type"
        declared = entry.get("alg")
        if declared is not None:
            possible = possible & {declared} if isinstance(declared, str) else frozenset()
        algorithms = [alg for alg in self.settings.algorithms if alg in possible]
        if not algorithms:
            return "no allowed algorithm"
        try:
            keys = {alg: jwt.PyJWK(entry, algorithm=alg) for alg in algorithms}
        except (jwt.PyJWTError, ValueError, TypeError):
            return "unreadable key"
        first = keys[algorithms[0]].key
        if isinstance(first, RSAPublicKey) and first.key_size < MIN_RSA_BITS:
            return f"RSA key shorter than {MIN_RSA_BITS} bits"
        return kid, keys


def _read_header(token: object) -> tuple[str, str | None]:
    """``(alg, kid)`` from the unverified header; anything that is not a compact JWS is malformed."""
    if (
        not isinstance(token, str)
        or not 0 < len(token) <= MAX_TOKEN_CHARS
        or not token.isascii()
        or token.count(".") != 2  # a JWE has five segments; a bare string none
    ):
        raise InvalidToken(RefusalReason.MALFORMED)
    try:
        header = jwt.get_unverified_header(token)
    except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
        raise InvalidToken(RefusalReason.MALFORMED) from None
    alg, kid = header.get("alg"), header.get("kid")
    if not isinstance(alg, str) or not (kid is None or isinstance(kid, str)):
        raise InvalidToken(RefusalReason.MALFORMED)
    return alg, kid


def _is_plain_name(value: object) -> TypeGuard[str]:
    # A user name is matched against grants and written to logs and the audit trail: one that needs escaping
    # to be read (control or format characters, bidi overrides) or differs from itself once trimmed is not
    # a name anyone granted anything to.
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_USER_CHARS
        and value.isprintable()
        and value == value.strip()
    )
