"""Addresses and ports of the local stack, computed, never guessed.

Cluster i (1-based) lives at 127.0.i.x: its head at 127.0.i.1, worker n at 127.0.i.(n+1).
Ray binds some ports on every interface, so each node owns a disjoint port block:
``port_base + i*2000 + n*200`` … ``+199``; offsets within a block are fixed below.
"""

from __future__ import annotations

import errno
import fcntl
import socket
import string
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ha_serving._errors import StackError
from ha_serving._settings import Settings
from infra.topology import NodePorts

BLOCK_PER_CLUSTER = 2000
BLOCK_PER_NODE = 200
WORKER_PORTS_FROM = 20
"""Offsets 20..199 of a node's block are its Ray worker ports (180 worker processes)."""


def cluster_name(index: int) -> str:
    """Cluster 1 is "a", 2 is "b", …: short names for CLI use (``--cluster a``)."""
    return string.ascii_lowercase[index - 1]


def node_address(cluster_index: int, node_index: int) -> str:
    return f"127.0.{cluster_index}.{node_index + 1}"


def node_ports(port_base: int, cluster_index: int, node_index: int) -> NodePorts:
    base = port_base + cluster_index * BLOCK_PER_CLUSTER + node_index * BLOCK_PER_NODE
    head = node_index == 0
    return NodePorts(
        gcs=base if head else None,
        node_manager=base + 1,
        object_manager=base + 2,
        metrics_export=base + 3,
        dashboard_agent_grpc=base + 4,
        dashboard_agent_listen=base + 5,
        runtime_env_agent=base + 6,
        ray_client_server=base + 7 if head else None,
        dashboard=base + 8 if head else None,
        min_worker=base + WORKER_PORTS_FROM,
        max_worker=base + BLOCK_PER_NODE - 1,
    )


def ensure_free(address: str, ports: list[int], *, what: str) -> None:
    """Raise StackError naming the first port of ``ports`` that cannot be bound."""
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            # as servers do: a port whose old connections linger in TIME_WAIT is free
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((address, port))
            except OSError as exc:
                reason = "in use" if exc.errno == errno.EADDRINUSE else exc.strerror
                raise StackError(f"port {address}:{port} for {what} is {reason}") from None


def tcp_answers(address: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout_s):
            return True
    except OSError:
        return False


SLOT_BASES = (11000, 16000, 21000)
"""Port bases a test run may claim. ``make up``'s default base (10000) interleaves with
11000 (its blocks sit 1000 ports apart), so a test run and ``make up`` share the machine;
every slot's clusters stay below Linux's ephemeral range (32768+) up to 3 clusters."""


@dataclass(frozen=True)
class PortSlot:
    """A port base held for one run (an flock on a file under /tmp), and the ports of the
    run's private services, placed in the base's own first block, which no node uses."""

    base: int
    lock: IO[str]

    @property
    def db_port(self) -> int:
        return self.base + 11

    @property
    def redis_port(self) -> int:
        return self.base + 12

    @property
    def keeper_port(self) -> int:
        return self.base + 13

    def release(self) -> None:
        self.lock.close()

    def settings(self, settings: Settings) -> Settings:
        """``settings`` with every port of the stack (nodes, DB, Redis, Keepers) in this
        slot, for a run that stands up a stack of its own."""
        groups = {
            name: getattr(settings, name).model_dump() for name in type(settings).model_fields
        }
        groups["stack"].update(
            port_base=self.base, db_port=self.db_port, redis_port=self.redis_port
        )
        groups["keeper"]["port"] = self.keeper_port
        return Settings.build(**groups)


def claim_slot(bases: tuple[int, ...] = SLOT_BASES, lock_dir: Path = Path("/tmp")) -> PortSlot:  # noqa: S108 - machine-wide by design
    """Claim the first port base no other run on this machine holds (held until
    ``release`` or the process ends); StackError when all are taken."""
    for base in bases:
        lock = (lock_dir / f"ha-serving-ports-{base}.lock").open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        return PortSlot(base, lock)
    raise StackError(f"every port base {list(bases)} is held by another run on this machine")
