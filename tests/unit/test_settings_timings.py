"""Timings that depend on each other are checked together: a configuration that breaks a
relation is refused with one line naming both values, whether it comes from the
environment or from code; the defaults keep every relation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ha_serving._errors import InvalidSpec
from ha_serving._settings import AppMasterSettings, KeeperSettings, Settings


def test_the_defaults_keep_every_relation() -> None:
    settings = Settings()
    keeper = settings.keeper
    assert keeper.link_beat_s < keeper.link_period_s < keeper.link_silence_s
    assert keeper.link_silence_s + keeper.link_retry_s < keeper.heartbeat_stale_s
    assert settings.appmaster.withdraw_s > keeper.watch_period_s
    assert settings.appmaster.endpoint_refresh_s * 2 <= settings.appmaster.endpoint_ttl_s
    # a heartbeat batch is written, and answered, well within one link period
    assert keeper.link_heartbeat_window_s <= keeper.link_period_s / 3


@pytest.mark.parametrize(
    ("groups", "says"),
    [
        (
            {"keeper": {"link_beat_s": 0.5}},
            "keeper: link_beat_s (0.5) must be below link_period_s (0.3)",
        ),
        (
            {"keeper": {"link_period_s": 2.0, "link_beat_s": 0.2}},
            "keeper: link_silence_s (3.0) must be at least 2 link periods (4.0)",
        ),
        (
            {"keeper": {"heartbeat_stale_s": 3.0}},
            "keeper: heartbeat_stale_s (3.0) must exceed link_silence_s + link_retry_s (3.5)",
        ),
        (
            {"keeper": {"loss_silence_s": 0.5}},
            "keeper: loss_silence_s (0.5) must be at least 2 heartbeat intervals (0.6)",
        ),
        (
            {"keeper": {"submit_retry_s": 60.0}},
            "keeper: submit_retry_s (60.0) must be at most resubmit_s (30.0)",
        ),
        (
            {"appmaster": {"withdraw_s": 0.2}},
            "appmaster.withdraw_s (0.2) must exceed keeper.watch_period_s (0.5)",
        ),
        (
            {"appmaster": {"endpoint_refresh_s": 8.0}},
            "appmaster: endpoint_refresh_s (8.0) must be at most half of endpoint_ttl_s (15.0)",
        ),
    ],
)
def test_a_configuration_breaking_a_relation_is_refused_in_one_line(
    groups: dict[str, dict[str, object]], says: str
) -> None:
    with pytest.raises(InvalidSpec) as caught:
        Settings.build(**groups)
    message = str(caught.value)
    assert message.startswith(f"invalid settings: {says}")
    assert "\n" not in message
    assert len(message) < 250


def test_the_environment_is_checked_the_same_way() -> None:
    """``HA_SERVING_KEEPER_TTL`` and friends go through the same validation: a relation
    broken through the environment is refused in one line, not half-applied."""
    assert Settings.from_env({"HA_SERVING_KEEPER_TTL": "5"}).keeper.lease_ttl_s == 5.0
    with pytest.raises(InvalidSpec, match="lease_ttl_s"):
        Settings.from_env({"HA_SERVING_KEEPER_TTL": "0.1"})


def test_a_group_built_alone_is_checked_too() -> None:
    """Code that builds one group (``KeeperSettings(...)``) gets the same refusal."""
    with pytest.raises(ValueError, match="link_beat_s"):
        KeeperSettings(link_beat_s=1.0)
    assert AppMasterSettings(withdraw_s=0.0).withdraw_s == 0.0  # its relation is the tree's


@given(
    period=st.floats(0.05, 5.0),
    beat=st.floats(0.01, 5.0),
    silence=st.floats(0.1, 20.0),
    retry=st.floats(0.01, 5.0),
    stale=st.floats(0.1, 30.0),
    loss=st.floats(0.05, 20.0),
)
def test_accepted_link_timings_always_keep_the_relations(  # noqa: PLR0917
    period: float, beat: float, silence: float, retry: float, stale: float, loss: float
) -> None:
    """Whatever is accepted keeps each relation; whatever breaks one is refused."""
    values = {
        "link_period_s": period,
        "link_beat_s": beat,
        "link_silence_s": silence,
        "link_retry_s": retry,
        "heartbeat_stale_s": stale,
        "loss_silence_s": loss,
    }
    holds = (
        beat < period
        and silence >= 2 * period
        and stale > silence + retry
        and loss >= 2 * max(period, beat)
    )
    if holds:
        assert KeeperSettings(**values).link_beat_s == beat  # type: ignore[arg-type]
    else:
        with pytest.raises(InvalidSpec):
            Settings.build(keeper=values)
