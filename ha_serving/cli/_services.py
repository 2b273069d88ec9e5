"""The CLI's direct mode (``--cluster``): deploy, update, scale and read a service on one
cluster of the local stack, as a Ray driver instructing the service's AppMaster itself.

Kept on purpose, as an explicitly named development mode (issue 15): one cluster, no
Keepers, so none of what they give (placement on several clusters, releases, drained
updates, a serving job resubmitted after its cluster restarted). The two paths never
share a service: a service recorded by the Keepers is refused here before anything is
written (``_direct_only``), and one deployed here is marked ``direct`` in its record,
which the Keepers refuse to change (``keeper._control_api``). Every instruction carries
an op_id, so retrying a command is harmless.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ha_serving._errors import InvalidSpec, StackError, UnknownService
from ha_serving._spec import ServiceSpec, code_dir, load_spec, parse_spec
from ha_serving.appmaster import CONTROL_CPUS, NAMESPACE, AppMaster, appmaster_name
from ha_serving.appmaster._standby import standby_name
from ha_serving.backend import make_package
from ha_serving.runtime import ActorSpec
from ha_serving.runtime._ray import RayRuntime, connect, disconnect
from ha_serving.store import AlreadyExists, ServiceRecord, Store, StoreRef
from ha_serving.util.tls import TlsFiles

Progress = Callable[[dict[str, Any]], None]


class ServiceOps:
    """Deploy and drive services on one cluster (``gcs_address``) of a stack."""

    def __init__(
        self,
        store: Store,
        db: StoreRef,
        cluster: str,
        gcs: str,
        node_ip: str,
        *,
        proxy_tls: TlsFiles | None = None,
    ) -> None:
        self.store = store
        self.db = db
        """Passed on to the AppMaster: the store's URL and its password file's path."""
        self.proxy_tls = proxy_tls
        """The proxies' certificate (they serve TLS with it); None: plaintext."""
        self.client_tls = TlsFiles(proxy_tls.ca) if proxy_tls is not None else None
        """What a client of these proxies verifies them with."""
        self.cluster = cluster
        self._gcs = gcs
        self._node_ip = node_ip
        self._runtime: RayRuntime | None = None

    def _ray(self) -> RayRuntime:
        if self._runtime is None:
            connect(self._gcs, node_ip=self._node_ip, namespace=NAMESPACE)
            self._runtime = RayRuntime(NAMESPACE)
        return self._runtime

    def close(self) -> None:
        if self._runtime is not None:
            disconnect()
            self._runtime = None

    # --- instructions -----------------------------------------------------------------

    def deploy(self, spec: ServiceSpec, code: Path, *, kind: str = "deploy") -> dict[str, Any]:
        """Package the code into the DB, record the service, instruct the AppMaster.
        A service the Keepers manage is refused before anything is written."""
        try:
            current: ServiceRecord | None = self.store.get_service(spec.name)
        except UnknownService:
            current = None
        _direct_only(spec.name, current)
        package = make_package(code)
        digest = self.store.put_package(package.data)
        # "direct": this service is driven on one cluster by hand; the Keepers leave it be
        record = {"spec": spec.model_dump(mode="json"), "package": digest, "direct": self.cluster}
        if current is None:
            try:
                self.store.create_service(spec.name, record)
            except AlreadyExists:  # created meanwhile: by whom is checked again
                current = self.store.get_service(spec.name)
                _direct_only(spec.name, current)
        if current is not None:  # compare-and-set: refused if it changed since the check
            self.store.update_service(spec.name, record, expected_version=current.version)
        return self._apply(spec, digest, kind)

    def change(self, service: str, *, kind: str, **changes: Any) -> dict[str, Any]:
        """Update the recorded spec (config, version/code, instances) and apply it."""
        current = self._record(service)
        _direct_only(service, current)
        spec = dict(current.spec["spec"])
        digest = current.spec["package"]
        if "code" in changes:
            digest = self.store.put_package(make_package(changes.pop("code")).data)
        spec.update(changes)
        new = parse_spec(spec, source=f"{service} after {kind}")
        record = {"spec": new.model_dump(mode="json"), "package": digest, "direct": self.cluster}
        self.store.update_service(service, record, expected_version=current.version)
        return self._apply(new, digest, kind)

    def _record(self, service: str) -> Any:
        try:
            return self.store.get_service(service)
        except UnknownService:
            raise UnknownService(service) from None

    def _apply(self, spec: ServiceSpec, digest: str, kind: str) -> dict[str, Any]:
        runtime = self._ray()
        name = appmaster_name(spec.name)

        async def go() -> dict[str, Any]:
            await runtime.create(
                ActorSpec(
                    name=name,
                    cls=AppMaster,
                    args=(self.cluster, spec.name, self.db),
                    kwargs={"proxy_tls": self.proxy_tls},
                    num_cpus=CONTROL_CPUS,
                    max_concurrency=100,
                )
            )
            op_id = f"{kind}-{uuid.uuid4().hex[:12]}"
            return dict(
                await runtime.call(
                    name,
                    "apply",
                    spec.model_dump(mode="json"),
                    digest,
                    op_id,
                    0,
                    kind,
                    timeout_s=60.0,
                )
            )

        return asyncio.run(go())

    # --- reading ----------------------------------------------------------------------

    def describe(self, service: str) -> dict[str, Any]:
        """The AppMaster's live view, or the persisted state if it does not answer."""
        self._record(service)
        runtime = self._ray()
        try:
            return dict(
                asyncio.run(runtime.call(appmaster_name(service), "describe", timeout_s=10.0))
            )
        except Exception:
            found = self.store.load_appmaster_state(self.cluster, service)
            if found is None:
                raise StackError(f"service {service} has no AppMaster on {self.cluster}") from None
            return {"service": service, "cluster": self.cluster, "from_db": True, "state": found[0]}

    def wait(self, service: str, *, timeout_s: float, progress: Progress) -> dict[str, Any]:
        """Poll the AppMaster until its rollout is finished; report progress meanwhile."""
        deadline = time.monotonic() + timeout_s
        while True:
            view = self.describe(service)
            progress(view)
            if view.get("converged"):  # the AppMaster's own rule, ``JobState.converged``
                return view
            if time.monotonic() > deadline:
                raise StackError(f"{service} did not settle within {timeout_s:.0f}s")
            time.sleep(0.5)


