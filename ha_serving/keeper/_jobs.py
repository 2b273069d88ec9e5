"""Starting a service's serving job on a cluster through Ray's Job Submission API.

The job's entrypoint (``ha-serving appmaster start``) runs on the cluster's head as a
Ray driver, creates the detached AppMaster (or finds it) and exits; the AppMaster then
links back to the Keepers. No secret travels with the job: Ray's Job API shows a job's
entrypoint and environment to anyone who can reach the dashboard, so the job gets the
store's URL without its password and the *paths* of the files holding the password and
the AppMaster's own Keeper credential, minted for it by the leader at this submission
(``AppMasterCredentials``; on the same machine here; elsewhere, files mounted at the
same paths on the cluster's nodes).
"""

from __future__ import annotations

import logging
import shlex
import uuid
from collections.abc import Sequence
from pathlib import Path

from ha_serving._settings import TlsSettings
from ha_serving.keeper._auth import AppMasterCredentials
from ha_serving.store import ClusterRecord, StoreRef
from ha_serving.util.secrets import split_password
from ha_serving.util.tls import link_address

log = logging.getLogger(__name__)


class RayJobSubmitter:
    def __init__(
        self,
        *,
        ha_serving_bin: str,
        store: StoreRef,
        keepers: Sequence[str],
        token_file: Path | None,
        credentials: AppMasterCredentials | None = None,
        tls: TlsSettings | None = None,
    ) -> None:
        self.ha_serving_bin = ha_serving_bin
        self.store = store
        self.keepers = list(keepers)
        self.token_file = token_file
        """The credential file jobs get when no ``credentials`` mint their own."""
        self.credentials = credentials
        self.tls = tls if tls is not None and tls.ca_file is not None else None
        """The files the job's AppMaster and its proxies serve and verify TLS with (their
        paths go with the job); None: plaintext."""
        if self.tls is not None:  # the AppMasters link to the Keepers' mutual-TLS port
            self.keepers = [link_address(k) for k in self.keepers]
        if store.has_inline_password:
            log.warning(
                "the store URL carries its password: serving jobs get it without, so set "
                "HA_SERVING_DB_PASSWORD_FILE to a file the clusters' nodes can read"
            )

    def job_env(self, token_file: Path | None) -> dict[str, str]:
        """The serving job's environment: where things are, never a secret."""
        bare, _ = split_password(self.store.url)
        env = {"HA_SERVING_DB_URL": bare}
        if self.store.password_file:
            env["HA_SERVING_DB_PASSWORD_FILE"] = self.store.password_file
        if token_file is not None:
            env["HA_SERVING_KEEPER_TOKEN_FILE"] = str(token_file)
        if self.tls is not None:  # paths of what the AppMaster and its proxies need
            t = self.tls
            for var, path in (
                ("HA_SERVING_TLS_CA", t.ca_file),
                ("HA_SERVING_TLS_APPMASTER_CERT", t.appmaster_cert_file),
                ("HA_SERVING_TLS_APPMASTER_KEY", t.appmaster_key_file),
                ("HA_SERVING_TLS_PROXY_CERT", t.proxy_cert_file),
                ("HA_SERVING_TLS_PROXY_KEY", t.proxy_key_file),
            ):
                if path is not None:
                    env[var] = str(path)
        return env

    def credential_file(self, cluster: str, service: str) -> Path | None:
        """The file the AppMaster of ``service`` on ``cluster`` reads its credential from."""
        if self.credentials is not None:
            return self.credentials.ensure(cluster, service)
        return self.token_file

    def entrypoint(self, cluster: str, service: str) -> str:
        return shlex.join(
            [
                self.ha_serving_bin,
                "appmaster",
                "start",
                "--cluster",
                cluster,
                "--service",
                service,
                "--keepers",
                ",".join(self.keepers),
            ]
        )

    def submit(self, cluster: ClusterRecord, service: str) -> str:
        from ray.job_submission import JobSubmissionClient

        if not cluster.dashboard_url:
            raise RuntimeError(f"cluster {cluster.name} has no Job Submission API address")
        env = self.job_env(self.credential_file(cluster.name, service))
        client = JobSubmissionClient(cluster.dashboard_url)
        return str(
            client.submit_job(
                entrypoint=self.entrypoint(cluster.name, service),
                runtime_env={"env_vars": env},
                submission_id=f"hasrv-{service}-{cluster.name}-{uuid.uuid4().hex[:8]}",
            )
        )
