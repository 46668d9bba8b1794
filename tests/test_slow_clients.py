"""Slow and idle clients cannot hold connections forever (slowloris), and the server keeps serving."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from tests.conftest import start_server


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("slow")
    server = start_server(d / "models", {"CORRAL_HEADER_TIMEOUT": "1", "CORRAL_BODY_TIMEOUT": "1",
                                         "CORRAL_KEEPALIVE_TIMEOUT": "1", "CORRAL_DATA_DIR": str(d / "data")},
                          log_dir=d)
    yield server
    server.stop()


def _connect(server) -> socket.socket:
    host, port = server.host.split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    return s


def _closed_within(s: socket.socket, seconds: float) -> bool:
    """True when the server closes the connection (or answers and closes) within `seconds`."""
    s.settimeout(seconds)
    try:
        while True:
            data = s.recv(4096)
            if not data:
                return True
    except (TimeoutError, socket.timeout):
        return False
    except ConnectionResetError:
        return True


def test_half_sent_headers_are_cut_off(strict_server):
    sockets = [_connect(strict_server) for _ in range(100)]
    for s in sockets:
        s.sendall(b"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # never finished
    start = time.monotonic()
    assert all(_closed_within(s, 5) for s in sockets)
    assert time.monotonic() - start < 8
    for s in sockets:
        s.close()
    assert httpx.get(strict_server.url + "/api/version").status_code == 200


def test_silent_connection_is_cut_off(strict_server):
    s = _connect(strict_server)
    assert _closed_within(s, 5)  # connected, sent nothing
    s.close()


def test_slow_body_gets_408(strict_server):
    s = _connect(strict_server)
    s.sendall(b"POST /api/tools/calculator HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Content-Length: 100\r\n\r\n{\"argu")
    s.settimeout(10)
    reply = b""
    while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
        chunk = s.recv(4096)
        if not chunk:
            break
        reply += chunk
    s.close()
    assert reply.startswith(b"HTTP/1.1 408") and b'"error"' in reply and b"not received in time" in reply
    assert httpx.get(strict_server.url + "/").status_code == 200


def test_idle_keep_alive_closes(strict_server):
    s = _connect(strict_server)
    s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    s.settimeout(5)
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    assert _closed_within(s, 5)  # idle after its response
    s.close()
