"""Local users' passwords: argon2id hashes, verified off the event loop with bounded concurrency.

Theory of operation
-------------------
``hash_password`` makes a PHC string (``$argon2id$v=19$m=65536,t=3,p=1$salt$digest``) for the users file;
``serialmuxd hash-password`` is its command line.  ``verify_password`` checks a login against it.

The parameters (``PARAMETERS``), chosen for a console server on a 2-core host:

- **argon2id**: the RFC 9106 default (side-channel resistant first pass, GPU-resistant rest).
- **memory_cost = 64 MiB, time_cost = 3**: RFC 9106's second recommended option ("t=3, 64 MiB" for
  memory-constrained hosts) and above OWASP's minimum (19 MiB, t=2).  One verification measured on this
  2-core host, median of 20: 127 ms idle, 143 ms through ``verify_password`` with the other core busy
  (t=2: 92 ms; t=4: 165 ms).  A person logging in does not notice it; an attacker pays it per guess, and
  memory, not arithmetic, bounds what a GPU can do in parallel.
- **parallelism = 1**: one lane, so one verification occupies exactly one core.  p=2 would halve the
  latency on 2 cores (52 ms at t=2) but let every single login take both cores away from the consoles.

A verification is CPU-bound C code (argon2-cffi releases the GIL), so it runs in the loop's default
executor, never on the event loop: inline, four verifications stalled every console for over a second.
At most ``MAX_CONCURRENT_VERIFICATIONS`` run at once (half the usable cores, at least one: one on this
host), so a flood of logins costs at most that many cores and 64 MiB each; further logins queue, in
order, on an ``asyncio.Semaphore``.  The queue is as long as the connections allowed to be logging in
(``core/throttle.py``'s ``ConnectionGate``): a full one of 100 costs the last login about 14 s.  The slot
is given back when the worker thread finishes, not when the waiting coroutine is cancelled: a client that
disconnects mid-verification must not let the next one start while its thread still burns a core.  One
semaphore per event loop (asyncio primitives bind to the loop that first waits on them).

No user enumeration by timing: a login for a user name that does not exist calls
``verify_unknown_user``, which verifies against ``DUMMY_HASH`` (same parameters, a password nobody knows)
through the same queue, and returns False.  A malformed stored hash takes the same path.  Stored hashes
made with other parameters (an older ``PARAMETERS``) do cost a different time; ``needs_rehash`` is not
acted on yet.

``hash_problem`` is for the users-file validator: it parses the PHC string at least as strictly as the
argon2 C library (canonical base64, no leading zeros, nothing after a NUL, where the C decoder would stop
reading: a test checks it against the library) and also refuses parameters that would turn
every login into a denial of service (``MAX_MEMORY_KIB``, ``MAX_TIME_COST``, ``MAX_PARALLELISM``), older
argon2 versions and other algorithms.  Its reasons never quote the text beyond a ``$id$`` prefix: a
password pasted into ``password_hash`` by mistake must not end up in a log.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import weakref
from collections.abc import Callable
from typing import Final

from argon2 import Parameters, PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

PARAMETERS: Final = Parameters(
    type=Type.ID,
    version=19,
    salt_len=16,
    hash_len=32,
    time_cost=3,
    memory_cost=64 * 1024,  # KiB
    parallelism=1,
)

# Bounds on a stored hash's parameters, far above PARAMETERS: a users-file entry (a typo, or a copy of
# RFC 9106's 2 GiB profile) must not make every login allocate gigabytes or take many seconds.
MAX_MEMORY_KIB: Final = 256 * 1024
MAX_TIME_COST: Final = 10
MAX_PARALLELISM: Final = 8  # each lane is a thread
SALT_BYTES_RANGE: Final = (8, 64)  # argon2's minimum salt is 8 bytes
DIGEST_BYTES_RANGE: Final = (4, 64)  # argon2's minimum output is 4 bytes

# A hash of a random password that was thrown away, made with PARAMETERS (a test keeps them equal).
DUMMY_HASH: Final = (
    "$argon2id$v=19$m=65536,t=3,p=1$jRThjEE8FQiJXtkCGeWH9w$BYV82fXWwO+bItxofeTx1AaFq89m+NUUDH0w6rKFBkU"
)


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # honours taskset/cgroup cpusets, unlike os.cpu_count()
    except (AttributeError, OSError):
        return os.cpu_count() or 1


MAX_CONCURRENT_VERIFICATIONS: Final = max(1, _usable_cores() // 2)

_MAKE_ONE = "make one with serialmuxd hash-password"
# The argon2 C decoder's grammar: decimal numbers without leading zeros, unpadded standard base64.
_NUMBER = r"(0|[1-9][0-9]{0,9})"
_B64 = r"([A-Za-z0-9+/]+)"
_PHC_RE = re.compile(rf"\$argon2id\$v={_NUMBER}\$m={_NUMBER},t={_NUMBER},p={_NUMBER}\${_B64}\${_B64}")
_ID_PREFIX_RE = re.compile(r"\$[A-Za-z0-9-]{1,16}\$")

# Any PasswordHasher verifies any argon2 hash: the parameters come from the hash itself.
_HASHER: Final = PasswordHasher.from_parameters(PARAMETERS)
_semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def _secret_bytes(password: str) -> bytes:
    # surrogatepass: a str decoded with surrogateescape (odd bytes from a telnet line) still encodes, the
    # same way when hashed and when verified, instead of raising in the middle of a login.
    return password.encode("utf-8", "surrogatepass")


def hash_password(password: str, *, parameters: Parameters = PARAMETERS) -> str:
    """The argon2id PHC string for ``password`` with a fresh random salt.

    ``parameters`` exists for tests, which need many cheap hashes; the users file wants the default.
    """
    return PasswordHasher.from_parameters(parameters).hash(_secret_bytes(password))


def _canonical_b64_length(text: str) -> int | None:
    """Decoded length of unpadded base64 ``text``, or None unless it is the one canonical encoding."""
    if len(text) % 4 == 1:
        return None
    decoded = base64.b64decode(text + "=" * (-len(text) % 4))
    # The C decoder refuses non-zero trailing bits; re-encoding is the simplest exact test for them.
    if base64.b64encode(decoded).decode("ascii").rstrip("=") != text:
        return None
    return len(decoded)


def hash_problem(text: str) -> str | None:
    """None if ``text`` is an argon2id hash serialmuxd verifies against, else why not (for the validator)."""
    if not text.startswith("$argon2id$"):
        prefix = _ID_PREFIX_RE.match(text)
        if text.startswith(("$argon2i$", "$argon2d$")):
            what = f"an {text[1:8]} hash; only argon2id is accepted"
        elif prefix is not None:
            what = f"not an argon2id hash (it starts with {prefix.group()!r})"
        else:
            what = "not an argon2id hash (it does not start with '$argon2id$'; never put a password here)"
        return f"{what}; {_MAKE_ONE}"
    found = _PHC_RE.fullmatch(text)
    if found is None:
        return (
            "not a well-formed argon2id hash (expected $argon2id$v=19$m=...,t=...,p=...$salt$digest); "
            + _MAKE_ONE
        )
    version, memory_kib, time_cost, parallelism = (int(found.group(i)) for i in range(1, 5))
    if version != 19:
        return f"argon2 version {version} is not accepted (only v=19, argon2 1.3); {_MAKE_ONE}"
    if time_cost < 1 or parallelism < 1 or memory_kib < 8 * parallelism:
        return f"invalid argon2 parameters (t >= 1, p >= 1 and m >= 8 * p are needed); {_MAKE_ONE}"
    if memory_kib > MAX_MEMORY_KIB or time_cost > MAX_TIME_COST or parallelism > MAX_PARALLELISM:
        return (
            f"argon2 parameters too costly for a login (at most m={MAX_MEMORY_KIB} KiB, t={MAX_TIME_COST}, "
            f"p={MAX_PARALLELISM}); {_MAKE_ONE}"
        )
    for group, name, (low, high) in ((5, "salt", SALT_BYTES_RANGE), (6, "digest", DIGEST_BYTES_RANGE)):
        length = _canonical_b64_length(found.group(group))
        if length is None:
            return f"the {name} is not valid unpadded base64; {_MAKE_ONE}"
        if not low <= length <= high:
            return f"the {name} has {length} bytes, expected {low} to {high}; {_MAKE_ONE}"
    return None


def _check(stored_hash: str, password: bytes) -> bool:
    """The blocking verification, run in a worker thread.  A wrong password or a hash the library cannot
    use is an answer (False), not an error: a login must never fail with a traceback."""
    try:
        return _HASHER.verify(stored_hash, password)
    except VerificationError:  # VerifyMismatchError (wrong password), decoding and memory failures
        return False
    except InvalidHashError:  # unreachable behind hash_problem, kept so that no caller depends on it
        return False


def _semaphore(loop: asyncio.AbstractEventLoop) -> asyncio.Semaphore:
    semaphore = _semaphores.get(loop)
    if semaphore is None:
        semaphore = _semaphores[loop] = asyncio.Semaphore(MAX_CONCURRENT_VERIFICATIONS)
    return semaphore


async def _bounded(check: Callable[[], bool]) -> bool:
    loop = asyncio.get_running_loop()
    semaphore = _semaphore(loop)
    await semaphore.acquire()
    try:
        work = loop.run_in_executor(None, check)
    except BaseException:
        semaphore.release()
        raise

    def finished(done: asyncio.Future[bool]) -> None:
        semaphore.release()
        if not done.cancelled():
            done.exception()  # retrieved: a cancelled login's result is not "never retrieved"

    # shield: cancelling the login must not mark the work done (and free the slot) while the thread runs.
    work.add_done_callback(finished)
    return await asyncio.shield(work)


async def verify_password(stored_hash: str, password: str) -> bool:
    """True if ``password`` matches ``stored_hash``.  False for a wrong password and for a malformed or
    over-costly hash (which costs the same time as a real check); never raises for either."""
    secret = _secret_bytes(password)
    if hash_problem(stored_hash) is not None:
        await _bounded(lambda: _check(DUMMY_HASH, secret))
        return False
    return await _bounded(lambda: _check(stored_hash, secret))


async def verify_unknown_user(password: str) -> bool:
    """Spend what verifying a known user's password costs, then return False (no enumeration by timing)."""
    secret = _secret_bytes(password)
    await _bounded(lambda: _check(DUMMY_HASH, secret))
    return False
