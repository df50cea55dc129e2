"""Kernels on numpy arrays that live in mirrored memory, against numpy's own results."""
import ctypes

import numpy as np
import pytest

import tether


@pytest.mark.parametrize("n", [256, 4096, 1 << 18])
def test_saxpy_matches_numpy(device, n):
    mem = device.mirror(2 * n * 4)
    x, y = np.frombuffer(mem, dtype=np.float32, count=2 * n).reshape(2, n)
    rng = np.random.default_rng(n)
    x[:] = rng.standard_normal(n, dtype=np.float32)
    y[:] = rng.standard_normal(n, dtype=np.float32)
    a = np.float32(1.75)
    expected = a * x + y
    report = device.run("saxpy", [n, float(a), mem.address, mem.address + n * 4], groups=n // 256, timeout=30)
    assert report.state == "finished" and report.error is None
    assert report.kernel == "saxpy"
    np.testing.assert_array_equal(y, expected)  # one fused multiply-add or two roundings: same here
    mem.unmirror()


def test_numpy_views_share_the_mirrored_pages(device):
    mem = device.mirror(10_000)
    assert mem.size % 4096 == 0 and mem.size >= 10_000
    view = np.frombuffer(mem, dtype=np.uint8)
    assert view.ctypes.data == mem.address          # no copy: the array's data is the mapping
    view[:4] = [1, 2, 3, 4]
    assert bytes(memoryview(mem)[:4]) == b"\x01\x02\x03\x04"
    assert ctypes.string_at(mem.address, 4) == b"\x01\x02\x03\x04"


def test_spawn_join_status_and_kill(device):
    n = 1 << 16
    mem = device.mirror(2 * n * 4)
    x, y = np.frombuffer(mem, dtype=np.float32).reshape(2, n)
    x[:] = 1
    y[:] = 2
    thread = device.spawn("saxpy", [n, tether.f32(3.0), mem.address, mem.address + n * 4], groups=n // 256)
    report = device.join(thread, timeout=30)
    assert report.thread == thread and report.state == "finished"
    assert np.all(y == 5)
    spin = device.spawn("spin", [65535], groups=2, priority="low", persistent_seconds=30)
    assert device.status(spin).state in ("queued", "running")
    assert device.kill(spin) is True
    assert device.join(spin, timeout=30).state == "killed"


def test_ps_lists_this_process_with_its_memory(device, control):
    import os
    mem = device.mirror(1 << 20)
    spaces = [s for s in control.ps() if s.pid == os.getpid()]
    assert len(spaces) == 1
    assert spaces[0].regions >= 1 and spaces[0].mirrored_bytes >= mem.size and spaces[0].owner_alive
