"""Who may call what on a Keeper: scoped credentials.

Three scopes, least to most:

==============  =======================================================  ==============
scope           may call                                                 held by
==============  =======================================================  ==============
``discovery``   Status, Resolve, Watch                                   clients (SDK)
``appmaster``   Status, Instructions and Heartbeat *of its own target*   one AppMaster
``operator``    everything                                               CLI, operators
==============  =======================================================  ==============

The discovery and operator credentials are static tokens the Keeper reads from files at
start (`up` generates them). An AppMaster's credential is minted by the leader when it
submits the serving job (``AppMasterCredentials.ensure``), bound to (cluster, service),
kept in the store as a hash, and revocable (``ha-serving keeper revoke``). The
interceptor checks the scope of every call but the health service; the handlers of
Instructions and Heartbeat check the binding (only they see the request), and a stream
re-checks while it runs, so a revoked AppMaster's link is cut, not left open.

A minted credential is looked up in the store at most every ``CACHE_S`` per token; while
the store does not answer, the last answer stands (an AppMaster's link must outlive a DB
outage), and a token never seen gets UNAVAILABLE, not UNAUTHENTICATED.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import grpc

from ha_serving._errors import InvalidSpec, StoreUnavailable
from ha_serving._settings import KeeperSettings
from ha_serving.store import Store
from ha_serving.util.logs import Bound
from ha_serving.util.secrets import read_secret, secret_dir, write_secret

Scope = Literal["discovery", "appmaster", "operator"]

_RPC = "/ha_serving.v1.Keeper/"
ALLOWED: dict[str, frozenset[Scope]] = {
    f"{_RPC}Status": frozenset({"discovery", "appmaster", "operator"}),
    f"{_RPC}Resolve": frozenset({"discovery", "operator"}),
    f"{_RPC}Watch": frozenset({"discovery", "operator"}),
    f"{_RPC}Deploy": frozenset({"operator"}),
    f"{_RPC}GetService": frozenset({"operator"}),
    f"{_RPC}Operations": frozenset({"operator"}),
    f"{_RPC}Command": frozenset({"operator"}),
    f"{_RPC}Instructions": frozenset({"appmaster", "operator"}),
    f"{_RPC}Heartbeat": frozenset({"appmaster", "operator"}),
}
"""Each RPC and the scopes that may call it; an RPC not listed is refused to all."""

LINK_METHODS = frozenset({f"{_RPC}Status", f"{_RPC}Instructions", f"{_RPC}Heartbeat"})
"""What a Keeper serves on its link port (mutual TLS): the AppMasters' RPCs."""
CLIENT_SCOPES: frozenset[Scope] = frozenset({"discovery", "operator"})
"""Who a Keeper serving TLS takes on its API port: an AppMaster must use the link port,
where its certificate is checked too."""

OPEN = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})
"""Needs no credential: a load balancer's health check has none."""

CACHE_S = 2.0
"""How long a minted credential's lookup is trusted: a revocation takes effect within it."""
MAX_CACHED = 10_000
"""Tokens remembered at most (a flood of garbage tokens must not grow memory)."""


@dataclass(frozen=True)
class Caller:
    scope: Scope
    cluster: str = ""
    service: str = ""
    """The target an ``appmaster`` credential is bound to; "" for the other scopes."""