def _direct_only(name: str, current: ServiceRecord | None) -> None:
    """Refuse to drive a service the Keepers manage (its record is theirs) by hand."""
    if current is not None and not current.spec.get("direct"):
        raise InvalidSpec(
            "--cluster",
            [f"{name} is deployed through the Keepers: change it without --cluster"],
        )


def load_spec_file(path: Path) -> tuple[ServiceSpec, Path]:
    spec = load_spec(path)
    return spec, code_dir(spec, path)


def start_appmaster(
    cluster: str,
    service: str,
    db: StoreRef,
    *,
    keepers: list[str],
    token_file: Path | None,
    link_tls: TlsFiles | None = None,
    proxy_tls: TlsFiles | None = None,
) -> str:
    """Inside a Ray job on ``cluster``: create (or find) the service's two detached
    AppMasters linked to the Keepers (one acts, the other is its warm standby:
    ``appmaster._standby``), wait until both answer, and leave them running. The actors'
    arguments are shown by Ray's state API, so they carry the secrets' file paths, not
    the secrets."""
    import ray

    ray.init(namespace=NAMESPACE, log_to_driver=False)
    runtime = RayRuntime(NAMESPACE)
    pair = (appmaster_name(service), standby_name(service))

    async def go() -> str:
        for name, peer in (pair, pair[::-1]):
            await runtime.create(
                ActorSpec(
                    name=name,
                    cls=AppMaster,
                    args=(cluster, service, db, NAMESPACE),
                    kwargs={
                        "keepers": keepers,
                        "token_file": str(token_file) if token_file is not None else None,
                        "link_tls": link_tls,
                        "proxy_tls": proxy_tls,
                        "peer": peer,
                    },
                    num_cpus=CONTROL_CPUS,
                    max_concurrency=100,
                )
            )
        answers = [str(await runtime.call(name, "ping", timeout_s=60.0)) for name in pair]
        return answers[0]

    try:
        return asyncio.run(go())
    finally:
        ray.shutdown()
