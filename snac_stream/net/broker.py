"""Rooms that span relay nodes, on Redis Streams (``snac-stream serve --broker redis://HOST:PORT/DB``).

Each room is one Redis Stream. The node that has the room's publisher fans its packets out to
its own listeners as without a broker, and appends every packet to the stream (XADD ``MAXLEN ~
maxlen``) from a bounded per-room outbox; every node with the room reads the stream and fans
what other nodes wrote out to its listeners. Each node reads each of its rooms once, whatever
its listeners: one ``XREAD BLOCK`` over the streams of all its rooms (one blocking Redis
connection per node, not per room). See docs/protocol.md, "Rooms across nodes" (§8).

Keys of room NAME (the braces keep a room's keys in one Redis Cluster hash slot):

- ``snac:{NAME}:s`` the stream: one entry per packet, fields ``p`` (the packet's bytes) and
  ``n`` (the node that wrote it; ``-``: an END written for a publisher whose node died);
- ``snac:{NAME}:m`` the open stream (hash ``hello, sid, seq, frame, node``: its HELLO, next
  seq, next frame), which a late joiner on any node starts from;
- ``snac:{NAME}:p`` the publisher lease: the publishing node's id, expiring after ``lease``;
- ``snac:{NAME}:l`` listeners per node (hash node -> ``"COUNT EXPIRES_MS"``);
- ``snac:nodes`` the live nodes (sorted set scored by lease expiry).

The scripts below run atomically in Redis; every one of them checks the lease, so a node that
lost its lease (cut off for longer than ``lease``) cannot write into a room that another node
publishes to now (it is *fenced*).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from snac_stream.protocol.packets import (
    CloseCode,
    End,
    EndReason,
    Kind,
    PacketError,
    decode_header,
    decode_packet,
    encode_packet,
)

from .relay import Relay, Room

__all__ = ["BrokerConfig", "Broker", "BrokerError", "BrokerUnavailable", "redact_url"]

log = logging.getLogger("snac_stream.net.broker")
TRY_AGAIN_LATER = 1013  #: WebSocket close code: a publisher may retry (``publish(reconnect=True)`` does)

# KEYS s, m, p; ARGV node, kind (H C E X), sid, seq, first_frame, n_frames, packet, hello, maxlen,
# lease_ms, retention_ms. A CODES/END whose stream is not the open one in Redis (Redis restarted,
# or the stream was ended for a node that seemed dead) re-announces its HELLO first.
_PUBLISH = """
local owner = redis.call('GET', KEYS[3])
if owner ~= ARGV[1] then
  if owner then return 'fenced' end
  redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[10])
else
  redis.call('PEXPIRE', KEYS[3], ARGV[10])
end
local kind = ARGV[2]
if (kind == 'C' or kind == 'E') and ARGV[8] ~= '' then
  local m = redis.call('HMGET', KEYS[2], 'hello', 'sid')
  if (not m[1]) or m[2] ~= ARGV[3] then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[9], '*', 'p', ARGV[8], 'n', ARGV[1])
    redis.call('HSET', KEYS[2], 'hello', ARGV[8], 'sid', ARGV[3], 'seq', ARGV[4], 'frame', ARGV[5],
      'node', ARGV[1])
  end
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[9], '*', 'p', ARGV[7], 'n', ARGV[1])
if kind == 'H' then
  redis.call('HSET', KEYS[2], 'hello', ARGV[7], 'sid', ARGV[3], 'seq', 0, 'frame', 0, 'node', ARGV[1])
elseif kind == 'C' then
  redis.call('HSET', KEYS[2], 'seq', tonumber(ARGV[4]) + 1, 'frame', tonumber(ARGV[5]) + tonumber(ARGV[6]))
else
  redis.call('HDEL', KEYS[2], 'hello')
