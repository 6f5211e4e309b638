"""Can this machine talk HTTPS to a host? `https_unreachable_reason(host)`, asked in bounded time.

The datasets library and tiktoken find out by trying, with retries: about 24 s before a
download fails on a machine with no network, paid again in every notebook. So the kit asks
once, each step with its own time limit (STEP_TIMEOUT_S):

  1. the name: socket.getaddrinfo takes no timeout (a slow resolver cost 8 s), so it runs in
     a daemon thread that is waited for at most the limit;
  2. a TCP connection to the port;
  3. a TLS handshake (the certificate checked, as a download would) and one HTTP HEAD request,
     so a host that accepts the connection but does not answer HTTPS (a firewall, a proxy, a
     captive portal) counts as unreachable in seconds.

Worst case 3 x STEP_TIMEOUT_S; on a working or a dead network it takes milliseconds.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time

STEP_TIMEOUT_S = 2.0


def resolve(host: str, port: int, timeout: float = STEP_TIMEOUT_S) -> list[tuple]:
    """socket.getaddrinfo(host, port) for TCP, giving up after `timeout` s (TimeoutError).

    A resolver that has not answered by then is left to finish in its daemon thread, which
    never keeps the process alive.
    """
    result: dict = {}

    def work():
        try:
            result["addresses"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as e:
            result["error"] = e

    thread = threading.Thread(target=work, name=f"resolve {host}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"no answer from the name resolver within {timeout:g} s")
    if "error" in result:
        raise result["error"]
    return result["addresses"]


def _connect(addresses: list[tuple], timeout: float) -> socket.socket:
    """A TCP connection to the first address that accepts one, all within `timeout` s."""
    deadline = time.monotonic() + timeout
    error: OSError = TimeoutError(f"no connection within {timeout:g} s")
    for family, kind, proto, _, address in addresses:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock = socket.socket(family, kind, proto)
        sock.settimeout(left)
        try:
            sock.connect(address)
            return sock
        except OSError as e:
            sock.close()
            error = e
    raise error


def _why(e: BaseException, timeout: float) -> str:
    if isinstance(e, TimeoutError):   # socket.timeout is one; ours say "within", the ssl module's do not
        return str(e) if "within" in str(e) else f"no answer within {timeout:g} s"
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"certificate not trusted: {e.verify_message}"
    if isinstance(e, ssl.SSLError) and e.reason:     # e.g. WRONG_VERSION_NUMBER: the answer is not TLS
        return f"TLS handshake: {e.reason.lower().replace('_', ' ')}"
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def _head_status(tls: ssl.SSLSocket, host: str, timeout: float) -> int:
    """Send `HEAD / HTTP/1.1` and return the status code of the answer, within `timeout` s."""
    deadline = time.monotonic() + timeout
    tls.sendall(f"HEAD / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: picollm-probe\r\nConnection: close\r\n\r\n"
                .encode("ascii"))
    reply = b""
    while b"\r\n" not in reply and len(reply) < 4096:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no HTTP answer within {timeout:g} s")
        tls.settimeout(left)
        chunk = tls.recv(4096)
        if not chunk:
            break
        reply += chunk
    status = reply.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or not status[0].startswith(b"HTTP/") or not status[1].isdigit():
        raise ConnectionError(f"the answer is not HTTP ({reply[:40]!r})")
    return int(status[1])


def https_unreachable_reason(host: str, port: int = 443, timeout: float = STEP_TIMEOUT_S) -> str | None:
    """None when `host` answers HTTPS on `port`; else one line saying which step failed and why.

    Each step (name, connection, TLS + HEAD) is given at most `timeout` seconds. Any HTTP
    status below 500 counts as an answer (a redirect or a 404 still means the host is there).
    """
    try:
        addresses = resolve(host, port, timeout)
    except OSError as e:
        return f"{host} is unreachable: its name does not resolve ({_why(e, timeout)})"
    try:
        sock = _connect(addresses, timeout)
    except OSError as e:
        return f"{host} is unreachable: no connection to port {port} ({_why(e, timeout)})"
    try:
        sock.settimeout(timeout)
        with ssl.create_default_context().wrap_socket(sock, server_hostname=host) as tls:
            status = _head_status(tls, host, timeout)
    except (OSError, ValueError) as e:   # ssl.SSLError is an OSError
        return (f"{host} is unreachable over HTTPS: port {port} accepts connections, but HTTPS fails "
                f"({_why(e, timeout)})")
    finally:
        sock.close()
    if status >= 500:
        return f"{host} is unreachable over HTTPS: it answers HTTP {status} (a server error)"
    return None
