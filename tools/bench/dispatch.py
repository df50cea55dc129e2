"""The Python driver of tools/bench-languages: the same loop as `tether bench dispatch --samples`
(a tiny spin thread, run = spawn + join, 20 warm-up runs) through the tether package. Prints one
round trip in ns per line. Usage: python dispatch.py RUNS (the daemon at $TETHER_SOCKET)."""
import sys
import time

import tether

runs = int(sys.argv[1]) if len(sys.argv) > 1 else 300
out = []
with tether.Device() as dev:
    for i in range(runs + 20):
        start = time.monotonic_ns()
        report = dev.run("spin", [1], groups=1, timeout=10)
        took = time.monotonic_ns() - start
        if report.state != "finished":
            sys.exit(f"dispatch: tiny thread ended {report.state}")
        if i >= 20:
            out.append(took)
print("\n".join(map(str, out)))
