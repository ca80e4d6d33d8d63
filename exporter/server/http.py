"""A small hardened HTTP/1.1 server for the exporter's few GET endpoints.

One asyncio event loop on one thread serves every connection, so a slow or idle
client costs a socket and a few kB, never a thread, and cannot hold up a scrape:

- the loop accepts connections itself, from a socket listening with the backlog asked
  for (BACKLOG); an accept that fails for want of descriptors or memory (EMFILE, ENFILE,
  ENOBUFS, ENOMEM) is logged at WARNING once per episode and retried shortly;
- a TLS handshake happens on an accepted, counted connection, within HANDSHAKE_TIMEOUT;
- a request head must arrive whole within HEAD_TIMEOUT (slowloris), be at most
  HEAD_LIMIT bytes with at most MAX_HEADERS lines (431 otherwise);
- keep-alive connections wait IDLE_TIMEOUT for their next request; a response must
  be taken by the client within WRITE_TIMEOUT;
- at the connection cap (MAX_CONNECTIONS, or half the open-files limit if that is
  lower, so files and checkpoints always have descriptors), a new connection closes the
  one that has waited longest: first among those that never had an answer (in the
  handshake, or silent), then among idle keep-alive ones, so the newest client (a scrape)
  is always served;
- only GET and HEAD on known paths (405 with Allow otherwise, 404 for unknown paths);
  requests with a body are refused and the connection closed;
- a handler that raises answers 500 with a fixed text: no stack trace reaches a client;
- basic auth (bcrypt) runs off the loop, once per distinct credential, in a bounded
  queue (carbonmeter.server.auth); paths in `public` (the health check, whose probes send
  no credentials) answer without it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import errno
import logging
import resource
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from carbonmeter.server import auth as auth_queue

if TYPE_CHECKING:
    from carbonmeter.server.webconfig import BasicAuth

log = logging.getLogger(__name__)

HEAD_LIMIT = 8192  # bytes of request line + headers (nginx's default large buffer)
MAX_HEADERS = 100  # as Go's and Python's HTTP servers
HEAD_TIMEOUT = 10.0  # seconds for a new connection's first request head
IDLE_TIMEOUT = 60.0  # seconds a keep-alive connection may wait for its next request
WRITE_TIMEOUT = 10.0
HANDSHAKE_TIMEOUT = 10.0
MAX_CONNECTIONS = 512
BACKLOG = 1024  # connections the kernel queues before the loop accepts them
ACCEPT_RETRY_S = 0.1  # after an accept failed for want of resources
METHODS = ("GET", "HEAD")
_STARVED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (systemd's default soft limit is
    1,024); returns (soft, hard) as they are now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:  # a hard limit the kernel refuses (nr_open)
            log.debug("cannot raise the open files limit to %s: %s", hard, e)
    return soft, hard


def connection_cap() -> int:
    """MAX_CONNECTIONS, or half the open-files limit when that is lower."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(8, min(MAX_CONNECTIONS, soft // 2))


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


Route = Callable[[Request], Response]


class _BadRequest(Exception):
    def __init__(self, status: HTTPStatus, text: str) -> None:
        super().__init__(text)
        self.status = status


