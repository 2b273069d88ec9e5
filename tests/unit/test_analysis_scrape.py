"""The leader's metrics scrape: one proxy answering garbage is that proxy's scrape failing
(one log line), never the whole round's; the other proxies' counters still count."""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from ha_serving.keeper._analysis import MetricsScraper, scrape

GOOD = (
    "# TYPE ha_serving_proxy_requests_total counter\n"
    'ha_serving_proxy_requests_total{service="echo",group="stable",code="OK",version="v1"} 7.0\n'
    'ha_serving_proxy_requests_total{service="echo",group="stable",code="INTERNAL",version="v1"}'
    " 1.0\n"
    'ha_serving_proxy_requests_total{service="other",group="stable",code="OK",version="v1"} 5.0\n'
)


def _http(body: bytes, status: bytes = b"200 OK") -> bytes:
    head = b"HTTP/1.1 " + status + b"\r\nContent-Length: " + str(len(body)).encode()
    return head + b"\r\nConnection: close\r\n\r\n" + body


GARBAGE = {
    "bad status line": b"SSH-2.0-OpenSSH_9.6\r\nnot http at all\r\n\r\n",
    "undecodable bytes": _http(b"\xff\xfe\xfa\xfb metrics \xc3\x28"),
    "malformed prometheus text": _http(
        b'ha_serving_proxy_requests_total{service="echo",group="stable" 1\n'
    ),
    "bucket without le": _http(
        b'ha_serving_proxy_request_duration_seconds_bucket{service="echo",group="stable"} 3\n'
    ),
    "bucket with a non-numeric le": _http(
        b'ha_serving_proxy_request_duration_seconds_bucket{service="echo",group="stable",'
        b'le="soon"} 3\n'
    ),
    "headers that never end": b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 200,
}


class _Canned(socketserver.BaseRequestHandler):
    """Reads the request's head, answers the server's canned bytes, closes."""

    def handle(self) -> None:
        self.request.settimeout(2.0)
        seen = b""
        try:
            while b"\r\n\r\n" not in seen:
                chunk = self.request.recv(4096)
                if not chunk:
                    break
                seen += chunk
            self.request.sendall(self.server.answer)  # type: ignore[attr-defined]
        except OSError:
            pass


@contextmanager
def _server(answer: bytes) -> Iterator[str]:
    """A real TCP server on 127.0.0.1 (ephemeral port) answering ``answer`` to anything."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Canned)
    server.daemon_threads = True
    server.answer = answer  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"{host}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize("garbage", list(GARBAGE), ids=list(GARBAGE))
def test_a_proxy_answering_garbage_is_skipped_and_the_others_still_count(
    garbage: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: anything but an OSError (a bad status line, undecodable bytes, a malformed
    exposition) escaped ``scrape`` and aborted the leader's whole round."""
    with _server(_http(GOOD.encode())) as good, _server(GARBAGE[garbage]) as bad:
        caplog.set_level(logging.WARNING, logger="ha_serving.keeper.analysis")
        sample = scrape([bad, good], "echo")
    assert set(sample) == {"stable"}
    assert (sample["stable"].requests, sample["stable"].failures) == (8.0, 1.0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert bad in warnings[0]
    assert "\n" not in warnings[0]
    assert len(warnings[0]) < 400
    assert all(r.exc_info is None for r in caplog.records)  # no traceback


def test_a_refused_connection_and_an_http_error_are_skipped_too() -> None:
    """What was already tolerated stays so: nobody listening, an HTTP 500."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{sock.getsockname()[1]}"  # bound, never listening
        with (
            _server(_http(b"oops", b"500 Internal Server Error")) as failing,
            _server(_http(GOOD.encode())) as good,
        ):
            sample = scrape([closed, failing, good], "echo")
    assert sample["stable"].requests == 8.0


def test_a_body_over_the_size_cap_is_a_failed_scrape() -> None:
    """A proxy streaming an endless (or huge) body cannot hold the leader's memory."""
    huge = _http(GOOD.encode() + b"# padding\n" * 2000)
    with _server(huge) as big, _server(_http(GOOD.encode())) as good:
        sample = MetricsScraper(max_bytes=4096)([big, good], "echo")
    assert sample["stable"].requests == 8.0


def test_a_bad_endpoint_is_logged_once_while_it_stays_bad(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The leader scrapes every few seconds: one warning when an endpoint starts failing
    and one line when it is readable again, not one per round."""
    scraper = MetricsScraper()
    caplog.set_level(logging.INFO, logger="ha_serving.keeper.analysis")
    with _server(GARBAGE["bad status line"]) as bad:
        for _ in range(3):
            assert scraper([bad], "echo") == {}
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
