"""Command line: ``serialmuxd run|check-config|demo|hash-password|new-token|ssh-host-key``.

Exit codes: 0 success; 1 start-up failure (busy listen address, unusable state directory), or no usable
password for hash-password; 2 invalid configuration or usage.  Every failure is one line per problem on
stderr, naming the thing at fault.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shlex
import shutil
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .config import Config, load_config, parse_config
from .errors import ConfigError, StartupError

if TYPE_CHECKING:
    from .daemon import Daemon
    from .guest import GuestVM

EXIT_OK = 0
EXIT_STARTUP = 1
EXIT_CONFIG = 2

_DEMO_SHELL = "/bin/bash --noprofile --norc -i" if os.path.exists("/bin/bash") else "/bin/sh -i"


def demo_config_text(
    telnet_port: int, http_port: int, shell: str = _DEMO_SHELL, *, qemu: GuestVM | None = None
) -> str:
    """The embedded default: one console on loopback, with the browser page.

    Without ``qemu`` the console is a shell on a PTY (exec backend); with it, COM1 of a real QEMU guest plus
    its QMP socket, so NMI, reset and restart can be tried too.
    """
    if qemu is None:
        device = "exec:" + shell
        hypervisor = ""
    else:
        device = f"unix:{qemu.serial_socket}"
        hypervisor = f'\n[ports.hypervisor]\ntype = "qmp"\nsocket = {_toml_str(str(qemu.qmp_socket))}\n'
    return f"""
[daemon]
log_level = "info"

[http]
listen = "127.0.0.1:{http_port}"

