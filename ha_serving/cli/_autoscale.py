"""``ha-serving autoscale status SERVICE``: each cluster's autoscaled count and policy,
and the autoscaler's recent decisions with their reasons, read from the state store
(the AppMasters' persisted states and their ``autoscale`` events), so it answers with
every Keeper and AppMaster down."""

from __future__ import annotations

import datetime
import json
import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from ha_serving._errors import UnknownService
from ha_serving._spec import ServiceSpec
from ha_serving.cli._clusters import open_store
from ha_serving.cli._common import RunDir, out
from ha_serving.store import Store

autoscale_app = typer.Typer(no_args_is_help=True, help="The autoscaler: counts and decisions.")


def autoscale_view(store: Store, service: str, limit: int) -> dict[str, Any]:
    """Per cluster: the policy, the spec's and the autoscaled count, the last change,
    its own demand and the Keeper's floor (``keeper/_capacity.py``);
    and the latest ``limit`` decisions (newest last). UnknownService if no cluster has
    a state for ``service``."""
    decisions = store.list_events(service=service, kind="autoscale", limit=limit)
    names = (
        {a.cluster for a in store.list_appmasters(service)}
        | {c.name for c in store.list_clusters()}
        | {e.cluster for e in decisions if e.cluster}
    )
    floors = {f.cluster: f for f in store.list_capacity_floors(service)}
    clusters = []
    for name in sorted(names):
        found = store.load_appmaster_state(name, service)
        if found is None:
            continue
        state = found[0]
        spec = ServiceSpec.model_validate(state["spec"])
        autoscaled = state.get("autoscaled")
        policy = spec.autoscaling
        clusters.append(
            {
                "cluster": name,
                "policy": policy.model_dump(mode="json") if policy is not None else None,
                "spec_instances": spec.instances,
                "instances": spec.scaled(autoscaled if isinstance(autoscaled, int) else None),
                "last_change": state.get("autoscale"),
                "demand": state.get("autoscale_demand"),
                "floor": floors[name].floor if name in floors else 0,
                "floor_reason": floors[name].reason if name in floors else "",
            }
        )
    if not clusters:
        raise UnknownService(service)
    return {
        "service": service,
        "clusters": clusters,
        "decisions": [{"at": e.at, "cluster": e.cluster, **(e.detail or {})} for e in decisions],
    }


@autoscale_app.command("status")
def status(
    service: Annotated[str, typer.Argument(help="The service.")],
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Decisions shown.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    run_dir: RunDir = None,
) -> None:
    """Each cluster's instance count and policy, and the latest decisions that changed
    a count, each with its reason (the figures and the rule that decided)."""
    with open_store(run_dir) as store:
        view = autoscale_view(store, service, limit)
    if as_json:
        sys.stdout.write(json.dumps(view, indent=2) + "\n")
        return
    table = Table(title=f"{service}: autoscaling")
    columns = ("cluster", "instances", "spec", "min..max", "target in-flight", "p99 target")
    for col in (*columns, "own demand", "Keeper floor"):
        table.add_column(col)
    for c in view["clusters"]:
        p = c["policy"]
        demand = "" if c["demand"] is None else str(c["demand"])
        floor = f"{c['floor']}: {c['floor_reason']}" if c["floor"] else ""
        if p is None:
            table.add_row(
                c["cluster"], str(c["instances"]), str(c["spec_instances"]), "off", "", "", "", ""
            )
            continue
        p99 = f"{p['target_p99_ms']:g} ms" if p["target_p99_ms"] is not None else ""
        table.add_row(
            c["cluster"],
            str(c["instances"]),
            str(c["spec_instances"]),
            f"{p['min_instances']}..{p['max_instances']}",
            f"{p['target_inflight']:g}" + (" + forecast" if p["predictive"] else ""),
            p99,
            demand,
            floor,
        )
    out.print(table)
    if not view["decisions"]:
        out.print("no decision has changed a count yet")
        return
    decisions = Table(title="decisions (newest last)")
    for col in ("when (UTC)", "cluster", "from", "to", "mode", "reason"):
        decisions.add_column(col)
    for d in view["decisions"]:
        when = datetime.datetime.fromtimestamp(d["at"], datetime.UTC).strftime("%H:%M:%S")
        decisions.add_row(
            when,
            str(d.get("cluster") or ""),
            str(d.get("current", "")),
            str(d.get("desired", "")),
            str(d.get("mode", "")),
            str(d.get("reason", "")),
        )
    out.print(decisions)
