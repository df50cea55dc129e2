"""A real `tether daemon` (software backend, policy exit) on a private socket for the whole session.

The daemon binary is $TETHER_BIN, else PREFIX/bin/tether next to the libtether.so in use."""
import os
import select
import shutil
import subprocess
import tempfile

import pytest

import tether


def _daemon_binary():
    explicit = os.environ.get("TETHER_BIN")
    if explicit:
        return explicit
    return os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(tether.library_path))), "bin", "tether")


@pytest.fixture(scope="session")
def socket_path():
    directory = tempfile.mkdtemp(prefix="tether-pytest-")
    path = os.path.join(directory, "tether.sock")
    process = subprocess.Popen([_daemon_binary(), "daemon", "--socket", path, "--backend", "software", "--policy", "exit"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    # The daemon prints "ready" once it listens: wait for that line, bounded.
    ready, _, _ = select.select([process.stdout], [], [], 30)
    line = process.stdout.readline().decode() if ready else ""
    if not line.startswith("ready"):
        process.kill()
        raise RuntimeError(f"the daemon did not start: {line!r}")
    yield path
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    # The daemon leaves its generation file next to the socket.
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def device(socket_path):
    with tether.Device(socket_path=socket_path, request_timeout=10) as dev:
        yield dev


@pytest.fixture
def control(socket_path):
    with tether.Control(socket_path=socket_path) as ctl:
        yield ctl
