"""The AppMaster's link to the Keepers: one ``Instructions`` stream at a time, to any
replica, failing over to the next. The open stream is the AppMaster's registration and
heartbeat; each instruction it carries is consumed by ``AppMasterCore.take_instruction``
(fenced by epoch, idempotent by op_id) before the next one."""

from __future__ import annotations

import asyncio
import json

import grpc

from ha_serving.appmaster._core import AppMasterCore
from ha_serving.proto import keeper_pb2, keeper_pb2_grpc

RETRY_S = 0.5
SILENCE_S = 3.0
"""A Keeper silent this long (it beats every link period, ~0.3 s) is left for the next:
a paused or partitioned Keeper keeps its TCP connection open, so only silence shows it."""


class KeeperLink:
    def __init__(self, core: AppMasterCore, keepers: list[str], token: str | None) -> None:
        self.core = core
        self.keepers = keepers
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.consumed = 0

    async def run(self) -> None:
        index = 0
        if self.core.state is None:
            await self.core.load()
        while True:
            keeper = self.keepers[index % len(self.keepers)]
            try:
                await self._stream(keeper)
            except grpc.aio.AioRpcError as exc:
                self.core.log.info("keeper link to %s ended: %s", keeper, exc.code().name)
            except Exception:  # a failed apply (DB down...): reconnect and get it again
                self.core.log.exception("keeper link to %s failed", keeper)
            index += 1
            await asyncio.sleep(RETRY_S)

    async def _stream(self, keeper: str) -> None:
        state = self.core.state
        request = keeper_pb2.InstructionsRequest(
            cluster=self.core.cluster,
            service=self.core.service,
            after=state.last_instruction if state else 0,
            actor_name=f"{self.core.service}-appmaster",
            epoch_seen=state.highest_epoch if state else 0,
        )
        async with grpc.aio.insecure_channel(keeper) as channel:
            stub = keeper_pb2_grpc.KeeperStub(channel)  # type: ignore[no-untyped-call]
            call = stub.Instructions(request, metadata=self.metadata)
            while True:
                try:
                    msg = await asyncio.wait_for(call.read(), SILENCE_S)
                except TimeoutError:
                    call.cancel()
                    self.core.log.warning("keeper %s silent for %.0fs: next", keeper, SILENCE_S)
                    return
                if msg is grpc.aio.EOF:
                    return
                if msg.id == 0:
                    continue  # the Keeper's beat
                await self.core.take_instruction(
                    msg.id, json.loads(msg.body_json), op_id=msg.op_id, epoch=msg.epoch
                )
                self.consumed += 1
