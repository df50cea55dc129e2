#!/usr/bin/env python3
"""saxpy on numpy arrays that live in memory mirrored to the Tether device: y = a*x + y, computed by
the device in this process's own pages, checked against numpy. Needs a running `tether daemon`."""
import sys

import numpy as np

import tether

n = 1 << 20
a = np.float32(2.5)
with tether.Device() as dev:
    mem = dev.mirror(2 * n * 4)
    x, y = np.frombuffer(mem, dtype=np.float32).reshape(2, n)   # views of the shared pages, no copy
    x[:] = np.linspace(0, 1, n, dtype=np.float32)
    y[:] = 1
    expected = a * x + y
    report = dev.run("saxpy", [n, float(a), mem.address, mem.address + n * 4], groups=n // 256)
    ok = report.state == "finished" and np.array_equal(y, expected)
    print(f"saxpy of {n} floats on {dev.info['backend']} ({dev.info['device_name']}): {report.state}, "
          f"{report.device_nanos / 1e3:.0f} µs of device time, {'matches numpy' if ok else 'DIFFERS from numpy'}")
    sys.exit(0 if ok else 1)
