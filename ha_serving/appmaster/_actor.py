"""The AppMaster as a Ray actor: one detached, named, restartable actor per service per
cluster. Ray restarts it after a crash; its constructor reloads the state from the DB
and restarts the control loop, which re-attaches to the live actors by name."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from typing import Any

from ha_serving._settings import ProxySettings
from ha_serving._spec import ServiceSpec
from ha_serving.appmaster._core import AppMasterCore
from ha_serving.appmaster._link import KeeperLink
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


class AppMaster:
    """Ray actor body (async): ``ray.remote(AppMaster)`` with max_restarts=-1."""

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
        # Ray runs an async actor's methods on this loop; the loop starts with the actor,
        # so a restarted AppMaster resumes without anyone calling it.
        guard(
            self._core.run(),
            name=f"reconcile-{service}",
            logger=self._core.log,
            loop=asyncio.get_event_loop(),
        )
        if keepers:
            link = KeeperLink(self._core, list(keepers), token_file, tls=link_tls)
            guard(
                link.run(),
                name=f"keeper-link-{service}",
                logger=self._core.log,
                loop=asyncio.get_event_loop(),
            )

    async def apply(
        self, spec: dict[str, Any], package: str, op_id: str, epoch: int = 0, kind: str = "deploy"
    ) -> dict[str, Any]:
        if self._core.state is None:
            await self._core.load()
        return await self._core.apply(
            ServiceSpec.model_validate(spec), package, op_id=op_id, epoch=epoch, kind=kind
        )

    async def describe(self) -> dict[str, Any]:
        return await self._core.describe_live()

    async def converged(self) -> bool:
        return self._core.converged()

    async def ping(self) -> str:
        return self._core.service