[[ports]]
name = "demo"
device = {_toml_str(device)}
telnet = "127.0.0.1:{telnet_port}"
telnet_readonly = "127.0.0.1:{telnet_port + 100}"
replay_bytes = 4096
{hypervisor}"""


def client_command() -> str:
    """How to run ``serialmux`` from this installation, to copy and paste: by name when that is the one
    beside this Python, else that script's path (a virtualenv that is not activated, as under ./dev:
    ``.venv/bin/serialmux`` from the checkout), else this Python running the client module."""
    beside = Path(sys.executable).parent / "serialmux"
    if not os.access(beside, os.X_OK):
        return f"{shlex.quote(sys.executable)} -m serialmuxd.client"
    found = shutil.which("serialmux")
    if found is not None and Path(found).resolve() == beside.resolve():
        return "serialmux"
    try:
        return shlex.quote(str(beside.relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(beside))


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _run_loop(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run on uvloop when installed (loop_factory, never the deprecated policies), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        factory = None
    else:
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


async def _serve(config: Config, started: Callable[[Daemon], Awaitable[None]] | None = None) -> int:
    from .daemon import Daemon
    from .obs.logging import configure_logging, install_loop_exception_handler

    configure_logging(config.daemon.log_level, config.daemon.log_format)
    install_loop_exception_handler()  # e.g. accept() failing with EMFILE: one rate-limited structlog line
    try:
        daemon = Daemon(config)  # reads the users file: its problems are configuration problems (exit 2)
    except ConfigError as exc:
        print("\n".join(exc.lines()), file=sys.stderr)
        return EXIT_CONFIG
    daemon.install_signal_handlers()
    try:
        await daemon.start()
    except StartupError as exc:
        print(f"serialmuxd: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    _settle_heap()
    if started is not None:
        await started(daemon)
    await daemon.run_until_stopped()
    return EXIT_OK


def _settle_heap() -> None:
    """After start-up (READY is out): one collection of its garbage, then everything alive moves to the
    permanent generation, which later collections do not scan (the configuration, hubs, listeners: they
    live as long as the daemon), and the cyclic GC is on again (``_cmd_run`` turned it off).  Hubs a
    reload takes out are unfrozen and collected by ``reload/heap.py``."""
    gc.collect()
    gc.freeze()
    gc.enable()


def _cmd_run(args: argparse.Namespace) -> int:
    # Start-up allocates objects per port that all stay alive; the cyclic GC would scan the growing heap
    # again and again while they are built (quadratic: ~40 % of a 6,000-port start).  Off until READY.
    gc.disable()
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print("\n".join(exc.lines()), file=sys.stderr)
        return EXIT_CONFIG
    return _run_loop(lambda: _serve(config))


def _cmd_check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
        users = ""
        if config.auth is not None and config.auth.users_file is not None:
            from .auth.users import load_users

            directory = load_users(config.auth.users_file, [name for name, _ in config.auth.roles])
            users = f", {len(directory.users)} users and {len(directory.tokens)} tokens"
    except ConfigError as exc:
        print("\n".join(exc.lines()), file=sys.stderr)
        return EXIT_CONFIG
    for key, reason in config.warnings:
        print(f"{args.file}: {key}: warning: {reason}", file=sys.stderr)
    print(f"{args.file}: OK ({len(config.ports)} ports{users})")
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    return _run_loop(lambda: _demo(args))


async def _demo(args: argparse.Namespace) -> int:
    vm: GuestVM | None = None
    if args.qemu:
        from .guest import GuestError, GuestVM, ensure_guest

        print(
            "serialmuxd demo: preparing the QEMU guest (first run downloads a Debian kernel)...",
            file=sys.stderr,
            flush=True,
        )
        try:
            vm = GuestVM(await ensure_guest())
            # Paused until serialmuxd holds COM1, so the boot messages land in the scrollback.
            await vm.start(paused=True)
        except GuestError as exc:
            print(f"serialmuxd: cannot start the demo guest: {exc}", file=sys.stderr)
            return EXIT_STARTUP
    try:
        text = demo_config_text(args.telnet_port, args.http_port, qemu=vm)
        config = parse_config(text, "<embedded demo>")

        async def started(daemon: Daemon) -> None:
            if vm is not None:
                await vm.cont()
            rw = daemon.listener("demo", "telnet")
            ro = daemon.listener("demo", "telnet-readonly")
            assert daemon.http_address is not None
            what = (
                "COM1 of a QEMU guest (log in as root/root); Ctrl-E c n sends an NMI, c x resets"
                if vm is not None
                else f"a shell on a PTY (exec backend: {shlex.quote(_DEMO_SHELL)}), running as you"
            )
            url = f"http://{daemon.http_address[0]}:{daemon.http_address[1]}"
            print(
                f"\nserialmuxd demo: console 'demo' is {what}\n"
                "  loopback only, no authentication: every user of this machine can attach (it is a demo)\n"
                f"  attach (read-write):  telnet {rw.host} {rw.tcp_port}\n"
                f"  watch (read-only):    telnet {ro.host} {ro.tcp_port}\n"
                "    telnet keys:        Ctrl-E c ?  help,  Ctrl-E c .  detach\n"
                f"  with serialmux:       {client_command()} connect demo --url {url}\n"
                "    serialmux keys:     ~?  help,  ~.  detach (at the start of a line)\n"
                f"  in a browser:         {url}/console/demo\n"
                f"  stop the daemon:      Ctrl-C here, or kill -TERM {os.getpid()}\n",
                file=sys.stderr,
                flush=True,
            )

        return await _serve(config, started)
    finally:
        if vm is not None:
            await vm.close()


# ----------------------------------------------------------------------------------------------------
# hash-password and new-token: credentials for the users file ([auth] users_file).

_EXIT_REFUSED = 1  # hash-password: no usable password (mismatch, empty, not UTF-8, nothing on stdin)
_MAX_PIPED_PASSWORD_BYTES = 4096  # one line; stops a mistaken `< /dev/zero` from filling the memory


class _PasswordRefused(Exception):
    """Why no hash is printed; the message is shown as it is."""


def _password_from_terminal() -> str:
    import getpass

    # getpass turns echo off on the terminal and writes its prompts there, never on stdout, so
    # `serialmuxd hash-password > FILE` leaves exactly the hash in FILE.
    try:
        first = getpass.getpass("Password: ")
        if not first:
            raise _PasswordRefused("an empty password is refused")
        second = getpass.getpass("Password again: ")
    except (EOFError, KeyboardInterrupt):
        raise _PasswordRefused("no password entered") from None
    if second != first:
        raise _PasswordRefused("the two passwords do not match")
    return first


def _password_from_pipe() -> str:
    line = sys.stdin.buffer.readline(_MAX_PIPED_PASSWORD_BYTES + 1)
    if not line:
        raise _PasswordRefused("no password on stdin (expected one line)")
    # Only the line end goes: spaces may be part of the password.
    line = line.removesuffix(b"\n").removesuffix(b"\r")
    if len(line) > _MAX_PIPED_PASSWORD_BYTES:
        raise _PasswordRefused(f"the password is longer than {_MAX_PIPED_PASSWORD_BYTES} bytes")
    if not line:
        raise _PasswordRefused("an empty password is refused")
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise _PasswordRefused("the password is not valid UTF-8") from None


def _cmd_hash_password(args: argparse.Namespace) -> int:
    from .auth.passwords import hash_password

    try:
        if sys.stdin is None:
            raise _PasswordRefused("no stdin to read the password from")
        password = _password_from_terminal() if sys.stdin.isatty() else _password_from_pipe()
    except _PasswordRefused as exc:
        print(f"serialmuxd hash-password: {exc}; nothing printed", file=sys.stderr)
        return _EXIT_REFUSED
    print(hash_password(password))
    return EXIT_OK


def _user_name_argument(text: str) -> str:
    from .auth.tokens import user_name_problem

    problem = user_name_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{problem}, got {text!r}")
    return text


def _cmd_new_token(args: argparse.Namespace) -> int:
    from .auth.tokens import new_token, token_digest

    token = new_token()
    # stdout holds the secret and nothing else (`TOKEN=$(serialmuxd new-token ci)`); stderr is TOML as a
    # whole, comments included, so it can be appended to the users file as it is.
    print(token, flush=True)
    print(
        "# Add to the users file ([auth] users_file).  The token was printed once, on stdout; only its\n"
        "# SHA-256 is stored, so it cannot be shown again (lost: make a new one, delete this entry).\n"
        "[[tokens]]\n"
        f"name = {_toml_str(args.name)}\n"
        f"sha256 = {_toml_str(token_digest(token))}\n"
        'grants = []  # fill in, e.g. [{ role = "operator", ports = ["vm*"] }]: no grants, no access',
        file=sys.stderr,
    )
    return EXIT_OK


def _cmd_ssh_host_key(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print("\n".join(exc.lines()), file=sys.stderr)
        return EXIT_CONFIG
    from .frontends.ssh_hostkey import fingerprint_lines, load_host_keys

    try:
        # Generates the default key when there is none yet, exactly as the daemon's first start would.
        keys = load_host_keys(config.ssh.host_keys, config.daemon.state_dir)
    except StartupError as exc:
        print(f"serialmuxd: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    for line in fingerprint_lines(keys):
        print(line)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="serialmuxd",
        description=(
            "Serial-console multiplexer: owns the COM1 ports of the machines on this host (ttys, PTYs, QEMU "
            "chardev sockets, programs such as ipmitool SOL) and lets people attach over telnet/raw TCP, "
            "ssh, a browser page or the serialmux client: one writer at a time with takeover, read-only "
            "viewers, scrollback replayed on attach, console logs on disk; SIGHUP reloads the configuration."
        ),
        epilog=(
            "Exit codes: 0 ok, 1 start-up failure (e.g. busy listen address) or no usable password "
            "(hash-password), 2 invalid configuration or usage."
        ),
    )
    parser.add_argument("--version", action="version", version=f"serialmuxd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon with a configuration file")
    run.add_argument(
        "--config", "-c", required=True, metavar="FILE", help="TOML file (see config.example.toml)"
    )
    run.set_defaults(func=_cmd_run)

    check = sub.add_parser(
        "check-config", help="validate a configuration file; prints 'FILE: key.path: reason' per problem"
    )
    check.add_argument("file", metavar="FILE")
    check.set_defaults(func=_cmd_check)

    demo = sub.add_parser(
        "demo", help="run with an embedded demo console (a shell on a PTY, or a QEMU guest) to try it out"
    )
    demo.add_argument(
        "--telnet-port",
        type=int,
        default=7001,
        metavar="PORT",
        help="interactive telnet port on 127.0.0.1 (read-only viewers get PORT+100; default 7001)",
    )
    demo.add_argument(
        "--http-port",
        type=int,
        default=8480,
        metavar="PORT",
        help="HTTP port on 127.0.0.1 for the browser console and the API (default 8480)",
    )
    demo.add_argument(
        "--qemu",
        action="store_true",
        help="use a real QEMU guest (Debian kernel + busybox, built and cached on first use) with NMI/reset",
    )
    demo.set_defaults(func=_cmd_demo)

    hash_password = sub.add_parser(
        "hash-password",
        help="print the argon2id hash of a password for the users file (reads stdin; no echo on a terminal)",
        description=(
            "Print the argon2id hash of a password, for password_hash in the users file. On a terminal it "
            "asks twice without echo; from a pipe it reads one line (the line end is not part of it)."
        ),
        epilog="Exit codes: 0 hash printed, 1 no usable password (empty, mismatched, not UTF-8, no input).",
    )
    hash_password.set_defaults(func=_cmd_hash_password)

    token = sub.add_parser(
        "new-token",
        help="print a new API token once; on stderr, its [[tokens]] entry (a SHA-256) for the users file",
    )
    token.add_argument(
        "name",
        metavar="NAME",
        type=_user_name_argument,
        help="user name the token acts as: 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit",
    )
    token.set_defaults(func=_cmd_new_token)

    host_key = sub.add_parser(
        "ssh-host-key",
        help="print the SSH host key fingerprints ([ssh]); generates the key if there is none yet",
        description=(
            "Print 'ALGORITHM SHA256:…' for each SSH host key: ssh.host_keys, or the ed25519 key in "
            "daemon.state_dir, generated (mode 0600) if it does not exist yet; run it as the daemon's user."
        ),
    )
    host_key.add_argument(
        "--config", "-c", required=True, metavar="FILE", help="TOML file (see config.example.toml)"
    )
    host_key.set_defaults(func=_cmd_ssh_host_key)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
