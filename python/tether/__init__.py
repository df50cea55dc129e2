"""Tether for Python: device threads whose work dies with the process that owns them.

A thin ctypes layer over libtether.so (the C interface, see tether.h); nothing to compile.

    import numpy as np, tether
    with tether.Device() as dev:
        mem = dev.mirror(2 * n * 4)                      # memory shared with the device
        x, y = np.frombuffer(mem, dtype=np.float32).reshape(2, n)   # views, no copy
        x[:] = ...; y[:] = ...
        dev.run("saxpy", [n, tether.f32(2.0), mem.address, mem.address + n * 4], groups=n // 256)

Kernel arguments are integers: this process's own addresses (`mem.address + offset`) and
scalars; floats go as their 32-bit patterns (`tether.f32`, or pass a Python float). Errors raise
`tether.TetherError` subclasses carrying the daemon's sentence.
"""
import ctypes
import os
import struct
from dataclasses import dataclass, field
from typing import List, Optional

from . import _lib
from .errors import (AddressFault, BackendUnavailable, BadHandle, DeviceLost, GridTooLarge, InvalidArgument, NoSuchRegion,
                     NoSuchThread, NotOwner, OwnerExited, PermissionDenied, ResourceExhausted, TetherError, TimedOut,
                     UnknownKernel, error_for)

__all__ = ["Device", "Memory", "Module", "ModuleBinding", "SpecConstant", "Control", "Report", "Space", "Timeline", "f32", "library_path", "TetherError", "NotOwner",
           "OwnerExited", "DeviceLost", "InvalidArgument", "AddressFault", "UnknownKernel", "GridTooLarge",
           "BackendUnavailable", "NoSuchThread", "NoSuchRegion", "ResourceExhausted", "PermissionDenied", "TimedOut",
           "BadHandle", "KERNELS"]

_C, library_path = _lib.load()

KERNELS = ("saxpy", "reduce", "matmul", "mandelbrot", "listwalk", "spin")
_POLICIES = {None: -1, "exit": 0, "release": 1}
_BACKENDS = {"auto": 0, "vulkan": 1, "software": 2}
_PRIORITIES = {"low": 0, "normal": 1, "high": 2}
_STATES = ("queued", "running", "finished", "killed", "faulted", "failed")


def _check(status):
    if status != 0:
        message = (_C.tether_last_error() or b"").decode("utf-8", "replace")
        name = (_C.tether_status_name(status) or b"").decode()
        raise error_for(status, message, name)


def f32(value):
    """The bit pattern of `value` as a 32-bit float, as kernels take float arguments."""
    return struct.unpack("<I", struct.pack("<f", value))[0]


def _kernel(name):
    k = ctypes.c_uint32()
    _check(_C.tether_kernel_from_name(str(name).encode(), ctypes.byref(k)))
    return k.value


def _args(args):
    values = [f32(a) if isinstance(a, float) else int(a) for a in args]
    for v in values:
        if not 0 <= v < 1 << 64:
            raise InvalidArgument(f"kernel argument {v} does not fit 64 unsigned bits", 4, "TETHER_INVALID_ARGUMENT")
    array = (ctypes.c_uint64 * max(len(values), 1))(*values)
    return array, len(values)


def _timeout(seconds):
    return -1.0 if seconds is None else float(seconds)


@dataclass
class Report:
    """How a device thread stands or ended. A killed or faulted thread is a report, not an error;
    `error` says why it failed or faulted."""
    thread: int
    kernel: str
    state: str
    priority: str
    device_nanos: int
    error: Optional[TetherError] = None

    @classmethod
    def _from(cls, r):
        error = None
        if r.error_status:
            error = error_for(r.error_status, r.error_message.decode("utf-8", "replace"),
                              _C.tether_status_name(r.error_status).decode())
        return cls(r.thread, r.kernel.decode(), _STATES[r.state] if 0 <= r.state < len(_STATES) else str(r.state),
                   ("low", "normal", "high")[r.priority] if 0 <= r.priority < 3 else str(r.priority), r.device_nanos, error)


