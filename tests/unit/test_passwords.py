"""Password hashes: the parameters, the bounded worker-thread verification, the unknown-user path and the
users-file check of stored hashes.

Most hashes here use cheap parameters (``CHEAP``); a few use the real ones, because the real parameters are
what the users file gets.  ``hash_problem`` is checked against the argon2 C library itself as the oracle.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Callable, Iterator

import argon2
import pytest
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serialmuxd.auth import passwords
from serialmuxd.auth.passwords import (
    DUMMY_HASH,
    MAX_MEMORY_KIB,
    PARAMETERS,
    hash_password,
    hash_problem,
    verify_password,
    verify_unknown_user,
)

CHEAP = argon2.Parameters(
    type=argon2.Type.ID, version=19, salt_len=16, hash_len=32, time_cost=1, memory_cost=8, parallelism=1
)
MAKE_ONE = "make one with serialmuxd hash-password"


def test_parameters_are_argon2id_64_mib_three_passes_one_lane() -> None:
    assert (PARAMETERS.type, PARAMETERS.memory_cost, PARAMETERS.time_cost, PARAMETERS.parallelism) == (
        argon2.Type.ID,
        65536,
        3,
        1,
    )
    made = hash_password("correct horse")
    assert made.startswith("$argon2id$v=19$m=65536,t=3,p=1$")
    assert argon2.extract_parameters(made) == PARAMETERS


def test_dummy_hash_costs_what_a_real_hash_costs() -> None:
    """Same parameters as hash_password's, so an unknown user name costs a known one's time."""
    assert argon2.extract_parameters(DUMMY_HASH) == argon2.extract_parameters(hash_password("x"))
    assert hash_problem(DUMMY_HASH) is None


@pytest.mark.asyncio
async def test_right_password_verifies_and_others_do_not() -> None:
    stored = hash_password("pässwörd 🔑", parameters=CHEAP)
    assert await verify_password(stored, "pässwörd 🔑")
    assert not await verify_password(stored, "pässwörd")
    assert not await verify_password(stored, "")
    assert not await verify_password(stored, "pässwörd 🔑 ")


@pytest.mark.asyncio
async def test_real_parameters_verify() -> None:
    stored = hash_password("correct horse")
    assert await verify_password(stored, "correct horse")
    assert not await verify_password(stored, "correct horsE")


@pytest.mark.asyncio
async def test_a_password_that_is_not_valid_unicode_is_hashed_and_verified_not_raised() -> None:
    # What a telnet line decoded with surrogateescape gives for bytes that are not UTF-8.
    odd = b"pw\xff\xfe".decode("utf-8", "surrogateescape")
    stored = hash_password(odd, parameters=CHEAP)
    assert await verify_password(stored, odd)
    assert not await verify_password(stored, "pw")
    assert not await verify_password(hash_password("pw", parameters=CHEAP), "\ud800")


class Recorder:
    """Stands in for the blocking check: records what was checked and on which thread."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.calls: list[tuple[str, bytes, int]] = []

    def __call__(self, stored_hash: str, password: bytes) -> bool:
        self.calls.append((stored_hash, password, threading.get_ident()))
        return self.answer


@pytest.mark.asyncio
async def test_unknown_user_runs_a_full_verification_and_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(answer=True)  # even a "match" against the dummy must not log anyone in
    monkeypatch.setattr(passwords, "_check", recorder)
    assert await verify_unknown_user("anything") is False
    assert [(h, pw) for h, pw, _ in recorder.calls] == [(DUMMY_HASH, b"anything")]
    assert recorder.calls[0][2] != threading.get_ident(), "verified on the event loop's thread"


@pytest.mark.asyncio
async def test_a_malformed_stored_hash_costs_a_verification_too(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(answer=True)
    monkeypatch.setattr(passwords, "_check", recorder)
    assert await verify_password("$2b$12$not-argon", "pw") is False
    assert [h for h, _, _ in recorder.calls] == [DUMMY_HASH]


@pytest.mark.asyncio
async def test_verification_runs_in_a_worker_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(answer=True)
    monkeypatch.setattr(passwords, "_check", recorder)
    stored = hash_password("pw", parameters=CHEAP)
    assert await verify_password(stored, "pw")
    [(checked, secret, thread)] = recorder.calls
    assert (checked, secret) == (stored, b"pw")
    assert thread != threading.get_ident()


@pytest.mark.asyncio
async def test_the_event_loop_keeps_running_during_a_real_verification() -> None:
    stored = hash_password("pw")  # the real parameters: long enough to see the loop tick meanwhile
    ticks = 0
    done = asyncio.Event()

    async def tick() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick())
    assert await verify_password(stored, "pw")
    done.set()
    await ticker
    assert ticks > 10


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "hunter2",
        "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
        "$argon2id$",
        "$argon2id$v=19$m=65536,t=3,p=1$c2FsdHNhbHQ$",
        DUMMY_HASH + "é",  # not ASCII: argon2-cffi itself would raise UnicodeEncodeError
        DUMMY_HASH + "\n",
        DUMMY_HASH.replace("m=65536", "m=4294967295"),  # the C library: "Memory allocation error"
        DUMMY_HASH.replace("m=65536", "m=99999999999"),
        "\x00" * 100,
    ],
)
@pytest.mark.asyncio
async def test_verify_never_raises_for_a_broken_hash(stored: str) -> None:
    assert await verify_password(stored, "pw") is False


