"""Your own SPIR-V compute module from Python: a real GLSL shader compiled with glslc, run on a
daemon on lavapipe, its result checked against numpy's."""
import os
import shutil
import select
import subprocess
import tempfile

import numpy as np
import pytest

import tether
from conftest import _daemon_binary

SHADERS = os.path.join(os.path.dirname(__file__), "..", "..", "Tests", "Shaders")


def _spirv(name):
    out = tempfile.mktemp(suffix=".spv")
    subprocess.run(["glslc", "--target-env=vulkan1.2", "-o", out, os.path.join(SHADERS, name + ".comp")], check=True)
    try:
        with open(out, "rb") as f:
            return f.read()
    finally:
        os.unlink(out)


@pytest.fixture(scope="module")
def vulkan_socket():
    directory = tempfile.mkdtemp(prefix="tether-pytest-vk-")
    path = os.path.join(directory, "tether.sock")
    process = subprocess.Popen([_daemon_binary(), "daemon", "--socket", path, "--backend", "vulkan"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    ready, _, _ = select.select([process.stdout], [], [], 30)
    line = process.stdout.readline().decode() if ready else ""
    if not line.startswith("ready"):
        process.kill()
        raise RuntimeError(f"the Vulkan daemon did not start: {line!r}")
    yield path
    process.terminate()
    process.wait(timeout=15)
    shutil.rmtree(directory, ignore_errors=True)


def test_elementwise_module_matches_numpy(vulkan_socket):
    with tether.Device(socket_path=vulkan_socket, request_timeout=10) as dev:
        module = dev.load_module(_spirv("elementwise3"))
        assert module.local_size == (128, 1, 1)
        assert [(b.set, b.binding, b.kind) for b in module.bindings] == [(0, 0, "storage"), (0, 1, "storage"), (0, 2, "storage")]
        n = 128 * 16
        mem = dev.mirror(3 * n * 4)
        a, b, c = np.frombuffer(mem, dtype=np.float32, count=3 * n).reshape(3, n)
        a[:] = np.arange(n)
        b[:] = 0.25
        c[:] = 2
        expected = a * b + c
        report = dev.run_module(module, [(0, i, mem, i * n * 4, n * 4) for i in range(3)], grid=n // 128)
        assert report.state == "finished"
        assert np.array_equal(c, expected)


def test_spec_constants_and_errors(vulkan_socket):
    with tether.Device(socket_path=vulkan_socket, request_timeout=10) as dev:
        module = dev.load_module(_spirv("prefix_spec"))
        assert [(s.id, s.type) for s in module.spec_constants] == [(0, "uint")]
        mem = dev.mirror(4096)
        thread = dev.spawn_module(module, [(0, 0, mem, 0, 256)], grid=1, spec={0: 3})
        assert dev.join(thread, timeout=30).state == "finished"
        assert list(np.frombuffer(mem, dtype=np.uint32, count=3)) == [3, 6, 9]
        with pytest.raises(tether.InvalidArgument, match="no specialization constant 7"):
            dev.spawn_module(module, [(0, 0, mem, 0, 256)], grid=1, spec={7: 1})
        with pytest.raises(tether.InvalidArgument, match="binding 0.0"):
            dev.run_module(module, [], grid=1)
        with pytest.raises(tether.PermissionDenied, match="raw pointers"):
            dev.load_module(_spirv("raw_pointer"))
