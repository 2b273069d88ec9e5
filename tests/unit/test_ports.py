"""Port slots: two runs on one machine never get the same ports."""

from __future__ import annotations

from pathlib import Path

import pytest

from ha_serving import Settings
from ha_serving._errors import StackError
from infra.ports import claim_slot


def test_a_held_slot_is_skipped_and_released_on_close(tmp_path: Path) -> None:
    bases = (31000, 32000)
    first = claim_slot(bases, lock_dir=tmp_path)
    second = claim_slot(bases, lock_dir=tmp_path)
    assert (first.base, second.base) == (31000, 32000)
    with pytest.raises(StackError, match="held by another run"):
        claim_slot(bases, lock_dir=tmp_path)
    first.release()
    assert claim_slot(bases, lock_dir=tmp_path).base == 31000


def test_a_slot_puts_every_port_of_the_stack_in_its_own_range(tmp_path: Path) -> None:
    slot = claim_slot((16000,), lock_dir=tmp_path)
    settings = slot.settings(Settings.from_env({}))
    assert settings.stack.port_base == 16000
    ports = {settings.stack.db_port, settings.stack.redis_port, settings.keeper.port}
    assert len(ports) == 3
    assert all(16000 < p < 16000 + 2000 for p in ports)  # below cluster a's block
