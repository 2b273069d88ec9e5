"""The AppMaster's link to the Keepers: one ``Instructions`` stream at a time, to any
replica, failing over to the next. Opening the stream registers the AppMaster; each
instruction it carries is consumed by ``AppMasterCore.take_instruction`` (fenced by
epoch, idempotent by op_id) before the next one. The AppMaster's heartbeat is what it
sends: a ``Heartbeat`` call on the stream's channel each time it has read a message
(the Keeper beats every ``link_period_s``), at most every ``link_beat_s`` and one at a
time, beside the reading (a slow one never holds an instruction up) - so only an
AppMaster that runs and reads keeps its heartbeat fresh (the leader resubmits one stale
for ``heartbeat_stale_s``). Its timings are ``KeeperSettings``' ``link_*``, checked
against each other there."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from ha_serving._settings import KeeperSettings
from ha_serving.appmaster._core import AppMasterCore
from ha_serving.proto import keeper_pb2, keeper_pb2_grpc
from ha_serving.util.secrets import read_secret
from ha_serving.util.tls import TlsFiles, aio_channel

LAPSE = 0.8
"""The share of the leader's cluster-loss silence (``loss_silence_s``) that a heartbeat's
lapse may reach before the AppMaster takes its endpoints for possibly withdrawn."""


class KeeperLink:
    def __init__(
        self,
        core: AppMasterCore,
        keepers: list[str],
        token_file: str | None,
        *,
        settings: KeeperSettings | None = None,
        tls: TlsFiles | None = None,
        actor_name: str | None = None,
    ) -> None:
        self.core = core
        self.actor_name = actor_name or f"{core.service}-appmaster"
        """The actor its link and heartbeats name: which of a service's two AppMasters
        acts (``appmaster._standby``) is visible in the Keepers' heartbeat record."""
        self.tls = tls
        """The CA the Keepers' certificate must be signed by and this AppMaster's client
        certificate (mutual TLS on the Keepers' link port); None: plaintext."""
        self.keepers = keepers
        self.settings = settings or KeeperSettings()
        self.token_file = token_file
        """File holding this AppMaster's Keeper credential; read again for each stream, so
        a credential renewed in it is used from the next connection on."""
        self.metadata: tuple[tuple[str, str], ...] = ()
        self.consumed = 0
        self._beat_at = 0.0
        self._beat_failed = False
        self._acked_sent: float | None = None
        """When (monotonic) the last acknowledged Heartbeat was sent; None before the
        first acknowledgement."""
        self._beating: asyncio.Task[None] | None = None

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
            await asyncio.sleep(self.settings.link_retry_s)

    def _credentials(self) -> tuple[tuple[str, str], ...]:
        if self.token_file is None:
            return ()
        token = read_secret(self.token_file, what="Keeper credential file")
        return (("authorization", f"Bearer {token}"),)

    async def _stream(self, keeper: str) -> None:
        self.metadata = self._credentials()
        state = self.core.state
        request = keeper_pb2.InstructionsRequest(
            cluster=self.core.cluster,
            service=self.core.service,
            after=state.last_instruction if state else 0,
            actor_name=self.actor_name,
            epoch_seen=state.highest_epoch if state else 0,
        )
        options = _channel_options(self.settings)
        silence = self.settings.link_silence_s
        async with aio_channel(keeper, self.tls, options) as channel:
            stub = keeper_pb2_grpc.KeeperStub(channel)  # type: ignore[no-untyped-call]
            call = stub.Instructions(request, metadata=self.metadata)
            linked = False
            try:
                while True:
                    try:
                        msg = await asyncio.wait_for(call.read(), silence)
                    except TimeoutError:
                        call.cancel()
                        self.core.log.warning("keeper %s silent for %.0fs: next", keeper, silence)
                        return
                    if msg is grpc.aio.EOF:
                        return
                    if not linked:  # its first message: the Keeper registered this link
                        linked = True
                        self.core.log.info("linked to keeper %s", keeper)
                    if msg.id != 0:  # else the Keeper's beat
                        # parsed there: a body that is not JSON is rejected, not raised
                        await self.core.take_instruction(
                            msg.id, msg.body_json, op_id=msg.op_id, epoch=msg.epoch
                        )
                        self.consumed += 1
                    self._beat(stub, keeper)
            finally:
                if self._beating is not None:
                    self._beating.cancel()

    def _beat(self, stub: Any, keeper: str) -> None:
        now = self.core.clock.monotonic()
        if now - self._beat_at < self.settings.link_beat_s or (
            self._beating and not self._beating.done()
        ):
            return
        self._beat_at = now
        self._beating = asyncio.create_task(self._send_beat(stub, keeper))

    async def _send_beat(self, stub: Any, keeper: str) -> None:
        state = self.core.state
        beat = keeper_pb2.HeartbeatRequest(
            cluster=self.core.cluster,
            service=self.core.service,
            actor_name=self.actor_name,
            epoch_seen=state.highest_epoch if state else 0,
        )
        sent = self.core.clock.monotonic()
        try:
            await stub.Heartbeat(beat, metadata=self.metadata, timeout=self.settings.link_silence_s)
        except grpc.aio.AioRpcError as exc:  # the stream's silence decides about this Keeper
            if not self._beat_failed:  # once per outage, not every beat
                self.core.log.warning("heartbeat to keeper %s failed: %s", keeper, exc.code().name)
            self._beat_failed = True
        else:
            self._acknowledged(sent)

    def _acknowledged(self, sent: float) -> None:
        """The heartbeat sent at ``sent`` (monotonic) is committed. After a failed one,
        or a gap in which the stored heartbeat may have grown older than the leader's
        cluster-loss silence, the leader may have withdrawn this cluster's endpoints: the
        AppMaster writes its own again every round until the leader has surely read the
        fresh heartbeat (within ``heartbeat_stale_s``, rounds included).

        The stored heartbeat is stamped with the DB's clock when its write runs, between
        the call's send and its acknowledgement. So between two acknowledged beats it
        was never older than the time from the first one's send to this one's
        acknowledgement: below the loss silence (with a fifth of it to spare for clock
        rates), the leader saw this AppMaster fresh throughout and withdrew nothing. The
        bound used to be half the silence between two acknowledgements, which a busy
        Keeper or AppMaster crossed often: in a 100 x 3 x 10 simulation about half the
        heartbeats put their AppMaster in doubt, and its endpoint writes every round
        made the busiest statements of the whole DB."""
        now = self.core.clock.monotonic()
        since = None if self._acked_sent is None else now - self._acked_sent
        if self._beat_failed or (
            since is not None and since >= LAPSE * self.settings.loss_silence_s
        ):
            self.core.republish_endpoints(self.settings.heartbeat_stale_s)
        self._acked_sent = sent
        self._beat_failed = False


def _channel_options(settings: KeeperSettings) -> list[tuple[str, int]]:
    """Messages up to the Keepers' limit both ways, as their server and the CLI allow
    (the actor has no settings of its own: the defaults)."""
    limit = settings.max_message_bytes
    return [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