class HttpServer:
    """Serves `routes` ({path: handler}); the socket is bound at construction (so a busy
    port fails before anything starts), then serve_forever() runs until shutdown()."""

    def __init__(self, host: str, port: int, routes: dict[str, Route], *,
                 tls: ssl.SSLContext | None = None, auth: BasicAuth | None = None,
                 headers: dict[str, str] | None = None,
                 public: frozenset[str] = frozenset()) -> None:
        self.routes = routes
        self.tls = tls
        self.auth = auth
        self.public = public
        self.extra_headers = headers or {}
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # "[::]" listens on IPv4 too, as the kernel's default for a wildcard IPv6 socket
        dualstack = host == "::" and socket.has_dualstack_ipv6()
        self.socket = socket.create_server((host, port), family=family, backlog=BACKLOG,
                                           dualstack_ipv6=dualstack)
        # Accepted sockets inherit it (and the loop never listens again, which would
        # reset the backlog to asyncio's 100).
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stopped = threading.Event()
        self._shutdown = False
        self._lock = threading.Lock()
        # Connections that may be closed to make room, oldest first, with how to close
        # each: those never answered (in the handshake, or silent), then idle keep-alive.
        self._fresh: collections.OrderedDict[object, Callable[[], None]] = (
            collections.OrderedDict())
        self._idle: collections.OrderedDict[object, Callable[[], None]] = (
            collections.OrderedDict())
        self._open = 0
        self._starved = False  # accept is failing for want of resources
        self.checks = auth_queue.Checks(auth) if auth is not None else None

    # -- life cycle -------------------------------------------------------------------------

    def serve_forever(self) -> None:
        try:
            asyncio.run(self._serve())
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop serve_forever() (from another thread) and wait until it has returned."""
        with self._lock:
            self._shutdown = True
            loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop.set)
            self._stopped.wait(10)
        if self.checks is not None:
            self.checks.close()

    def server_close(self) -> None:
        self.socket.close()

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_quiet)
        with self._lock:
            if self._shutdown:
                return
            self._loop, self._stop = loop, asyncio.Event()
        self._cap = connection_cap()
        connections: set[asyncio.Task[None]] = set()
        accepting = asyncio.create_task(self._accept_all(connections))
        await self._stop.wait()
        accepting.cancel()
        for task in list(connections):
            task.cancel()
        await asyncio.gather(accepting, *connections, return_exceptions=True)

    async def _accept_all(self, connections: set[asyncio.Task[None]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await self._accept(loop)
            except OSError as e:
                if e.errno not in _STARVED:
                    log.debug("http: accept failed: %s", e)
                    continue
                if not self._starved:
                    log.warning("http: cannot accept connections: %s (%d open, open files "
                                "limit %d); retrying", e.strerror or e, self._open,
                                resource.getrlimit(resource.RLIMIT_NOFILE)[0])
                self._starved = True
                await asyncio.sleep(ACCEPT_RETRY_S)
                continue
            if self._starved:
                log.warning("http: accepting connections again")
                self._starved = False
            task = asyncio.create_task(self._connection(sock))
            connections.add(task)
            task.add_done_callback(connections.discard)
            # sock_accept returns at once while connections wait: let the loop serve the
            # ones it has (a scrape) between two accepts, not after a burst of a thousand
            await asyncio.sleep(0)

    async def _accept(self, loop: asyncio.AbstractEventLoop) -> tuple[socket.socket, Any]:
        """One connection from the listening socket (tests inject failures here)."""
        return await loop.sock_accept(self.socket)

    # -- connections ------------------------------------------------------------------------

    def _make_room(self) -> None:
        """Over the cap, a new connection closes one other: the longest waiting."""
        if self._open > self._cap and (self._fresh or self._idle):
            _, close = (self._fresh or self._idle).popitem(last=False)
            close()

    async def _connection(self, sock: socket.socket) -> None:
        self._open += 1
        task = asyncio.current_task()
        assert task is not None
        self._make_room()
        self._fresh[task] = task.cancel
        writer: asyncio.StreamWriter | None = None
        try:
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader(limit=HEAD_LIMIT)
            protocol = asyncio.StreamReaderProtocol(reader)
            transport, _ = await asyncio.wait_for(loop.connect_accepted_socket(
                lambda: protocol, sock, ssl=self.tls,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT if self.tls else None),
                HANDSHAKE_TIMEOUT + 1)
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            self._fresh.pop(task, None)
            await self._client(reader, writer, task)
        except (ConnectionError, OSError, asyncio.TimeoutError, asyncio.CancelledError,
                ssl.SSLError):
            pass
        except Exception:  # a bug here must cost one connection, never the server
            log.exception("http: connection failed")
        finally:
            self._open -= 1
            self._fresh.pop(task, None)
            self._idle.pop(task, None)
            if writer is not None:
                writer.transport.abort()
            else:
                sock.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      task: asyncio.Task[None]) -> None:
        timeout, waiting = HEAD_TIMEOUT, self._fresh
        while True:
            waiting[task] = writer.transport.abort
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
            except asyncio.LimitOverrunError:
                await self._send(writer, "GET", _text(
                    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                    f"request head larger than {HEAD_LIMIT} bytes"), close=True)
                return
            except (asyncio.IncompleteReadError, asyncio.TimeoutError):
                return  # closed by the client, or too slow: nothing to answer
            finally:
                waiting.pop(task, None)
            timeout = IDLE_TIMEOUT
            try:
                request, close = _parse(head)
            except _BadRequest as e:
                await self._send(writer, "GET", _text(e.status, str(e)), close=True)
                return
            response, close_now = await self._respond(request, reader)
            close = close or close_now
            await self._send(writer, request.method, response, close=close)
            if close:
                return
            if response.status < 400:  # a client that was answered keeps its place longer
                waiting = self._idle

    async def _respond(self, req: Request,
                       reader: asyncio.StreamReader) -> tuple[Response, bool]:
        """The response, and whether the connection must close after it."""
        route = self.routes.get(req.path)
        if route is None:
            return _text(HTTPStatus.NOT_FOUND, "not found"), False
        if req.method not in METHODS:
            r = _text(HTTPStatus.METHOD_NOT_ALLOWED, "only GET and HEAD are allowed")
            r.headers["Allow"] = ", ".join(METHODS)
            return r, False
        if self.auth is not None and req.path not in self.public:
            try:
                ok = await self._authorized(req, reader)
            except auth_queue.Full:
                r = _text(HTTPStatus.SERVICE_UNAVAILABLE, "too many credentials to check; "
                          "retry later")
                r.headers["Retry-After"] = "1"
                return r, True
            if not ok:
                r = _text(HTTPStatus.UNAUTHORIZED, "unauthorized")
                r.headers["WWW-Authenticate"] = 'Basic realm="carbonmeter", charset="UTF-8"'
                return r, False
        try:
            return route(req), False
        except Exception:  # never a traceback to a client
            log.exception("http: handling %s", req.path)
            return _text(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error"), True

    async def _authorized(self, req: Request, reader: asyncio.StreamReader) -> bool:
        """Whether the request's credential is good: known answers on the loop, others in
        the bounded bcrypt queue (auth_queue.Full when it is full)."""
        assert self.auth is not None and self.checks is not None
        header = req.headers.get("authorization")
        if header is None:
            return False
        known = self.auth.cached(header)
        if known is not None:
            return known
        # A client that sent its request and hung up (EOF with nothing more to read) no
        # longer waits: its check is dropped unrun.
        return await self.checks.submit(header, reader.at_eof)

    async def _send(self, writer: asyncio.StreamWriter, method: str, r: Response, *,
                    close: bool) -> None:
        status = HTTPStatus(r.status)
        lines = [f"HTTP/1.1 {status.value} {status.phrase}",
                 f"Date: {email.utils.formatdate(usegmt=True)}",
                 f"Content-Type: {r.content_type}", f"Content-Length: {len(r.body)}"]
        lines += [f"{k}: {v}" for k, v in {**self.extra_headers, **r.headers}.items()]
        if close:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        # One write: a response sent as two segments waits out Nagle and the client's
        # delayed ACK (40 ms a keep-alive scrape).
        writer.write(head if method == "HEAD" else head + r.body)
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)


def _text(status: HTTPStatus, text: str) -> Response:
    return Response(status.value, (text + "\n").encode())


def _parse(head: bytes) -> tuple[Request, bool]:
    """A request head -> (request, close the connection after answering)."""
    lines = head[:-4].split(b"\r\n")
    while lines and not lines[0]:  # stray CRLFs before a request are allowed (RFC 9112)
        lines.pop(0)
    if not lines:
        raise _BadRequest(HTTPStatus.BAD_REQUEST, "empty request")
    if len(lines) - 1 > MAX_HEADERS:
        raise _BadRequest(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                          f"more than {MAX_HEADERS} header lines")
    parts = lines[0].decode("latin-1").split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1]:
        raise _BadRequest(HTTPStatus.BAD_REQUEST, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise _BadRequest(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, "HTTP/1.1 only")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep or not name or name != name.strip() or " " in name:
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "malformed header line")
        key, value = name.lower(), value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    length = headers.get("content-length", "0").strip()
    if "transfer-encoding" in headers or not length.isdigit() or int(length) != 0:
        raise _BadRequest(HTTPStatus.BAD_REQUEST, "request bodies are not accepted")
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    close = version == "HTTP/1.0" or "close" in tokens
    return Request(method, target.split("?", 1)[0], headers), close


def _quiet(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Failed TLS handshakes and reset connections are the client's affair: one debug line,
    no traceback in the log."""
    log.debug("http: %s %s", context.get("message"), context.get("exception") or "")