class Memory:
    """Memory shared with the device (memfd pages mapped here and by the daemon). It is a writable
    buffer: `numpy.frombuffer(mem, dtype=...)` and `memoryview(mem)` view it without a copy.
    `address` is where it lives in this process, which is what kernel arguments carry.

    Views must not outlive `unmirror()` or the device's `close()`, which unmap the pages."""

    # Instances are ctypes arrays of the right size (made by _memory_type); this class adds the rest.
    address: int
    size: int

    def unmirror(self):
        """Stops mirroring and unmaps the pages here."""
        handle, self._handle = self._handle, None
        if handle is None:
            raise BadHandle("this memory was unmirrored already", 100, "TETHER_BAD_HANDLE")
        _check(_C.tether_unmirror(handle))

    def __repr__(self):
        return f"<tether.Memory {self.size} bytes at {self.address:#x}>"


_memory_types = {}


def _memory_type(size):
    t = _memory_types.get(size)
    if t is None:
        t = _memory_types[size] = type("Memory", (ctypes.c_ubyte * size, Memory), {})
    return t


class Device:
    """A connection to the Tether daemon on behalf of this process (see tether.h for the rules).

    socket_path: None uses $TETHER_SOCKET, then the default. policy: None (the daemon's), "exit" or
    "release". backend: "auto", "vulkan" or "software" (the daemon refuses a mismatch).
    close_on_fork: close this connection's fd in forked children. request_timeout: seconds."""

    def __init__(self, socket_path=None, policy=None, backend="auto", close_on_fork=True, request_timeout=30.0):
        if policy not in _POLICIES:
            raise InvalidArgument(f"policy {policy!r} is none of None, 'exit', 'release'", 4, "TETHER_INVALID_ARGUMENT")
        if backend not in _BACKENDS:
            raise InvalidArgument(f"backend {backend!r} is none of 'auto', 'vulkan', 'software'", 4, "TETHER_INVALID_ARGUMENT")
        options = _lib.DeviceOptions()
        _C.tether_device_options_init(ctypes.byref(options))
        options.socket_path = os.fsencode(socket_path) if socket_path else None
        options.policy = _POLICIES[policy]
        options.backend = _BACKENDS[backend]
        options.close_on_fork = 1 if close_on_fork else 0
        options.request_timeout_seconds = float(request_timeout)
        handle = ctypes.c_void_p()
        _check(_C.tether_open(ctypes.byref(options), ctypes.byref(handle)))
        self._handle = handle

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Closes the connection and unmaps every mirrored memory of this device. Idempotent."""
        handle, self._handle = self._handle, None
        if handle is not None:
            _check(_C.tether_close(handle))

    @property
    def info(self):
        """What the daemon said: {'space', 'pid', 'policy', 'backend', 'connection_fd', 'device_name'}."""
        i = _lib.DeviceInfo()
        _check(_C.tether_device_get_info(self._handle, ctypes.byref(i)))
        return {"space": i.space, "pid": i.pid, "policy": ("exit", "release")[i.policy],
                "backend": {1: "vulkan", 2: "software"}.get(i.backend, "?"), "connection_fd": i.connection_fd,
                "device_name": i.device_name.decode("utf-8", "replace")}

    def mirror(self, nbytes):
        """`nbytes` (rounded up to whole pages) of memory shared with the device, as a `Memory`."""
        if not isinstance(nbytes, int) or nbytes <= 0:
            raise InvalidArgument(f"mirror needs a positive number of bytes, not {nbytes!r}", 4, "TETHER_INVALID_ARGUMENT")
        handle, base, size = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_size_t()
        _check(_C.tether_mirror(self._handle, nbytes, ctypes.byref(handle), ctypes.byref(base)))
        _check(_C.tether_memory_size(handle, ctypes.byref(size)))
        memory = _memory_type(size.value).from_address(base.value)
        memory._handle, memory._device, memory.address, memory.size = handle, self, base.value, size.value
        return memory

    def spawn(self, kernel, args, groups, priority="normal", persistent_seconds=0.0):
        """Starts a built-in kernel (a name from KERNELS) over `groups` workgroups; returns the
        thread id. persistent_seconds > 0 repeats the grid for that long."""
        array, n = _args(args)
        thread = ctypes.c_uint64()
        if priority not in _PRIORITIES:
            raise InvalidArgument(f"priority {priority!r} is none of 'low', 'normal', 'high'", 4, "TETHER_INVALID_ARGUMENT")
        _check(_C.tether_spawn(self._handle, _kernel(kernel), array, n, int(groups), _PRIORITIES[priority],
                               float(persistent_seconds), ctypes.byref(thread)))
        return thread.value

    def run(self, kernel, args, groups, timeout=None):
        """Spawn and join in one round trip; returns the `Report`."""
        array, n = _args(args)
        report = _lib.ThreadReport()
        _check(_C.tether_run(self._handle, _kernel(kernel), array, n, int(groups), _timeout(timeout), ctypes.byref(report)))
        return Report._from(report)

    def join(self, thread, timeout=None):
        """Waits for the thread to end (raises TimedOut when `timeout` seconds pass first; the
        abandoned join still reaps the thread when it ends, so poll `status` to wait in steps)."""
        report = _lib.ThreadReport()
        _check(_C.tether_join(self._handle, int(thread), _timeout(timeout), ctypes.byref(report)))
        return Report._from(report)

    def kill(self, thread):
        """Asks the thread to stop; returns whether it still ran."""
        alive = ctypes.c_int()
        _check(_C.tether_kill(self._handle, int(thread), ctypes.byref(alive)))
        return bool(alive.value)

    def status(self, thread):
        """The thread's `Report` now, without waiting."""
        report = _lib.ThreadReport()
        _check(_C.tether_thread_status(self._handle, int(thread), ctypes.byref(report)))
        return Report._from(report)

    def load_module(self, spirv, entry_point=""):
        """Loads your own SPIR-V compute module (bytes, or a sequence of 32-bit words) and returns a
        `Module`. The daemon validates and reflects it; a refusal raises with its sentence."""
        if isinstance(spirv, (bytes, bytearray, memoryview)):
            data = bytes(spirv)
            if len(data) % 4:
                raise InvalidArgument("SPIR-V is a whole number of 32-bit words", 4, "TETHER_INVALID_ARGUMENT")
            words = struct.unpack(f"<{len(data) // 4}I", data)
        else:
            words = [int(w) for w in spirv]
        array = (ctypes.c_uint32 * max(len(words), 1))(*words)
        handle = ctypes.c_void_p()
        _check(_C.tether_module_load(self._handle, array, len(words), entry_point.encode(), ctypes.byref(handle)))
        return Module(self, handle)

    def spawn_module(self, module, bindings, grid, push=b"", spec=None, priority="normal"):
        """Starts `module` over `grid` (x, (x, y) or (x, y, z) workgroups). `bindings`: a list of
        (set, binding, memory[, offset[, nbytes]]); `push`: the push-constant bytes; `spec`:
        {constant_id: value}, converted by each constant's reflected type. Returns the thread id."""
        if priority not in _PRIORITIES:
            raise InvalidArgument(f"priority {priority!r} is none of 'low', 'normal', 'high'", 4, "TETHER_INVALID_ARGUMENT")
        thread = ctypes.c_uint64()
        _check(_C.tether_spawn_module(self._handle, module._handle, *module._launch(bindings, push, spec, grid),
                                      _PRIORITIES[priority], ctypes.byref(thread)))
        return thread.value

    def run_module(self, module, bindings, grid, push=b"", spec=None, timeout=None):
        """`spawn_module` and `join` in one round trip; returns the `Report`."""
        report = _lib.ThreadReport()
        _check(_C.tether_run_module(self._handle, module._handle, *module._launch(bindings, push, spec, grid),
                                    _timeout(timeout), ctypes.byref(report)))
        return Report._from(report)


