"""A TCP fault proxy for the drills: latency, resets, a blackhole or pass-through, per
link, switchable at runtime.

Why a proxy and not netem, iptables/nft or network namespaces: netem is not available
here, and all of them need root, act on the machine's whole loopback interface (every
process on it, the CI run beside us included), and leave rules behind when a run dies
half way. A proxy needs no root and no install, acts only on the connections routed
through it (the Keepers' to the DB, the load's to one cluster's proxies), switches in a
millisecond, and whatever it did ends with its process (its own process group, stopped
by PGID). What it cannot do is act on single packets in the kernel: it acts on the
chunks it reads from a socket (what one ``recv`` returns) and on whole connections,
which is what the protocols above TCP see anyway.

The faults (``Fault``), one per link at a time:

==========  ==========================================================================
pass        bytes are forwarded as they come
latency     every chunk is held ``latency_ms`` ± ``jitter_ms`` (uniform) in each
            direction, order kept: netem's ``delay``, so a round trip gains twice that
blackhole   nothing moves: the link stops reading, held bytes stay held, and a new
            connection is accepted but not connected onwards (a partition). When the
            link heals, what was held is delivered, as TCP's retransmissions would
            after a partition shorter than the peers' timeouts
reset       every open connection is reset (RST, by SO_LINGER 0) on both sides; with
            ``reset_every_s`` again every so many seconds (new connections pass in
            between), without it also every new connection, as soon as it is accepted
==========  ==========================================================================

A ``Hub`` holds the links, one per (group, upstream), each on a listening address of
its own, and answers a control socket (unix, mode 0600): one JSON object a line in each
direction (``LinkRequest``, ``SetRequest``, ``StatusRequest``; ``HubClient`` speaks it).
A fault is set on a group pattern (``client-*``) and also applies to links that join
the group later. ``python -m chaos.netfault`` runs a hub until SIGTERM, until the file it
watches (the stack's topology) goes away or changes run, or for ``--max-lifetime-s`` at
most. Every address it listens on or connects to must be in 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fnmatch
import ipaddress
import json
import logging
import os
import random
import signal
import socket
import struct
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

log = logging.getLogger("chaos.netfault")

Mode = Literal["pass", "latency", "blackhole", "reset"]

CHUNK = 64 * 1024
"""Most bytes read (and delayed as one) at a time."""
QUEUE_CHUNKS = 64
"""Chunks in flight per direction under latency; a full queue stops reading (backpressure)."""
MAX_CONNECTIONS = 512
"""Open connections per link; one more is reset (a partition's stalled ones pile up)."""
MAX_LINKS = 256
MAX_RULES = 64
MAX_REQUEST_BYTES = 64 * 1024
CONNECT_TIMEOUT_S = 5.0
MAX_LIFETIME_S = 24 * 3600.0
GROUP = r"^[a-z0-9][a-z0-9-]{0,63}$"
PATTERN = r"^[a-z0-9*][a-z0-9*-]{0,63}$"


class NetfaultError(RuntimeError):
    """The hub refused a request or could not be reached."""


class Fault(BaseModel):
    """What a link does to the bytes it carries (module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Mode = "pass"
    latency_ms: float = Field(default=0.0, ge=0, le=10_000)
    """Added to each chunk, each direction (mode ``latency``)."""
    jitter_ms: float = Field(default=0.0, ge=0, le=10_000)
    """Each chunk's latency is drawn from latency ± jitter (never below 0)."""
    reset_every_s: float | None = Field(default=None, ge=0.1, le=3600)
    """Mode ``reset``: reset the open connections again every so many seconds and let new
    ones through; None: reset every new connection too."""

    @model_validator(mode="after")
    def _fits_mode(self) -> Fault:
        if self.mode != "latency" and (self.latency_ms or self.jitter_ms):
            raise ValueError("latency_ms and jitter_ms are for mode latency")
        if self.mode != "reset" and self.reset_every_s is not None:
            raise ValueError("reset_every_s is for mode reset")
        return self

    def delay_s(self, rng: random.Random) -> float:
        if self.mode != "latency":
            return 0.0
        ms = self.latency_ms + rng.uniform(-self.jitter_ms, self.jitter_ms)
        return max(0.0, ms) / 1000


PASS = Fault()


def loopback(address: str) -> tuple[str, int]:
    """``host:port`` split, refused unless the host is an IPv4 address in 127.0.0.0/8."""
    host, sep, port = address.rpartition(":")
    try:
        ip = ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise ValueError(f"{address!r} is not an IPv4 host:port") from None
    if not sep or ip.version != 4 or not ip.is_loopback or not 0 <= number <= 65535:
        raise ValueError(f"{address!r}: only 127.0.0.0/8 addresses (no traffic leaves the host)")
    return host, number


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN: SO_LINGER on with a zero timeout, then close."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(eq=False)
class _Conn:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    dead: bool = False

    def reset(self) -> None:
        self.dead = True
        reset(self.client)
        if self.upstream is not None:
            reset(self.upstream)
        for task in self.tasks:
            task.cancel()


@dataclass
class Counters:
    accepted: int = 0
    active: int = 0
    resets: int = 0
    """Connections reset by the fault (each counted once)."""
    bytes_up: int = 0
    """Client to upstream, delivered."""
    bytes_down: int = 0


class Link:
    """One listening address forwarding to one upstream, under one ``Fault`` at a time.
    Its methods run on the hub's event loop."""

    def __init__(
        self,
        group: str,
        upstream: str,
        *,
        listen: str,
        fault: Fault = PASS,
        rng: random.Random | None = None,
    ) -> None:
        self.group = group
        self.upstream = upstream
        self._up = loopback(upstream)
        self._listen = loopback(listen)
        self.fault = fault
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not crypto
        self.counters = Counters()
        self.address = ""
        """Where it listens (``host:port``), once started."""
        self._conns: set[_Conn] = set()
        self._flowing = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._ticker: asyncio.Task[None] | None = None

    async def start(self) -> str:
        host, port = self._listen
        self._server = await asyncio.start_server(
            self._accept, host, port, reuse_address=True, limit=CHUNK
        )
        bound = self._server.sockets[0].getsockname()
        self.address = f"{bound[0]}:{bound[1]}"
        self.set(self.fault)
        return self.address

    async def close(self) -> None:
        self._stop_ticker()
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.reset()
        self._flowing.set()  # connections held by a partition see they are dead, and end
        if self._server is not None:
            await self._server.wait_closed()

    def set(self, fault: Fault) -> None:
        self.fault = fault
        self._stop_ticker()
        if fault.mode == "blackhole":
            self._flowing.clear()
        else:
            self._flowing.set()
        if fault.mode == "reset":
            self.reset_all()
            if fault.reset_every_s is not None:
                self._ticker = asyncio.get_running_loop().create_task(
                    self._tick(fault.reset_every_s)
                )

    def reset_all(self) -> int:
        victims = [c for c in self._conns if not c.dead]
        for conn in victims:
            conn.reset()
        self.counters.resets += len(victims)
        return len(victims)

    def _stop_ticker(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    async def _tick(self, every_s: float) -> None:
        """Reset the open connections every ``every_s``, until the fault changes (which
        cancels it) or the link closes."""
        while True:
            await asyncio.sleep(every_s)
            self.reset_all()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counters.accepted += 1
        refuse = self.fault.mode == "reset" and self.fault.reset_every_s is None
        if refuse or len(self._conns) >= MAX_CONNECTIONS:
            self.counters.resets += 1
            reset(writer)
            return
        conn = _Conn(writer)
        self._conns.add(conn)
        self.counters.active += 1
        try:
            await self._flowing.wait()  # a partition: accepted, not connected onwards
            if conn.dead:
                return
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection(*self._up, limit=CHUNK), CONNECT_TIMEOUT_S
                )
            except (OSError, asyncio.TimeoutError):
                reset(writer)
                return
            conn.upstream = up_writer
            if conn.dead:  # reset while connecting
                reset(up_writer)
                return
            loop = asyncio.get_running_loop()
            conn.tasks = [
                loop.create_task(self._pump(reader, up_writer, upstream=True)),
                loop.create_task(self._pump(up_reader, writer, upstream=False)),
            ]
            await self._finish(conn)
        finally:
            self._conns.discard(conn)
            self.counters.active -= 1
            for w in (writer, conn.upstream):
                if w is not None and not w.is_closing():
                    w.close()

    async def _finish(self, conn: _Conn) -> None:
        """Both directions ended (end of stream each way) or one failed: a failure (a
        peer's reset, a broken pipe) is passed on to the other side as a reset."""
        _, pending = await asyncio.wait(conn.tasks, return_when=asyncio.FIRST_EXCEPTION)
        failed = any(t.cancelled() or t.exception() is not None for t in conn.tasks if t.done())
        if (pending or failed) and not conn.dead:
            conn.reset()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        """One direction: a reader stamps each chunk with when it may go on (the fault's
        delay, never before the previous chunk), a writer sends it then."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)

        async def read() -> None:
            last_due = 0.0
            while True:
                await self._flowing.wait()
                data = await src.read(CHUNK)
                await self._flowing.wait()  # read just as a partition began: held
                last_due = max(last_due, loop.time() + self.fault.delay_s(self.rng))
                await queue.put((last_due, data))
                if not data:
                    return

        async def write() -> None:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._flowing.wait()
                if not data:
                    if dst.can_write_eof():
                        dst.write_eof()
                    return
                dst.write(data)
                await dst.drain()
                if upstream:
                    self.counters.bytes_up += len(data)
                else:
                    self.counters.bytes_down += len(data)

        tasks = [loop.create_task(read()), loop.create_task(write())]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    def status(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "upstream": self.upstream,
            "listen": self.address,
            "fault": self.fault.model_dump(),
            **asdict(self.counters),
        }


# --- the hub and its control protocol ------------------------------------------------


class LinkRequest(BaseModel):
    """A link in ``group`` to ``upstream``, listening on ``listen`` (port 0: any free
    port); the existing one if the group already has a link to that upstream."""

    model_config = ConfigDict(extra="forbid")
    op: Literal["link"]
    group: str = Field(pattern=GROUP)
    upstream: str
    listen: str


class SetRequest(BaseModel):
    """``fault`` on every link whose group matches ``group`` (fnmatch), now and later."""

    model_config = ConfigDict(extra="forbid")
    op: Literal["set"]
    group: str = Field(pattern=PATTERN)
    fault: Fault


class StatusRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    op: Literal["status"]


Request = Annotated[LinkRequest | SetRequest | StatusRequest, Field(discriminator="op")]
_REQUEST: TypeAdapter[LinkRequest | SetRequest | StatusRequest] = TypeAdapter(Request)


class Hub:
    """Links by (group, upstream), and the faults set on group patterns."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.links: dict[tuple[str, str], Link] = {}
        self.rules: list[tuple[str, Fault]] = []
        """(pattern, fault), oldest first: the last matching rule is a group's fault."""
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not crypto
        self._control: asyncio.Server | None = None

    def fault_for(self, group: str) -> Fault:
        for pattern, fault in reversed(self.rules):
            if fnmatch.fnmatchcase(group, pattern):
                return fault
        return PASS

    async def link(self, group: str, upstream: str, listen: str) -> Link:
        found = self.links.get((group, upstream))
        if found is not None:
            return found
        if len(self.links) >= MAX_LINKS:
            raise ValueError(f"already {MAX_LINKS} links")
        link = Link(group, upstream, listen=listen, fault=self.fault_for(group), rng=self.rng)
        await link.start()
        self.links[(group, upstream)] = link
        return link

    def set(self, pattern: str, fault: Fault) -> int:
        """Set ``fault`` on the matching links; how many matched."""
        self.rules = [r for r in self.rules if r[0] != pattern] + [(pattern, fault)]
        if pattern == "*" and fault == PASS:
            self.rules = []  # every link healed: nothing left to remember
        self.rules = self.rules[-MAX_RULES:]
        matched = [k for k in self.links.values() if fnmatch.fnmatchcase(k.group, pattern)]
        for link in matched:
            link.set(fault)
        return len(matched)

    async def handle(self, raw: bytes) -> dict[str, Any]:
        try:
            request = _REQUEST.validate_json(raw)
        except ValidationError as exc:
            return {"ok": False, "error": "; ".join(e["msg"] for e in exc.errors())[:500]}
        try:
            if isinstance(request, LinkRequest):
                link = await self.link(request.group, request.upstream, request.listen)
                return {"ok": True, "listen": link.address}
            if isinstance(request, SetRequest):
                return {"ok": True, "links": self.set(request.group, request.fault)}
            return {"ok": True, "links": [k.status() for k in self.links.values()]}
        except (OSError, ValueError) as exc:
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}

    async def serve_control(self, path: Path) -> None:
        """Answer requests on the unix socket ``path`` (mode 0600)."""
        path.unlink(missing_ok=True)
        self._control = await asyncio.start_unix_server(
            self._serve_one, path=str(path), limit=MAX_REQUEST_BYTES
        )
        path.chmod(0o600)

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                reply = await self.handle(line)
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (OSError, ValueError, asyncio.LimitOverrunError):
            pass  # a client gone, or a line too long: drop this connection only
        finally:
            writer.close()

    async def close(self) -> None:
        if self._control is not None:
            self._control.close()
        for link in self.links.values():
            await link.close()


