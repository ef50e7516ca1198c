"""The receiver's HTTP front: an asyncio server that hands the WSGI app only complete, authenticated requests.

Why not gunicorn's gthread worker: it gives each connection a thread as soon as it is accepted and has no
read deadlines, so a few hundred clients trickling headers or a body at 1 byte/s hold every thread and real
deliveries wait. Here a connection costs a socket and a coroutine until its request is complete; threads do
only the work that needs them. For each request, in order:

1. the head (request line and headers) must arrive within ``header_timeout`` and fit in ``MAX_HEAD_BYTES``
   (408 / 431 otherwise); repeated ``Ce-*`` headers are refused (400: which one would be the attribute?);
2. ``POST /``: a declared body over the limit is a 413, and the token is checked from the headers alone
   (``Intake.authenticate``: 401 / 403 / 503) before a byte of the body is read;
3. the body is read within ``body_timeout`` (408) and hashed as it streams in (413 past the limit);
4. only then does a thread run the WSGI app (``receiver.views``) on the buffered request, with the verified
   token and the body's digest in the environ, so the app neither checks the token again nor rehashes.

Every answer the front makes itself is the receiver's JSON error shape. A request refused before its body
was read closes the connection (the unread body cannot be skipped safely).

``FrontWorker`` runs it as a gunicorn worker (``worker_class`` in ``receiver.gunicorn_conf``), keeping
gunicorn's process management, SIGTERM handling and the ``worker_exit`` drain hook. ``Front.serve`` runs it
on any listening socket (the tests do).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

import h11
from flask import Flask
from gunicorn.arbiter import Arbiter
from gunicorn.workers import base

from pull_events.settings import is_loopback, load_settings
from receiver.auth import FetchNeeded, VerifiedToken
from receiver.errors import Rejection
from receiver.logs import get_logger
from receiver.views import BODY_SHA256, VERIFIED_TOKEN, ReceiverState, receiver_state

# Request line and headers together: Chainguard's are about 2 KiB with the token.
MAX_HEAD_BYTES = 64 * 1024
# Bodies of requests other than POST / (none of them needs one).
MAX_OTHER_BODY_BYTES = 64 * 1024
READ_CHUNK = 64 * 1024
# How much of an unread body is discarded, and for how long, before a refused request's connection closes.
LINGER_BYTES = 64 * 1024
LINGER_SECONDS = 0.5
# Threads for token checks that need the issuer's keys fetched: a fetch must not block the event loop, and
# must not wait behind requests that hold a thread while their commit is pending.
AUTH_THREADS = 4
log = get_logger("front")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass(frozen=True)
class FrontLimits:
    header_timeout: float = 10.0  # from a connection's first byte (or its previous request) to a complete head
    body_timeout: float = 15.0  # from a complete head to a complete body
    keepalive: float = 5.0  # an idle keep-alive connection is closed after this
    max_connections: int = 4096  # more open connections than this are answered 503 and closed
    threads: int = 64  # threads running the app


class ClientTimedOut(Exception):
    """The client did not send what was due within its deadline."""


class ClientGone(Exception):
    """The client closed the connection or it broke."""


class Front:
    """Serves one receiver app (``create_app()``) on asyncio with the checks above."""

    def __init__(self, app: Flask, limits: FrontLimits) -> None:
        self.app = app
        self.limits = limits
        self.state: ReceiverState = receiver_state(app)
        self.app_threads = ThreadPoolExecutor(limits.threads, thread_name_prefix="receiver-app")
        self.auth_threads = ThreadPoolExecutor(AUTH_THREADS, thread_name_prefix="receiver-auth")
        self.open_connections = 0
        self.busy_connections = 0
        self._idle_writers: set[asyncio.StreamWriter] = set()
        self.closing = False

    # --- serving --------------------------------------------------------------------------------------------

    async def start(self, sockets: Iterable[socket.socket]) -> list[asyncio.Server]:
        """Start serving on listening ``sockets``."""
        return [
            await asyncio.start_server(self.handle_connection, sock=sock, limit=READ_CHUNK, backlog=2048)
            for sock in sockets
        ]

    async def drain(self, servers: list[asyncio.Server], timeout: float) -> None:
        """Stop accepting, close idle connections, and wait up to ``timeout`` for requests in flight."""
        self.closing = True
        for server in servers:
            server.close()
        for writer in list(self._idle_writers):
            writer.close()
        deadline = time.monotonic() + timeout
        while self.busy_connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self.app_threads.shutdown(wait=False)
        self.auth_threads.shutdown(wait=False)

    def serve(
        self, sock: socket.socket, stop: Callable[[], bool], poll: float = 0.02, drain_timeout: float = 30.0
    ) -> None:
        """Serve on ``sock`` in this thread (with its own event loop) until ``stop()`` is true."""

        async def main() -> None:
            servers = await self.start([sock])
            while not stop():
                await asyncio.sleep(poll)
            await self.drain(servers, drain_timeout)

        asyncio.run(main())

    # --- one connection -------------------------------------------------------------------------------------

    async def handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open_connections += 1
        try:
            if self.open_connections > self.limits.max_connections or self.closing:
                await _send_raw_error(writer, 503, "overloaded", "too many open connections: retry later", 1)
                return
            await self._serve_requests(reader, writer)
        except (ClientGone, ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("connection failed")
        finally:
            self.open_connections -= 1
            self._idle_writers.discard(writer)
            writer.close()

    async def _serve_requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        peer = writer.get_extra_info("peername") or ("", 0)
        first = True
        while not self.closing:
            self._idle_writers.add(writer)
            try:
                request = await self._read_head(conn, reader, writer, first)
            finally:
                self._idle_writers.discard(writer)
            if request is None:
                return
            first = False
            self.busy_connections += 1
            try:
                keep_open = await self._serve_request(conn, reader, writer, request, peer)
            finally:
                self.busy_connections -= 1
            if not keep_open or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                if conn.their_state is h11.SEND_BODY:
                    await _linger(reader, writer)
                return
            conn.start_next_cycle()

    async def _read_head(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bool
    ) -> h11.Request | None:
        """The next request's head, or ``None`` when the connection is done (closed, idle or refused)."""
        loop = asyncio.get_running_loop()
        # A new connection has header_timeout for its whole head; a kept-alive one may first idle for keepalive.
        deadline = loop.time() + (self.limits.header_timeout if first else self.limits.keepalive)
        started = first or _has_bytes(conn)
        try:
            while True:
                event = conn.next_event()
                if isinstance(event, h11.Request):
                    # h11 bounds only a head still incomplete; one that arrived whole is measured here.
                    if _head_size(event) > MAX_HEAD_BYTES:
                        raise h11.RemoteProtocolError("head too large", error_status_hint=431)
                    return event
                if isinstance(event, h11.ConnectionClosed):
                    return None
                data = await _read(reader, deadline - loop.time())
                if data and not started:
                    started = True
                    deadline = loop.time() + self.limits.header_timeout
                conn.receive_data(data)
        except ClientTimedOut:
            if started:  # an idle keep-alive connection is just closed
                self._count_refusal("header_timeout", 408)
                detail = f"no complete request head within {self.limits.header_timeout:g} s"
                await _send_raw_error(writer, 408, "header_timeout", detail)
            return None
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            if status == 431 or "buffer" in str(exc).lower():
                status, error = 431, "headers_too_large"
                detail = f"the request line and headers are over {MAX_HEAD_BYTES} bytes"
            else:
                error, detail = "bad_request", f"malformed HTTP request: {exc}"
            self._count_refusal(error, status)
            await _send_raw_error(writer, status, error, detail)
            return None

    async def _serve_request(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: h11.Request,
        peer: tuple[Any, ...],
    ) -> bool:
        """Answer one request; ``False`` if the connection must close."""
        started = time.perf_counter()
        path = request.target.split(b"?", 1)[0]
        is_intake = request.method == b"POST" and path == b"/"
        try:
            headers = _header_map(request.headers)
            token: VerifiedToken | None = None
            limit = MAX_OTHER_BODY_BYTES
            if is_intake:
                limit = self.state.max_body_bytes
                _check_declared_length(headers, limit)
                token = await self._authenticate(headers)
            if conn.they_are_waiting_for_100_continue:
                await _send(writer, conn, h11.InformationalResponse(status_code=100, headers=[]))
            body, digest = await self._read_body(conn, reader, limit, is_intake)
        except Rejection as rejection:
            if is_intake:
                self._refused(rejection, peer, started)
            await self._respond(writer, conn, *_rejection_response(rejection), close=True)
            return False
        except (ClientGone, ConnectionError):
            raise
        except Exception:
            log.exception("request failed before reaching the app")
            failure = Rejection("internal_error", "the receiver failed while handling the request", status=500)
            await self._respond(writer, conn, *_rejection_response(failure), close=True)
            return False
        environ = _environ(request, headers, body, peer, writer)
        if is_intake:
            environ[VERIFIED_TOKEN] = token
            environ[BODY_SHA256] = digest
        status, response_headers, response_body = await asyncio.get_running_loop().run_in_executor(
            self.app_threads, _call_wsgi, self.app, environ
        )
        await self._respond(writer, conn, status, response_headers, response_body, close=self.closing)
        return True

    async def _authenticate(self, headers: dict[str, str]) -> VerifiedToken | None:
        """The token checked on the loop itself (one RSA verification, no I/O), unless the issuer's keys must be
        fetched: that blocking fetch runs in a thread."""
        try:
            return self.state.intake.authenticate(headers, allow_fetch=False)
        except FetchNeeded:
            return await asyncio.get_running_loop().run_in_executor(
                self.auth_threads, self.state.intake.authenticate, headers
            )

    async def _read_body(
        self, conn: h11.Connection, reader: asyncio.StreamReader, limit: int, hashed: bool
    ) -> tuple[bytes, str | None]:
        """The whole body within the body deadline, and its digest if ``hashed`` (hashed as it arrives)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.body_timeout
        hasher = hashlib.sha256() if hashed else None
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise Rejection("bad_request", f"malformed HTTP request body: {exc}") from None
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > limit:
                    raise Rejection(
                        "body_too_large", f"the request body is over the limit of {limit} bytes", status=413
                    )
                if hasher is not None:
                    hasher.update(event.data)
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                body = b"".join(chunks)
                return body, ("sha256:" + hasher.hexdigest()) if hasher is not None else None
            elif isinstance(event, h11.ConnectionClosed):
                raise ClientGone
            else:
                try:
                    data = await _read(reader, deadline - loop.time())
                except ClientTimedOut:
                    raise Rejection(
                        "body_timeout",
                        f"the request body did not arrive within {self.limits.body_timeout:g} s",
                        status=408,
                    ) from None
                conn.receive_data(data)

    async def _respond(
        self,
        writer: asyncio.StreamWriter,
        conn: h11.Connection,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
        close: bool,
    ) -> None:
        out = [(name, value) for name, value in headers if name.lower() not in ("content-length", "connection")]
        out.append(("Content-Length", str(len(body))))
        if close:
            out.append(("Connection", "close"))
        try:
            data = conn.send(h11.Response(status_code=status, headers=out))
            data += conn.send(h11.Data(data=body)) if body else b""
            data += conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            return
        writer.write(data)
        await writer.drain()

    # --- refusals -------------------------------------------------------------------------------------------

    def _refused(self, rejection: Rejection, peer: tuple[Any, ...], started: float) -> None:
        self._count_refusal(rejection.error, rejection.status)
        self.state.metrics.request_seconds.observe(time.perf_counter() - started)
        log.warning("refused a delivery", extra={"fields": rejection.log_fields(peer[0] if peer else None)})

    def _count_refusal(self, error: str, status: int) -> None:
        self.state.metrics.count_rejected(error, status)


# --- gunicorn -------------------------------------------------------------------------------------------------


class FrontWorker(base.Worker):
    """A gunicorn worker serving the receiver with ``Front`` on an asyncio loop.

    Limits come from the receiver's settings (``PULL_EVENTS_HEADER_TIMEOUT_S``, ``PULL_EVENTS_BODY_TIMEOUT_S``)
    and gunicorn's ``keepalive``, ``worker_connections`` and ``threads``. SIGTERM (or SIGINT/SIGQUIT) stops
    accepting, lets requests in flight finish within ``graceful_timeout``, then returns, so gunicorn runs
    ``worker_exit`` (the batcher's drain).
    """

    def init_process(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        super().init_process()

    def init_signals(self) -> None:
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            self.loop.add_signal_handler(sig, self._stop)
        self.loop.add_signal_handler(signal.SIGUSR1, self.log.reopen_files)
        self.loop.add_signal_handler(signal.SIGWINCH, lambda: None)

    def _stop(self) -> None:
        self.alive = False

    def run(self) -> None:
        try:
            self.loop.run_until_complete(self._serve())
        finally:
            self.loop.close()

    async def _serve(self) -> None:
        options = load_settings().receiver
        exposed = _exposed_addresses(self.sockets) if options.auth == "off" else []
        if exposed and not options.allow_public_auth_off:
            # The settings check PULL_EVENTS_HOST; this catches a --bind given to gunicorn directly.
            self.log.critical(
                "PULL_EVENTS_AUTH=off on a non-loopback address %s: refusing to serve"
                " (set PULL_EVENTS_ALLOW_PUBLIC_AUTH_OFF=true if that is really meant)",
                ", ".join(exposed),
            )
            sys.exit(Arbiter.WORKER_BOOT_ERROR)  # gunicorn stops instead of booting workers again
        limits = FrontLimits(
            header_timeout=options.header_timeout_seconds,
            body_timeout=options.body_timeout_seconds,
            keepalive=float(self.cfg.keepalive),
            max_connections=self.cfg.worker_connections,
            threads=self.cfg.threads,
        )
        front = Front(self.wsgi, limits)
        servers = await front.start([listener.sock for listener in self.sockets])
        while self.alive:
            self.notify()
            if self.ppid != os.getppid():
                self.log.info("parent changed, shutting down: %s", self)
                break
            await asyncio.sleep(0.5)
        await front.drain(servers, float(self.cfg.graceful_timeout))


def _exposed_addresses(listeners: Iterable[Any]) -> list[str]:
    """The non-loopback TCP addresses among gunicorn's listeners (unix sockets are local)."""
    exposed = []
    for listener in listeners:
        address = listener.sock.getsockname()
        if listener.sock.family in (socket.AF_INET, socket.AF_INET6) and not is_loopback(address[0]):
            exposed.append(f"{address[0]}:{address[1]}")
    return exposed


# --- helpers --------------------------------------------------------------------------------------------------


async def _read(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Up to ``READ_CHUNK`` bytes (``b""`` at end of stream), or ``ClientTimedOut`` after ``timeout`` seconds."""
    if timeout <= 0:
        raise ClientTimedOut
    try:
        async with asyncio.timeout(timeout):  # unlike wait_for, no task per read
            return await reader.read(READ_CHUNK)
    except TimeoutError:
        raise ClientTimedOut from None


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """After answering a request whose body was not read: stop sending, then discard a little of what the client
    is still sending before closing. Closing at once with unread data makes the kernel reset the connection,
    and a sender mid-body would see the reset instead of the answer; reading all of it would be what refusing
    early saves. So at most ``LINGER_BYTES`` within ``LINGER_SECONDS``."""
    try:
        writer.write_eof()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LINGER_SECONDS
        discarded = 0
        while discarded < LINGER_BYTES:
            data = await _read(reader, deadline - loop.time())
            if not data:
                return
            discarded += len(data)
    except (ClientTimedOut, ConnectionError, OSError):
        return


def _head_size(request: h11.Request) -> int:
    """The bytes of a request line and headers as sent, give or take whitespace."""
    return len(request.method) + len(request.target) + 12 + sum(len(n) + len(v) + 4 for n, v in request.headers)


def _has_bytes(conn: h11.Connection) -> bool:
    return bool(conn.trailing_data[0])


def _header_map(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Headers by lower-case name; a repeated ``Ce-*`` header is a 400 (which one is the attribute?).

    Other repeated headers are joined with ", " as WSGI servers do; ``Authorization`` and ``Content-Type``
    may not repeat either.
    """
    result: dict[str, str] = {}
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1")  # h11 lower-cases names
        value = raw_value.decode("latin-1")
        if name in result:
            if name.startswith("ce-") or name in ("authorization", "content-type"):
                raise Rejection("ambiguous_request", f"the {name!r} header is repeated: send it once")
            result[name] = f"{result[name]}, {value}"
        else:
            result[name] = value
    return result


def _check_declared_length(headers: dict[str, str], limit: int) -> None:
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Rejection("body_too_large", f"the request body is over the limit of {limit} bytes", status=413)


def _environ(
    request: h11.Request, headers: dict[str, str], body: bytes, peer: tuple[Any, ...], writer: asyncio.StreamWriter
) -> dict[str, Any]:
    target = request.target
    path, _, query = target.partition(b"?")
    local = writer.get_extra_info("sockname") or ("127.0.0.1", 0)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method.decode("ascii"),
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
        "QUERY_STRING": query.decode("latin-1"),
        "SERVER_NAME": str(local[0]),
        "SERVER_PORT": str(local[1]),
        "SERVER_PROTOCOL": f"HTTP/{request.http_version.decode('ascii')}",
        "REMOTE_ADDR": str(peer[0]) if peer else "",
        "REMOTE_PORT": str(peer[1]) if peer and len(peer) > 1 else "",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in headers.items():
        if name == "content-type":
            environ["CONTENT_TYPE"] = value
        elif name not in ("content-length", "transfer-encoding"):  # the body is buffered: its length is known
            environ["HTTP_" + name.upper().replace("-", "_")] = value
    return environ


def _call_wsgi(app: WsgiApp, environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
    """Run the WSGI app on a buffered request and return its whole answer (in an app thread)."""
    captured: dict[str, Any] = {}
    written: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        captured["status"], captured["headers"] = status, headers
        return written.append

    result = app(environ, start_response)
    try:
        written.extend(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return int(captured["status"].split(" ", 1)[0]), captured["headers"], b"".join(written)


def _error_body(error: str, detail: str) -> bytes:
    return json.dumps({"detail": detail, "error": error}).encode() + b"\n"


def _rejection_response(rejection: Rejection) -> tuple[int, list[tuple[str, str]], bytes]:
    headers = [("Content-Type", "application/json")]
    if rejection.retry_after is not None:
        headers.append(("Retry-After", str(rejection.retry_after)))
    headers.extend(rejection.headers.items())
    return rejection.status, headers, _error_body(rejection.error, rejection.detail)


_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


async def _send_raw_error(
    writer: asyncio.StreamWriter, status: int, error: str, detail: str, retry_after: int | None = None
) -> None:
    """A JSON error written directly (no request was parsed, so h11 cannot frame it), then the connection ends."""
    body = _error_body(error, detail)
    head = [
        b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b"Service Unavailable")),
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(body),
        b"Connection: close",
    ]
    if retry_after is not None:
        head.append(b"Retry-After: %d" % retry_after)
    try:
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        await asyncio.wait_for(writer.drain(), 5)
    except (ConnectionError, TimeoutError):
        pass


async def _send(writer: asyncio.StreamWriter, conn: h11.Connection, event: Any) -> None:
    writer.write(conn.send(event))
    await writer.drain()
