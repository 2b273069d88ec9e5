"""The local stack's node supervisor: what KubeRay's operator does for a Ray cluster's
pods, done here for the stack's Ray nodes.

    python -m infra.supervise RUN_DIR          # `up` starts it; `down` stops it

Once a second it reads the run dir's topology and starts again every Ray node whose
process is gone, unless a fault killed that node on purpose (``Node.held``, set by
``infra.kill_node`` / ``kill_cluster``, cleared by any start): a drill or a test that
kills a node restarts it itself, when it chooses. What this catches is a node that died
by itself. The case that needs it: a head's GCS exits when it loses Redis (Ray 2.60:
GCS fault tolerance needs Redis up), ``ray start --block`` then stops the head, and the
cluster's other raylets exit ``gcs_reconnect_timeout_s`` later; a head started again
on the same Redis namespace once Redis answers restores the GCS, and the raylets
reconnect.

Rules, in order, each tick:

- a head is started only while Redis answers (a head without its Redis exits at once);
- a worker node only while its head runs (a worker needs a GCS to join);
- a cluster whose every node died comes back empty (``restart_cluster``'s rule);
- it acts under the run dir's lock, taken without waiting, and re-reads the topology
  under it, so it never races ``up``, ``down`` or a fault primitive; the nodes it spawns
  are saved in the topology before it waits for them, so ``down`` finds them;
- one start per node per tick (``await_nodes`` with one attempt); a failed start is
  logged with the node's log tails and tried again on a later tick.

It exits when the topology is gone (the stack is down) or on SIGTERM (``down``), and
never in the middle of spawning nodes and saving them.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from ha_serving._errors import StackError
from infra import procs, topology
from infra.faults import NODE_START_TIMEOUT_S, fresh_namespace_if_all_dead
from infra.services import redis_alive
from infra.stack import NodeStartFailed, await_nodes, locked, spawn_node
from infra.topology import Cluster, Node, Topology

log = logging.getLogger("infra.supervise")

PERIOD_S = 1.0
"""How often it looks: a head that exited is started again within a second or so of
Redis answering (the cluster's raylets wait ``gcs_reconnect_timeout_s``, 60 s)."""

Await = Callable[[Topology, Cluster, list[Node], float], None]


def _await(topo: Topology, cluster: Cluster, nodes: list[Node], spawned_at: float) -> None:
    await_nodes(topo, cluster, nodes, NODE_START_TIMEOUT_S, spawned_at=spawned_at, attempts=1)


def down_by_themselves(topo: Topology) -> dict[str, list[Node]]:
    """Per cluster, the nodes that are not running and were not killed on purpose."""
    found = {}
    for c in topo.clusters:
        dead = [n for n in c.nodes if not n.held and not procs.alive(n.proc)]
        if dead:
            found[c.name] = dead
    return found


def startable(topo: Topology, cluster: Cluster, dead: list[Node]) -> list[Node]:
    """Of ``dead`` (nodes of ``cluster``), those that can start now: a head needs its
    Redis answering, a worker its head running or starting with it."""
    head = cluster.head
    if head in dead:
        if topo.redis is not None and not redis_alive(topo.redis):
            return []
        return dead
    if not procs.alive(head.proc):
        return []
    return dead


class Supervisor:
    """One tick at a time (``tick``); ``run`` loops until the stack is down or SIGTERM."""

    def __init__(self, run_dir: Path, *, wait: Await = _await) -> None:
        self.run_dir = run_dir.resolve()
        self.wait = wait
        self.stopping = False
        self._spawning = False

    def tick(self) -> list[str] | None:
        """Start what died by itself; returns the names started, None if the stack is
        down. Does nothing while another command holds the run dir's lock."""
        topo = topology.load(self.run_dir)
        if topo is None:
            return None
        if not down_by_themselves(topo):
            return []
        try:
            with locked(self.run_dir):
                return self._restart_under_lock()
        except StackError as exc:  # the lock is busy: another command acts on the stack
            log.debug("%s", exc)
            return []

    def _restart_under_lock(self) -> list[str] | None:
        topo = topology.load(self.run_dir)
        if topo is None:
            return None
        plans = self._plans(topo)
        if not plans:
            return []
        self._spawning = True  # SIGTERM now would leave spawned nodes out of the topology
        # one time for all: a node counts as started once its GCS lists it as registered
        # after its spawn, and the clusters are waited for one after the other, so a
        # later cluster's node may have registered before the wait for it begins
        spawned_at = time.time()
        try:
            for cluster, nodes in plans:
                for n in nodes:
                    procs.kill(n.proc)  # what is left of its process group
                fresh_namespace_if_all_dead(cluster, nodes)
                for n in sorted(nodes, key=lambda n: n.role != "head"):
                    log.warning("node %s is down, not killed on purpose: starting it", n.name)
                    spawn_node(n)
            topo.save()
        finally:
            self._spawning = False
        if self.stopping:
            raise SystemExit(0)
        return [
            name
            for cluster, nodes in plans
            for name in self._await(topo, cluster, nodes, spawned_at)
        ]

    @staticmethod
    def _plans(topo: Topology) -> list[tuple[Cluster, list[Node]]]:
        plans = []
        for name, dead in down_by_themselves(topo).items():
            cluster = topo.cluster(name)
            nodes = startable(topo, cluster, dead)
            if nodes:
                plans.append((cluster, nodes))
            else:
                names = ", ".join(n.name for n in dead)
                log.info("cluster %s: %s down; waiting for Redis or the head", name, names)
        return plans

    def _await(
        self, topo: Topology, cluster: Cluster, nodes: list[Node], spawned_at: float
    ) -> list[str]:
        """Names of ``nodes`` once the GCS lists them; none if a start failed (those are
        stopped and cleaned, so the next tick starts them afresh: a node that hangs
        unregistered would otherwise look alive for ever)."""
        began = time.monotonic()
        try:
            self.wait(topo, cluster, nodes, spawned_at)
        except NodeStartFailed as exc:
            log.warning("%s; trying again on the next tick", exc)
            for n in nodes:
                if n.name in exc.failed:
                    procs.kill(n.proc)
                    shutil.rmtree(n.temp_dir, ignore_errors=True)
            return []
        names = [n.name for n in nodes]
        log.warning("started %s in %.1fs", ", ".join(names), time.monotonic() - began)
        return names

    def on_sigterm(self, _signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        if not self._spawning:
            raise SystemExit(0)

    def run(self, *, period_s: float = PERIOD_S) -> int:
        signal.signal(signal.SIGTERM, self.on_sigterm)
        log.info("supervising the nodes of %s", self.run_dir)
        while not self.stopping:
            if self.tick() is None:
                log.info("the stack is down: stopping")
                return 0
            time.sleep(period_s)
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return Supervisor(args.run_dir).run()


if __name__ == "__main__":
    sys.exit(main())
