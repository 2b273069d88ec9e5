"""TLS (issue 11, item 3), on real in-process gRPC servers with certificates from the
stack's own CA module: the Keepers' API refuses plaintext and unknown CAs, their link
port wants the AppMasters' client certificate (mutual TLS), scopes still hold over TLS,
and a proxy serves the SDK's calls over TLS only."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from ha_serving._errors import CallError, StackError
from ha_serving._settings import Settings, TlsSettings
from ha_serving.appmaster._link import KeeperLink
from ha_serving.client import Client
from ha_serving.keeper import AppMasterCredentials, RayJobSubmitter, keeper_status
from ha_serving.proto import keeper_pb2, keeper_pb2_grpc
from ha_serving.store import Store, StoreRef
from ha_serving.util.tls import TlsFiles, issue, link_address, make_ca
from infra.stack import make_certificates
from infra.topology import Database, TlsPaths, Topology
from tests.unit.fixtures.control import (
    KeeperThread,
    credential_settings,
    fake_core,
    free_keeper_address,
    rpc_code,
    running_keeper,
)
from tests.unit.fixtures.dataplane import running_stack

HOST = "127.0.104.6"
ADDRESS = free_keeper_address(HOST)
LINK = link_address(ADDRESS)
OPERATOR = "op-" + "o" * 30
DISCOVERY = "disc-" + "d" * 30


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, TlsFiles]:
    d = tmp_path / "tls"
    d.mkdir(mode=0o700)
    ca = make_ca(d)
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    rogue_ca = make_ca(other)
    return {
        "ca": ca,
        "keeper": issue(ca, d, "keeper", hosts=[HOST], server=True, client=False),
        "appmaster": issue(ca, d, "appmaster", hosts=["appmaster"], server=False, client=True),
        "rogue": issue(rogue_ca, other, "rogue", hosts=["appmaster"], server=False, client=True),
        "rogue_ca": rogue_ca,
    }


@pytest.fixture
def keeper(store: Store, pki: dict[str, TlsFiles], tmp_path: Path) -> Iterator[KeeperThread]:
    settings = credential_settings(tmp_path, OPERATOR, DISCOVERY)
    with running_keeper(store, ADDRESS, settings, tls=pki["keeper"]) as thread:
        yield thread


def _code(
    address: str, creds: grpc.ChannelCredentials | None, method: str, request: Any, token: str
) -> grpc.StatusCode:
    channel = (
        grpc.insecure_channel(address) if creds is None else grpc.secure_channel(address, creds)
    )
    with channel:
        stub = keeper_pb2_grpc.KeeperStub(channel)  # type: ignore[no-untyped-call]
        return rpc_code(stub, method, request, token)


def test_the_ca_issues_certificates_for_the_names_dialled_with_keys_only_the_owner_reads(
    pki: dict[str, TlsFiles],
) -> None:
    keeper = pki["keeper"]
    cert = x509.load_pem_x509_certificate(Path(keeper.paths()[0]).read_bytes())
    ca = x509.load_pem_x509_certificate(Path(keeper.ca).read_bytes())
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == [HOST]
    for path in (keeper.paths()[1], pki["ca"].paths()[1]):
        assert path.stat().st_mode & 0o777 == 0o600


def test_the_keepers_api_speaks_tls_only_and_clients_verify_it(
    keeper: KeeperThread, pki: dict[str, TlsFiles]
) -> None:
    ca_only = TlsFiles(pki["ca"].ca)
    assert keeper_status(ADDRESS, token=OPERATOR, tls=ca_only, timeout_s=5)["alive"]
    plaintext = keeper_status(ADDRESS, token=OPERATOR, timeout_s=5)
    assert plaintext["error"] == "UNAVAILABLE"  # no TLS handshake, no answer
    wrong_ca = keeper_status(ADDRESS, token=OPERATOR, tls=TlsFiles(pki["rogue_ca"].ca), timeout_s=5)
    assert wrong_ca["error"] == "UNAVAILABLE"  # a server the client cannot verify


def test_scopes_hold_over_tls_and_an_appmaster_is_taken_on_the_link_port_only(
    keeper: KeeperThread, pki: dict[str, TlsFiles], store: Store, tmp_path: Path
) -> None:
    server_only = TlsFiles(pki["ca"].ca).channel_credentials()
    deploy = keeper_pb2.DeployRequest(spec_json="{", kind="deploy")
    assert (
        _code(ADDRESS, server_only, "Deploy", deploy, DISCOVERY)
        == grpc.StatusCode.PERMISSION_DENIED
    )
    assert (
        _code(ADDRESS, server_only, "Deploy", deploy, OPERATOR) == grpc.StatusCode.INVALID_ARGUMENT
    )

    token = AppMasterCredentials(store, tmp_path / "am").ensure("a", "echo").read_text()
    beat = keeper_pb2.HeartbeatRequest(cluster="a", service="echo", actor_name="echo-appmaster")
    # the API port does not take an AppMaster's credential: it must show its certificate
    assert (
        _code(ADDRESS, server_only, "Heartbeat", beat, token) == grpc.StatusCode.PERMISSION_DENIED
    )
    mutual = pki["appmaster"].channel_credentials()
    assert _code(LINK, mutual, "Heartbeat", beat, token) == grpc.StatusCode.OK
    assert _code(LINK, mutual, "Deploy", deploy, OPERATOR) == grpc.StatusCode.PERMISSION_DENIED
    # no client certificate, or one another CA signed: no TLS session on the link port
    assert _code(LINK, server_only, "Heartbeat", beat, token) == grpc.StatusCode.UNAVAILABLE
    rogue = grpc.ssl_channel_credentials(  # trusts the Keeper, shows a foreign certificate
        root_certificates=Path(pki["ca"].ca).read_bytes(),
        private_key=Path(pki["rogue"].paths()[1]).read_bytes(),
        certificate_chain=Path(pki["rogue"].paths()[0]).read_bytes(),
    )
    assert _code(LINK, rogue, "Heartbeat", beat, token) == grpc.StatusCode.UNAVAILABLE
    assert _code(LINK, None, "Heartbeat", beat, token) == grpc.StatusCode.UNAVAILABLE


def test_an_appmasters_link_over_mutual_tls_keeps_its_heartbeat_fresh(
    keeper: KeeperThread, pki: dict[str, TlsFiles], store: Store, tmp_path: Path
) -> None:
    token_file = AppMasterCredentials(store, tmp_path / "am").ensure("a", "echo")
    core = fake_core(store)
    link = KeeperLink(core, [LINK], str(token_file), tls=pki["appmaster"])

    async def scenario() -> list[Any]:
        task = asyncio.create_task(link.run())
        try:
            deadline = time.monotonic() + 10
            while not (found := await asyncio.to_thread(store.list_appmasters, "echo")):
                assert time.monotonic() < deadline, "the link never registered"
                await asyncio.sleep(0.1)
            return found
        finally:
            task.cancel()

    [registered] = asyncio.run(scenario())
    assert (registered.cluster, registered.service) == ("a", "echo")


def test_a_proxy_serves_tls_only_and_the_sdk_verifies_it(tmp_path: Path) -> None:
    d = tmp_path / "tls"
    d.mkdir(mode=0o700)
    ca = make_ca(d)
    host = "127.0.77.251"
    cert = issue(ca, d, "proxy", hosts=[host], server=True, client=False)
    with running_stack(tls=cert, bind=host) as stack:
        stack.add("i1")
        with Client([stack.address], tls=TlsFiles(ca.ca), timeout_s=5) as client:
            assert client.call("echo", "echo", {"a": 1})["echo"] == {"a": 1}
        with Client([stack.address], timeout_s=2) as plain, pytest.raises(CallError):
            plain.call("echo", "echo", {"a": 1})


def test_a_client_dialling_another_address_verifies_the_server_under_server_name(
    tmp_path: Path,
) -> None:
    """A drill's callers dial a fault link, whose address no certificate names: they
    verify the proxy behind it under a node's name (``server_name``), and still refuse a
    certificate that is not valid for that name."""
    d = tmp_path / "tls"
    d.mkdir(mode=0o700)
    ca = make_ca(d)
    node, dialled = "127.0.77.251", "127.0.77.252"
    cert = issue(ca, d, "proxy", hosts=[node], server=True, client=False)
    with running_stack(tls=cert, bind=dialled) as stack:
        stack.add("i1")
        named = TlsFiles(ca.ca, server_name=node)
        with Client([stack.address], tls=named, timeout_s=5) as client:
            assert client.call("echo", "echo", {"a": 1})["echo"] == {"a": 1}
        for tls in (TlsFiles(ca.ca), TlsFiles(ca.ca, server_name="127.0.77.9")):
            with Client([stack.address], tls=tls, timeout_s=2) as wrong, pytest.raises(CallError):
                wrong.call("echo", "echo", {"a": 1})


def test_up_certifies_every_keeper_and_node_address(tmp_path: Path) -> None:
    settings = Settings.build(
        stack={"clusters": 2, "workers_per_cluster": 2}, keeper={"replicas": 3}
    )
    paths = make_certificates(settings, tmp_path / "tls")

    def sans(path: Path) -> set[str]:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return {str(ip) for ip in ext.get_values_for_type(x509.IPAddress)}

    assert sans(paths.keeper_cert) == {"127.0.200.1", "127.0.200.2", "127.0.200.3"}
    # every address the local scheme gives a node, this stack's (clusters 1-2, nodes 1-3)
    # and a cluster's joined with `cluster register` on this machine (e.g. 127.0.3.x)
    assert sans(paths.proxy_cert) == {f"127.0.{i}.{n}" for i in range(1, 10) for n in range(1, 10)}
    # the proxies' certificate is also their client certificate towards the workers'
    # direct servers (mutual TLS), which serve with it
    proxy = x509.load_pem_x509_certificate(paths.proxy_cert.read_bytes())
    usages = proxy.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert (tmp_path / "tls").stat().st_mode & 0o777 == 0o700
    for key in (paths.ca_key, paths.keeper_key, paths.proxy_key, paths.appmaster_key):
        assert key.stat().st_mode & 0o777 == 0o600


def _topology(run_dir: Path, tls: TlsPaths | None) -> Topology:
    db = Database(kind="sqlite", public_url=f"sqlite:///{run_dir}/x.db")
    return Topology(
        run_dir=run_dir, run_id="r1", created_at=0.0, clusters=[], db=db, redis=None, tls=tls
    )


def test_up_issues_a_client_only_certificate_for_direct_mode(tmp_path: Path) -> None:
    """`up` issues ``client.pem`` (signed by the stack's CA, client auth only, key 0600),
    and the topology hands it to SDK clients in direct mode; a plaintext stack gives
    none, and a TLS topology written before it existed still loads but says why it
    cannot give one."""
    paths = make_certificates(Settings(), tmp_path / "tls")
    assert paths.client_cert == tmp_path / "tls" / "client.pem"
    assert paths.client_key == tmp_path / "tls" / "client.key"
    cert = x509.load_pem_x509_certificate(paths.client_cert.read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(paths.ca.read_bytes()))
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert paths.client_key.stat().st_mode & 0o777 == 0o600
    assert "PRIVATE KEY" in paths.client_key.read_text()
    assert str(paths.client_key) not in paths.env().values()  # no serving job needs it

    topo = _topology(tmp_path, paths)
    assert topo.direct_client_tls() == TlsFiles(
        str(paths.ca), str(paths.client_cert), str(paths.client_key)
    )
    assert topo.client_tls() == TlsFiles(str(paths.ca))  # proxy mode shows no certificate
    assert _topology(tmp_path, None).direct_client_tls() is None

    older = _topology(tmp_path, paths).model_dump(mode="json")
    del older["tls"]["client_cert"], older["tls"]["client_key"]
    loaded = Topology.model_validate(older)
    with pytest.raises(StackError, match="without a client certificate"):
        loaded.direct_client_tls()


def test_a_serving_job_gets_the_link_port_and_the_tls_files_paths(tmp_path: Path) -> None:
    paths = make_certificates(Settings(), tmp_path / "tls")
    tls = TlsSettings.model_validate(_tls_fields(paths))
    submitter = RayJobSubmitter(
        ha_serving_bin="ha-serving",
        store=StoreRef("sqlite:////x.db"),
        keepers=["127.0.200.1:9400"],
        token_file=None,
        tls=tls,
    )
    assert submitter.keepers == ["127.0.200.1:9401"]
    env = submitter.job_env(None)
    assert env["HA_SERVING_TLS_APPMASTER_KEY"] == str(paths.appmaster_key)
    assert "HA_SERVING_TLS_KEEPER_KEY" not in env  # the Keeper's own key stays with it
    for value in env.values():
        assert "PRIVATE KEY" not in value
    assert json.dumps(env)  # strings only


def _tls_fields(paths: Any) -> dict[str, Path]:
    return {
        "ca_file": paths.ca,
        "keeper_cert_file": paths.keeper_cert,
        "keeper_key_file": paths.keeper_key,
        "proxy_cert_file": paths.proxy_cert,
        "proxy_key_file": paths.proxy_key,
        "appmaster_cert_file": paths.appmaster_cert,
        "appmaster_key_file": paths.appmaster_key,
    }
