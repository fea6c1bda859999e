"""Device links: the daemon's side of a guest's COM1 (see ``base`` for the contract and the reconnect loop).

``open_link`` is the only entry point the rest of the daemon needs.  Backends:

* ``tty``  — ``tty.TtyLink``: a serial port or a PTY slave, termios through pyserial, fd + ``add_reader``.
* ``unix`` — ``sockets.UnixLink``: a QEMU socket chardev.
* ``tcp``  — ``sockets.TcpLink``: a QEMU tcp chardev or a terminal server's raw port.
* ``exec`` — ``program.ExecLink``: a program on a PTY, restarted when it exits.
"""

from __future__ import annotations

from ..config import DeviceKind, DeviceSpec, SerialSettings
from .base import DeviceLink, DeviceListener, LinkOptions, LinkState
from .program import ExecLink
from .sockets import TcpLink, UnixLink
from .tty import TtyLink

__all__ = ["DeviceLink", "DeviceListener", "LinkState", "open_link"]

_DEFAULT_SERIAL = SerialSettings()


def open_link(
    name: str,
    spec: DeviceSpec,
    listener: DeviceListener,
    *,
    serial: SerialSettings = _DEFAULT_SERIAL,
    write_buffer_limit: int = 65536,
    reconnect_initial_s: float = 0.1,
    reconnect_max_s: float = 5.0,
) -> DeviceLink:
    """Create the link for ``spec`` and start it; outcomes arrive through ``listener``.

    Must be called with a running event loop (the link starts its reconnect task at once; a later
    ``start()`` is a no-op).  ``name`` is the port name, used for the task name and in error reports.
    ``serial`` only applies to ``tty`` devices.  Raises ``ValueError`` for a spec that cannot work at all
    (empty path or command, bad port number, bad serial settings, backoff bounds out of order).
    """
    link: DeviceLink
    options: LinkOptions = {
        "write_buffer_limit": write_buffer_limit,
        "reconnect_initial_s": reconnect_initial_s,
        "reconnect_max_s": reconnect_max_s,
    }
    match spec.kind:
        case DeviceKind.TTY:
            link = TtyLink(name, spec.path, listener, serial=serial, **options)
        case DeviceKind.UNIX:
            link = UnixLink(name, spec.path, listener, **options)
        case DeviceKind.TCP:
            link = TcpLink(name, spec.host, spec.port, listener, **options)
        case DeviceKind.EXEC:
            link = ExecLink(name, spec.argv, listener, **options)
        case _:
            raise ValueError(f"unknown device kind {spec.kind!r}")
    link.start()
    return link
