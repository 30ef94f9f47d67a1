"""The WebSocket server: HTTP/WebSocket plumbing, routing, limits, auth, shutdown.

Routes are registered by path prefix: ``/rooms/`` (the relay, :mod:`snac_stream.net.relay`)
and ``GET /health`` are built in; model-running endpoints (``/encode``, ``/decode``)
can be added with :meth:`Server.add_route` and run inference in :attr:`Server.executor`.

Run it with ``snac-stream serve --port 8765`` (see :func:`add_serve_arguments`).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import functools
import hmac
import http
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from snac_stream.protocol.packets import PROTOCOL_VERSION, CloseCode, PacketError

from .broker import Broker, BrokerConfig, BrokerError
from .relay import Relay, RelayConfig, close_draining

__all__ = [
    "ServerConfig",
    "RouteRequest",
    "Handler",
    "HttpHandler",
    "PageHandler",
    "Server",
    "run_server",
    "add_serve_arguments",
    "run_serve",
]

log = logging.getLogger("snac_stream.net.server")
T = TypeVar("T")
TOKEN_ENV = "SNAC_STREAM_TOKEN"


@dataclass
class ServerConfig:
    """Server settings; the defaults are safe for a local, single-machine server."""

    host: str = "127.0.0.1"
    port: int = 8765  #: 0 picks a free port
    token: str | None = None  #: when set, required from every WebSocket client
    max_connections: int = 256  #: open WebSocket connections, all routes together
    max_rooms: int = 64
    max_listeners_per_room: int = 32
    max_message_size: int = 64 * 1024  #: bytes per packet (larger: 4002; over twice that: 1009)
    listener_queue: int = 64  #: packets buffered per listener
    slow_listener: Literal["drop", "skip"] = "drop"  #: what happens when that queue is full
    idle_timeout: float = 60.0  #: seconds a publisher may send nothing
    ping_interval: float | None = 20.0  #: seconds between keepalive pings
    ping_timeout: float | None = 20.0  #: seconds to wait for a pong
    open_timeout: float = 10.0  #: seconds for the opening handshake
    close_timeout: float = 5.0  #: seconds for the closing handshake
    shutdown_grace: float = 2.0  #: seconds listeners get to receive their last packets
    write_limit: int = 64 * 1024  #: bytes buffered per connection before send() waits
    recv_queue: int = 8  #: messages buffered per connection before TCP backpressure
    workers: int = 2  #: threads of :attr:`Server.executor` (routes' blocking work)
    max_model_sessions: int = 4  #: concurrent /encode + /decode connections (each runs the model)
    engine_workers: int = 0  #: batched model shards per endpoint, one thread each (0: one per CPU core)
    model_rate: float = 2.0  #: audio seconds per wall-clock second, per /encode or /decode connection
    model_burst: float = 10.0  #: audio seconds a model connection may send ahead of model_rate
    broker: str | None = None  #: redis://HOST:PORT/DB: rooms span every node sharing it (net/broker.py)
    broker_maxlen: int = 128  #: packets kept per room in Redis, and buffered per room while it is away
    broker_lease: float = 5.0  #: seconds until a silent node's publishers and listeners count as gone

    def __post_init__(self) -> None:
        positive = (
            "max_connections",
            "max_rooms",
            "max_listeners_per_room",
            "max_message_size",
            "listener_queue",
            "idle_timeout",
            "open_timeout",
            "close_timeout",
            "write_limit",
            "recv_queue",
            "workers",
            "max_model_sessions",
            "model_rate",
            "model_burst",
            "broker_maxlen",
            "broker_lease",
        )
        bad = [name for name in positive if not getattr(self, name) > 0]
        if bad:
            raise ValueError(f"ServerConfig: {', '.join(bad)} must be > 0")
        if self.slow_listener not in ("drop", "skip"):
            raise ValueError("ServerConfig: slow_listener must be 'drop' or 'skip'")
        if self.engine_workers < 0:
            raise ValueError("ServerConfig: engine_workers must be >= 0 (0: one per CPU core)")
        if not 0 <= self.port <= 65535:
            raise ValueError("ServerConfig: port must be in 0..65535")
        if self.broker is not None:
            try:
                self.broker_config()
            except ValueError as e:
                raise ValueError(f"ServerConfig: {e}") from None

    def broker_config(self) -> BrokerConfig:
        assert self.broker is not None
        return BrokerConfig(
            self.broker,
            maxlen=self.broker_maxlen,
            lease=self.broker_lease,
            max_listeners_per_room=self.max_listeners_per_room,
            max_message_size=self.max_message_size,
        )

    def relay_config(self) -> RelayConfig:
        return RelayConfig(
            max_rooms=self.max_rooms,
            max_listeners_per_room=self.max_listeners_per_room,
            listener_queue=self.listener_queue,
            slow_listener=self.slow_listener,
            idle_timeout=self.idle_timeout,
            max_message_size=self.max_message_size,
            shutdown_grace=self.shutdown_grace,
        )


@dataclass(frozen=True)
class RouteRequest:
    """What a route handler learns about its request."""

    server: Server
    path: str  #: URL path without the query
    prefix: str  #: the route prefix that matched
    subpath: str  #: path after the prefix (the room name for /rooms/)
    query: Mapping[str, str]  #: query parameters (first value of each)
    headers: Headers


Handler = Callable[[ServerConnection, RouteRequest], Awaitable[None]]
HttpHandler = Callable[[RouteRequest], tuple[int, Any]]
PageHandler = Callable[[RouteRequest], tuple[int, str, bytes]]


async def run_in(executor: concurrent.futures.Executor, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``await fn(*args, **kwargs)`` in ``executor``'s threads (never on the event loop)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, functools.partial(fn, *args, **kwargs))


class Server:
    """Owns the config, the router, the relay, the counters and the listening socket."""

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self.router: dict[str, Handler] = {}
        self.http_routes: dict[str, HttpHandler] = {}
        self.page_routes: dict[str, PageHandler] = {}
        self.relay = Relay(self.config.relay_config())
        self.counters: collections.Counter[str] = collections.Counter()
        self.active: set[ServerConnection] = set()
        self.stopping = False
        self.started_at = time.monotonic()
        self._shutdown_hooks: list[Callable[[], Awaitable[None]]] = [self.relay.shutdown]
        self.broker = Broker(self.relay, self.config.broker_config()) if self.config.broker else None
        if self.broker is not None:  # after the relay's: the streams' last packets go out first
            self._shutdown_hooks.append(self.broker.stop)
        self._stopped_hooks: list[Callable[[], None]] = []
        self._ws: WsServer | None = None
        self._port: int | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._extra_executors: list[concurrent.futures.ThreadPoolExecutor] = []
        self.add_route("/rooms/", self.relay.handle)
        self.add_http_route("/health", self._health)

    # -- registration ------------------------------------------------------------------

    def add_route(self, prefix: str, handler: Handler) -> None:
        """Serve WebSocket connections whose path starts with ``prefix`` (longest match wins)."""
        if not prefix.startswith("/"):
            raise ValueError("route prefixes start with '/'")
        self.router[prefix] = handler

    def add_http_route(self, path: str, handler: HttpHandler) -> None:
        """Answer plain HTTP requests for exactly ``path`` with ``handler(req) -> (status, json)``."""
        self.http_routes[path] = handler

    def add_page_route(self, path: str, handler: PageHandler) -> None:
        """Answer plain HTTP GETs for exactly ``path`` with ``handler(req) -> (status,
        content_type, body)`` (static files of the browser page)."""
        self.page_routes[path] = handler

    def on_shutdown(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run ``await hook()`` at shutdown, after the server stopped accepting connections."""
        self._shutdown_hooks.append(hook)

    def on_stopped(self, fn: Callable[[], None]) -> None:
        """Run ``fn()`` (blocking, in a thread) at the end of :meth:`stop`, after every connection
        closed: release what routes own (e.g. the model endpoints' batched engines)."""
        self._stopped_hooks.append(fn)

    @property
    def executor(self) -> concurrent.futures.ThreadPoolExecutor:
        """Thread pool for blocking work (inference); never run it on the event loop."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                self.config.workers, thread_name_prefix="snac-stream-worker"
            )
        return self._executor

    def new_executor(self, threads: int, name: str) -> concurrent.futures.ThreadPoolExecutor:
        """A thread pool of the route's own (e.g. one thread per model session), shut down
        with the server after its connections closed."""
        executor = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix=name)
        self._extra_executors.append(executor)
        return executor

    async def run_in_executor(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``await fn(*args, **kwargs)`` in :attr:`executor`."""
        return await run_in(self.executor, fn, *args, **kwargs)

    def match(self, path: str) -> tuple[str, Handler] | None:
        """The longest registered prefix of ``path`` and its handler."""
        best = max((p for p in self.router if path.startswith(p)), key=len, default=None)
        return None if best is None else (best, self.router[best])

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound TCP port (known after :meth:`start`, kept after :meth:`stop`)."""
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    @property
    def url(self) -> str:
        host = self.config.host
        return f"ws://{f'[{host}]' if ':' in host else host}:{self.port}"

    async def start(self) -> None:
        """Bind and start accepting connections (:class:`BrokerError` if the broker is unreachable)."""
        c = self.config
        if self.broker is not None:
            await self.broker.start()
        self.started_at = time.monotonic()
        self._ws = await serve(
            self._ws_handler,
            c.host,
            c.port,
            process_request=self._process_request,
            compression=None,
            max_size=2 * c.max_message_size,
            max_queue=c.recv_queue,
            write_limit=c.write_limit,
            ping_interval=c.ping_interval,
            ping_timeout=c.ping_timeout,
            open_timeout=c.open_timeout,
            close_timeout=c.close_timeout,
        )
        self._port = self._ws.sockets[0].getsockname()[1]
        log.info("snac-stream server listening on %s", self.url)

    async def stop(self) -> None:
        """Stop accepting, END open streams, close everyone with 1001, wait for handlers."""
        if self._ws is None or self.stopping:
            return
        self.stopping = True
        self._ws.server.close()  # stop accepting; handshakes in progress get HTTP 503
        for hook in self._shutdown_hooks:
            try:
                await hook()
            except Exception:
                log.exception("shutdown hook failed")
        self._ws.close(code=1001, reason="server shutting down")
        try:
            async with asyncio.timeout(self.config.close_timeout + 1.0):
                await self._ws.wait_closed()
        except TimeoutError:
            log.warning("some connections did not close in time")
        for executor in [self._executor, *self._extra_executors]:
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)
        for fn in self._stopped_hooks:
            try:
                await asyncio.to_thread(fn)
            except Exception:
                log.exception("stop hook failed")
        log.info("snac-stream server stopped")

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- requests ----------------------------------------------------------------------

    def _route_request(self, request: Request, prefix: str = "") -> RouteRequest:
        url = urlsplit(request.path)
        query: dict[str, str] = {}
        for key, value in parse_qsl(url.query, keep_blank_values=True):
            query.setdefault(key, value)
        return RouteRequest(self, url.path, prefix, url.path[len(prefix) :], query, request.headers)

    def authorized(self, req: RouteRequest) -> bool:
        """True when no token is configured or the request carries it (query or Bearer)."""
        token = self.config.token
        if token is None:
            return True
        given = req.query.get("token")
        auth = req.headers.get("Authorization", "")
        if given is None and auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        return given is not None and hmac.compare_digest(given.encode(), token.encode())

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        req = self._route_request(request)
        http_handler = self.http_routes.get(req.path)
        if http_handler is not None:
            self.counters["http_requests"] += 1
            status, body = http_handler(req)
            response = connection.respond(status, json.dumps(body, indent=1) + "\n")
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = "application/json"
            return response
        page = self.page_routes.get(req.path)
        if page is not None:
            self.counters["http_requests"] += 1
            status, content_type, data = page(req)
            headers = Headers(
                [
                    ("Connection", "close"),
                    ("Content-Type", content_type),
                    ("Content-Length", str(len(data))),
                    ("Cache-Control", "no-cache"),
                    ("X-Content-Type-Options", "nosniff"),
                ]
            )
            return Response(status, http.HTTPStatus(status).phrase, headers, data)
        if self.match(req.path) is None:
            self.counters["http_not_found"] += 1
            return connection.respond(http.HTTPStatus.NOT_FOUND, "not found\n")
        if self.stopping:
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "server shutting down\n")
        return None  # go on with the WebSocket handshake

    async def _ws_handler(self, connection: ServerConnection) -> None:
        request = connection.request
        assert request is not None
        found = self.match(urlsplit(request.path).path)
        assert found is not None  # _process_request answered 404 otherwise
        prefix, handler = found
        req = self._route_request(request, prefix)
        if self.stopping:
            await close_draining(connection, 1001, "server shutting down")
            return
        if len(self.active) >= self.config.max_connections:
            self.counters["rejected_server_full"] += 1
            await close_draining(
                connection, CloseCode.SERVER_FULL, f"server has {self.config.max_connections} clients"
            )
            return
        if not self.authorized(req):
            self.counters["rejected_unauthorized"] += 1
            await close_draining(connection, CloseCode.UNAUTHORIZED, "missing or wrong token")
            return
        self.active.add(connection)
        self.counters["connections_total"] += 1
        try:
            await handler(connection, req)
        except PacketError as e:
            self.counters["packet_errors"] += 1
            await close_draining(connection, e.code, str(e))
        except ConnectionClosed:
            pass
        except Exception:
            self.counters["handler_errors"] += 1
            log.exception("handler for %s failed", req.path)
            await close_draining(connection, CloseCode.INTERNAL_ERROR, "internal server error")
        finally:
            self.active.discard(connection)

    def _health(self, req: RouteRequest) -> tuple[int, Any]:
        rooms = self.relay.snapshot()
        body: dict[str, Any] = {
            "status": "stopping" if self.stopping else "ok",
            "protocol_version": PROTOCOL_VERSION,
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "connections": len(self.active),
            "room_count": len(rooms),
            "counters": dict(sorted((self.counters + self.relay.stats).items())),
        }
        if self.broker is not None:
            body["broker"] = self.broker.snapshot()
            if self.broker.state != "up" and not self.stopping:
                body["status"] = "degraded"  # rooms work on this node only
            for name, room in rooms.items():
                room["cluster"] = self.broker.room_snapshot(name)
        # Room names and per-room stats only for clients that hold the token.
        body["rooms"] = rooms if self.authorized(req) else None
        return (503 if self.stopping else 200), body


# ------------------------------------------------------------------------------ CLI


async def _serve_until_signal(config: ServerConfig, setup: Callable[[Server], Any] | None = None) -> int:
    server = Server(config)
    if setup is not None:
        setup(server)
    await server.start()
    print(f"listening on {server.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    try:
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("signal received, shutting down")
    finally:
        await server.stop()
        for sig in signals:
            loop.remove_signal_handler(sig)
    return 0


def run_server(config: ServerConfig, setup: Callable[[Server], Any] | None = None) -> int:
    """Serve until SIGTERM/SIGINT, then shut down gracefully; returns the exit status."""
    return asyncio.run(_serve_until_signal(config, setup))


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``serve`` options (for ``snac-stream serve``) to ``parser``."""
    d = ServerConfig()
    a = parser.add_argument
    a("--host", default=d.host, help=f"address to bind (default {d.host}; 0.0.0.0 exposes it)")
    a("--port", type=int, default=d.port, help=f"TCP port, 0 = any free port (default {d.port})")
    a("--token", default=None, help=f"shared token required from clients (default: ${TOKEN_ENV})")
    a("--max-connections", type=int, default=d.max_connections)
    a("--max-rooms", type=int, default=d.max_rooms)
    a("--max-listeners", type=int, default=d.max_listeners_per_room, help="listeners per room")
    a("--max-message-size", type=int, default=d.max_message_size, help="bytes per packet")
    a("--listener-queue", type=int, default=d.listener_queue, help="packets queued per listener")
    a("--slow-listener", choices=("drop", "skip"), default=d.slow_listener)
    a("--idle-timeout", type=float, default=d.idle_timeout, help="seconds a publisher may stay silent")
    a(
        "--workers",
        type=int,
        default=d.workers,
        help=f"threads for routes' blocking work (default {d.workers})",
    )
    a(
        "--max-model-sessions",
        type=int,
        default=d.max_model_sessions,
        help=f"concurrent /encode + /decode connections (default {d.max_model_sessions})",
    )
    a(
        "--engine-workers",
        type=int,
        default=d.engine_workers,
        help="batched model shards per endpoint, one thread each (default: one per CPU core)",
    )
    a(
        "--model-rate",
        type=float,
        default=d.model_rate,
        help=f"audio seconds per second per /encode or /decode connection (default {d.model_rate:g})",
    )
    a(
        "--model-burst",
        type=float,
        default=d.model_burst,
        help=f"audio seconds such a connection may send ahead of --model-rate (default {d.model_burst:g})",
    )
    a(
        "--broker",
        default=None,
        metavar="URL",
        help="redis://HOST:PORT/DB: rooms span every node using this Redis (one stream per room)",
    )
    a(
        "--broker-maxlen",
        type=int,
        default=d.broker_maxlen,
        help=f"packets kept per room in Redis and buffered while it is away (default {d.broker_maxlen})",
    )
    a(
        "--broker-lease",
        type=float,
        default=d.broker_lease,
        help=f"seconds until a silent node's publisher counts as lost (default {d.broker_lease:g})",
    )
    a("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    d = ServerConfig()
    return ServerConfig(
        host=args.host,
        port=args.port,
        token=args.token or os.environ.get(TOKEN_ENV) or None,
        max_connections=args.max_connections,
        max_rooms=args.max_rooms,
        max_listeners_per_room=args.max_listeners,
        max_message_size=args.max_message_size,
        listener_queue=args.listener_queue,
        slow_listener=args.slow_listener,
        idle_timeout=args.idle_timeout,
        workers=getattr(args, "workers", d.workers),
        max_model_sessions=getattr(args, "max_model_sessions", d.max_model_sessions),
        engine_workers=getattr(args, "engine_workers", d.engine_workers),
        model_rate=getattr(args, "model_rate", d.model_rate),
        model_burst=getattr(args, "model_burst", d.model_burst),
        broker=getattr(args, "broker", None),
        broker_maxlen=getattr(args, "broker_maxlen", d.broker_maxlen),
        broker_lease=getattr(args, "broker_lease", d.broker_lease),
    )


def run_serve(args: argparse.Namespace, setup: Callable[[Server], Any] | None = None) -> int:
    """Entry point for ``snac-stream serve``: configure logging, serve, return exit status.

    ``setup(server)`` runs before the server starts, e.g.
    ``lambda server: add_model_endpoints(server, model, seed=0)`` for ``--model``.
    """
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "DEBUG":  # websockets logs every connection at INFO
        logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        config = config_from_args(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        return run_server(config, setup)
    except BrokerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
