"""docs/settings.md is generated from the settings tree (``tools/settings_doc.py``); it
must say what the code says. After changing ``ha_serving/_settings.py``: ``make docs``."""

from __future__ import annotations

from tools.settings_doc import OUTPUT, env_vars, leaves, render


def test_the_settings_reference_is_up_to_date_with_the_settings_tree() -> None:
    current = OUTPUT.read_text() if OUTPUT.exists() else ""
    assert current == render(), f"{OUTPUT} is out of date with ha_serving/_settings.py: make docs"


def test_every_setting_has_a_description() -> None:
    """Each field says what it is, in its unit, and why its default (the settings module's
    convention), so the reference has no blank rows."""
    assert [name for name, _, field in leaves() if not field.description] == []


def test_environment_variables_are_found_for_the_settings_they_set() -> None:
    """The generator finds the variables ``Settings.from_env`` reads by probing it."""
    env = env_vars()
    assert env["store.url"] == "HA_SERVING_DB_URL"
    assert env["stack.run_dir"] == "HA_SERVING_RUN_DIR"
    assert env["keeper.lease_ttl_s"] == "HA_SERVING_KEEPER_TTL"


def test_the_settings_module_lists_every_environment_variable_it_reads() -> None:
    """Its docstring's table names each variable ``Settings.from_env`` reads, and none
    it does not (the TLS ones were missing from it)."""
    import re

    import ha_serving._settings as settings

    listed = re.findall(r"^``(HA_SERVING_\w+)``", settings.__doc__ or "", re.MULTILINE)
    assert sorted(listed) == sorted(var for var, _, _ in settings.SETTINGS_ENV)
