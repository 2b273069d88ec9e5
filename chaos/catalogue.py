"""The drill catalogue: one Chaos Toolkit experiment per JSON file in ``chaos/drills/``.

A drill is data: its steady-state probes, its fault (the method) and its rollbacks name
functions of ``chaos.actions`` and ``chaos.probes`` (those each lists in
``ACTIVITIES``), so adding a drill whose fault exists needs no code. Besides Chaos
Toolkit's own keys, the runner reads:

- ``configuration``: what the activities read (``run_dir``, ``service``, a cluster or a
  node name, …), plus the drill's thresholds (``Thresholds`` below);
- ``extensions``: an entry ``{"name": "ha_serving", "fault": …, "order": …}``: what the
  summary calls the fault, and the drill's place in the catalogue.

``load_drill`` refuses a drill that names a function which does not exist or does not
take its arguments, whose rollbacks do not end with ``heal``, or whose recovery
activities are not in its method.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

DRILLS_DIR = Path(__file__).resolve().parent / "drills"
MODULES = ("chaos.actions", "chaos.probes")
"""The only modules a drill's activities may name."""
ROLLBACK = ("chaos.actions", "heal")
"""The rollback every drill ends with: whatever the drill did, the stack is made whole."""


class InvalidDrill(ValueError):
    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"{path.name}: " + "; ".join(problems))


class Thresholds(BaseModel):
    """A drill's pass/fail bars, read from its ``configuration``."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    min_availability: float = Field(default=0.999, ge=0, le=1)
    """Good / all data-plane calls over the whole drill (issue 10: at least 99.9 %)."""
    max_failure_streak_s: float | None = Field(default=None, ge=0)
    """Longest run of consecutive failed calls, first start to last end (None: no bar)."""
    max_recovery_s: float | None = Field(default=None, ge=0)
    """Recovery time bar; needs ``recovery_from`` and ``recovery_until``."""
    recovery_from: str | None = None
    """Method activity whose start (or end, see ``recovery_from_edge``) starts the clock."""
    recovery_from_edge: Literal["start", "end", "measured"] = "start"
    """``measured``: the ``recovery_until`` probe's own output (seconds) is the recovery
    time, for a probe that times the event itself rather than its own polling."""
    recovery_until: str | None = None
    """Method activity (a probe that waits for the recovery) whose end stops the clock."""
    max_p99_ms: float | None = Field(default=None, gt=0)
    """p99 latency bar during the fault window (None: reported, not judged)."""


THRESHOLD_KEYS = frozenset(Thresholds.model_fields)


class DrillMeta(BaseModel):
    """The ``ha_serving`` entry of a drill's ``extensions``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Literal["ha_serving"]
    fault: str = Field(min_length=1)
    order: int = 100
    control: bool = False
    """The control run: no fault, measures the noise floor."""
    smoke: bool = False
    """In the smoke set CI runs (``--set smoke``): drills that passed every catalogue run
    here with a clear margin; the others need the full catalogue (``make chaos``)."""
    duration_s: float = Field(gt=0, le=600)
    """How long one run of the drill takes here, in seconds: steady state before and
    after, the method, the rollback (estimated from its holds and the recovery times
    measured; a random run's report shows the real ones). Random mode plans with it."""
    random: bool = True
    """Random mode (``--mode random``) may pick it."""
    client_links: bool = False
    """Its faults act on the load's links to the proxies (``chaos.links``): the runner
    routes the load's callers through the fault hub for the whole run when it runs a
    drill that says so (and in random mode)."""


@dataclass(frozen=True)
class Drill:
    name: str
    """The file's stem: what ``--drill`` takes."""
    path: Path
    experiment: Mapping[str, Any]
    meta: DrillMeta
    thresholds: Thresholds

    def fresh_experiment(self) -> dict[str, Any]:
        """A deep copy to hand to Chaos Toolkit (which writes into it)."""
        copy: dict[str, Any] = json.loads(json.dumps(self.experiment))
        return copy


def load_catalogue(directory: Path = DRILLS_DIR) -> list[Drill]:
    """Every drill of ``directory``, in catalogue order (the control run first)."""
    drills = [load_drill(p) for p in sorted(directory.glob("*.json"))]
    return sorted(drills, key=lambda d: (not d.meta.control, d.meta.order, d.name))


def select(
    catalogue: Sequence[Drill], names: Sequence[str], *, control: bool, smoke: bool = False
) -> list[Drill]:
    """The drills to run, in catalogue order: ``names`` (all when empty; the smoke set
    with ``smoke``), the control run first unless ``control`` is False. Raises
    ValueError naming unknown drills."""
    if smoke and not names:
        names = [d.name for d in catalogue if d.meta.smoke]
    known = {d.name for d in catalogue}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown drills {unknown}; known: {', '.join(sorted(known))}")
    return [
        d
        for d in catalogue
        if (d.meta.control and control) or (not d.meta.control and (not names or d.name in names))
    ]


