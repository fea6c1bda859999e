"""The SSH front end's host keys: the configured files, or one ed25519 key generated on first start.

A generated key lives in ``daemon.state_dir/ssh_host_ed25519_key`` (OpenSSH format, mode 0600, its public
half next to it as ``.pub``).  It is written to a temporary file in the same directory, flushed and renamed
into place, so a crash never leaves a half-written key that the next start would refuse or, worse, a key
readable by others.  A key file that others can read is refused, like OpenSSH's sshd does.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import StartupError

if TYPE_CHECKING:
    import asyncssh

HOST_KEY_NAME = "ssh_host_ed25519_key"


def host_key_paths(host_keys: tuple[Path, ...], state_dir: Path | None) -> tuple[tuple[Path, ...], bool]:
    """(the files to use, whether the one generated key is meant)."""
    if host_keys:
        return host_keys, False
    if state_dir is None:
        raise StartupError("[ssh] has no host key: set ssh.host_keys or daemon.state_dir")
    return (state_dir / HOST_KEY_NAME,), True


def load_host_keys(host_keys: tuple[Path, ...], state_dir: Path | None) -> list[asyncssh.SSHKey]:
    """The server's host keys; generates the default one when it does not exist yet.  ``StartupError``
    naming the file when one cannot be read, is readable by others or is no private key."""
    paths, generated = host_key_paths(host_keys, state_dir)
    if generated and not paths[0].exists():
        return [_generate(paths[0])]
    return [_read(path) for path in paths]


def fingerprint_lines(keys: list[asyncssh.SSHKey]) -> list[str]:
    """``ssh-ed25519 SHA256:…`` per key: what a client's first connection shows, to compare."""
    return [f"{key.get_algorithm()} {key.get_fingerprint()}" for key in keys]


def _read(path: Path) -> asyncssh.SSHKey:
    import asyncssh

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise StartupError(f"ssh host key {path}: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise StartupError(f"ssh host key {path}: not a regular file")
        if mode & 0o077:
            raise StartupError(
                f"ssh host key {path}: is accessible by other users (mode {stat.S_IMODE(mode):04o}); "
                f"chmod 600 {path}"
            )
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = file.read(1024 * 1024)
    finally:
        os.close(fd)
    try:
        return asyncssh.import_private_key(data)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise StartupError(f"ssh host key {path}: not an unencrypted private key ({str(exc)[:80]})") from None


def _generate(path: Path) -> asyncssh.SSHKey:
    import asyncssh

    key = asyncssh.generate_private_key("ssh-ed25519", comment="serialmuxd host key")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_atomically(path, key.export_private_key("openssh"), 0o600)
        _write_atomically(path.with_name(path.name + ".pub"), key.export_public_key("openssh"), 0o644)
    except OSError as exc:
        raise StartupError(f"ssh host key {path}: cannot write it: {exc.strerror or exc}") from None
    return key


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
