"""The scenarios: a control plane stood up, its services deployed and converged, then one
thing done to it (nothing, a release wave, a cluster lost, the leader killed) while the
figures are taken over that window.

Wall-clock time throughout (SystemClock, the DB's NOW()): every figure is a real duration
on this machine; only the actor work (starts, loads, drains) is simulated, by
``ActorTimings``. Processes: the private mariadbd and each Keeper replica run as their
own processes (so their CPU and memory are theirs); the simulated clusters (AppMasters,
fake actors) and the discovery watchers share this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from ha_serving._settings import Settings
from ha_serving._status import ACTIVE
from ha_serving.backend import make_package
from ha_serving.client._discovery import Discovery, EndpointInfo
from ha_serving.keeper._client import KeeperClient
from ha_serving.store import ClusterRecord, Store
from ha_serving.testing import ActorTimings
from ha_serving.util.secrets import secret_dir, split_password, write_secret
from infra import procs
from infra.topology import Proc
from sim._cluster import SimCluster
from sim._figures import EndpointChange, Propagation, Summary, rate
from sim._keeper import read_stats
from sim._probe import ProbedStore, QueryCounter, cpu_seconds, rss_bytes

SCENARIOS = ("steady", "release-wave", "cluster-loss", "leader-failover")
NET = "127.0.120"
"""The simulation's own loopback /24: DB at .1, Keeper k at .(1+k), cluster i's GCS
stand-in at .(10+i); nothing else on the machine uses it."""
DB_PORT = 27120
DEFAULT_TIMINGS = ActorTimings(start_s=0.3, load_s=1.0, reconfigure_s=0.1, drain_s=0.5, stop_s=0.2)
"""Assumed, not measured per call: a Ray actor start of ~0.3 s (DESIGN.md: 50 actors in
~16 s on these machines), a 1 s model load, a 0.1 s reconfigure, a 0.5 s drain (a few
in-flight calls finishing), a 0.2 s stop."""

log = logging.getLogger("sim")

Progress = Callable[[str, int, int], None]
"""(what, done, total): shown by the CLI as a progress bar."""


@dataclass(frozen=True)
class SimConfig:
    services: int
    clusters: int
    instances: int
    instances_per_worker: int = 1
    proxies: int = 2
    max_unavailable: int = 0
    """Per rollout step; 0: a quarter of the instances (at least 1)."""
    timings: ActorTimings = DEFAULT_TIMINGS
    wave_fraction: float = 0.1
    hold_s: float = 10.0
    """How long the steady window (and the tail of the others) lasts."""
    timeout_s: float = 600.0
    """The longest wait for operations to end before the run counts them as not done."""
    lease_ttl_s: float = 3.0
    keepers: int = 2

    def __post_init__(self) -> None:
        if min(self.services, self.clusters, self.instances) < 1:
            raise ValueError("services, clusters and instances must each be at least 1")
        if self.clusters > 200 or self.keepers > 8:
            raise ValueError("at most 200 clusters and 8 keepers (loopback addresses)")
        if not 0 < self.wave_fraction <= 1:
            raise ValueError(f"wave fraction {self.wave_fraction} is not within (0, 1]")
        if self.keepers < 2:
            raise ValueError("at least 2 keepers: a follower must be there to take over")

    @property
    def step(self) -> int:
        return self.max_unavailable or max(1, self.instances // 4)


@dataclass
class Window:
    """Counters at one moment, to subtract."""

    at: float
    counts: dict[str, int]
    db_cpu_s: float | None
    load: float
    """The machine's 1-minute load average (2 cores: above 2, everything queues)."""
    cpu_s: dict[str, float] = field(default_factory=dict)
    """CPU seconds used so far by the simulation's own process ("sim": every AppMaster,
    link, fake actor and watcher) and by each Keeper still alive."""


@dataclass
class ScenarioResult:
    scenario: str
    config: dict[str, Any]
    figures: dict[str, Any] = field(default_factory=dict)
    rounds: list[tuple[float, float]] = field(default_factory=list)
    events: dict[str, float] = field(default_factory=dict)
    """Moments (epoch seconds) worth marking on the timeline."""


