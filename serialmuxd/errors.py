"""One error hierarchy for the daemon.

The split follows h11: a ``RemoteError`` is the peer's fault (bad telnet bytes, a client that falls behind)
and costs only that peer its session; a ``LocalError`` is ours or the host's (bad config, busy address, device
path) and is reported to the operator.  Messages of ``RemoteError`` may be shown to the peer; messages of
``LocalError`` go to the operator's log and never to a client.
"""

from __future__ import annotations


class SerialmuxdError(Exception):
    """Base class of every error serialmuxd raises on purpose."""


class LocalError(SerialmuxdError):
    """Something on this host is wrong: configuration, a device, a listen address."""


class ConfigError(LocalError):
    """The configuration is invalid.  ``problems`` holds one ``(key_path, reason)`` per problem found."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        """One ``FILE: key.path: reason`` line per problem, the format ``check-config`` prints."""
        return [f"{self.source}: {key}: {reason}" for key, reason in self.problems]


class StartupError(LocalError):
    """The daemon cannot start: a busy listen address, an unusable state directory."""


class RemoteError(SerialmuxdError):
    """The peer broke the protocol or a limit; the reason may be shown to that peer only."""
