"""An AppMaster writes its proxies' endpoints to discovery when they change and renews
their leases every ``endpoint_refresh_s``, not every round; clients see the same list
(``appmaster/_publication.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ha_serving._instructions import TrafficBody
from ha_serving._settings import AppMasterSettings, KeeperSettings
from ha_serving.appmaster._link import LAPSE, KeeperLink
from ha_serving.appmaster._publication import Due, Publication
from ha_serving.store import Store
from tests.unit.fixtures.control import Harness, run, spec

REFRESH = AppMasterSettings().endpoint_refresh_s
TTL = AppMasterSettings().endpoint_ttl_s
A = {"cluster": "a", "proxy": "echo-p0", "metrics": "127.0.0.1:9", "weight": 100}
B = {"cluster": "a", "proxy": "echo-p1", "metrics": "127.0.0.1:8", "weight": 100}


def test_the_defaults_renew_a_lease_twice_or_more_before_it_lapses() -> None:
    assert REFRESH * 2 <= TTL


# --- the decision, alone --------------------------------------------------------------------


def test_a_new_process_writes_everything_and_prunes_once() -> None:
    """Rows an earlier incarnation left (a proxy since gone) are pruned on the first round."""
    p = Publication(REFRESH)
    assert p.due({"x:1": A, "y:1": B}, 0.0) == Due(write=("x:1", "y:1"), prune=True)
    p.wrote("x:1", A, 0.0)
    p.wrote("y:1", B, 0.0)
    p.pruned_to({"x:1", "y:1"})
    assert p.due({"x:1": A, "y:1": B}, REFRESH - 0.1) == Due(write=(), prune=False)


def test_an_unchanged_endpoint_is_renewed_only_every_refresh_period() -> None:
    p = Publication(REFRESH)
    p.wrote("x:1", A, 10.0)
    p.pruned_to({"x:1"})
    assert p.due({"x:1": A}, 10.0 + REFRESH - 0.01).write == ()
    assert p.due({"x:1": A}, 10.0 + REFRESH).write == ("x:1",)


def test_a_label_change_or_a_new_proxy_is_written_at_once() -> None:
    p = Publication(REFRESH)
    p.wrote("x:1", A, 10.0)
    p.pruned_to({"x:1"})
    assert p.due({"x:1": {**A, "weight": 0}}, 10.1).write == ("x:1",)
    assert p.due({"x:1": A, "y:1": B}, 10.1) == Due(write=("y:1",), prune=False)


def test_a_proxy_no_longer_wanted_is_pruned_once() -> None:
    p = Publication(REFRESH)
    p.wrote("x:1", A, 10.0)
    p.wrote("y:1", B, 10.0)
    p.pruned_to({"x:1", "y:1"})
    assert p.due({"x:1": A}, 10.1) == Due(write=(), prune=True)
    p.pruned_to({"x:1"})
    assert p.due({"x:1": A}, 10.2) == Due(write=(), prune=False)


def test_a_write_that_failed_is_retried_and_pruned_if_no_longer_wanted() -> None:
    """It may have landed: it is neither taken for written nor forgotten."""
    p = Publication(REFRESH)
    p.pruned_to(set())
    p.writing("x:1", 10.0)  # and it raised
    assert p.due({"x:1": A}, 10.1).write == ("x:1",)
    assert p.due({}, 10.1).prune


def test_while_in_doubt_every_round_writes_everything_and_prunes() -> None:
    """After the link's heartbeat lapsed (the leader may have withdrawn the cluster's
    endpoints), as every round did before."""
    p = Publication(REFRESH)
    p.wrote("x:1", A, 10.0)
    p.pruned_to({"x:1"})
    p.in_doubt(until=15.0)
    p.in_doubt(until=12.0)  # a shorter doubt does not cut a longer one
    assert p.due({"x:1": A}, 14.9) == Due(write=("x:1",), prune=True)
    p.wrote("x:1", A, 14.9)
    p.pruned_to({"x:1"})
    assert p.due({"x:1": A}, 15.0) == Due(write=(), prune=False)


# --- the AppMaster on the fake runtime --------------------------------------------------------


class Writes:
    """The endpoint writes an AppMaster's store receives."""

    def __init__(self, store: Store) -> None:
        self.log: list[str] = []
        for name in ("upsert_endpoint", "remove_endpoints", "remove_endpoint"):
            setattr(store, name, self._counted(name, getattr(store, name)))

    def _counted(self, name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.log.append(name)
            return call(*args, **kwargs)

        return counted

    def take(self) -> list[str]:
        log, self.log = self.log, []
        return log


def _listed(h: Harness) -> list[tuple[str, Any]]:
    return [(e.address, e.labels) for e in h.store.list_endpoints("echo")]


def test_a_converged_appmaster_only_renews_its_endpoints_every_refresh_period(
    h: Harness,
) -> None:
    """Rounds every second in fake time: no endpoint write for ``REFRESH`` seconds, then
    one renewal per proxy, no prune; the list clients get never changes meanwhile."""
    writes = Writes(h.store)

    async def scenario() -> None:
        await h.deploy(spec(), "echo_v1", "op-1")
        await h.converge()
        listed = _listed(h)
        assert len(listed) == 2
        writes.take()
        for _ in range(3):
            rounds = 0
            while rounds < REFRESH:
                h.clock.advance(1.0)
                await h.core.round()
                rounds += 1
                assert _listed(h) == listed
            assert writes.take() == ["upsert_endpoint", "upsert_endpoint"]

    run(scenario())


def test_a_weight_change_a_dead_proxy_and_a_new_process_are_written_at_once(
    h: Harness,
) -> None:
    writes = Writes(h.store)

    async def scenario() -> None:
        await h.deploy(spec(), "echo_v1", "op-1", epoch=5)
        await h.converge()
        writes.take()
        await h.core.release(TrafficBody(weight=0), op_id="t#1@a", epoch=6)
        await h.core.round()
        assert {e.labels["weight"] for e in h.store.list_endpoints("echo")} == {0}
        assert writes.take() == ["upsert_endpoint", "upsert_endpoint"]
        dead = await h.runtime.call("echo-p0", "start", timeout_s=1)
        h.runtime.crash("echo-p0", restart=False)
        await h.core.round()
        assert dead.address not in {e.address for e in h.store.list_endpoints("echo")}
        assert "remove_endpoints" in writes.take()
        await h.converge()
        assert len(h.store.list_endpoints("echo")) == 2
        writes.take()
        h.core = h.new_core()  # a restarted AppMaster: it knows nothing it wrote
        await h.core.load()
        await h.core.round()
        assert sorted(writes.take()) == ["remove_endpoints", "upsert_endpoint", "upsert_endpoint"]

    run(scenario())


def test_an_endpoint_the_leader_withdrew_while_the_heartbeat_lapsed_comes_back_next_round(
    h: Harness,
) -> None:
    """The leader withdraws a cluster's endpoints when its GCS and AppMasters are silent;
    an AppMaster that was only cut off for a while writes them again at its next round
    once its link says the heartbeat lapsed, not a refresh period later."""

    async def scenario() -> None:
        await h.deploy(spec(), "echo_v1", "op-1")
        await h.converge()
        listed = _listed(h)
        h.store.remove_cluster_endpoints("a")  # the leader, while the heartbeat was stale
        h.core.republish_endpoints(5.0)  # the link, on its next acknowledged heartbeat
        h.clock.advance(1.0)
        await h.core.round()
        assert _listed(h) == listed

    run(scenario())


def test_the_link_puts_the_endpoints_in_doubt_after_a_lapse_of_its_heartbeat(h: Harness) -> None:
    """A failed heartbeat, or one acknowledged so long after the previous one was sent
    that the stored heartbeat may have aged to the leader's cluster-loss silence, make
    the AppMaster write its endpoints every round for ``heartbeat_stale_s``; beats at
    the link's pace, and slow ones that leave the stored heartbeat fresher than the
    silence throughout, do not."""
    settings = KeeperSettings()
    link = KeeperLink(h.core, ["127.0.0.1:1"], None, settings=settings)
    publication = h.core.actions.publication
    clock = h.clock
    link._acknowledged(clock.monotonic())  # the first: nothing to compare with
    for _ in range(5):
        sent = clock.monotonic()
        clock.advance(settings.link_period_s * 2)  # one beat skipped: still fine
        link._acknowledged(sent)
    assert publication.doubt_until == float("-inf")
    # a beat acknowledged late, the next one sent at once and acknowledged fast: the
    # stored beat was at most (an ack - the send before) old, under the silence
    sent = clock.monotonic()
    clock.advance(0.05)
    link._acknowledged(sent)
    sent = clock.monotonic()
    clock.advance(settings.loss_silence_s * 0.7)
    link._acknowledged(sent)
    sent = clock.monotonic()
    clock.advance(0.05)
    link._acknowledged(sent)
    assert publication.doubt_until == float("-inf")
    # from one beat's send to the next one's acknowledgement, the silence (less the
    # margin) passed
    clock.advance(LAPSE * settings.loss_silence_s)
    link._acknowledged(clock.monotonic())
    assert publication.doubt_until == clock.monotonic() + settings.heartbeat_stale_s
    clock.advance(settings.heartbeat_stale_s)
    link._beat_failed = True
    clock.advance(0.1)
    link._acknowledged(clock.monotonic())
    assert publication.doubt_until == clock.monotonic() + settings.heartbeat_stale_s