_SCALARS = ("bool", "int", "uint", "float", "int64", "uint64", "double")


def _spec_bits(kind, value):
    """The bit pattern of `value` for a specialization constant of type `kind`."""
    if kind == "bool":
        return 1 if value else 0
    if kind == "float":
        return struct.unpack("<I", struct.pack("<f", float(value)))[0]
    if kind == "double":
        return struct.unpack("<Q", struct.pack("<d", float(value)))[0]
    bits = {"int": 32, "uint": 32, "int64": 64, "uint64": 64}[kind]
    v = int(value)
    lo, hi = (-(1 << (bits - 1)), 1 << (bits - 1)) if kind.startswith("int") else (0, 1 << bits)
    if not lo <= v < hi:
        raise InvalidArgument(f"{v} does not fit a {kind}", 4, "TETHER_INVALID_ARGUMENT")
    return v & ((1 << bits) - 1)


@dataclass
class ModuleBinding:
    """A buffer the module uses: layout(set, binding); `kind` is "storage" or "uniform"."""
    set: int
    binding: int
    kind: str
    min_bytes: int
    name: str


@dataclass
class SpecConstant:
    """A specialization constant: layout(constant_id = id) const <type> name = default."""
    id: int
    type: str
    name: str


class Module:
    """Your own SPIR-V compute module, validated and reflected by the daemon (see `Device.load_module`).
    `bindings`, `spec_constants`, `local_size`, `push_constant_bytes` and `entry_point` are what
    the daemon reflected."""

    def __init__(self, device, handle):
        self._device, self._handle = device, handle
        info = _lib.ModuleInfo()
        _check(_C.tether_module_get_info(handle, ctypes.byref(info)))
        self.local_size = tuple(info.local_size)
        self.push_constant_bytes = info.push_constant_bytes
        self.uses_num_workgroups = bool(info.uses_num_workgroups)
        self.entry_point = info.entry_point.decode("utf-8", "replace")
        self.bindings = []
        for i in range(info.binding_count):
            b = _lib.ModuleBindingInfo()
            _check(_C.tether_module_binding(handle, i, ctypes.byref(b)))
            self.bindings.append(ModuleBinding(b.set, b.binding, ("storage", "uniform")[b.kind], b.min_bytes,
                                               b.name.decode("utf-8", "replace")))
        self.spec_constants = []
        for i in range(info.spec_constant_count):
            c = _lib.ModuleSpecInfo()
            _check(_C.tether_module_spec_constant(handle, i, ctypes.byref(c)))
            self.spec_constants.append(SpecConstant(c.constant_id, _SCALARS[c.type], c.name.decode("utf-8", "replace")))

    def unload(self):
        """Frees the daemon's copy (threads running it finish first)."""
        handle, self._handle = self._handle, None
        if handle is None:
            raise BadHandle("this module was unloaded already", 100, "TETHER_BAD_HANDLE")
        _check(_C.tether_module_unload(handle))

    def _launch(self, bindings, push, spec, grid):
        """The C arguments of a spawn: bindings are (set, binding, memory[, offset[, nbytes]])."""
        entries = []
        for b in bindings:
            set_, binding, memory = b[0], b[1], b[2]
            offset = b[3] if len(b) > 3 else 0
            nbytes = b[4] if len(b) > 4 else memory.size - offset
            entries.append(_lib.Binding(int(set_), int(binding), memory._handle, int(offset), int(nbytes)))
        c_bindings = (_lib.Binding * max(len(entries), 1))(*entries)
        push = bytes(push)
        c_push = ctypes.create_string_buffer(push, max(len(push), 1))
        types = {c.id: c.type for c in self.spec_constants}
        values = []
        for constant_id, value in (spec or {}).items():
            if constant_id not in types:
                raise InvalidArgument(f"the module has no specialization constant {constant_id} "
                                      f"(it has: {sorted(types) or 'none'})", 4, "TETHER_INVALID_ARGUMENT")
            values.append(_lib.Specialization(int(constant_id), 0, _spec_bits(types[constant_id], value)))
        c_spec = (_lib.Specialization * max(len(values), 1))(*values)
        g = tuple(grid) if isinstance(grid, (tuple, list)) else (int(grid),)
        g = (g + (1, 1))[:3]
        c_grid = (ctypes.c_uint32 * 3)(*[int(v) for v in g])
        return (c_bindings, len(entries), ctypes.cast(c_push, ctypes.c_void_p), len(push), c_spec, len(values), c_grid)

    def __repr__(self):
        return f"<tether.Module {self.entry_point} local size {self.local_size}, {len(self.bindings)} bindings>"


