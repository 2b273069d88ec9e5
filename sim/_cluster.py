"""One simulated Ray cluster: a stand-in GCS port (the leader's loss check connects to
it), a timed ``FakeRuntime``, and per service the real ``AppMasterCore`` with its real
``KeeperLink`` (gRPC to the Keepers: instructions and heartbeats as in production)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ha_serving.appmaster import AppMasterCore, JobState
from ha_serving.appmaster._link import KeeperLink
from ha_serving.runtime import ActorSpec
from ha_serving.store import Store
from ha_serving.testing import ActorTimings, FakeProxy, FakeRuntime, FakeWorker
from ha_serving.util.aiotasks import guard

log = logging.getLogger("sim.cluster")


def _proxy(name: str, state: JobState) -> ActorSpec:
    return ActorSpec(name=name, cls=FakeProxy, args=(state.service,))


def _worker(name: str, state: JobState) -> ActorSpec:  # noqa: ARG001 - an ActorFactory
    return ActorSpec(name=name, cls=FakeWorker, args=(name,))


class SimCluster:
    def __init__(
        self,
        name: str,
        gcs: tuple[str, int],
        store: Store,
        keepers: list[str],
        timings: ActorTimings,
    ) -> None:
        self.name = name
        self.gcs = gcs
        self.store = store
        self.keepers = keepers
        self.runtime = FakeRuntime(timings)
        self.cores: dict[str, AppMasterCore] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._server: asyncio.Server | None = None

    @property
    def gcs_address(self) -> str:
        return f"{self.gcs[0]}:{self.gcs[1]}"

    async def start(self) -> None:
        """Open the GCS stand-in: a port that accepts and closes connections."""

        async def accept(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.close()

        self._server = await asyncio.start_server(accept, self.gcs[0], self.gcs[1])

    def add_service(self, service: str) -> AppMasterCore:
        """Start the service's AppMaster here (what the serving job would do)."""
        core = AppMasterCore(
            store=self.store,
            runtime=self.runtime,
            cluster=self.name,
            service=service,
            proxy_actor=_proxy,
            worker_actor=_worker,
        )
        link = KeeperLink(core, list(self.keepers), None)
        self.cores[service] = core
        self._tasks.append(guard(core.run(), name=f"{self.name}/{service}", logger=core.log))
        self._tasks.append(guard(link.run(), name=f"link {self.name}/{service}", logger=core.log))
        return core

    def instances(self) -> int:
        return sum(len(c.state.instances) for c in self.cores.values() if c.state is not None)

    async def lose(self) -> None:
        """Everything on the cluster dies at once: AppMasters, actors, the GCS port."""
        await self.stop()
        self.runtime.actors.clear()

    async def stop(self) -> None:
        # Cancelled again until done: Python 3.11's asyncio.wait_for (in the AppMaster's
        # loop and link) can swallow a cancellation that meets its inner future's end.
        while pending := [t for t in self._tasks if not t.done()]:
            for t in pending:
                t.cancel()
            await asyncio.wait(pending, timeout=0.5)
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                t.result()
        self._tasks.clear()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
