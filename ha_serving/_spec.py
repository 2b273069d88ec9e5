"""A service's spec: what users write in YAML and what the platform persists.

``load_spec(path)`` validates a YAML file into a ``ServiceSpec`` and reports every
problem by field at once (``InvalidSpec.problems``), never just the first. YAML is read
safely (no tags that make Python objects), and bounded: at most ``MAX_YAML_BYTES``, no
aliases (a few hundred bytes of them can expand to gigabytes), at most
``MAX_YAML_DEPTH`` levels of nesting; numbers must be finite.
``Revision`` is the part of a spec that an in-place update changes (code version,
package, config); the AppMaster drives each instance's running revision towards the
desired one.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ha_serving._errors import InvalidSpec

NAME_PATTERN = r"^[a-z][a-z0-9-]{0,62}$"

MAX_YAML_BYTES = 1024 * 1024
"""Largest spec or config file read: a spec is a page of YAML, a config some KiB."""
MAX_YAML_DEPTH = 64
"""Deepest nesting of mappings and lists in a spec or config file."""


class _Spec(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", use_attribute_docstrings=True, allow_inf_nan=False
    )


class RolloutPolicy(_Spec):
    max_unavailable: int = Field(default=1, ge=1)
    """Instances out of service at once during an update (drained, then updated)."""

    max_surge: int = Field(default=0, ge=0, le=0)
    """Always 0: updates happen in place (an instance is drained, then updated) and a
    worker whose resources change is drained, then replaced, so no extra instance is
    ever started for an update. The field is kept so that specs and saved states that
    name it still load, and a non-zero value is refused rather than ignored."""

    drain_timeout_s: float = Field(default=10.0, gt=0, le=600)
    """How long a drained instance may finish in-flight requests before it is updated."""

    health_check_period_s: float = Field(default=2.0, gt=0, le=300)
    """Seconds between health checks of serving instances."""

    health_check_timeout_s: float = Field(default=5.0, gt=0, le=300)
    """A health check slower than this counts as failed."""

    failure_threshold: int = Field(default=3, ge=1)
    """Failed instance updates in one rollout before it rolls back automatically."""


class PredictivePolicy(_Spec):
    """Scale out ahead of a forecast: a Holt-Winters model of the service's own request
    rate (its history in the store), one step per ``step_s``, one season per
    ``season_s``. It only ever raises the reactive count, never lowers it."""

    step_s: float = Field(default=60.0, ge=10, le=3600)
    """Seconds per rate sample kept in the store and per step of the model."""

    season_s: float = Field(default=86_400.0, ge=60, le=7 * 86_400)
    """Length of the load's cycle (a day by default), a whole number of steps."""

    min_seasons: int = Field(default=2, ge=2, le=10)
    """Whole seasons of history needed before the forecast is used (Holt-Winters needs
    two to tell the season from the trend)."""

    @model_validator(mode="after")
    def _whole_season(self) -> PredictivePolicy:
        steps = self.season_s / self.step_s
        if abs(steps - round(steps)) > 1e-9 or round(steps) < 2:
            raise ValueError(
                f"season_s {self.season_s:g} must be 2 or more whole steps of {self.step_s:g} s"
            )
        if round(steps) * self.min_seasons > 20_000:
            raise ValueError("season_s / step_s * min_seasons must be at most 20000 samples")
        return self


