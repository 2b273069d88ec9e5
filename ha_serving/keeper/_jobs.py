"""Starting a service's serving job on a cluster through Ray's Job Submission API.

The job's entrypoint (``ha-serving appmaster start``) runs on the cluster's head as a
Ray driver, creates the detached AppMaster (or finds it) and exits; the AppMaster then
links back to the Keepers. Secrets (DB URL, Keeper token) travel in the job's
environment, not on its command line.
"""

from __future__ import annotations

import shlex
import uuid
from collections.abc import Sequence

from ha_serving.store import ClusterRecord


class RayJobSubmitter:
    def __init__(
        self, *, ha_serving_bin: str, db_url: str, keepers: Sequence[str], token: str | None
    ) -> None:
        self.ha_serving_bin = ha_serving_bin
        self.db_url = db_url
        self.keepers = list(keepers)
        self.token = token

    def submit(self, cluster: ClusterRecord, service: str) -> str:
        from ray.job_submission import JobSubmissionClient

        if not cluster.dashboard_url:
            raise RuntimeError(f"cluster {cluster.name} has no Job Submission API address")
        argv = [
            self.ha_serving_bin,
            "appmaster",
            "start",
            "--cluster",
            cluster.name,
            "--service",
            service,
            "--keepers",
            ",".join(self.keepers),
        ]
        env = {"HA_SERVING_DB_URL": self.db_url}
        if self.token:
            env["HA_SERVING_KEEPER_TOKEN"] = self.token
        client = JobSubmissionClient(cluster.dashboard_url)
        return str(
            client.submit_job(
                entrypoint=shlex.join(argv),
                runtime_env={"env_vars": env},
                submission_id=f"hasrv-{service}-{cluster.name}-{uuid.uuid4().hex[:8]}",
            )
        )
