"""Shared plumbing for the local fake HTTP servers: a keep-alive HTTP/1.1 server on 127.0.0.1, port 0.

A fake subclasses ``LocalHTTPServer`` and implements ``_handle(method, target, headers, raw) -> Reply``;
the base class runs the server in a background thread and gives it ``start``/``stop``, context-manager
use and ``url``. ``_encode`` and ``_crash_reply`` may be overridden to shape how answers are written.

Only the standard library is used.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from collections.abc import Callable
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

# (HTTP status, JSON body or raw text, extra headers)
Reply = tuple[int, Any, dict[str, str]]
App = Callable[[str, str, Message, bytes], Reply]


class _Handler(BaseHTTPRequestHandler):
    """Reads the whole request, hands it to the fake, writes its reply (HTTP/1.1, keep-alive)."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, delayed ACKs add ~40 ms to every answer.
    disable_nagle_algorithm = True
    server: _Server

    def _serve(self) -> None:
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            status, payload, headers = fake._handle(self.command, self.path, self.headers, raw)
        except Exception as error:  # a bug in the fake: answer plainly instead of dropping the connection
            status, payload, headers = fake._crash_reply(error)
        data, content_type = fake._encode(payload)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # many concurrent (async) client requests must not be refused at connect

    def __init__(self, fake: LocalHTTPServer) -> None:
        self.fake = fake
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn), which can stall without DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Drop kept-alive client connections so a stopped fake really stops answering."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class LocalHTTPServer:
    """Base for a fake: serves ``_handle`` on a random local port while running."""

    def __init__(self) -> None:
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- what a fake provides ------------------------------------------------------------------

    def _handle(self, method: str, target: str, headers: Message, raw: bytes) -> Reply:
        raise NotImplementedError

    def _crash_reply(self, error: Exception) -> Reply:
        """The answer when ``_handle`` raised (a bug in the fake)."""
        return 500, f"{type(self).__name__} crashed: {error!r}", {}

    def _encode(self, payload: Any) -> tuple[bytes, str]:
        """Body bytes and Content-Type: a ``str`` goes out as text/plain, anything else as JSON."""
        if isinstance(payload, str):
            return payload.encode(), "text/plain; charset=utf-8"
        return json.dumps(payload).encode(), "application/json; charset=utf-8"

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Self:
        if self._server is None:
            self._server = _Server(self)
            # A short poll interval keeps stop() quick: shutdown() waits for the loop's next poll.
            self._thread = threading.Thread(
                target=self._server.serve_forever, args=(0.02,), name=type(self).__name__, daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.close_connections()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Root URL without a trailing slash."""
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not running; call start() or use it as a context manager")
        return f"http://127.0.0.1:{self._server.server_port}"