class AutoscalingPolicy(_Spec):
    """Instances follow the load, within ``min_instances..max_instances`` (see
    docs/autoscaling.md). Defaults are Knative's KPA's where it has one."""

    min_instances: int = Field(default=1, ge=1, le=5000)
    """Fewest instances, whatever the load (no scale to zero: nothing holds calls while
    a first instance starts)."""

    max_instances: int = Field(default=10, ge=1, le=5000)
    """Most instances, whatever the load."""

    target_inflight: float = Field(default=8.0, gt=0, le=10_000)
    """In-flight calls per instance the autoscaler aims for; below ``max_concurrency``,
    so proxies are not shedding load while instances start."""

    target_p99_ms: float | None = Field(default=None, gt=0, le=600_000)
    """If set, a p99 latency above it (over the panic window) also scales out."""

    stable_window_s: float = Field(default=60.0, ge=6, le=3600)
    """Seconds of in-flight figures averaged for ordinary decisions (KPA: 60 s)."""

    panic_window_s: float = Field(default=6.0, ge=1, le=600)
    """Seconds averaged to notice a burst (KPA: 6 s, a tenth of the stable window)."""

    panic_threshold: float = Field(default=2.0, gt=1, le=100)
    """Panic when the panic window asks for this many times the current instances
    (KPA: 200 %); in panic the autoscaler only scales out."""

    scale_down_delay_s: float = Field(default=300.0, ge=0, le=3600)
    """A scale-in takes the highest count asked for over this many seconds, so a dip
    shorter than it changes nothing."""

    scale_down_tolerance: float = Field(default=0.1, ge=0, lt=0.5)
    """Hysteresis: scaling in aims at ``target_inflight * (1 - tolerance)`` per instance,
    so a load just under a boundary does not flip the count back and forth."""

    scale_up_delay_s: float = Field(default=0.0, ge=0, le=3600)
    """A scale-out is carried out only once every decision for this many seconds asked
    for more than the current count (then the latest one's count); 0: at once. Ray
    Serve's ``upscale_delay_s`` (30 s there); for a baseline to compare with, since it
    delays every burst by as much."""

    reading_period_s: float | None = Field(default=None, gt=0, le=60)
    """Seconds between two readings of this service's proxies, each followed by a
    decision; None: the stack's ``autoscale.reading_period_s`` (1 s). Ray Serve's
    replicas report every 10 s (``metrics_interval_s``); for a baseline to compare with."""

    instance_start_s: float = Field(default=10.0, gt=0, le=3600)
    """Expected seconds from a decision to a serving instance: the forecast looks this
    far ahead, and a latency-driven step waits this long (plus the panic window) to see
    the effect of the previous one."""

    predictive: PredictivePolicy | None = None
    """Also scale out ahead of a forecast of the request rate (None: reactive only)."""

    def clamp(self, count: int) -> int:
        """``count`` within ``min_instances..max_instances``."""
        return min(max(count, self.min_instances), self.max_instances)

    @model_validator(mode="after")
    def _consistent(self) -> AutoscalingPolicy:
        if self.min_instances > self.max_instances:
            raise ValueError(
                f"min_instances {self.min_instances} > max_instances {self.max_instances}"
            )
        if self.panic_window_s >= self.stable_window_s:
            raise ValueError(
                f"panic_window_s {self.panic_window_s:g} must be shorter than "
                f"stable_window_s {self.stable_window_s:g}"
            )
        return self


class Resources(_Spec):
    num_cpus: float = Field(default=1.0, ge=0)
    """Logical CPUs per backend worker actor (a packing unit: see StackSettings.worker_cpus)."""

    memory_mb: int | None = Field(default=None, ge=1)
    """Memory reserved per worker actor, if any."""

    runtime_env: dict[str, Any] | None = None
    """Ray runtime_env of the worker actors; changing it replaces actors instead of
    updating them in place."""


class CodeRef(_Spec):
    dir: str
    """Directory with the service's modules, relative to the spec file. It is packaged and
    stored in the DB by content hash; clusters never read the caller's disk."""

    import_path: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    """``module:Class`` inside ``dir``; modules import each other relatively."""


class ClusterPlacement(_Spec):
    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,30}$")
    """A cluster registered with the Keepers (``ha-serving status`` lists them)."""

    instances: int | None = Field(default=None, ge=0, le=5000)
    """Instances on this cluster; None: the spec's ``instances``."""

    weight: int = Field(default=100, ge=0, le=1000)
    """Relative share of traffic clients send to this cluster when they spill over."""


class Placement(_Spec):
    """Where the Keepers run the service: named clusters, or any N of them."""

    clusters: tuple[ClusterPlacement, ...] = ()
    any: int | None = Field(default=None, ge=1, le=9)
    """Let the Keeper pick this many clusters (used when ``clusters`` is empty)."""

    @model_validator(mode="after")
    def _one_way(self) -> Placement:
        if self.clusters and self.any is not None:
            raise ValueError("give clusters or any, not both")
        names = [c.name for c in self.clusters]
        if len(set(names)) != len(names):
            raise ValueError(f"a cluster is named twice: {names}")
        return self