class HubClient:
    """The control protocol from a blocking caller (a drill's action, the load's routing)."""

    def __init__(self, path: Path, *, timeout_s: float = 5.0) -> None:
        self.path = path
        self.timeout_s = timeout_s

    def request(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        data = b""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(self.timeout_s)
                s.connect(str(self.path))
                s.sendall(json.dumps(payload).encode() + b"\n")
                while not data.endswith(b"\n") and len(data) <= MAX_REQUEST_BYTES * 16:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        except OSError as exc:
            raise NetfaultError(f"fault hub at {self.path}: {exc}") from None
        try:
            reply: dict[str, Any] = json.loads(data)
        except ValueError:
            raise NetfaultError(f"fault hub at {self.path}: no answer") from None
        if not reply.get("ok"):
            raise NetfaultError(str(reply.get("error")))
        return reply

    def ping(self) -> bool:
        try:
            self.request({"op": "status"})
        except NetfaultError:
            return False
        return True

    def link(self, group: str, upstream: str, listen: str) -> str:
        """The address that reaches ``upstream`` through the hub's link in ``group``."""
        reply = self.request({"op": "link", "group": group, "upstream": upstream, "listen": listen})
        return str(reply["listen"])

    def set(self, group: str, fault: Fault) -> int:
        reply = self.request({"op": "set", "group": group, "fault": fault.model_dump()})
        return int(reply["links"])

    def status(self) -> list[dict[str, Any]]:
        links: list[dict[str, Any]] = self.request({"op": "status"})["links"]
        return links


# --- the hub's process ---------------------------------------------------------------


def _watched(path: Path | None, text: str) -> bool:
    """The watched file still exists and holds ``text`` (the stack is still the one the
    hub was started for)."""
    if path is None:
        return True
    try:
        return text in path.read_text()
    except OSError:
        return False


async def serve(
    control: Path, *, watch: Path | None, watch_text: str, max_lifetime_s: float
) -> None:
    hub = Hub()
    await hub.serve_control(control)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    deadline = loop.time() + max_lifetime_s
    log.info("fault hub on %s", control)
    try:
        while not stop.is_set() and loop.time() < deadline and _watched(watch, watch_text):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        await hub.close()
        control.unlink(missing_ok=True)
    log.info("fault hub stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The drills' TCP fault hub.")
    parser.add_argument("--control", type=Path, required=True, help="unix socket to answer on")
    parser.add_argument("--watch", type=Path, help="exit once this file is gone or changes")
    parser.add_argument("--watch-text", default="", help="… or no longer contains this")
    parser.add_argument("--max-lifetime-s", type=float, default=6 * 3600.0)
    args = parser.parse_args(argv)
    if not 0 < args.max_lifetime_s <= MAX_LIFETIME_S:
        parser.error(f"--max-lifetime-s must be in (0, {MAX_LIFETIME_S:g}]")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    os.umask(0o077)
    asyncio.run(
        serve(
            args.control,
            watch=args.watch,
            watch_text=args.watch_text,
            max_lifetime_s=args.max_lifetime_s,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