class Gate:
    """A blocking check that waits to be let through, counting how many run at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.most_running = 0
        self.started = 0
        self.started_events = [threading.Event() for _ in range(16)]
        self.release = threading.Event()

    def __call__(self, stored_hash: str, password: bytes) -> bool:
        with self.lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            self.started_events[self.started].set()
            self.started += 1
        try:
            self.release.wait(30)
            return True
        finally:
            with self.lock:
                self.running -= 1


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    gate = Gate()
    monkeypatch.setattr(passwords, "_check", gate)
    monkeypatch.setattr(passwords, "MAX_CONCURRENT_VERIFICATIONS", 2)
    try:
        yield gate
    finally:
        gate.release.set()  # never leave a worker thread blocked, whatever the test did


async def _wait(event: threading.Event) -> bool:
    return await asyncio.to_thread(event.wait, 10)


@pytest.mark.asyncio
async def test_at_most_the_bound_run_at_once(gate: Gate) -> None:
    stored = hash_password("pw", parameters=CHEAP)
    logins = [asyncio.create_task(verify_password(stored, "pw")) for _ in range(6)]
    assert await _wait(gate.started_events[1])
    # Two are running, blocked; the other four wait on the semaphore and start no thread.
    assert not await asyncio.to_thread(gate.started_events[2].wait, 0.3)
    gate.release.set()
    assert await asyncio.gather(*logins) == [True] * 6
    assert gate.most_running == 2


@pytest.mark.asyncio
async def test_a_cancelled_login_keeps_its_slot_until_its_thread_ends(gate: Gate) -> None:
    """A client that disconnects mid-check must not let the next check start beside its running thread."""
    stored = hash_password("pw", parameters=CHEAP)
    first = [asyncio.create_task(verify_password(stored, "pw")) for _ in range(2)]
    assert await _wait(gate.started_events[1])
    waiting = asyncio.create_task(verify_unknown_user("pw"))
    await asyncio.sleep(0)
    for task in first:
        task.cancel()
    results = await asyncio.gather(*first, return_exceptions=True)
    assert all(isinstance(result, asyncio.CancelledError) for result in results)
    assert not await asyncio.to_thread(gate.started_events[2].wait, 0.3), "started beside two threads"
    gate.release.set()
    assert await waiting is False
    assert gate.most_running == 2


def test_each_event_loop_gets_its_own_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncio primitives bind to the first loop that waits on them; a second loop must still work."""
    monkeypatch.setattr(passwords, "MAX_CONCURRENT_VERIFICATIONS", 1)
    stored = hash_password("pw", parameters=CHEAP)

    async def contended() -> list[bool]:
        return list(await asyncio.gather(*(verify_password(stored, "pw") for _ in range(3))))

    for _ in range(2):
        assert asyncio.run(contended()) == [True] * 3


# ---------------------------------------------------------------------------------------------------
# hash_problem: what the users-file validator says about a stored hash.


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
            "not an argon2id hash (it starts with '$2b$')",
        ),
        ("$6$rounds=5000$salt$hash", "it starts with '$6$'"),
        ("$argon2i$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g", "an argon2i hash; only argon2id is accepted"),
        ("$argon2d$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g", "an argon2d hash"),
        ("$argon2id$v=19$m=65536,t=3,p=1$c2FsdHNhbHQ", "not a well-formed argon2id hash"),
        (DUMMY_HASH.replace("v=19", "v=16"), "argon2 version 16 is not accepted"),
        (DUMMY_HASH.replace("m=65536", f"m={MAX_MEMORY_KIB + 1}"), "too costly for a login"),
        (DUMMY_HASH.replace("t=3", "t=11"), "too costly"),
        (DUMMY_HASH.replace("p=1", "p=9"), "too costly"),
        (DUMMY_HASH.replace("t=3", "t=0"), "invalid argon2 parameters"),
        (DUMMY_HASH.replace("m=65536", "m=7"), "invalid argon2 parameters"),
        (DUMMY_HASH.replace("m=65536", "m=065536"), "not a well-formed"),
        (DUMMY_HASH[:-1] + "l", "the digest is not valid unpadded base64"),
        (DUMMY_HASH.replace("jRThjEE8FQiJXtkCGeWH9w", "c2FsdA"), "the salt has 4 bytes, expected 8 to 64"),
    ],
)
def test_hash_problem_names_the_problem(text: str, reason: str) -> None:
    problem = hash_problem(text)
    assert problem is not None and reason in problem
    assert problem.endswith(MAKE_ONE)