class ServiceSpec(_Spec):
    name: str = Field(pattern=NAME_PATTERN)
    """Service name: lower-case letters, digits and dashes; it names actors and routes."""

    version: str = Field(min_length=1, max_length=64)
    """The code version; a new version with new code is an in-place code update."""

    code: CodeRef
    instances: int = Field(default=1, ge=0, le=5000)
    """Replicas of the user class."""

    instances_per_worker: int = Field(default=1, ge=1, le=100)
    """Instances hosted by one worker actor (one process): packs light services."""

    proxies: int = Field(default=2, ge=1, le=16)
    """Proxy actors publishing the service (2+ so one can die without an outage)."""

    max_concurrency: int = Field(default=32, ge=1, le=10_000)
    """In-flight requests per instance, whoever sends them, before RESOURCE_EXHAUSTED:
    each proxy sheds beyond its share, the instance's worker beyond the whole."""

    resources: Resources = Resources()
    config: dict[str, Any] = {}
    """User config, passed to the class's ``reconfigure(config)``; JSON-serialisable."""

    rollout: RolloutPolicy = RolloutPolicy()
    placement: Placement = Placement()
    """Multi-cluster placement, used when deploying through the Keepers (default: any 1)."""

    autoscaling: AutoscalingPolicy | None = None
    """Instances follow the load (None: ``instances`` is fixed). ``instances`` is then
    the starting count; an update that changes only this section changes no instance."""

    def scaled(self, autoscaled: int | None) -> int:
        """Instances to run: ``instances``, or with autoscaling the autoscaler's count
        (``autoscaled``; None before its first decision) within its bounds."""
        if self.autoscaling is None:
            return self.instances
        return self.autoscaling.clamp(self.instances if autoscaled is None else autoscaled)

    @model_validator(mode="after")
    def _autoscaling_fits(self) -> ServiceSpec:
        a = self.autoscaling
        if a is None:
            return self
        if not a.min_instances <= self.instances <= a.max_instances:
            raise ValueError(
                f"instances {self.instances} outside autoscaling's "
                f"{a.min_instances}..{a.max_instances}"
            )
        if a.target_inflight > self.max_concurrency:
            raise ValueError(
                f"autoscaling.target_inflight {a.target_inflight:g} > "
                f"max_concurrency {self.max_concurrency}: proxies would shed before scaling"
            )
        return self

    @model_validator(mode="after")
    def _config_is_json(self) -> ServiceSpec:
        try:
            json.dumps(self.config, allow_nan=False)  # the store's JSON has no NaN/inf
        except (TypeError, ValueError, RecursionError) as exc:
            raise ValueError(f"config must be JSON-serialisable: {exc}") from None
        return self


class Revision(_Spec):
    """What an instance runs: code (by package digest), version and config."""

    version: str
    package: str
    """SHA-256 of the code package in the DB."""
    import_path: str
    config: dict[str, Any] = {}

    @property
    def key(self) -> str:
        """Short fingerprint: equal keys mean nothing to update."""
        raw = json.dumps(self.model_dump(), sort_keys=True).encode()
        return hashlib.sha256(raw).hexdigest()[:12]

    def same_code(self, other: Revision) -> bool:
        return (self.package, self.import_path, self.version) == (
            other.package,
            other.import_path,
            other.version,
        )


def parse_spec(data: object, *, source: str = "spec") -> ServiceSpec:
    """Validate ``data`` (parsed YAML/JSON) into a spec; InvalidSpec lists every problem."""
    if not isinstance(data, dict):
        raise InvalidSpec(source, [f"top level must be a mapping, got {type(data).__name__}"])
    try:
        return ServiceSpec.model_validate(data)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in err['loc']) or '(spec)'}: {err['msg']}"
            for err in exc.errors()
        ]
        raise InvalidSpec(source, problems) from None


def load_spec(path: Path) -> ServiceSpec:
    """Read and validate a YAML spec file."""
    return parse_spec(load_yaml(path), source=str(path))


def loads_spec(text: bytes | str, *, source: str = "spec") -> ServiceSpec:
    """Validate a YAML spec given as text (what ``load_spec`` does after reading)."""
    return parse_spec(parse_yaml(text, source=source), source=source)


