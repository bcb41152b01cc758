"""The test session's network guard (tests/_netguard.py) fires, here and in child processes."""

import os
import socket
import subprocess
import sys
import threading

import pytest

from tests import _netguard


@pytest.mark.network_blocked_expected
def test_guard_blocks_every_way_out_in_process(no_network):
    with pytest.raises(_netguard.NetworkBlockedError):
        socket.create_connection(("example.com", 80), timeout=1)
    with pytest.raises(OSError):  # what library code catching OSError sees
        socket.getaddrinfo("pypi.org", 443)
    for method in ("connect", "connect_ex"):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            with pytest.raises(_netguard.NetworkBlockedError):
                getattr(s, method)(("93.184.215.14", 80))
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        with pytest.raises(_netguard.NetworkBlockedError):
            s.connect(("2606:2800:21f:cb07:6820:80da:af6b:8b2c", 80, 0, 0))
    seen = no_network()
    assert len(seen) == 5, seen
    assert any("example.com" in line for line in seen)


def test_guard_lets_loopback_and_unix_sockets_through():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        accepted = threading.Thread(target=lambda: server.accept()[0].close())
        accepted.start()
        for host in ("127.0.0.1", "localhost"):
            if host == "localhost":
                accepted.join()
                accepted = threading.Thread(target=lambda: server.accept()[0].close())
                accepted.start()
            socket.create_connection((host, port), timeout=5).close()
        accepted.join()
    a, b = socket.socketpair()  # AF_UNIX
    a.sendall(b"x")
    assert b.recv(1) == b"x"
    a.close(), b.close()
    assert _netguard.is_local_host("::1") and _netguard.is_local_host("::ffff:127.0.0.1")
    assert not _netguard.is_local_host("10.0.0.1") and not _netguard.is_local_host("0.0.0.0")


@pytest.mark.network_blocked_expected
def test_guard_fires_in_python_children_and_is_recorded(no_network):
    script = (
        "import socket\n"
        "try:\n"
        "    socket.create_connection(('example.com', 443), timeout=1)\n"
        "except OSError as err:\n"
        "    print(type(err).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "NetworkBlockedError"  # raised in the child, caught there
    seen = no_network()
    assert len(seen) == 1 and "example.com" in seen[0]
    assert f"(pid {os.getpid()})" not in seen[0]  # recorded by the child


def test_children_get_the_guard_through_pythonpath():
    out = subprocess.run(
        [sys.executable, "-c", "import socket; print(socket.create_connection.__module__)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == "_eyegazer_netguard", out.stderr