class Sim:
    """One scenario's control plane; ``run`` stands it up, acts, measures, tears down."""

    def __init__(
        self,
        cfg: SimConfig,
        server_url: str,
        db_pid: int | None,
        work: Path,
        progress: Progress,
        *,
        profile: bool = False,
        net: str = NET,
    ) -> None:
        """``db_pid``: the DB server's process, for its CPU (None: not measured);
        ``net``: the loopback /24 of the Keepers and the GCS stand-ins."""
        self.cfg = cfg
        self.net = net
        self.profile = profile
        self.server_url = server_url
        self.db_pid = db_pid
        self.work = work
        self.progress = progress
        self.db_name = f"sim_{uuid.uuid4().hex[:10]}"
        self.url = _with_database(server_url, self.db_name)
        self.keepers: dict[str, Proc] = {}
        self.addresses = [f"{net}.{2 + k}:{DB_PORT + 1 + k}" for k in range(cfg.keepers)]
        self.clusters: list[SimCluster] = []
        self.watchers: list[Discovery] = []
        self.probe = Propagation()
        self.acks: dict[str, float] = {}
        """op_id -> when the Keeper acknowledged it (epoch seconds)."""
        self.rss_max: dict[str, int] = {}
        self.names = [f"svc-{n:05d}" for n in range(cfg.services)]

    # --- standing up ----------------------------------------------------------------

    async def _up(self) -> None:
        admin = sa.create_engine(
            _with_database(self.server_url, None), isolation_level="AUTOCOMMIT"
        )
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {self.db_name} CHARACTER SET utf8mb4"))
        admin.dispose()
        self.observer = Store.connect(self.url)  # schema migrated here, before the Keepers
        self.observer_count = QueryCounter.attach(self.observer)
        self.am_store = ProbedStore.open(self.url, self.probe)
        self.am_count = QueryCounter.attach(self.am_store)
        for i in range(self.cfg.clusters):
            c = SimCluster(
                f"c{i}",
                (f"{self.net}.{10 + i}", DB_PORT + 40 + i),
                self.am_store,
                self.addresses,
                self.cfg.timings,
            )
            await c.start()
            self.observer.register_cluster(ClusterRecord(c.name, c.gcs_address, None, f"z{i}"))
            self.clusters.append(c)
        for k, address in enumerate(self.addresses):
            self._spawn_keeper(f"k{k + 1}", address)
            if k == 0:  # the first is the leader: the scenarios know who to kill
                await self._until(lambda: self._leader() == "k1", 30, "k1 to lead")
        for name in self.names:
            self.watchers.append(
                Discovery(name, self.addresses, token=None, on_change=self._watched(name)).start()
            )

    def _spawn_keeper(self, keeper_id: str, address: str) -> None:
        stats = self.work / f"{self.db_name}-{keeper_id}.json"
        # the password, if the URL has one, goes to the Keeper in a file, never in its argv
        bare, password = split_password(self.url)
        argv = [sys.executable, "-m", "sim", "keeper", keeper_id, address, bare, str(stats)]
        if password is not None:
            secrets = secret_dir(self.work / "secrets")
            argv += ["--password-file", str(write_secret(secrets / self.db_name, password))]
        argv += ["--lease-ttl-s", str(self.cfg.lease_ttl_s)]
        if self.profile:
            argv += ["--profile", str(self.profile_path(keeper_id))]
        self.keepers[keeper_id] = procs.spawn(argv, log=self.log_path(keeper_id))

    def log_path(self, keeper_id: str) -> Path:
        return self.work / f"{self.db_name}-{keeper_id}.log"

    def profile_path(self, keeper_id: str) -> Path:
        return self.work / f"{self.db_name}-{keeper_id}.prof"

    def profiles(self) -> list[Path]:
        """The Keepers' round profiles written so far (a follower writes none)."""
        return [p for k in self.keepers if (p := self.profile_path(k)).exists()]

    def _stats(self, keeper_id: str) -> dict[str, Any] | None:
        return read_stats(self.work / f"{self.db_name}-{keeper_id}.json")

    def _leader(self) -> str | None:
        for k in self.keepers:
            s = self._stats(k)
            if s is not None and s["leader"] and procs.alive(self.keepers[k]):
                return k
        return None

    def _watched(self, service: str) -> Callable[[list[EndpointInfo]], None]:
        def seen(endpoints: list[EndpointInfo]) -> None:
            self.probe.seen(service, [(e.address, e.weight) for e in endpoints], time.time())

        return seen

    # --- operations -----------------------------------------------------------------

    def _body(self, name: str, generation: int) -> str:
        return json.dumps(
            {
                "name": name,
                "version": "v1",
                "code": {"dir": "pkg", "import_path": "simsvc:Service"},
                "instances": self.cfg.instances,
                "instances_per_worker": self.cfg.instances_per_worker,
                "proxies": self.cfg.proxies,
                "config": {"generation": generation},
                "rollout": {"max_unavailable": self.cfg.step},
                "placement": {"clusters": [{"name": c.name} for c in self.clusters]},
            }
        )

    async def _submit(self, names: list[str], kind: str, generation: int) -> list[str]:
        package = b"" if kind != "deploy" else self._package()
        client = KeeperClient(self.addresses, token=None)

        async def one(name: str) -> str:
            op_id = await asyncio.to_thread(
                client.deploy, self._body(name, generation), package, kind=kind
            )
            self.acks[op_id] = time.time()
            return op_id

        return list(await asyncio.gather(*(one(n) for n in names)))

    def _package(self) -> bytes:
        code = self.work / "pkg"
        code.mkdir(exist_ok=True)
        (code / "simsvc.py").write_text(
            "class Service:\n    def echo(self, x):\n        return x\n"
        )
        return make_package(code).data

    async def _finish(self, op_ids: list[str], what: str) -> dict[str, Any]:
        """Wait until every op ended (or the timeout); their ack -> end times."""
        deadline = time.monotonic() + self.cfg.timeout_s
        wanted = set(op_ids)
        ended: dict[str, Any] = {}
        while time.monotonic() < deadline:
            ops = await asyncio.to_thread(self.observer.list_operations)
            ended = {o.op_id: o for o in ops if o.op_id in wanted and o.status not in ACTIVE}
            self.progress(what, len(ended), len(wanted))
            if len(ended) == len(wanted):
                break
            await asyncio.sleep(0.5)
        if len(ended) < len(wanted):
            log.warning("%s: %d of %d ops not ended", what, len(wanted) - len(ended), len(wanted))
        done = [ended[o].updated_at - self.acks[o] for o in op_ids if o in ended]
        span = (
            max(ended[o].updated_at for o in op_ids if o in ended)
            - min(self.acks[o] for o in op_ids)
            if ended
            else None
        )
        statuses: dict[str, int] = {}
        for o in ended.values():
            statuses[o.status] = statuses.get(o.status, 0) + 1
        return {
            "ops": len(op_ids),
            "ack_to_end_s": Summary.of(done).to_json(),
            "span_s": None if span is None else round(span, 2),
            "statuses": statuses,
            "not_ended": sorted(wanted - set(ended)),
        }

    async def _until(self, check: Callable[[], bool], timeout_s: float, what: str) -> float:
        log.info("waiting for %s", what)
        started = time.monotonic()
        while not check():
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"gave up waiting {timeout_s:.0f}s for {what}")
            await asyncio.sleep(0.1)
        return time.monotonic() - started

    # --- measuring ------------------------------------------------------------------

    def _window(self) -> Window:
        counts: dict[str, int] = {}
        for k in self.keepers:
            for name, v in (self._stats(k) or {}).get("counts", {}).items():
                counts[f"keeper.{name}"] = counts.get(f"keeper.{name}", 0) + v
        counts.update(self.am_count.snapshot("appmasters"))
        counts.update(self.observer_count.snapshot("observer"))
        cpu = cpu_seconds(self.db_pid) if self.db_pid is not None else None
        used = {"sim": cpu_seconds(os.getpid())}
        for k, proc in self.keepers.items():
            with contextlib.suppress(OSError):  # it died (killed by the scenario)
                used[k] = cpu_seconds(proc.pid)
        return Window(time.time(), counts, cpu, round(os.getloadavg()[0], 1), used)

    async def _sample_rss(self) -> None:
        while True:
            for k, proc in self.keepers.items():
                if procs.alive(proc):
                    with contextlib.suppress(psutil.Error):  # it died since the check
                        self.rss_max[k] = max(self.rss_max.get(k, 0), rss_bytes(proc.pid))
            await asyncio.sleep(0.5)

    def _figures(self, start: Window, end: Window) -> dict[str, Any]:
        seconds = end.at - start.at
        rates = rate(start.counts, end.counts, seconds)
        rounds = self._rounds(start.at, end.at)
        total_q = sum(v for k, v in rates.items() if k.endswith(".queries"))
        total_w = sum(v for k, v in rates.items() if k.endswith(".writes"))

        def per_round(counter: str) -> float | None:
            done = end.counts.get(counter, 0) - start.counts.get(counter, 0)
            return round(done / len(rounds), 1) if rounds else None

        return {
            "window_s": round(seconds, 2),
            "round_s": Summary.of([d for _, d in rounds]).to_json(),
            # statements per round do not depend on how busy the machine is; times do
            "reconciler_statements_per_round": per_round("keeper.reconciler.queries"),
            "reconciler_transactions_per_round": per_round("keeper.reconciler.transactions"),
            "load_average_1m": [start.load, end.load],
            "db_per_s": {k: round(v, 1) for k, v in sorted(rates.items())},
            "db_queries_per_s": round(total_q, 1),
            "db_writes_per_s": round(total_w, 1),
            "db_cpu_cores": (
                round((end.db_cpu_s - start.db_cpu_s) / seconds, 3)
                if end.db_cpu_s is not None and start.db_cpu_s is not None
                else None
            ),
            # the simulation's own process near 1 core: it, not the control plane, is
            # what saturates, and its AppMasters' links see their Keepers late
            "cpu_cores": {
                k: round((end.cpu_s[k] - start.cpu_s[k]) / seconds, 2)
                for k in start.cpu_s
                if k in end.cpu_s
            },
            "keeper_rss_mb": {k: round(v / 2**20, 1) for k, v in self.rss_max.items()},
            "sim_rss_mb": round(rss_bytes(psutil.Process().pid) / 2**20, 1),
            "propagation_s": Summary.of(self.probe.delays).to_json(),
            "propagation_pending": self.probe.pending,
            "instances": sum(c.instances() for c in self.clusters),
            "job_submissions": [  # in the window: at deploy, one per new target is normal
                [round(t - start.at, 2), c, s]
                for k in self.keepers
                for t, c, s in (self._stats(k) or {}).get("submitted", [])
                if t >= start.at
            ],
        }

    def _rounds(self, since: float, until: float) -> list[tuple[float, float]]:
        out: list[tuple[float, float]] = []
        for k in self.keepers:
            out += [
                (t, d) for t, d in (self._stats(k) or {}).get("rounds", []) if since <= t <= until
            ]
        return sorted(out)

    # --- the run --------------------------------------------------------------------

    async def run(self, scenario: str) -> ScenarioResult:
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; one of {', '.join(SCENARIOS)}")
        loop = asyncio.get_running_loop()
        # the AppMasters' DB calls run in threads: as many as their engine pools (5 + 10)
        loop.set_default_executor(ThreadPoolExecutor(max_workers=15))
        result = ScenarioResult(scenario, config_json(self.cfg))
        log.info("%s: %s", scenario, result.config)
        sampler: asyncio.Task[None] | None = None
        try:
            self.progress("standing up", 0, 1)
            await self._up()
            sampler = asyncio.create_task(self._sample_rss())
            for c in self.clusters:
                for name in self.names:
                    c.add_service(name)
            deploys = await self._submit(self.names, "deploy", 0)
            result.figures["deploy"] = await self._finish(deploys, "deploying")
            await self._until(lambda: self.probe.pending == 0, 60, "discovery to settle")
            result.figures["deploy"]["propagation_s"] = Summary.of(self.probe.delays).to_json()
            self.probe.delays.clear()
            start = self._window()
            result.events["window_start"] = start.at
            result.figures["action"] = await self._act(scenario, result)
            await asyncio.sleep(min(self.cfg.hold_s, 5.0) if scenario != "steady" else 0)
            end = self._window()
            result.figures.update(self._figures(start, end))
            result.rounds = self._rounds(start.at, end.at)
        finally:
            if sampler is not None:
                sampler.cancel()
            await self._down()
        return result

    async def _act(self, scenario: str, result: ScenarioResult) -> dict[str, Any]:
        if scenario == "steady":
            await asyncio.sleep(self.cfg.hold_s)
            return {"held_s": self.cfg.hold_s}
        if scenario == "cluster-loss":
            return await self._lose_cluster(result)
        wave = self.names[: max(1, math.ceil(self.cfg.services * self.cfg.wave_fraction))]
        result.events["wave"] = time.time()
        ops = await self._submit(wave, "config", 1)
        killed: dict[str, Any] = {}
        if scenario == "leader-failover":
            killed = await self._kill_leader(ops, result)
        figures = await self._finish(ops, "release wave")
        figures["wave_services"] = len(wave)
        if scenario == "release-wave":
            figures["one_service"] = await self._one_update(wave)
            one = figures["one_service"]["span_s"]
            if one and figures["span_s"] is not None:
                figures["wave_vs_one"] = round(figures["span_s"] / one, 2)
        if killed:
            figures.update(killed)
            figures["acknowledged_ops_lost"] = [
                o for o in ops if o in figures["not_ended"] or o not in self.acks
            ]
            figures["acknowledged_ops_not_succeeded"] = len(ops) - figures["statuses"].get(
                "succeeded", 0
            )
            leader = self._leader()
            figures["new_leader"] = leader
            t = result.events["leader_killed"]
            after = [r for r in self._rounds(t, time.time()) if r[0] > t]
            figures["first_round_after_kill_s"] = round(after[0][0] - t, 2) if after else None
        return figures

    async def _one_update(self, wave: list[str]) -> dict[str, Any]:
        """The yardstick of a wave: one service's config update alone, right after the
        wave, on the same standing control plane (a service outside the wave, or the
        first one again if the wave took them all)."""
        rest = [n for n in self.names if n not in wave]
        name, generation = (rest[0], 1) if rest else (wave[0], 2)
        op = await self._submit([name], "config", generation)
        return await self._finish(op, "one service's update")

    async def _kill_leader(self, ops: list[str], result: ScenarioResult) -> dict[str, Any]:
        """Mid-wave: once an op of the wave runs (instructions went out), SIGKILL the
        leader's process; a follower takes the lease after its TTL and carries on."""
        wanted = set(ops)

        def running() -> bool:
            return any(
                o.op_id in wanted and o.status == "running"
                for o in self.observer.list_operations(status="running")
            )

        await self._until(running, self.cfg.timeout_s, "the wave to start running")
        leader = self._leader()
        if leader is None:
            raise RuntimeError("no leader to kill")
        procs.kill(self.keepers[leader])
        result.events["leader_killed"] = time.time()
        return {"killed": leader}

    async def _lose_cluster(self, result: ScenarioResult) -> dict[str, Any]:
        """The last cluster dies with everything on it; discovery must drop its
        endpoints (the leader withdraws them once its GCS and AppMasters are silent)."""
        lost = self.clusters[-1]
        at = time.time()
        result.events["cluster_lost"] = at
        for service, address in self.am_store.forget_cluster(lost.name):
            self.probe.change(EndpointChange(service, address, None, at))
        await lost.lose()
        waited = await self._until(
            lambda: self.probe.pending == 0, self.cfg.timeout_s, "lost endpoints to go"
        )
        return {"lost": lost.name, "all_watchers_updated_after_s": round(waited, 2)}

    async def _down(self) -> None:
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in self.watchers))
        for c in self.clusters:
            await c.stop()
        for proc in self.keepers.values():
            if procs.alive(proc):
                procs.kill(proc, grace_s=2)
        for store in ("am_store", "observer"):
            if hasattr(self, store):
                getattr(self, store).close()
        admin = sa.create_engine(
            _with_database(self.server_url, None), isolation_level="AUTOCOMMIT"
        )
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {self.db_name}"))
        admin.dispose()


def config_json(cfg: SimConfig) -> dict[str, Any]:
    out = {k: v for k, v in vars(cfg).items() if k != "timings"}
    out["timings"] = vars(cfg.timings)
    out["max_unavailable"] = cfg.step
    return out


def scaled(timings: ActorTimings, factor: float) -> ActorTimings:
    """The timings times ``factor`` (0.1: ten times faster actors)."""
    if factor < 0:
        raise ValueError("a time scale cannot be negative")
    return replace(timings, **{k: v * factor for k, v in vars(timings).items()})


def _with_database(server_url: str, database: str | None) -> str:
    """``server_url`` naming ``database`` (None: none); its password and query (a unix
    socket) kept."""
    return make_url(server_url).set(database=database).render_as_string(hide_password=False)


def mariadbd() -> str:
    found = Settings.from_env().stack.mariadbd_bin
    if found is None:
        raise RuntimeError("no mariadbd/mysqld on this machine: install mariadb-server")
    return found
