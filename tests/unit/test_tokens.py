"""API tokens: their format, the stored digest, the constant-time table and the validator's reasons."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serialmuxd.auth.tokens import TokenTable, digest_problem, new_token, token_digest, user_name_problem


def test_a_token_is_the_prefix_and_32_random_bytes_in_url_safe_base64() -> None:
    token = new_token()
    assert re.fullmatch(r"smx_[A-Za-z0-9_-]{43}", token), token
    assert len(base64.urlsafe_b64decode(token[4:] + "=")) == 32


def test_tokens_do_not_repeat() -> None:
    assert len({new_token() for _ in range(1000)}) == 1000


def test_the_digest_is_the_lowercase_hex_sha256_of_the_whole_token() -> None:
    assert token_digest("smx_abc") == hashlib.sha256(b"smx_abc").hexdigest()
    # FIPS 180-2's test vector, so the expectation does not come from the code under test.
    assert token_digest("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    digest = token_digest(new_token())
    assert re.fullmatch(r"[0-9a-f]{64}", digest)


def test_the_table_maps_a_token_to_its_user() -> None:
    alice, bob = new_token(), new_token()
    table = TokenTable({token_digest(alice): "alice", token_digest(bob): "bob"})
    assert len(table) == 2
    assert table.match(alice) == "alice"
    assert table.match(bob) == "bob"
    assert table.match(new_token()) is None
    assert table.match("") is None
    assert table.match(alice + "x") is None
    assert table.match(alice[:-1]) is None
    assert table.match(token_digest(alice)) is None  # the stored digest is not a credential


def test_an_empty_table_matches_nothing() -> None:
    assert TokenTable({}).match(new_token()) is None


@given(st.text())
def test_match_never_raises(presented: str) -> None:
    """Whatever a client sends (lone surrogates from a surrogateescape-decoded line included)."""
    table = TokenTable({token_digest("smx_known"): "alice"})
    assert table.match(presented) == ("alice" if presented == "smx_known" else None)


def test_a_malformed_digest_is_refused_when_the_table_is_built() -> None:
    with pytest.raises(ValueError, match="bob"):
        TokenTable({token_digest("a"): "alice", token_digest("b").upper(): "bob"})


@pytest.mark.parametrize("position", ["first", "last", "none"])
def test_every_stored_digest_is_compared_whichever_matches(
    position: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No early exit: the same number of constant-time comparisons for the first, the last and no match."""
    issued = [new_token() for _ in range(50)]
    table = TokenTable({token_digest(token): f"user{i}" for i, token in enumerate(issued)})
    compared: list[tuple[bytes, bytes]] = []
    real_compare = hmac.compare_digest

    def counting_compare(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real_compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting_compare)
    presented = {"first": issued[0], "last": issued[-1], "none": new_token()}[position]
    expected = {"first": "user0", "last": "user49", "none": None}[position]
    assert table.match(presented) == expected
    assert len(compared) == 50
    assert all(len(a) == len(b) == 32 for a, b in compared)  # digests, never the raw token


def test_a_valid_digest_has_no_problem() -> None:
    assert digest_problem(token_digest(new_token())) is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "must be 64 lowercase hex characters (a SHA-256 from serialmuxd new-token), got 0 characters"),
        ("ab" * 31, "got 62 characters"),
        ("ab" * 33, "got 66 characters"),
        ("AB" * 32, "must be lowercase hex"),
        ("g" * 64, "must be 64 lowercase hex characters"),
        (" " + "a" * 64, "got 65 characters"),
    ],
)
def test_digest_problem_says_what_is_wrong(text: str, reason: str) -> None:
    problem = digest_problem(text)
    assert problem is not None and reason in problem


def test_a_token_pasted_instead_of_its_digest_is_recognised_and_not_quoted() -> None:
    token = new_token()
    problem = digest_problem(token)
    assert problem is not None
    assert "this is a token, not its SHA-256" in problem
    assert token not in problem and token[4:12] not in problem


@pytest.mark.parametrize("name", ["alice", "a", "Alice.Smith", "ci_bot-2", "0day", "x" * 64])
def test_user_names_that_are_accepted(name: str) -> None:
    assert user_name_problem(name) is None


@pytest.mark.parametrize(
    "name",
    ["", "-alice", ".alice", "_alice", "a b", "alice\n", "ålice", "alice@example.com", "x" * 65, "a/b"],
)
def test_user_names_that_are_refused(name: str) -> None:
    problem = user_name_problem(name)
    assert problem is not None and "letters, digits" in problem
