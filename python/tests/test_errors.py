"""Errors arrive as Python exceptions that carry the daemon's (or the library's) sentence."""
import numpy as np
import pytest

import tether


def test_no_daemon_is_device_lost_with_the_fix():
    with pytest.raises(tether.DeviceLost) as e:
        tether.Device(socket_path="/nonexistent/tether.sock")
    assert "no Tether daemon at /nonexistent/tether.sock; start one with `tether daemon`" in str(e.value)
    assert e.value.name == "TETHER_DEVICE_LOST" and e.value.status == 3


def test_pointer_outside_every_region_is_the_daemons_address_fault(device):
    mem = device.mirror(4096)
    with pytest.raises(tether.AddressFault) as e:
        device.run("saxpy", [256, 1.0, mem.address, 16], groups=1)
    assert "outside every mirrored region" in e.value.message


def test_bad_values_are_refused_with_a_sentence(device):
    with pytest.raises(tether.UnknownKernel, match="no built-in kernel is called \"fft\""):
        device.spawn("fft", [], groups=1)
    with pytest.raises(tether.InvalidArgument, match="at most 11 arguments"):
        device.spawn("saxpy", list(range(12)), groups=1)
    with pytest.raises(tether.InvalidArgument, match="positive number of bytes"):
        device.mirror(0)
    with pytest.raises(tether.GridTooLarge, match="0 workgroups"):
        device.run("spin", [1], groups=0)
    with pytest.raises(tether.NoSuchThread, match="no device thread"):
        device.join(987654321, timeout=5)


def test_join_timeout_is_timed_out(device):
    spin = device.spawn("spin", [65535], groups=2, priority="low", persistent_seconds=30)
    with pytest.raises(tether.TimedOut, match="within 0.2 s"):
        device.join(spin, timeout=0.2)
    assert device.kill(spin) is True


def test_closed_handles_are_bad_handles(socket_path):
    dev = tether.Device(socket_path=socket_path)
    mem = dev.mirror(4096)
    mem.unmirror()
    with pytest.raises(tether.BadHandle):
        mem.unmirror()
    dev.close()
    dev.close()  # idempotent
    with pytest.raises(tether.BadHandle, match="NULL"):
        dev.mirror(4096)


def test_await_teardown_of_a_process_that_never_connected_times_out(control):
    with pytest.raises(tether.TimedOut, match="pid 1 was not released within 0.1 s"):
        control.await_teardown(1, 0.1)
