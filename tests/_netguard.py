"""Blocks outgoing network access in tests: only loopback and unix sockets may connect.

`install()` patches `socket.socket.connect` / `connect_ex`, `socket.create_connection` and
`socket.getaddrinfo` (so not even a DNS query leaves) to raise `NetworkBlockedError` for any
host but localhost / 127.0.0.0/8 / ::1. Every blocked attempt is recorded: in `ATTEMPTS`, and,
when ``$EYEGAZER_NETGUARD_LOG`` names a file, as one line appended to it, so a test can fail on
an attempt a library caught and hid, in its own process or in a child.

Child processes get the same guard through `tests/netguard/sitecustomize.py`: the test session
puts that folder first on ``$PYTHONPATH`` (see `conftest.py`), and Python imports
`sitecustomize` at start-up, before any of the child's code runs.
"""

from __future__ import annotations

import ipaddress
import os
import socket

LOG_ENV = "EYEGAZER_NETGUARD_LOG"
ATTEMPTS: list[str] = []
_ORIGINAL: dict[str, object] = {}


class NetworkBlockedError(ConnectionRefusedError):
    """A test tried to reach a non-loopback host."""


def is_local_host(host) -> bool:
    """True for localhost, 127.0.0.0/8, ::1 (and IPv4-mapped 127.x) and the empty host."""
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if host in (None, "", "localhost", "localhost.localdomain"):
        return True
    try:
        ip = ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return False  # a name other than localhost: resolving it would ask a DNS server
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _is_ip_literal(host) -> bool:
    try:
        ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return False
    return True


def _block(what: str, target) -> None:
    line = f"{what} {target!r} (pid {os.getpid()})"
    ATTEMPTS.append(line)
    path = os.environ.get(LOG_ENV)
    if path:
        try:
            with open(path, "a") as f:
                f.write(line + "\n")
        except OSError:
            pass
    raise NetworkBlockedError(f"network access blocked in tests: {line}")


def _check_address(sock, address, what: str) -> None:
    family = getattr(sock, "family", None)
    if family not in (socket.AF_INET, socket.AF_INET6):
        return  # unix sockets, netlink, ...
    host = address[0] if isinstance(address, tuple) and address else address
    if not is_local_host(host):
        _block(what, address)


def _connect(self, address):
    _check_address(self, address, "socket.connect")
    return _ORIGINAL["connect"](self, address)


def _connect_ex(self, address):
    _check_address(self, address, "socket.connect_ex")
    return _ORIGINAL["connect_ex"](self, address)


def _create_connection(address, *args, **kwargs):
    if not is_local_host(address[0]):
        _block("socket.create_connection", address)
    return _ORIGINAL["create_connection"](address, *args, **kwargs)


def _getaddrinfo(host, *args, **kwargs):
    if not (is_local_host(host) or _is_ip_literal(host)):
        _block("socket.getaddrinfo", host)
    return _ORIGINAL["getaddrinfo"](host, *args, **kwargs)


def install() -> None:
    """Patches the `socket` module (idempotent)."""
    if _ORIGINAL:
        return
    _ORIGINAL.update(
        connect=socket.socket.connect,
        connect_ex=socket.socket.connect_ex,
        create_connection=socket.create_connection,
        getaddrinfo=socket.getaddrinfo,
    )
    socket.socket.connect = _connect
    socket.socket.connect_ex = _connect_ex
    socket.create_connection = _create_connection
    socket.getaddrinfo = _getaddrinfo


def installed() -> bool:
    """Whether `install()` has run in this process."""
    return bool(_ORIGINAL) and socket.create_connection is _create_connection
