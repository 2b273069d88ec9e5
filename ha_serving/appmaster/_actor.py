"""The AppMaster as a Ray actor: one detached, named, restartable actor per service per
cluster. Ray restarts it after a crash; its constructor reloads the state from the DB
and restarts the control loop, which re-attaches to the live actors by name."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from typing import Any

from ha_serving._errors import LeaseLost
from ha_serving._settings import ProxySettings
from ha_serving._spec import ServiceSpec
from ha_serving.appmaster._core import AppMasterCore
from ha_serving.appmaster._link import KeeperLink
from ha_serving.appmaster._standby import Holder, Standby
from ha_serving.appmaster._state import JobState
from ha_serving.backend import BackendWorker
from ha_serving.proxy import ProxyActor
from ha_serving.runtime import ActorSpec
from ha_serving.runtime._ray import RayRuntime
from ha_serving.store import Store, StoreRef
from ha_serving.util.aiotasks import guard
from ha_serving.util.tls import TlsFiles

NAMESPACE = "ha_serving"
"""Ray namespace of every actor the platform creates."""

CONTROL_CPUS = 0.01
"""CPU reservation of AppMasters and proxies: non-zero only to keep them on worker nodes."""


def appmaster_name(service: str) -> str:
    return f"{service}-appmaster"


def proxy_spec(
    namespace: str,
    cluster: str,
    tls: TlsFiles | None = None,
    settings: ProxySettings | None = None,
) -> Any:
    def build(name: str, state: JobState) -> ActorSpec:
        return ActorSpec(
            name=name,
            cls=ProxyActor,
            args=(state.service,),
            kwargs={
                "namespace": namespace,
                "cluster": cluster,
                "settings": settings or ProxySettings(),
                "tls": tls,
            },
            # a sliver of CPU keeps proxies off heads (--num-cpus=0): a head crash must not
            # take a proxy with it; a proxy is I/O-bound and takes no backend's slot
            num_cpus=CONTROL_CPUS,
        )

    return build


def worker_spec(tls: TlsFiles | None = None, *, direct_host: str | None = None) -> Any:
    """Workers of the job's resources. ``tls``: the proxies' certificate, with which a
    worker's direct server speaks mutual TLS to the proxies; ``direct_host``: the address
    it binds (default: its node's, from Ray)."""

    def build(name: str, state: JobState) -> ActorSpec:
        res = state.spec.resources
        kwargs: dict[str, Any] = {"tls": tls}
        if direct_host is not None:
            kwargs["direct_host"] = direct_host
        return ActorSpec(
            name=name,
            cls=BackendWorker,
            args=(name,),
            kwargs=kwargs,
            num_cpus=res.num_cpus,
            memory_mb=res.memory_mb,
            runtime_env=res.runtime_env,
        )

    return build


WATCH_S = 30.0
"""How long one watch of the active AppMaster lasts before the standby looks at the lease
again (a missed change is seen that late at worst; a death at once)."""


class RayPeers:
    """``Peers`` from Ray: the GCS's actor table, and a call to the peer's ``hold``."""

    def __init__(self, namespace: str, watch_s: float = WATCH_S) -> None:
        self.namespace = namespace
        self.watch_s = watch_s

    def _entry(self, actor: str) -> dict[str, Any] | None:
        import ray
        from ray._private import state as ray_state

        try:
            handle = ray.get_actor(actor, namespace=self.namespace)
        except ValueError:  # no such actor (yet, or any more)
            return None
        found: dict[str, Any] = ray_state.actors(handle._actor_id.hex())
        return found or None

    async def alive(self, holder: Holder) -> bool:
        entry = await asyncio.to_thread(self._entry, holder.actor)
        return (
            entry is not None
            and entry.get("State") == "ALIVE"
            and entry.get("Pid") == holder.pid
            and entry.get("Address", {}).get("IPAddress") == holder.address
        )

    async def watch(self, holder: Holder) -> None:
        import ray

        try:
            handle = await asyncio.to_thread(ray.get_actor, holder.actor, namespace=self.namespace)
            await handle.hold.remote(str(holder), self.watch_s)
        except (ray.exceptions.RayError, ValueError) as exc:
            logging.getLogger(__name__).info("AppMaster %s gone: %s", holder, type(exc).__name__)


class AppMaster:
    """Ray actor body (async): ``ray.remote(AppMaster)`` with max_restarts=-1.

    With ``peer`` (a Keeper-managed service: ``start_appmaster``), this is one of two
    AppMasters of the service on the cluster, and only the one holding the lease acts
    (``appmaster._standby``); the other waits, warm, and takes over when Ray reports the
    active one dead. Without ``peer`` (a service deployed with ``--cluster``) it acts
    at once, alone."""

    def __init__(
        self,
        cluster: str,
        service: str,
        db: StoreRef,
        namespace: str = NAMESPACE,
        *,
        keepers: Sequence[str] = (),
        token_file: str | None = None,
        link_tls: TlsFiles | None = None,
        proxy_tls: TlsFiles | None = None,
        proxy_settings: ProxySettings | None = None,
        peer: str | None = None,
    ) -> None:
        # Ray shows an actor's arguments (state API, dashboard): ``db`` and ``token_file``
        # name the files holding the secrets, read here, on the node
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        logging.getLogger(__name__).info(
            "AppMaster of %s on %s starting (pid %d)", service, cluster, os.getpid()
        )
        self._core = AppMasterCore(
            store=Store.connect(db),
            runtime=RayRuntime(namespace),
            cluster=cluster,
            service=service,
            proxy_actor=proxy_spec(namespace, cluster, proxy_tls, proxy_settings),
            worker_actor=worker_spec(proxy_tls),
        )
        self._keepers = list(keepers)
        self._token_file = token_file
        self._link_tls = link_tls
        self._peer = peer
        self._namespace = namespace
        self._me: Holder | None = None
        self.active = peer is None
        loop = asyncio.get_event_loop()
        if peer is None:
            self._start()
        else:
            import ray

            self._me = Holder(
                ray.get_runtime_context().get_actor_name() or appmaster_name(service),
                ray.util.get_node_ip_address(),  # type: ignore[no-untyped-call]
                os.getpid(),
            )
            guard(self._stand_by(), name=f"standby-{service}", logger=self._core.log, loop=loop)

    async def _stand_by(self) -> None:
        """Wait for the lease, then act (``appmaster._standby``)."""
        me = self._me
        if me is None:  # only an AppMaster with a peer stands by
            raise RuntimeError("an AppMaster without a peer has no standby")
        standby = Standby(
            self._core.store, self._core.cluster, self._core.service, me, RayPeers(self._namespace)
        )
        lease = await standby.claim()
        self._core.fence = (lease.name, lease.epoch)
        await self._core.load()
        self._core.log.warning("AppMaster %s active at lease epoch %d", self._me, lease.epoch)
        self.active = True
        self._start()

    def _start(self) -> None:
        loop = asyncio.get_event_loop()
        service = self._core.service
        # Ray runs an async actor's methods on this loop; the loop starts with the actor,
        # so a restarted AppMaster resumes without anyone calling it.
        guard(self._reconcile(), name=f"reconcile-{service}", logger=self._core.log, loop=loop)
        if self._keepers:
            link = KeeperLink(
                self._core,
                self._keepers,
                self._token_file,
                tls=self._link_tls,
                actor_name=self._me.actor if self._me is not None else None,
            )
            guard(link.run(), name=f"keeper-link-{service}", logger=self._core.log, loop=loop)

    async def _reconcile(self) -> None:
        try:
            await self._core.run()
        except LeaseLost:
            # the standby took over: this process exits, and Ray restarts it as the standby
            self._core.log.exception("deposed: exiting so that Ray restarts this as the standby")
            os._exit(1)

    async def hold(self, holder: str, for_s: float) -> None:
        """For the standby: returns when ``for_s`` has passed, at once if this process is
        not ``holder``, and never if it dies first (the caller's call then fails)."""
        if str(self._me) == holder and self.active:
            await asyncio.sleep(for_s)

    async def _active_peer(self) -> Any:
        """The peer AppMaster's handle, when this one is the standby."""
        import ray

        if self._peer is None:
            raise RuntimeError("an AppMaster without a peer has no other to ask")
        return await asyncio.to_thread(ray.get_actor, self._peer, namespace=self._namespace)

    async def apply(
        self, spec: dict[str, Any], package: str, op_id: str, epoch: int = 0, kind: str = "deploy"
    ) -> dict[str, Any]:
        if not self.active:
            peer = await self._active_peer()
            return dict(await peer.apply.remote(spec, package, op_id, epoch, kind))
        if self._core.state is None:
            await self._core.load()
        return await self._core.apply(
            ServiceSpec.model_validate(spec), package, op_id=op_id, epoch=epoch, kind=kind
        )

    async def describe(self, forwarded: bool = False) -> dict[str, Any]:
        """The active AppMaster's live view (a standby asks its peer once)."""
        if self.active:
            return {**await self._core.describe_live(), "role": "active"}
        if not forwarded:
            try:
                peer = await self._active_peer()
                return dict(await peer.describe.remote(True))
            except Exception as exc:  # the peer may be down: say so below
                self._core.log.info("describe: the active peer did not answer: %s", exc)
        return {
            "service": self._core.service,
            "cluster": self._core.cluster,
            "role": "standby",
            "converged": False,
        }

    async def converged(self, forwarded: bool = False) -> bool:
        if self.active:
            return self._core.converged()
        if forwarded:
            return False
        try:
            peer = await self._active_peer()
            return bool(await peer.converged.remote(True))
        except Exception:  # no active AppMaster answers: not converged
            return False

    async def ping(self) -> str:
        return self._core.service
