"""A loopback TCP proxy in front of the test PostgreSQL server that can lose a reply,
or refuse connections for a while.

Armed, it swallows the next bytes the server sends on any connection through it:
the reply of a statement the server has already committed (PostgreSQL sends a
statement's result and ReadyForQuery after the commit). It then calls a hook
(the test terminates that server connection and looks at what was committed) and
closes the client's side, so the client sees its connection die without an answer.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

__all__ = ["ReplyDropper"]


class ReplyDropper:
    """Forwards 127.0.0.1:<port> to ``upstream``; ``arm(hook)`` loses the next reply."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self._upstream = upstream
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._hook: Callable[[], None] | None = None
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.dropped = 0
        """How many replies were lost so far."""
        self.refusing = False
        self.refused = 0
        """How many connections were closed at once while refusing."""
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, hook: Callable[[], None]) -> None:
        """Lose the next reply; call ``hook`` before the client's side is closed."""
        with self._lock:
            self._hook = hook

    def refuse(self) -> None:
        """Cut every connection, and close new ones at once (as a server that is down),
        until :meth:`serve`."""
        with self._lock:
            self.refusing = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def serve(self) -> None:
        """Forward new connections again."""
        with self._lock:
            self.refusing = False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._server.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                refusing = self.refusing
            if refusing:
                client.close()
                self.refused += 1
                continue
            server = socket.create_connection(self._upstream)
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        try:
            while data := source.recv(65536):
                hook = None
                if replies:
                    with self._lock:
                        hook, self._hook = self._hook, None
                if hook is None:
                    sink.sendall(data)
                    continue
                self.dropped += 1
                hook()  # the reply is lost: it never reaches the client
                break
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
