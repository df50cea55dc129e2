"""Forked children with real processes and SIGKILL: the library follows a fork, and a parent's
device work dies with it even while a child holds its fd (the seed's scenario)."""
import os
import select
import signal
import time

import numpy as np
import pytest

import tether


def _wait(pid, timeout=30):
    """The child's exit status (None if it did not end in time or died of a signal)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def test_a_forked_child_gets_its_own_connection_without_the_parents_memory(device):
    # docs/ownership.md, rule 1: a child is an address space of its own and gets none of the
    # parent's mirrored memory, so the parent's addresses are refused there; its own work runs.
    n = 4096
    mem = device.mirror(2 * n * 4)
    parent_space = device.info["space"]
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            try:
                device.run("saxpy", [n, 2.0, mem.address, mem.address + n * 4], groups=n // 256, timeout=30)
                code = 3
            except tether.AddressFault:
                report = device.run("spin", [1], groups=1, timeout=30)
                info = device.info
                ok = report.state == "finished" and info["pid"] == os.getpid() and info["space"] != parent_space
                code = 0 if ok else 2
        finally:
            os._exit(code)
    assert _wait(pid) == 0


def test_a_killed_parents_work_dies_while_its_child_holds_the_fd(socket_path, control):
    ready_r, ready_w = os.pipe()
    a = os.fork()
    if a == 0:  # A: mirrors memory, spins, forks B (which keeps the fd), waits to be killed
        try:
            os.close(ready_r)
            signal.alarm(60)
            dev = tether.Device(socket_path=socket_path, close_on_fork=False)
            mem = dev.mirror(8 << 20)
            np.frombuffer(mem, dtype=np.uint8)[:] = 1
            spin = dev.spawn("spin", [65535], groups=4, persistent_seconds=60)
            b = os.fork()
            if b == 0:
                os.close(ready_w)
                while True:
                    signal.pause()
            os.write(ready_w, f"{b} {spin}\n".encode())
            while True:
                signal.pause()
        finally:
            os._exit(1)
    os.close(ready_w)
    assert select.select([ready_r], [], [], 30)[0], "A was not ready in time"
    b, spin = (int(v) for v in os.read(ready_r, 100).split())
    os.close(ready_r)
    try:
        t_exit = time.monotonic_ns()
        os.kill(a, signal.SIGKILL)
        assert _wait(a) == -signal.SIGKILL
        timelines = control.await_teardown(a, 10)
        os.kill(b, 0)  # B is alive and holds A's fd (raises if not)
        t = timelines[0]
        # The pidfd's notice, or the BPF notifier's earlier one where the daemon may load BPF.
        assert t.pid == a and (t.reason == "ownerExit" or t.reason.startswith("bpf-"))
        assert t.threads_killed == 1 and t.regions_freed == 1 and t.bytes_freed == 8 << 20
        assert t_exit <= t.notice_nanos <= t.quiesced_nanos <= t.released_nanos
        assert all(s.pid != a for s in control.ps())
        with pytest.raises(tether.NoSuchThread):  # gone with A
            control.kill_thread(spin)
    finally:
        os.kill(b, signal.SIGKILL)  # B was re-parented to init: nothing here to reap
