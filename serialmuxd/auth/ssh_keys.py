"""SSH public keys in the users file: ``ssh_keys`` (a user's keys) and ``ssh_ca_keys`` (trusted user CAs).

Each entry is one ``authorized_keys`` line: ``[OPTIONS] TYPE BASE64 [COMMENT]``.  Only options that change
nothing here are accepted (``restrict``, ``no-agent-forwarding``, ``no-port-forwarding``,
``no-X11-forwarding``, ``no-user-rc``: serialmuxd never offers forwarding, agents, X11 or a shell); every
other option (``command=``, ``from=``, ``environment=``, ``no-pty``, ``permitopen=``, ``principals=``,
``cert-authority``, ``expiry-time=`` ...) is refused with the reason, rather than accepted and silently not
enforced.  A certificate line is refused too (its CA belongs in ``ssh_ca_keys``).  DSA keys and RSA keys
under 2048 bits are refused: OpenSSH itself no longer accepts them.

asyncssh parses the key itself (imported here lazily: the users file of a daemon without ``[ssh]`` and
without SSH keys never loads it).
"""

from __future__ import annotations

from dataclasses import dataclass

NO_OP_OPTIONS = frozenset(
    {"restrict", "no-agent-forwarding", "no-port-forwarding", "no-x11-forwarding", "no-user-rc"}
)
MIN_RSA_BITS = 2048
MAX_LINE_CHARS = 16 * 1024


@dataclass(frozen=True, slots=True)
class SshPublicKey:
    blob: bytes  # the key in SSH wire format: what a client presents, and the lookup key
    algorithm: str  # "ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa", ...
    fingerprint: str  # "SHA256:…", for messages and audit lines
    comment: str


def _split_options(line: str) -> tuple[str, str]:
    """(options, rest): the options field ends at the first blank outside double quotes."""
    quoted = False
    for index, char in enumerate(line):
        if char == '"':
            quoted = not quoted
        elif char in " \t" and not quoted:
            return line[:index], line[index:].strip()
    return line, ""


def _looks_like_key_type(word: str) -> bool:
    return word.startswith(("ssh-", "ecdsa-", "sk-", "rsa-", "x509v3-"))


def parse_public_key_line(line: str, *, ca: bool = False) -> SshPublicKey:
    """One ``ssh_keys`` (or with ``ca`` one ``ssh_ca_keys``) entry; ``ValueError`` with the reason."""
    import asyncssh

    line = line.strip()
    if not line:
        raise ValueError("is empty; expected an authorized_keys line such as 'ssh-ed25519 AAAA… comment'")
    if len(line) > MAX_LINE_CHARS:
        raise ValueError(f"is longer than {MAX_LINE_CHARS} characters")
    first = line.split(None, 1)[0]
    if not _looks_like_key_type(first):
        options, line = _split_options(line)
        for option in options.split(","):
            name = option.split("=", 1)[0].lower()
            if ca and name == "cert-authority":
                continue  # redundant in ssh_ca_keys, and harmless
            if name not in NO_OP_OPTIONS:
                where = "ssh_ca_keys" if ca else "ssh_keys"
                raise ValueError(
                    f"option {option[:40]!r} is not supported in {where} (accepted: "
                    f"{', '.join(sorted(NO_OP_OPTIONS))}); remove it"
                )
        if not line:
            raise ValueError("has options but no key")
    key_type = line.split(None, 1)[0]
    if "-cert-v01@openssh.com" in key_type:
        raise ValueError(
            "is a certificate, not a key: list the certificate authority's public key in ssh_ca_keys "
            "(top level of the users file) instead"
        )
    try:
        key = asyncssh.import_public_key(line)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise ValueError(f"is not an SSH public key ({str(exc)[:80]})") from None
    algorithm = key.algorithm.decode("ascii", "replace")
    if algorithm == "ssh-dss":
        raise ValueError("is a DSA key; DSA is too weak and no longer supported by OpenSSH: use ed25519")
    if algorithm == "ssh-rsa":
        bits = int(getattr(key.pyca_key, "key_size", 0))
        if bits < MIN_RSA_BITS:
            raise ValueError(f"is a {bits}-bit RSA key; at least {MIN_RSA_BITS} bits are needed (or ed25519)")
    comment = key.get_comment() or ""
    return SshPublicKey(key.public_data, algorithm, key.get_fingerprint(), comment)