@dataclass
class Space:
    """One address space in `ps`."""
    space: int
    pid: int
    uid: int
    policy: str
    owner_alive: bool
    connections: int
    regions: int
    mirrored_bytes: int
    device_nanos: int
    threads: List[Report] = field(default_factory=list)


@dataclass
class Timeline:
    """A teardown the daemon recorded; times are CLOCK_MONOTONIC ns (`time.monotonic_ns()`)."""
    space: int
    pid: int
    reason: str
    notice_nanos: int
    quiesced_nanos: int
    released_nanos: int
    threads_killed: int
    regions_freed: int
    bytes_freed: int

    @classmethod
    def _from(cls, t):
        return cls(t.space, t.pid, t.reason.decode(), t.notice_nanos, t.quiesced_nanos, t.released_nanos,
                   t.threads_killed, t.regions_freed, t.bytes_freed)


class Control:
    """A tool connection that binds nothing: ps, killing processes and threads, timelines."""

    def __init__(self, socket_path=None, timeout=10.0):
        handle = ctypes.c_void_p()
        _check(_C.tether_control_open(os.fsencode(socket_path) if socket_path else None, float(timeout),
                                      ctypes.byref(handle)))
        self._handle = handle

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        handle, self._handle = self._handle, None
        if handle is not None:
            _check(_C.tether_control_close(handle))

    def ping(self):
        _check(_C.tether_ping(self._handle))

    def ps(self):
        """Every address space the daemon serves, with its threads."""
        table = ctypes.c_void_p()
        _check(_C.tether_ps(self._handle, ctypes.byref(table)))
        try:
            count = ctypes.c_size_t()
            _check(_C.tether_process_table_count(table, ctypes.byref(count)))
            spaces = []
            for i in range(count.value):
                s = _lib.SpaceInfo()
                _check(_C.tether_process_table_space(table, i, ctypes.byref(s)))
                threads = []
                for j in range(s.thread_count):
                    r = _lib.ThreadReport()
                    _check(_C.tether_process_table_thread(table, i, j, ctypes.byref(r)))
                    threads.append(Report._from(r))
                spaces.append(Space(s.space, s.pid, s.uid, ("exit", "release")[s.policy], bool(s.owner_alive),
                                    s.connections, s.regions, s.mirrored_bytes, s.device_nanos, threads))
            return spaces
        finally:
            _C.tether_process_table_free(table)

    def kill_process(self, pid):
        """Tears down the device work of `pid`; returns how many threads were killed."""
        n = ctypes.c_uint32()
        _check(_C.tether_kill_process(self._handle, int(pid), ctypes.byref(n)))
        return n.value

    def kill_thread(self, thread):
        alive = ctypes.c_int()
        _check(_C.tether_kill_thread(self._handle, int(thread), ctypes.byref(alive)))
        return bool(alive.value)

    def _list(self, call):
        capacity = 16
        while True:
            array, count = (_lib.Timeline * capacity)(), ctypes.c_size_t()
            status = call(array, capacity, ctypes.byref(count))
            if status == 101 and count.value > capacity:  # TETHER_BUFFER_TOO_SMALL
                capacity = count.value
                continue
            _check(status)
            return [Timeline._from(array[i]) for i in range(count.value)]

    def timelines(self, pid=0):
        """Teardown timelines recorded for `pid` (0: all)."""
        return self._list(lambda a, n, c: _C.tether_timelines(self._handle, int(pid), a, n, c))

    def await_teardown(self, pid, timeout):
        """Waits until the address space of `pid` is released and returns its newest 64 timelines,
        oldest first; raises
        TimedOut when `timeout` seconds pass first."""
        return self._list(lambda a, n, c: _C.tether_await_teardown(self._handle, int(pid), float(timeout), a, n, c))