class Authenticator:
    """Turns a bearer token into a ``Caller``; None when it proves nothing (or revoked)."""

    def __init__(
        self,
        static: Sequence[tuple[str, Scope]],
        store: Store | None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._static = [(token.encode(), scope) for token, scope in static if token]
        self._store = store
        self._monotonic = monotonic
        self._cache: dict[str, tuple[Caller | None, float]] = {}

    @classmethod
    def from_settings(cls, settings: KeeperSettings, store: Store | None) -> Authenticator:
        """The Keeper's credentials as its settings name them (files read now)."""
        static: list[tuple[str, Scope]] = []
        if settings.token_file is not None:
            static.append((read_secret(settings.token_file, what="Keeper token file"), "operator"))
        elif settings.token:
            static.append((settings.token, "operator"))
        if settings.discovery_token_file is not None:
            token = read_secret(settings.discovery_token_file, what="discovery token file")
            static.append((token, "discovery"))
        return cls(static, store)

    @property
    def enabled(self) -> bool:
        """Whether any credential is configured (else every call is let through)."""
        return bool(self._static)

    async def identify(self, token: str) -> Caller | None:
        """Raises StoreUnavailable for a minted-looking token the store cannot check."""
        sent = token.encode()
        for expected, scope in self._static:
            if hmac.compare_digest(sent, expected):
                return Caller(scope)
        if self._store is None or "." not in token:
            return None
        now = self._monotonic()
        cached = self._cache.get(token)
        if cached is not None and now - cached[1] < CACHE_S:
            return cached[0]
        try:
            record = await asyncio.to_thread(self._store.verify_credential, token)
        except StoreUnavailable:
            if cached is not None:
                return cached[0]  # the store is down: its last answer stands
            raise
        caller = None
        if record is not None and not record.revoked and record.scope == "appmaster":
            caller = Caller("appmaster", record.cluster, record.service)
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        self._cache[token] = (caller, now)
        return caller

    async def caller_of(self, metadata: Any) -> Caller | None:
        return await self.identify(bearer(metadata))


def bearer(metadata: Any) -> str:
    """The token of an ``authorization: Bearer <token>`` header, "" if there is none."""
    sent = dict(metadata or ()).get("authorization", "")
    text = sent.decode(errors="replace") if isinstance(sent, bytes) else str(sent)
    return text[len("Bearer ") :] if text.startswith("Bearer ") else ""


class ScopeAuth(grpc.aio.ServerInterceptor):
    """Refuses a call whose credential is missing or wrong (UNAUTHENTICATED) or of a scope
    the RPC does not allow (PERMISSION_DENIED). Logs the caller's method and scope, never
    the token."""

    def __init__(
        self,
        auth: Authenticator,
        log: Bound,
        *,
        methods: frozenset[str] | None = None,
        scopes: frozenset[Scope] | None = None,
    ) -> None:
        self._auth = auth
        self._log = log
        self._methods = methods
        """The RPCs served on this port (None: all); another gets PERMISSION_DENIED."""
        self._scopes = scopes
        """The scopes taken on this port (None: all); another gets PERMISSION_DENIED."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        if details.method in OPEN:
            return await continuation(details)
        refusal = await self._refusal(details)
        if refusal is not None:
            return _deny(*refusal)
        return await continuation(details)

    async def _refusal(
        self, details: grpc.HandlerCallDetails
    ) -> tuple[grpc.StatusCode, str] | None:
        """Why this call is refused (status and message), None if it may go on."""
        method = details.method
        if self._methods is not None and method not in self._methods:
            return grpc.StatusCode.PERMISSION_DENIED, "not served on this port"
        token = bearer(details.invocation_metadata)
        try:
            caller = await self._auth.identify(token) if token else None
        except StoreUnavailable:
            return grpc.StatusCode.UNAVAILABLE, "cannot check the credential now"
        if caller is None:
            self._log.warning("refused %s: %s token", method, "wrong" if token else "no")
            return grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token"
        if self._scopes is not None and caller.scope not in self._scopes:
            self._log.warning("refused %s: a %s credential on this port", method, caller.scope)
            why = f"a {caller.scope} credential is taken on the link port only (mutual TLS)"
            return grpc.StatusCode.PERMISSION_DENIED, why
        if caller.scope not in ALLOWED.get(method, frozenset()):
            self._log.warning("refused %s to a %s credential", method, caller.scope)
            why = f"a {caller.scope} credential may not call {method.rsplit('/', 1)[-1]}"
            return grpc.StatusCode.PERMISSION_DENIED, why
        return None


def _deny(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler[Any, Any]:
    # one handler serves unary and streaming RPCs alike: the caller sees only the status
    async def deny(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(deny)


async def check_target(
    auth: Authenticator, context: grpc.aio.ServicerContext[Any, Any], cluster: str, service: str
) -> None:
    """Abort unless the caller may act for (cluster, service): an ``appmaster``
    credential only for its own target; PERMISSION_DENIED otherwise, UNAUTHENTICATED once
    it has been revoked. A no-op without credentials, or while the store cannot say."""
    if not auth.enabled:
        return
    try:
        caller = await auth.caller_of(context.invocation_metadata())
    except StoreUnavailable:
        return  # the interceptor let it in; the store cannot say more now
    if caller is None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "the credential was revoked")
    elif caller.scope == "appmaster" and (caller.cluster, caller.service) != (cluster, service):
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"this credential is the AppMaster's of {caller.service} on {caller.cluster}",
        )


_SAFE = re.compile(r"[A-Za-z0-9_.-]+")


class AppMasterCredentials:
    """The leader's side: a credential for each AppMaster it starts, in a file (0600) in
    ``directory`` whose path, not content, goes with the serving job."""

    def __init__(self, store: Store, directory: Path) -> None:
        self.store = store
        self.directory = directory

    def file_for(self, cluster: str, service: str) -> Path:
        if not (_SAFE.fullmatch(cluster) and _SAFE.fullmatch(service)):
            raise InvalidSpec("credential target", [f"{cluster}/{service}: not a file name"])
        return self.directory / f"appmaster.{cluster}.{service}.token"

    def ensure(self, cluster: str, service: str) -> Path:
        """The file holding a live credential for (cluster, service): the one already
        there if the store still honours it, else a new one (which revokes the others)."""
        path = self.file_for(cluster, service)
        try:
            record = self.store.verify_credential(read_secret(path))
        except InvalidSpec:  # no file yet, or an empty one
            record = None
        if (
            record is not None
            and not record.revoked
            and (record.cluster, record.service)
            == (
                cluster,
                service,
            )
        ):
            return path
        token = self.store.mint_credential("appmaster", cluster, service)
        secret_dir(self.directory)
        return write_secret(path, token)