end
redis.call('PEXPIRE', KEYS[1], ARGV[11])
redis.call('PEXPIRE', KEYS[2], ARGV[11])
return id
"""

# KEYS p; ARGV node, lease_ms -> 1: this node holds the lease (taken or renewed), 0: another does
_CLAIM = """
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if owner then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS p; ARGV node
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS s, m, p; ARGV sid, seq, END packet, maxlen: END a stream whose publisher's lease expired
# (its node died or was cut off), once, for every node.
_REAP = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local m = redis.call('HMGET', KEYS[2], 'hello', 'sid', 'seq')
if (not m[1]) or m[2] ~= ARGV[1] or m[3] ~= ARGV[2] then return 0 end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'p', ARGV[3], 'n', '-')
redis.call('HDEL', KEYS[2], 'hello')
return 1
"""

# KEYS l; ARGV node, count, limit (0: none), lease_ms, retention_ms -> listeners in the room on
# all live nodes with this node's count set to ``count``, or -1 (over the limit; nothing set)
_LISTENERS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local others = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local c, e = string.match(all[i + 1], '^(%d+) (%d+)$')
  if (not c) or tonumber(e) < now then redis.call('HDEL', KEYS[1], all[i])
  elseif all[i] ~= ARGV[1] then others = others + tonumber(c) end
end
local count, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
if limit > 0 and others + count > limit then return -1 end
if count > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], string.format('%d %d', count, now + tonumber(ARGV[4])))
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return others + count
"""

# KEYS nodes; ARGV node, lease_ms (0: leave) -> live nodes
_NODES = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if tonumber(ARGV[2]) > 0 then redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
else redis.call('ZREM', KEYS[1], ARGV[1]) end
return redis.call('ZCARD', KEYS[1])
"""

_SCRIPTS = {
    "publish": _PUBLISH,
    "claim": _CLAIM,
    "release": _RELEASE,
    "reap": _REAP,
    "listeners": _LISTENERS,
    "nodes": _NODES,
}
_KIND_TAG = {Kind.HELLO: "H", Kind.CODES: "C", Kind.END: "E", Kind.ERROR: "X"}


class BrokerError(RuntimeError):
    """The broker cannot do what was asked (bad configuration, Redis unreachable)."""


class BrokerUnavailable(BrokerError):
    """Redis cannot be reached (at start: the server does not start)."""


def redact_url(url: str) -> str:
    """``url`` without its password (for logs and /health)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass
class BrokerConfig:
    """Settings of the broker (``snac-stream serve --broker URL --broker-maxlen N --broker-lease S``)."""

    url: str  #: redis://[:PASSWORD@]HOST:PORT/DB, rediss:// or unix://PATH?db=N
    maxlen: int = 128  #: packets kept per room stream (XADD MAXLEN ~), and per room in the outbox
    lease: float = 5.0  #: seconds a node's publisher lease and listener counts live unrenewed
    block: float = 0.1  #: seconds per XREAD BLOCK (a room new on this node is read within it)
    retention: float = 600.0  #: seconds a room's keys outlive its last packet
    connect_timeout: float = 3.0  #: seconds for a connection (and for the check at start)
    backoff_initial: float = 0.1  #: seconds before the first reconnection attempt
    backoff_max: float = 5.0  #: the longest wait between attempts
    prefix: str = "snac"  #: key prefix
    max_listeners_per_room: int = 32  #: cluster-wide
    max_message_size: int = 64 * 1024  #: bytes per packet read from the stream

    def __post_init__(self) -> None:
        if urlsplit(self.url).scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"broker URL {redact_url(self.url)!r} is not a Redis URL: use redis://HOST:PORT/DB "
                "(rediss:// with TLS, unix:///PATH?db=N)"
            )
        if not self.maxlen >= 1:
            raise ValueError("broker maxlen must be >= 1 (packets kept per room)")
        if not self.lease > 0 or not self.block > 0:
            raise ValueError("broker lease and block must be > 0 seconds")


@dataclass
class _Out:
    """One outbox entry: a packet to append (kind H C E X), or a lease release (R)."""

    kind: str
    data: bytes = b""
    sid: int = 0
    seq: int = 0
    first: int = 0
    n_frames: int = 0
    hello: bytes = b""  #: the HELLO of the packet's stream (re-announced when Redis lost it)
    room: Room | None = None  #: where its counters go


class _Feed:
    """How far this node read a room's stream, and the stream it cut off (Redis lost)."""

    def __init__(self, room: Room) -> None:
        self.room = room
        self.last_id: bytes | None = None  #: None: not joined yet
        self.cut: tuple[bytes, Any, int, int, int] | None = None  #: hello, info, sid, next seq/frame


