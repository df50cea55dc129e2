#!/usr/bin/env python3
"""The seed's scenario in Python: A mirrors 64 MiB and runs a spin kernel, forks B which keeps the
device fd, and is SIGKILLed by its parent (this script), which reads back the teardown timeline.

    python3 fork_exit.py [exit|release]      # the policy A asks for (default: the daemon's)
"""
import os
import signal
import sys
import time

import numpy as np

import tether

policy = sys.argv[1] if len(sys.argv) > 1 else None
ready_r, ready_w = os.pipe()
a = os.fork()
if a == 0:  # A
    try:
        os.close(ready_r)
        signal.alarm(60)  # never outlive a driver that died
        dev = tether.Device(policy=policy, close_on_fork=False)   # B keeps the fd: the point
        mem = dev.mirror(64 << 20)
        np.frombuffer(mem, dtype=np.uint8)[:] = 1
        dev.spawn("spin", [65535], groups=8, persistent_seconds=60)
        b = os.fork()
        if b == 0:  # B: holds the inherited fd until killed
            os.close(ready_w)
            while True:
                signal.pause()
        os.write(ready_w, f"{b}\n".encode())
        while True:
            signal.pause()
    finally:
        os._exit(1)

os.close(ready_w)
b = int(os.read(ready_r, 32) or b"0")
if not b:
    sys.exit("A died before it was ready")
print(f"A (pid {a}) mirrors 64 MiB and runs a spin thread; its child B (pid {b}) holds the device fd")
with tether.Control() as control:
    t_exit = time.monotonic_ns()
    os.kill(a, signal.SIGKILL)
    os.waitpid(a, 0)
    try:
        t = control.await_teardown(a, 1.0 if policy == "release" else 5.0)[0]
        print(f"SIGKILL A; B alive: {os.path.exists(f'/proc/{b}')}. A's device work was torn down while B lived:")
    except tether.TimedOut:
        print("A's device work is still alive 1 s after A died: B's copy of the fd keeps it (policy release)")
        os.kill(b, signal.SIGKILL)
        t = control.await_teardown(a, 5.0)[0]
        print("after B was killed too:")
    ms = lambda ns: (ns - t_exit) / 1e6
    print(f"  reason {t.reason}: noticed +{ms(t.notice_nanos):.3f} ms, quiesced +{ms(t.quiesced_nanos):.3f} ms, "
          f"released +{ms(t.released_nanos):.3f} ms after the kill")
    print(f"  {t.threads_killed} device thread(s) killed, {t.regions_freed} region(s) freed, {t.bytes_freed} bytes")
try:
    os.kill(b, signal.SIGKILL)
except ProcessLookupError:
    pass
