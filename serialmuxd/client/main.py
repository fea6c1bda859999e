"""``serialmux``: arguments, settings and dispatch; every failure is one ``serialmux: ...`` line on stderr
and an exit code from ``errors.Exit``."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn

from .. import __version__
from . import commands, escape
from .completion import SEND_ACTIONS, bash_script
from .connect import Interactive
from .errors import ClientError, Exit
from .http import Api
from .settings import authorization, config_path, environment, load_file, resolve

EPILOG = """\
exit codes: 0 ok, 1 usage or bad request, 2 console (or offset) not found, 3 unauthorized or forbidden,
4 conflict (someone else is writing; taken over), 5 unavailable (daemon unreachable, console disabled or
offline, hypervisor unavailable), 6 failed (hypervisor refused or failed, not supported), 128+N killed by
signal N.

environment: SERIALMUX_URL, SERIALMUX_TOKEN_FILE, SERIALMUX_USER, SERIALMUX_PASSWORD, SERIALMUX_CA_FILE,
SERIALMUX_CERT_FILE, SERIALMUX_KEY_FILE, SERIALMUX_ESCAPE, SERIALMUX_CONFIG (default
~/.config/serialmux/config.toml, keys: url, token_file, user, ca_file, cert_file, key_file, escape)."""


class Parser(argparse.ArgumentParser):
    """Usage errors exit with 1 (argparse's own 2 is our "not found")."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(int(Exit.USAGE), f"serialmux: {message}\n")


def _offset(text: str) -> int:
    if not text.isdigit() or len(text) > 19:
        raise argparse.ArgumentTypeError(f"an offset is a byte number >= 0, got {text!r}")
    return int(text)


def _common(parser: argparse.ArgumentParser, top: bool) -> None:
    """Connection options, accepted before and after the command."""
    default = None if top else argparse.SUPPRESS
    group = parser.add_argument_group("connection")
    group.add_argument("--url", default=default, help="the daemon, http(s)://HOST:PORT ($SERIALMUX_URL)")
    group.add_argument("--token-file", default=default, help="a file holding an API token (Bearer)")
    group.add_argument(
        "--user", "-u", default=default, help="a user name; password from $SERIALMUX_PASSWORD or a prompt"
    )
    group.add_argument("--ca-file", default=default, help="CA certificates to verify the daemon's TLS with")
    group.add_argument("--cert-file", default=default, help="a TLS client certificate (PEM)")
    group.add_argument("--key-file", default=default, help="the client certificate's key, if not in it")
    group.add_argument(
        "--config",
        default=default,
        help="client config file (default: $SERIALMUX_CONFIG or ~/.config/serialmux/config.toml)",
    )


def build_parser() -> Parser:
    parser = Parser(
        prog="serialmux",
        description="Client of serialmuxd: consoles over its HTTP API.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"serialmux {__version__}")
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common(p, top=False)
        return p

    p = command("connect", "attach a terminal to a console (~. detaches, ~? lists the escape commands)")
    p.add_argument("console")
    p.add_argument("--read-only", action="store_true", help="watch only")
    p.add_argument("--force", "-f", action="store_true", help="take write access even if someone is writing")
    p.add_argument(
        "--from",
        dest="from_offset",
        type=_offset,
        metavar="OFFSET",
        help="start at this stream offset instead of the replay",
    )
    p.add_argument(
        "--escape", "-e", metavar="CHAR", help="escape character: ~ (default), ^X for a control key, or none"
    )

    p = command("ports", "list the consoles you may see: name, state, writer, viewers, VM state")
    p.add_argument("--group", "-g", help="only this group's consoles")
    p.add_argument("--json", action="store_true", help="the daemon's JSON")
    p.add_argument("--names", action="store_true", help="names only, one per line (for completion)")

    p = command("log", "print a console's scrollback (control characters made visible unless --raw)")
    p.add_argument("console")
    p.add_argument("--follow", "-F", action="store_true", help="then keep printing new output")
    p.add_argument(
        "--from",
        dest="from_offset",
        type=_offset,
        metavar="OFFSET",
        help="start at this stream offset (default: the oldest kept)",
    )
    p.add_argument("--raw", action="store_true", help="the bytes as they are")

    p = command("send", "send NMI, reset, restart, start, BREAK, SysRq or a named key to a console")
    actions = p.add_subparsers(dest="what", required=True, metavar="ACTION")
    for action in SEND_ACTIONS:
        q = actions.add_parser(action, help=f"send {action}")
        _common(q, top=False)
        if action == "sysrq":
            q.add_argument("key", help="the SysRq command key, e.g. s (sync), u, b")
        elif action == "key":
            q.add_argument("keys", nargs="+", metavar="KEY", help="key names, e.g. F8 (per the key profile)")
        q.add_argument("console")

    for name in ("enable", "disable"):
        p = command(name, f"{name} one console, or with no CONSOLE every console on the host")
        p.add_argument("console", nargs="?")
        p.add_argument("--reason", help="shown to users (disable)")

    command("status", "the daemon's health, its consoles by state, console access, who is writing")
    p = command("completion", "print a shell completion script")
    p.add_argument("shell", choices=["bash"])
    return parser


def _no_prompt(text: str) -> str:
    """``ports --names`` runs under shell completion: a password prompt there would hang the shell."""
    raise EOFError


async def _with_api(args: argparse.Namespace, run: Callable[[Api], Awaitable[int]]) -> int:
    env = environment()
    explicit = args.config
    file = load_file(config_path({**env, "SERIALMUX_CONFIG": explicit} if explicit else env), bool(explicit))
    flags = {
        k: getattr(args, k, None)
        for k in ("url", "token_file", "user", "ca_file", "cert_file", "key_file", "escape")
    }
    settings = resolve(flags, env, file)
    header = authorization(settings, _no_prompt if getattr(args, "names", False) else getpass.getpass)
    async with Api(settings, header) as api:
        return await run(api)


async def _connect(args: argparse.Namespace, api: Api) -> int:
    try:
        escape_byte = escape.parse_escape(api.settings.escape)
    except ValueError as exc:
        raise ClientError(str(exc), Exit.USAGE) from None
    session = Interactive(
        api,
        args.console,
        read_only=args.read_only,
        force=args.force,
        from_offset=args.from_offset,
        escape_byte=escape_byte,
    )
    return await session.run()


_COMMANDS: dict[str, Callable[[argparse.Namespace, Api], Awaitable[int]]] = {
    "connect": _connect,
    "ports": commands.ports,
    "log": commands.log,
    "send": commands.send,
    "enable": commands.enable,
    "disable": commands.enable,
    "status": commands.status,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "completion":
        sys.stdout.write(bash_script())
        return Exit.OK
    handler = _COMMANDS[args.command]
    try:
        return asyncio.run(_with_api(args, lambda api: handler(args, api)))
    except ClientError as exc:
        print(f"serialmux: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return int(Exit.INTERRUPTED)
    except BrokenPipeError:  # `serialmux log vm1 | head`
        return int(Exit.OK)