def test_hash_problem_never_quotes_a_pasted_password() -> None:
    for pasted in ("CANARY-PW-hunter2", "$CANARY-PW", "CANARY$argon2id$"):
        problem = hash_problem(pasted)
        assert problem is not None and "CANARY" not in problem and MAKE_ONE in problem


def test_hashes_made_here_have_no_problem() -> None:
    assert hash_problem(hash_password("pw", parameters=CHEAP)) is None
    assert hash_problem(hash_password("pw")) is None


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode().rstrip("=")


_B64_MUTATIONS: list[Callable[[str], str]] = [
    lambda s: s[:-1],
    lambda s: s + "A",
    lambda s: s + "=",
    lambda s: s[:-1] + ("B" if s[-1:] != "B" else "C"),  # other trailing bits
    lambda s: s.replace("A", "-").replace("/", "_"),  # URL-safe alphabet
    lambda s: s + "\u00c0",
]


@st.composite
def near_phc_strings(draw: st.DrawFn) -> tuple[str, bool]:
    """A valid PHC string with cheap parameters, then (mostly) one part of it spoiled.

    Returns the string and whether its version part is still ``v=19`` (the only version we accept).
    """
    parallelism = draw(st.integers(1, 3))
    parts = {
        "algorithm": "argon2id",
        "version": "v=19",
        "m": str(draw(st.integers(8 * parallelism, 48))),
        "t": str(draw(st.integers(1, 3))),
        "p": str(parallelism),
        "salt": _b64(draw(st.binary(min_size=8, max_size=20))),
        "digest": _b64(draw(st.binary(min_size=4, max_size=40))),
        "extra": "",
    }
    spoil = draw(st.sampled_from([None, None, *parts]))
    if spoil == "algorithm":
        parts[spoil] = draw(st.sampled_from(["argon2i", "argon2d", "ARGON2ID", "argon2", "argon2id "]))
    elif spoil == "version":
        parts[spoil] = draw(st.sampled_from(["v=16", "v=019", "v=", "v=20", "v=19,"]))
    elif spoil in ("m", "t", "p"):
        value = parts[spoil]
        parts[spoil] = draw(st.sampled_from(["0" + value, "+" + value, " " + value, "0", "-1", value + "x"]))
    elif spoil in ("salt", "digest"):
        spoiled = draw(st.sampled_from([*_B64_MUTATIONS, lambda s: s[:10] if spoil == "salt" else s[:5]]))
        parts[spoil] = spoiled(parts[spoil])
    elif spoil == "extra":
        parts[spoil] = draw(st.sampled_from(["\n", " ", "$", "$x", "\x00"]))
    text = "${algorithm}${version}$m={m},t={t},p={p}${salt}${digest}{extra}".format(**parts)
    return text, parts["version"] == "v=19"


def _library_accepts(text: str) -> bool:
    """The oracle: would argon2-cffi (the C library) verify a password against ``text``?"""
    try:
        argon2.PasswordHasher().verify(text, "not the password")
    except VerifyMismatchError:
        return True
    except (VerificationError, InvalidHashError, UnicodeEncodeError):
        return False
    raise AssertionError("a random hash matched")


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(near_phc_strings())
def test_hash_problem_agrees_with_the_argon2_library(case: tuple[str, bool]) -> None:
    """Accepted means the library can verify against it; with version 19 and sane parameters (all of them
    here), refused means the library cannot: no stored hash is refused that would have worked."""
    text, version_19 = case
    accepted = hash_problem(text) is None
    if accepted:
        assert _library_accepts(text), text
        assert text.startswith("$argon2id$")
    elif version_19 and text.startswith("$argon2id$") and "\x00" not in text:
        # (The C library stops reading at a NUL, so it accepts a valid hash followed by anything after
        # one; refusing that is deliberate, see the next test.)
        assert not _library_accepts(text), text


def test_a_hash_with_anything_after_a_nul_is_refused() -> None:
    spoiled = hash_password("pw", parameters=CHEAP) + "\x00anything"
    assert _library_accepts(spoiled)  # argon2's C decoder sees only the part before the NUL
    assert hash_problem(spoiled) is not None


@given(st.text(max_size=200))
def test_hash_problem_never_raises(text: str) -> None:
    problem = hash_problem(text)
    assert problem is None or MAKE_ONE in problem