def load_drill(path: Path) -> Drill:
    try:
        experiment = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidDrill(path, [f"not readable JSON: {exc}"]) from None
    if not isinstance(experiment, dict):
        raise InvalidDrill(path, ["not a JSON object"])
    problems = _structure(experiment)
    meta = thresholds = None
    try:
        meta = _meta(experiment)
    except (ValidationError, LookupError) as exc:
        problems.append(f"extensions: {_why(exc)}")
    try:
        thresholds = _thresholds(experiment.get("configuration") or {})
    except (ValidationError, TypeError) as exc:
        problems.append(f"thresholds: {_why(exc)}")
    for where, activity in _activities(experiment):
        problems += [f"{where}: {p}" for p in _activity_problems(activity)]
    problems += _rollback_problems(experiment)
    if thresholds is not None:
        problems += _recovery_problems(experiment, thresholds)
    if meta is not None:
        problems += _link_problems(experiment, meta)
    if problems or meta is None or thresholds is None:
        raise InvalidDrill(path, problems)
    return Drill(path.stem, path, experiment, meta, thresholds)


def _why(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()
        )
    return str(exc)


def _structure(experiment: Mapping[str, Any]) -> list[str]:
    problems = [f"no {key}" for key in ("title", "description") if not experiment.get(key)]
    if not isinstance(experiment.get("method"), list) or not experiment["method"]:
        problems.append("no method (the fault)")
    hypothesis = experiment.get("steady-state-hypothesis")
    if not isinstance(hypothesis, dict) or not hypothesis.get("probes"):
        problems.append("no steady-state-hypothesis with probes")
    else:
        for probe in hypothesis["probes"]:
            if "tolerance" not in probe:
                problems.append(f"steady-state probe {probe.get('name')!r} has no tolerance")
    return problems


def _meta(experiment: Mapping[str, Any]) -> DrillMeta:
    for ext in experiment.get("extensions") or []:
        if isinstance(ext, dict) and ext.get("name") == "ha_serving":
            return DrillMeta.model_validate(ext)
    raise LookupError("no entry named ha_serving")


def _thresholds(configuration: Mapping[str, Any]) -> Thresholds:
    return Thresholds.model_validate(
        {k: v for k, v in configuration.items() if k in THRESHOLD_KEYS}
    )


def _activities(experiment: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    hypothesis = experiment.get("steady-state-hypothesis") or {}
    found = [("steady-state", a) for a in hypothesis.get("probes") or []]
    found += [("method", a) for a in experiment.get("method") or []]
    found += [("rollbacks", a) for a in experiment.get("rollbacks") or []]
    return found


def _activity_problems(activity: Mapping[str, Any]) -> list[str]:
    name = activity.get("name") or "(unnamed)"
    if activity.get("type") not in ("action", "probe"):
        return [f"{name}: type must be action or probe"]
    provider = activity.get("provider") or {}
    if provider.get("type") != "python":
        return [f"{name}: only python providers (this project's functions) are used"]
    module, func = provider.get("module"), provider.get("func")
    if module not in MODULES:
        return [f"{name}: module {module!r} is not one of {', '.join(MODULES)}"]
    mod = importlib.import_module(module)
    fn = getattr(mod, str(func), None)
    if func not in getattr(mod, "ACTIVITIES", ()) or not inspect.isfunction(fn):
        return [f"{name}: {module} has no function {func!r} among its ACTIVITIES"]
    arguments = dict(provider.get("arguments") or {})
    params = inspect.signature(fn).parameters
    if "configuration" in params:
        arguments["configuration"] = {}
    try:
        inspect.signature(fn).bind(**arguments)
    except TypeError as exc:
        return [f"{name}: arguments do not fit {module}.{func}: {exc}"]
    return []


def _rollback_problems(experiment: Mapping[str, Any]) -> list[str]:
    rollbacks = experiment.get("rollbacks") or []
    last = rollbacks[-1].get("provider", {}) if rollbacks else {}
    if (last.get("module"), last.get("func")) != ROLLBACK:
        return [f"rollbacks must end with {'.'.join(ROLLBACK)}"]
    return []


def _recovery_problems(experiment: Mapping[str, Any], t: Thresholds) -> list[str]:
    names = {a.get("name") for a in experiment.get("method") or []}
    problems = [
        f"recovery activity {n!r} is not in the method"
        for n in (t.recovery_from, t.recovery_until)
        if n is not None and n not in names
    ]
    if t.max_recovery_s is not None and (t.recovery_from is None or t.recovery_until is None):
        problems.append("max_recovery_s needs recovery_from and recovery_until")
    return problems


LINK_FUNCS = frozenset({"net_fault", "net_heal", "wait_link_traffic"})


def _link_problems(experiment: Mapping[str, Any], meta: DrillMeta) -> list[str]:
    """A drill that faults the load's links must say so (``client_links``), and one that
    faults the Keepers' DB link must route the Keepers through it first."""
    problems = []
    routed = False
    for where, activity in _activities(experiment):
        provider = activity.get("provider") or {}
        func = provider.get("func")
        link = str((provider.get("arguments") or {}).get("link", "client-*"))
        if func == "route_keepers_db" and where == "method":
            routed = True
        if func not in LINK_FUNCS:
            continue
        if link.startswith("client") and not meta.client_links:
            problems.append(f"{activity.get('name')}: acts on {link!r}, needs client_links")
        if link == "keeper-db" and func == "net_fault" and not routed:
            problems.append(
                f"{activity.get('name')}: faults keeper-db before route_keepers_db in the method"
            )
    return problems
