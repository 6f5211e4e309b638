"""The hub probe (net.https_unreachable_reason through data.hub_offline_reason) is bounded at each
step and says why it failed. Every host here is a socket server on 127.0.0.1 or a patched
resolver: no test touches the network."""

import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest

from picollm_helpers import data, net


@pytest.fixture
def probe(monkeypatch):
    """hub_offline_reason() as a fresh process would run it: no offline variables, not probed yet."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(data, "_hub_probe", None)

    def run():
        t0 = time.monotonic()
        reason = data.hub_offline_reason()
        return reason, time.monotonic() - t0
    return run


class Server:
    """A TCP server on 127.0.0.1 that hands each connection to `handle(conn)`."""

    def __init__(self, handle):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.handle = handle
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    self.handle(conn)
                except OSError:
                    pass   # the client gave up or refused us: serve the next one

    def close(self):
        self.sock.close()


@pytest.fixture
def local_hub(monkeypatch):
    """Point the probe at a local server: local_hub(handle) -> the server."""
    servers = []

    def start(handle):
        server = Server(handle)
        servers.append(server)
        monkeypatch.setattr(data, "HUB_HOST", "127.0.0.1")
        monkeypatch.setattr(data, "HUB_PORT", server.port)
        return server
    yield start
    for s in servers:
        s.close()


def test_a_slow_resolver_costs_the_step_limit_not_its_own_time(probe, monkeypatch):
    def slow_getaddrinfo(*args, **kwargs):
        time.sleep(8)   # a resolver that answers after 8 s, as measured on a kit machine
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", slow_getaddrinfo)
    reason, took = probe()
    assert took < net.STEP_TIMEOUT_S + 0.5
    assert reason == "huggingface.co is unreachable: its name does not resolve (no answer from the name " \
                     "resolver within 2 s)"
    assert not data.hub_reachable()                    # decided for the process: no second wait
    t0 = time.monotonic()
    assert data.hub_offline_reason() == reason and time.monotonic() - t0 < 0.01


def test_a_name_that_does_not_resolve_fails_at_once(probe, monkeypatch):
    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    reason, took = probe()
    assert took < 0.5 and reason == "huggingface.co is unreachable: its name does not resolve " \
                                    "(Name or service not known)"


def test_a_refused_connection_fails_at_once(probe, monkeypatch):
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()                                      # nothing listens on this port now
    monkeypatch.setattr(data, "HUB_HOST", "127.0.0.1")
    monkeypatch.setattr(data, "HUB_PORT", port)
    reason, took = probe()
    assert took < 0.5 and reason.startswith(f"127.0.0.1 is unreachable: no connection to port {port}")


@pytest.mark.parametrize("behaviour, why", [
    ("close", "HTTPS fails"),                 # accepts, then hangs up before the handshake
    ("garbage", "HTTPS fails"),               # answers the ClientHello with bytes that are not TLS
])
def test_a_host_that_accepts_tcp_but_fails_tls_is_unreachable_fast(probe, local_hub, behaviour, why):
    def handle(conn):
        if behaviour == "garbage":
            conn.recv(1024)
            conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\nthis is not TLS\r\n" * 4)
    server = local_hub(handle)
    reason, took = probe()
    assert took < 0.5, took
    assert reason.startswith(f"127.0.0.1 is unreachable over HTTPS: port {server.port} accepts connections, "
                             f"but {why} (")
    assert "Traceback" not in reason and len(reason.splitlines()) == 1


def test_a_host_that_accepts_tcp_and_never_answers_costs_the_step_limit(probe, local_hub):
    release = threading.Event()
    local_hub(lambda conn: release.wait(10))           # holds the connection open, silent
    try:
        reason, took = probe()
    finally:
        release.set()
    assert net.STEP_TIMEOUT_S - 0.2 < took < net.STEP_TIMEOUT_S + 0.5
    assert "accepts connections, but HTTPS fails (no answer within 2 s)" in reason


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_a_host_that_answers_https_is_reachable(probe, local_hub, tmp_path, monkeypatch):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)

    def handle(conn):
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            tls.recv(4096)
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    local_hub(handle)
    reason, _ = probe()
    assert "certificate not trusted" in reason          # a self-signed certificate is refused, as pip would
    trusting = ssl.create_default_context(cafile=str(cert))
    monkeypatch.setattr(ssl, "create_default_context", lambda: trusting)
    monkeypatch.setattr(data, "_hub_probe", None)
    reason, took = probe()
    assert reason is None and took < 1 and data.hub_reachable()


def test_head_answer_is_read_and_a_server_error_counts_as_unreachable(monkeypatch):
    class FakeTLS:
        def __init__(self, reply):
            self.reply = [reply]

        def sendall(self, data):
            assert data.startswith(b"HEAD / HTTP/1.1\r\nHost: hub.example\r\n")

        def settimeout(self, t):
            pass

        def recv(self, n):
            return self.reply.pop(0) if self.reply else b""

    assert net._head_status(FakeTLS(b"HTTP/1.1 302 Found\r\nLocation: /x\r\n"), "hub.example", 1) == 302
    with pytest.raises(OSError, match="not HTTP"):
        net._head_status(FakeTLS(b"SSH-2.0-OpenSSH\r\n"), "hub.example", 1)


def test_offline_variables_and_hf_endpoint_are_honoured(probe, monkeypatch):
    seen = []
    monkeypatch.setattr(data, "https_unreachable_reason", lambda host, port: seen.append((host, port)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert data.hub_offline_reason() == "HF_HUB_OFFLINE=1" and seen == []    # no probe at all
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example:8443/")
    assert data.hub_offline_reason() is None and seen == [("hf-mirror.example", 8443)]
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "true")
    assert data.hub_offline_reason() == "HF_DATASETS_OFFLINE=1" and seen == [("hf-mirror.example", 8443)]