class Broker:
    """Spans ``relay``'s rooms over Redis; the relay calls the hooks below."""

    def __init__(self, relay: Relay, config: BrokerConfig) -> None:
        self.relay = relay
        self.config = config
        self.node_id = secrets.token_hex(6)
        self._node = self.node_id.encode()
        self.state = "new"  #: new, up, down, stopped
        self.stats: collections.Counter[str] = collections.Counter()
        self.last_error = ""
        self.down_since: float | None = None
        self.live_nodes = 0
        self.redis_memory = 0  #: used_memory of Redis (bytes), from the last heartbeat
        self.cluster: dict[str, dict[str, Any]] = {}  #: per-room cluster figures, from the last heartbeat
        self.outbox: dict[str, collections.deque[_Out]] = {}
        self.claims: set[str] = set()  #: rooms whose publisher lease this node holds (or wants back)
        self.fenced: set[str] = set()  #: rooms whose lease another node took while this one was cut off
        self.feeds: dict[str, _Feed] = {}
        self.local_listeners: collections.Counter[str] = collections.Counter()
        self._dirty_listeners: set[str] = set()
        self._up = asyncio.Event()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._reconnector: asyncio.Task[None] | None = None
        self._inflight = 0  #: outbox entries being written now
        self._drained = asyncio.Event()  #: set after each write (see :meth:`writable`)
        self._feeds_changed = asyncio.Event()  #: a room came, or its local publisher left
        self._redis: Any = None
        self._errors: tuple[type[BaseException], ...] = (OSError,)
        self._shas: dict[str, str] = {}  #: script name -> SHA1 (EVALSHA)
        self._noscript: type[BaseException] = Exception
        self._any_error: tuple[type[BaseException], ...] = (OSError,)
        relay.broker = self

    # -- keys --------------------------------------------------------------------------

    def _key(self, room: str, what: str) -> str:
        return f"{self.config.prefix}:{{{room}}}:{what}"

    def _keys(self, room: str) -> list[str]:
        return [self._key(room, "s"), self._key(room, "m"), self._key(room, "p")]

    @property
    def _lease_ms(self) -> int:
        return max(1, int(self.config.lease * 1000))

    @property
    def _retention_ms(self) -> int:
        return max(self._lease_ms, int(self.config.retention * 1000))

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (raises :class:`BrokerUnavailable` if Redis does not answer) and start."""
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
            from redis.exceptions import ConnectionError as RedisConnectionError
            from redis.exceptions import NoScriptError, RedisError
            from redis.exceptions import TimeoutError as RedisTimeoutError
        except ImportError:
            raise BrokerError("--broker needs the redis package: pip install 'snac-stream[broker]'") from None
        c = self.config
        self._errors = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)
        self._noscript = NoScriptError
        self._any_error = (*self._errors, RedisError)
        pool = aioredis.BlockingConnectionPool.from_url(
            c.url,
            max_connections=64,  # one reader, one writer, one heartbeat, admissions in bursts
            timeout=c.connect_timeout + c.block + 5,
            socket_timeout=c.block + c.connect_timeout + 2,
            socket_connect_timeout=c.connect_timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._redis = aioredis.Redis.from_pool(pool)
        try:
            async with asyncio.timeout(c.connect_timeout):
                await self._redis.ping()
                await self._load_scripts()
                await self._register()
        except (*self._any_error, TimeoutError) as e:  # any RedisError: also NOAUTH, NOPERM
            await self._redis.aclose()
            raise BrokerUnavailable(
                f"cannot reach Redis at {redact_url(c.url)}: {e or type(e).__name__}; start redis-server "
                "there or pass another --broker redis://HOST:PORT/DB"
            ) from None
        self.state = "up"
        self._up.set()
        self._tasks = [
            asyncio.create_task(loop()) for loop in (self._write_loop, self._read_loop, self._heartbeat_loop)
        ]
        log.info("broker %s: node %s", redact_url(c.url), self.node_id)

    async def stop(self, flush_timeout: float = 2.0) -> None:
        """Write what the outbox holds (up to ``flush_timeout`` s), give back leases, disconnect."""
        if self.state in ("new", "stopped"):
            return
        try:
            async with asyncio.timeout(flush_timeout):
                while self.state == "up" and (self._outbox_size() or self._dirty_listeners or self._inflight):
                    self._wake.set()
                    await asyncio.sleep(0.01)
        except TimeoutError:
            log.warning("broker: %d packets not written at shutdown", self._outbox_size() + self._inflight)
        self.state = "stopped"
        self._up.set()  # every loop sees "stopped" and returns (redis-py may turn a cancellation
        self._wake.set()  # into a connection error, so cancelling alone is not enough)
        self._drained.set()
        tasks = list(self._tasks)
        if self._reconnector is not None:
            tasks.append(self._reconnector)
        for task in tasks:
            task.cancel()
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self.config.connect_timeout)
            if late:
                log.warning("broker: %d tasks did not stop", len(late))
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                async with self._redis.pipeline(transaction=False) as pipe:
                    for name in self.claims:
                        self._queue(pipe, "release", [self._key(name, "p")], [self.node_id])
                    for name in self.local_listeners:
                        self._set_listeners(name, pipe, count=0)
                    self._queue(pipe, "nodes", [f"{self.config.prefix}:nodes"], [self.node_id, 0])
                    await pipe.execute()
        except (*self._errors, TimeoutError) as e:
            log.info("broker: could not give back leases at shutdown (%s); they expire", e)
        await self._redis.aclose()

    async def _load_scripts(self) -> None:
        for name, text in _SCRIPTS.items():
            self._shas[name] = await self._redis.script_load(text)

    async def _call(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run script ``name`` now (loading the scripts again if Redis lost them)."""
        try:
            return await self._redis.evalsha(self._shas[name], len(keys), *keys, *args)
        except self._noscript:
            await self._load_scripts()
            return await self._redis.evalsha(self._shas[name], len(keys), *keys, *args)

    def _queue(self, pipe: Any, name: str, keys: list[str], args: list[Any]) -> None:
        """Queue script ``name`` on ``pipe``."""
        pipe.evalsha(self._shas[name], len(keys), *keys, *args)

    async def _register(self) -> None:
        """Tell Redis this node is alive; take back leases and listener counts (after a restart)."""
        nodes = await self._call("nodes", [f"{self.config.prefix}:nodes"], [self.node_id, self._lease_ms])
        self.live_nodes = int(nodes)
        for name in list(self.claims):
            if not await self._call("claim", [self._key(name, "p")], [self.node_id, self._lease_ms]):
                self._fence(name)

    def _fail(self, exc: BaseException) -> None:
        """Redis is lost: cut off the remote streams (END BROKER_LOST) and reconnect with backoff."""
        if self.state == "stopped":
            return
        if self.state == "up":
            self.state = "down"
            self._up.clear()
            self.down_since = time.monotonic()
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.stats["broker_lost"] += 1
            log.warning("broker lost (%s); rooms of this node go on locally", self.last_error)
            self._drained.set()  # publishers stop waiting: the outbox drops its oldest now
            for feed in self.feeds.values():
                room = feed.room
                if room.stream_open and room.origin == "remote" and room.info is not None:
                    assert room.hello is not None
                    feed.cut = (room.hello, room.info, room.stream_id, room.next_seq, room.next_frame)
                    room.end_stream(EndReason.BROKER_LOST)
                    room.stats["broker_streams_cut"] += 1
        if self._reconnector is None or self._reconnector.done():
            self._reconnector = asyncio.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        c = self.config
        attempt = 0
        while self.state == "down":
            delay = min(c.backoff_max, c.backoff_initial * 2**attempt) * random.uniform(0.5, 1.0)
            attempt += 1
            await asyncio.sleep(delay)
            try:
                async with asyncio.timeout(c.connect_timeout):
                    await self._redis.connection_pool.disconnect()  # none of the old connections is kept
                    await self._redis.ping()
                    await self._load_scripts()  # Redis may have restarted without them
                    await self._register()
            except (*self._any_error, TimeoutError) as e:
                self.last_error = f"{type(e).__name__}: {e}"
                continue
            if self.state != "down":
                return
            self._dirty_listeners.update(self.local_listeners)  # Redis may have restarted empty
            self.state = "up"
            self.down_since = None
            self.stats["reconnects"] += 1
            log.info("broker back after %d attempts", attempt)
            self._up.set()
            self._wake.set()

    # -- hooks called by the relay -----------------------------------------------------

    def attach(self, room: Room) -> None:
        """A room was created on this node: copy its local packets out, read the others'."""
        room.mirror = self.mirror
        self.feeds[room.name] = _Feed(room)
        self._feeds_changed.set()

    def detach(self, room: Room) -> None:
        """The room is empty on this node: stop reading it."""
        feed = self.feeds.get(room.name)
        if feed is not None and feed.room is room:
            del self.feeds[room.name]
        self.cluster.pop(room.name, None)

    async def claim_publisher(self, room: Room) -> tuple[int, str] | None:
        """Take the room's publisher lease; None, or (close code, reason) refusing the publisher."""
        name = room.name
        if self.state != "up":
            self.stats["publishers_refused_broker_down"] += 1
            return TRY_AGAIN_LATER, "the relay's broker is unavailable; try again later"
        try:
            ok = await self._call("claim", [self._key(name, "p")], [self.node_id, self._lease_ms])
        except self._errors as e:
            self._fail(e)
            return TRY_AGAIN_LATER, "the relay's broker is unavailable; try again later"
        if not ok:
            return CloseCode.PUBLISHER_EXISTS, f"room {name} already has a publisher (on another node)"
        self.claims.add(name)
        self.fenced.discard(name)
        if room.stream_open and room.origin == "remote":  # its END is still on the way, or lost
            room.end_stream(EndReason.PUBLISHER_LOST)
        return None

    def publisher_left(self, room: Room) -> None:
        """Give the lease back once everything the publisher sent is written."""
        self._enqueue(room.name, _Out("R", room=room))
        self._feeds_changed.set()

    async def admit_listener(self, room: Room) -> tuple[int, str] | None:
        """Count a listener against the cluster-wide limit; None, or (close code, reason)."""
        name, limit = room.name, self.config.max_listeners_per_room
        self.local_listeners[name] += 1
        if self.state != "up":
            self.stats["listeners_admitted_broker_down"] += 1
            return None
        args = [self.node_id, self.local_listeners[name], limit, self._lease_ms, self._retention_ms]
        try:
            total = await self._call("listeners", [self._key(name, "l")], args)
        except self._errors as e:
            self._fail(e)
            return None
        except BaseException:
            self._listener_gone(name)
            raise
        if total < 0:
            self._listener_gone(name)
            return CloseCode.ROOM_FULL, f"room {name} has {limit} listeners across the cluster"
        self.cluster.setdefault(name, {})["listeners"] = int(total)
        return None

    def listener_left(self, room: Room) -> None:
        self._listener_gone(room.name)

    def _listener_gone(self, name: str) -> None:
        self.local_listeners[name] -= 1
        self._dirty_listeners.add(name)
        self._wake.set()

    async def writable(self, room: Room) -> None:
        """Wait while Redis is up but behind with this room (half its outbox queued): the
        publisher is held up like TCP back-pressure, instead of packets being dropped."""
        while self.state == "up" and len(self.outbox.get(room.name, ())) >= max(1, self.config.maxlen // 2):
            self._drained.clear()
            await self._drained.wait()

    def mirror(self, room: Room, data: bytes, kind: Kind) -> None:
        """A packet of this node's publisher (or the END the relay wrote for it): queue it."""
        if room.name in self.fenced:
            return
        head = decode_header(data, max_size=max(len(data), 1))
        out = _Out(_KIND_TAG[kind], data, head.stream_id, head.seq, room=room, hello=room.hello or b"")
        if kind is Kind.CODES:
            out.first, out.n_frames = head.first_frame, head.n_frames
        elif kind is Kind.END:
            out.first = head.total_frames
        self._enqueue(room.name, out)

    # -- the outbox and its writer -----------------------------------------------------

    def _outbox_size(self) -> int:
        return sum(len(q) for q in self.outbox.values())

    def _enqueue(self, name: str, out: _Out, front: bool = False) -> None:
        q = self.outbox.setdefault(name, collections.deque())
        if front:
            q.appendleft(out)
        else:
            q.append(out)
        while sum(e.kind != "R" for e in q) > self.config.maxlen:  # bounded while Redis is away
            victim = next((e for e in q if e.kind == "C"), None) or next(e for e in q if e.kind != "R")
            q.remove(victim)
            self.stats["packets_dropped"] += 1
            self.stats["frames_dropped"] += victim.n_frames
            if victim.room is not None:
                victim.room.stats["broker_packets_dropped"] += 1
                victim.room.stats["broker_frames_dropped"] += victim.n_frames
        self._wake.set()

    def _take(self, per_room: int = 64) -> list[tuple[str, _Out]]:
        batch = []
        for name, q in list(self.outbox.items()):
            for _ in range(min(per_room, len(q))):
                batch.append((name, q.popleft()))
            if not q:
                del self.outbox[name]
        return batch

    async def _write_loop(self) -> None:
        while self.state != "stopped":
            await self._wake.wait()
            self._wake.clear()
            while (self.outbox or self._dirty_listeners) and self.state != "stopped":
                await self._up.wait()
                if self.state == "stopped":
                    return
                batch, dirty = self._take(), sorted(self._dirty_listeners)
                self._dirty_listeners.clear()
                self._inflight = len(batch) + len(dirty)
                try:
                    results = await self._write(batch, dirty)
                except self._errors as e:
                    for name, out in reversed(batch):
                        self._enqueue(name, out, front=True)
                    self._dirty_listeners.update(dirty)
                    self._fail(e)
                    break
                except Exception:
                    self.stats["write_errors"] += len(batch)
                    log.exception("broker: writing %d packets failed", len(batch))
                    continue
                finally:
                    self._inflight = 0
                    self._drained.set()
                lost_scripts = [
                    (n, o) for (n, o), r in zip(batch, results, strict=True) if isinstance(r, self._noscript)
                ]
                if lost_scripts:  # SCRIPT FLUSH (or a Redis restart between two commands): again
                    for name, out in reversed(lost_scripts):
                        self._enqueue(name, out, front=True)
                    try:
                        await self._load_scripts()
                    except self._errors as e:
                        self._fail(e)
                        break
                for (name, out), result in zip(batch, results, strict=True):
                    if isinstance(result, self._noscript):
                        continue
                    if isinstance(result, Exception):
                        self.stats["write_errors"] += 1
                        log.error("broker: writing to room %s failed: %s", name, result)
                    elif result == b"fenced":
                        self._fence(name)
                    elif out.kind != "R":
                        self.stats["packets_written"] += 1
                        if out.room is not None:
                            out.room.stats["broker_packets_out"] += 1

    async def _write(self, batch: list[tuple[str, _Out]], dirty: list[str]) -> list[Any]:
        """One pipeline: the batch's packets and releases, then the changed listener counts."""
        c, node = self.config, self.node_id
        async with self._redis.pipeline(transaction=False) as pipe:
            for name, out in batch:
                if out.kind != "R":
                    args = [node, out.kind, out.sid, out.seq, out.first, out.n_frames, out.data, out.hello]
                    args += [c.maxlen, self._lease_ms, self._retention_ms]
                    self._queue(pipe, "publish", self._keys(name), args)
                    continue
                room = self.relay.rooms.get(name)
                if room is not None and room.publisher is not None:  # a new local publisher took over
                    pipe.echo(b"kept")
                    continue
                self.claims.discard(name)
                self.fenced.discard(name)
                self._queue(pipe, "release", [self._key(name, "p")], [node])
            for name in dirty:
                self._set_listeners(name, pipe)
                if self.local_listeners[name] <= 0:
                    del self.local_listeners[name]
            results = await pipe.execute(raise_on_error=False)
        for r in results:
            if isinstance(r, self._errors):
                raise r
        return results[: len(batch)]

    def _set_listeners(self, name: str, pipe: Any, count: int | None = None) -> None:
        """Queue: this node's listener count in room ``name`` (its local count by default)."""
        count = max(self.local_listeners[name], 0) if count is None else count
        args = [self.node_id, count, 0, self._lease_ms, self._retention_ms]
        self._queue(pipe, "listeners", [self._key(name, "l")], args)

    def _fence(self, name: str) -> None:
        """Another node publishes to ``name`` now: stop writing for it, close the local publisher."""
        self.stats["fenced"] += 1
        self.fenced.add(name)
        self.claims.discard(name)
        self.outbox.pop(name, None)
        room = self.relay.rooms.get(name)
        log.warning("broker: room %s has a publisher on another node now; closing this node's", name)
        if room is not None and room.publisher is not None and hasattr(room.publisher, "close"):
            reason = f"room {name} got a publisher on another node while this one was cut off from the broker"
            asyncio.create_task(room.publisher.close(CloseCode.PUBLISHER_EXISTS, reason))

    # -- readers -----------------------------------------------------------------------

    async def _read_loop(self) -> None:
        """The node's one reader: a single ``XREAD BLOCK`` over the streams of all its rooms
        (each room read once per node, whatever its listeners), from the last id read in each.
        A room whose publisher is on this node is left out: all it holds is this node's own."""
        block_ms = max(1, int(self.config.block * 1000))
        while self.state != "stopped":
            await self._up.wait()
            if self.state == "stopped":
                return
            self._feeds_changed.clear()
            try:
                new = [f for f in self.feeds.values() if f.last_id is None]
                if new:
                    await self._join(new)
                feeds = {self._key(n, "s"): f for n, f in self.feeds.items() if f.room.publisher is None}
                if not feeds:  # nothing to read: wait for a room (or a publisher leaving)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.config.block):
                            await self._feeds_changed.wait()
                    continue
                streams = {key: f.last_id for key, f in feeds.items() if f.last_id is not None}
                response = await self._redis.xread(streams, count=256, block=block_ms)
            except self._errors as e:
                self._fail(e)
                continue
            except Exception:  # a Redis error reply (say, a key holds another type): not fatal
                self.stats["read_errors"] += 1
                log.exception("broker: reading rooms failed")
                await asyncio.sleep(self.config.block)
                continue
            for key, entries in response or ():
                feed = feeds.get(key.decode())
                if feed is None or self.feeds.get(feed.room.name) is not feed:
                    continue  # the room was released meanwhile
                for entry_id, fields in entries:
                    feed.last_id = entry_id
                    self._apply(feed, fields)

    async def _join(self, feeds: list[_Feed]) -> None:
        """Start at each stream's tail; a stream already open there starts with its HELLO."""
        async with self._redis.pipeline(transaction=True) as pipe:  # one consistent snapshot
            for feed in feeds:
                pipe.hgetall(self._key(feed.room.name, "m"))
                pipe.xrevrange(self._key(feed.room.name, "s"), count=1)
            results = await pipe.execute()
        for i, feed in enumerate(feeds):
            meta, last = results[2 * i], results[2 * i + 1]
            feed.last_id = last[0][0] if last else b"0-0"
            room, hello = feed.room, meta.get(b"hello")
            if (
                hello is None
                or meta.get(b"node") == self._node
                or room.publisher is not None
                or room.stream_open
            ):
                continue
            try:
                packet = decode_packet(hello, max_size=self.config.max_message_size)
            except PacketError:
                room.stats["broker_bad_entries"] += 1
                continue
            self._open(feed, hello, packet.info, packet.stream_id, int(meta[b"seq"]), int(meta[b"frame"]))
            if room.next_frame > 0:
                room.stats["late_joins"] += len(room.listeners)

    def _open(self, feed: _Feed, hello: bytes, info: Any, sid: int, next_seq: int, next_frame: int) -> None:
        room = feed.room
        room.origin = "remote"
        room.hello, room.info, room.stream_id = hello, info, sid
        room.next_seq, room.next_frame = next_seq, next_frame
        feed.cut = None
        room.deliver(hello, Kind.HELLO)

    def _apply(self, feed: _Feed, fields: dict[bytes, bytes]) -> None:
        """One stream entry written by another node: check its place in the stream, fan it out."""
        room, data = feed.room, fields.get(b"p", b"")
        if fields.get(b"n") == self._node:
            return
        self.stats["entries_read"] += 1
        if room.publisher is not None:  # this node publishes: the entry is older than its lease
            room.stats["broker_stale_entries"] += 1
            return
        try:
            head = decode_header(data, max_size=self.config.max_message_size)
            if head.kind is Kind.HELLO:
                hello = decode_packet(data, max_size=self.config.max_message_size)
            elif head.kind is Kind.CODES and room.stream_open and head.stream_id == room.stream_id:
                decode_header(data, room.info, self.config.max_message_size)  # exact payload size
        except PacketError:
            room.stats["broker_bad_entries"] += 1
            return
        if head.kind is Kind.HELLO:
            if room.stream_open and room.stream_id == hello.stream_id and room.hello == data:
                return  # re-announced after a Redis restart: the stream goes on
            if room.stream_open:  # the END of the previous stream was lost
                room.end_stream(EndReason.PUBLISHER_LOST)
            cut = feed.cut
            if cut is not None and cut[0] == data:  # the stream this node cut off goes on
                self._open(feed, data, cut[1], cut[2], cut[3], cut[4])
                room.stats["broker_streams_resumed"] += 1
            else:
                self._open(feed, data, hello.info, hello.stream_id, 0, 0)
                room.stats["streams_started"] += 1
            return
        if head.kind is Kind.ERROR:
            room.deliver(data, Kind.ERROR)
            if room.stream_open:
                room.hello = None
                room.stats["streams_aborted"] += 1
            return
        if not room.stream_open and feed.cut is not None and feed.cut[2] == head.stream_id:
            self._open(feed, *feed.cut)  # resumed without a new HELLO: repeat the one it had
            room.stats["broker_streams_resumed"] += 1
        if not room.stream_open or head.stream_id != room.stream_id:
            room.stats["broker_orphan_entries"] += 1
            return
        if head.seq < room.next_seq:
            room.stats["broker_duplicates"] += 1
            return
        if head.kind is Kind.CODES:
            if head.seq > room.next_seq or head.first_frame != room.next_frame:
                room.stats["broker_gaps"] += 1
                room.stats["broker_frames_lost"] += max(head.first_frame - room.next_frame, 0)
            room.next_seq, room.next_frame = head.seq + 1, head.first_frame + head.n_frames
            room.stats["broker_frames_in"] += head.n_frames
            room.deliver(data, Kind.CODES, head.n_frames)
            return
        # END
        room.stats["broker_frames_lost"] += max(head.total_frames - room.next_frame, 0)
        room.deliver(data, Kind.END)
        room.hello = None
        room.stats["streams_completed" if head.reason == EndReason.COMPLETE else "streams_aborted"] += 1

    async def _check_publisher(self, feed: _Feed) -> None:
        """The remote stream's publisher lease is gone (its node died or was cut off): END it."""
        room = feed.room
        if not (room.stream_open and room.origin == "remote" and room.info is not None):
            return
        s, m, p = self._keys(room.name)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.exists(p)
            pipe.hgetall(m)
            pipe.xrevrange(s, count=1)
            owned, meta, last = await pipe.execute()
        if owned:
            return
        if meta.get(b"hello") is None or meta.get(b"sid") != str(room.stream_id).encode():
            if not last or last[0][0] == feed.last_id:  # read to the end: the END is not there
                room.end_stream(EndReason.PUBLISHER_LOST)
                room.stats["broker_streams_ended_here"] += 1
            return
        seq, frame = int(meta[b"seq"]), int(meta[b"frame"])
        end = End(room.stream_id, seq, frame, frame * room.info.frame_size, EndReason.PUBLISHER_LOST)
        args = [room.stream_id, seq, encode_packet(end), self.config.maxlen]
        if await self._call("reap", [s, m, p], args):
            self.stats["streams_reaped"] += 1
            log.info("room %s: publisher's node is gone; stream %d ended", room.name, room.stream_id)

    # -- heartbeat and /health ---------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while self.state != "stopped":
            await asyncio.sleep(self.config.lease / 3)
            if self.state != "up":
                continue
            try:
                await self._beat()
            except self._errors as e:
                self._fail(e)
            except self._noscript:
                with contextlib.suppress(*self._errors):
                    await self._load_scripts()
            except Exception:
                log.exception("broker: heartbeat failed")

    async def _beat(self) -> None:
        """Renew this node's claims; refresh the cluster figures of its rooms (for /health)."""
        await self._register()
        names = sorted(self.relay.rooms)
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                self._set_listeners(name, pipe)
                pipe.hlen(self._key(name, "l"))
                pipe.get(self._key(name, "p"))
                pipe.xlen(self._key(name, "s"))
                pipe.hmget(self._key(name, "m"), "hello", "sid", "frame")
            pipe.info("memory")
            results = await pipe.execute()
        self.redis_memory = int(results[-1].get("used_memory", 0))
        for i, name in enumerate(names):
            listeners, nodes, owner, length, (hello, sid, frame) = results[5 * i : 5 * i + 5]
            feed = self.feeds.get(name)
            if owner is None and feed is not None and feed.room.stream_open and feed.room.origin == "remote":
                await self._check_publisher(feed)
            open_ = hello is not None and sid is not None
            self.cluster[name] = {
                "listeners": int(listeners),
                "listener_nodes": int(nodes),
                "publisher_node": owner.decode() if owner else None,
                "stream_length": int(length),
                "stream_id": int(sid) if open_ else None,
                "next_frame": int(frame) if open_ and frame is not None else None,
                "updated": time.time(),
            }

    def snapshot(self) -> dict[str, Any]:
        """The broker's state for /health (JSON-ready)."""
        return {
            "url": redact_url(self.config.url),
            "state": self.state,
            "node_id": self.node_id,
            "nodes": self.live_nodes,
            "down_for_s": round(time.monotonic() - self.down_since, 3) if self.down_since else None,
            "last_error": self.last_error or None,
            "outbox_packets": self._outbox_size(),
            "maxlen": self.config.maxlen,
            "lease_s": self.config.lease,
            "redis_used_memory": self.redis_memory,
            "counters": dict(sorted(self.stats.items())),
        }

    def room_snapshot(self, name: str) -> dict[str, Any]:
        """Cluster figures of room ``name`` (listeners on all nodes, the publisher's node, the
        stream's length in Redis: from the last heartbeat) and this node's reader state."""
        feed, room = self.feeds.get(name), self.relay.rooms.get(name)
        return {
            **self.cluster.get(name, {}),
            "reading": feed is not None and feed.last_id is not None,
            "origin": room.origin if room is not None and room.stream_open else None,
        }
