"""Certificate rotation without rebinding: every TLS listener keeps the context it started with (the
*front*), and that context's SNI callback hands each new handshake the newest one.

OpenSSL calls the server-name callback for every ClientHello, with or without SNI (Python passes None as
the name then), before the certificate is chosen; assigning ``ssl_object.context`` there switches the
connection to the new context's certificate, key and client-CA store.  Connections already open keep the
certificate they were made with.  No listener is closed, so a rotation drops nothing.
"""

from __future__ import annotations

import ssl


class RotatingTls:
    __slots__ = ("current", "front")

    def __init__(self, front: ssl.SSLContext) -> None:
        self.front = front
        self.current = front
        front.sni_callback = self._pick

    def rotate(self, context: ssl.SSLContext) -> None:
        """New handshakes use ``context`` from now on."""
        self.current = context

    def _pick(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        current = self.current
        if connection.context is not current:
            connection.context = current