def load_yaml(path: Path) -> object:
    """A YAML file's data, read safely and bounded (see the module's text); InvalidSpec
    names the file and says, in one line, what is wrong."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise InvalidSpec(str(path), [f"cannot read: {exc.strerror or exc}"]) from None
    return parse_yaml(raw, source=str(path))


def parse_yaml(text: bytes | str, *, source: str) -> object:
    """``text`` parsed as one YAML document, safely and bounded; InvalidSpec otherwise."""
    if len(text) > MAX_YAML_BYTES:
        raise InvalidSpec(source, [f"larger than {MAX_YAML_BYTES} bytes"])
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InvalidSpec(
                source, [f"not UTF-8 text: {exc.reason} at byte {exc.start}"]
            ) from None
    loader: _BoundedLoader | None = None
    try:
        loader = _BoundedLoader(text)  # its reader refuses control characters already
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise InvalidSpec(source, [f"not valid YAML: {_yaml_problem(exc)}"]) from None
    except (ValueError, OverflowError, RecursionError) as exc:
        # a scalar YAML accepted that Python refuses: an int of 5000 digits, 2001-13-45
        raise InvalidSpec(source, [f"not valid YAML: {type(exc).__name__}: {exc}"]) from None
    finally:
        if loader is not None:
            loader.dispose()


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader (the same safe constructors: a ``!!python/...`` tag is
    refused, never run) that also refuses aliases and deep nesting while composing."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        problem: str | None = None
        if self.check_event(yaml.AliasEvent):
            problem = "aliases (*name) are not allowed"
        elif self._depth >= MAX_YAML_DEPTH:
            problem = f"nested deeper than {MAX_YAML_DEPTH} levels"
        if problem is not None:
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(None, None, problem, mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)  # type: ignore[arg-type]
        finally:
            self._depth -= 1

    def construct_yaml_timestamp(self, node: yaml.Node) -> datetime.date:
        """An explicit ``!!timestamp`` on text that is no timestamp: PyYAML's own
        constructor fails there with an AttributeError, not a YAMLError."""
        value = self.construct_scalar(node)  # type: ignore[arg-type]
        if self.timestamp_regexp.match(value) is None:
            raise yaml.constructor.ConstructorError(
                None, None, f"not a timestamp: {value!r}", node.start_mark
            )
        return super().construct_yaml_timestamp(node)  # type: ignore[arg-type]


# the constructors are a table of functions: the override must be put in it
_BoundedLoader.add_constructor(
    "tag:yaml.org,2002:timestamp", _BoundedLoader.construct_yaml_timestamp
)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error without its multi-line position marker: what, and where."""
    if isinstance(exc, yaml.MarkedYAMLError):
        text = " ".join(str(p) for p in (exc.context, exc.problem) if p) or "syntax error"
        mark = exc.problem_mark or exc.context_mark
        if mark is not None:
            text += f" (line {mark.line + 1}, column {mark.column + 1})"
    else:
        text = str(exc)
    return " ".join(text.split())


def code_dir(spec: ServiceSpec, spec_path: Path) -> Path:
    """The spec's code directory, resolved against the spec file's folder, which it must
    stay inside: an absolute path, ``..`` or a symlink leading out is refused, so a spec
    cannot package (and upload) files from elsewhere on the deployer's disk."""
    where = str(spec_path)
    given = spec.code.dir
    if "\x00" in given:
        raise InvalidSpec(where, ["code.dir: contains a NUL character"])
    if Path(given).is_absolute() or ".." in Path(given).parts:
        raise InvalidSpec(
            where, [f"code.dir: {given!r} must be a folder inside the spec's folder, relative"]
        )
    try:
        base = spec_path.parent.resolve()
        directory = (base / given).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise InvalidSpec(where, [f"code.dir: {given!r}: {exc}"]) from None
    if not directory.is_relative_to(base):
        raise InvalidSpec(
            where, [f"code.dir: {given!r} leads outside the spec's folder (to {directory})"]
        )
    if not directory.is_dir():
        raise InvalidSpec(where, [f"code.dir: {directory} is not a directory"])
    return directory
