"""The users file: what is read, every problem as FILE: key.path: reason, and the permission check."""

from __future__ import annotations

from pathlib import Path

import pytest

from serialmuxd.auth.passwords import hash_password
from serialmuxd.auth.tokens import token_digest
from serialmuxd.auth.users import load_users
from serialmuxd.core.grants import Grant
from serialmuxd.errors import ConfigError

HASH = hash_password("pw")
DIGEST = token_digest("smx_example")


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "users.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


def problems(path: Path, roles: tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_users(path, roles)
    return str(caught.value).splitlines()


def test_users_and_tokens_are_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f'[[users]]\nname = "alice"\npassword_hash = "{HASH}"\n'
        'grants = [{ role = "operator", ports = ["vm*"] }]\n'
        '[[users]]\nname = "carl"\ncert_names = ["carl@example.com"]\n'
        f'[[tokens]]\nname = "ci"\nsha256 = "{DIGEST}"\ngrants = [{{ role = "auditor", ports = ["*"] }}]\n',
    )
    directory = load_users(path, ("auditor",))
    assert directory.grants() == {
        "alice": (Grant("operator", ("vm*",)),),
        "carl": (),
        "ci": (Grant("auditor", ("*",)),),
    }
    assert directory.password_hashes() == {"alice": HASH}
    assert directory.token_digests() == {DIGEST: "ci"}
    assert directory.certificate_names() == {"alice": "alice", "carl@example.com": "carl"}


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o666])
def test_a_file_others_can_access_is_refused(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path, '[[users]]\nname = "a"\n', mode)
    (line,) = problems(path)
    assert line.startswith(f"{path}: (file): is accessible by other users (mode {mode:04o})")
    assert f"chmod 600 {path}" in line


def test_every_problem_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[users]]\nname = "alice"\npassword_hash = "$2b$12$abc"\n'
        'grants = [{ role = "oprator", ports = ["vm1"] }]\n'
        '[[users]]\nname = "alice"\n'
        '[[users]]\nname = "bad name"\npasword = "x"\n'
        f'[[tokens]]\nname = "t1"\nsha256 = "{DIGEST}"\n'
        f'[[tokens]]\nname = "t2"\nsha256 = "{DIGEST}"\n'
        '[[tokens]]\nname = "t3"\nsha256 = "ABC"\n'
        "[extra]\n",
    )
    lines = problems(path)
    expected = "unknown key; the users file holds [[users]], [[tokens]] and ssh_ca_keys"
    assert lines[0] == f"{path}: extra: {expected}"
    assert any(line.startswith(f"{path}: users[0].password_hash: not an argon2id hash") for line in lines)
    assert (
        f"{path}: users[0].grants[0].role: unknown role 'oprator'; did you mean 'operator'? "
        "(roles: admin, operator, viewer)" in lines
    )
    assert (
        f"{path}: users[1].name: duplicate name 'alice', already used by users[0]" in lines
    )  # also when users[0] has another problem
    assert any(line.startswith(f"{path}: users[2].name: must be 1-128 characters") for line in lines)
    assert f"{path}: users[2].pasword: unknown key; did you mean 'password_hash'?" in lines
    assert f"{path}: tokens[1].sha256: the same token as tokens[0]: every token must be different" in lines
    assert any(line.startswith(f"{path}: tokens[2].sha256:") for line in lines)


def test_a_token_and_a_user_cannot_share_a_name(tmp_path: Path) -> None:
    path = write(tmp_path, f'[[users]]\nname = "ci"\n[[tokens]]\nname = "ci"\nsha256 = "{DIGEST}"\n')
    assert problems(path) == [f"{path}: tokens[0].name: duplicate name 'ci', already used by users[0]"]


def test_unreadable_and_broken_files(tmp_path: Path) -> None:
    assert problems(tmp_path / "missing.toml") == [
        f"{tmp_path / 'missing.toml'}: (file): No such file or directory"
    ]
    path = write(tmp_path, "[[users]\n")
    assert problems(path)[0].startswith(f"{path}: (toml): ")
