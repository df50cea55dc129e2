"""Loading libtether.so and declaring its functions and structs for ctypes (mirrors tether.h)."""
import ctypes
import ctypes.util
import os
import shutil
import subprocess

ABI_VERSION = 1


def _candidates():
    """Where libtether.so may be, best first."""
    env = os.environ.get("TETHER_LIBRARY")
    if env:
        yield env
        return
    # The installed prefix, as pkg-config knows it (tools/install writes tether.pc there).
    if shutil.which("pkg-config"):
        try:
            out = subprocess.run(["pkg-config", "--variable=libdir", "tether"], capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                yield os.path.join(out.stdout.strip(), "libtether.so")
        except (OSError, subprocess.SubprocessError):
            pass
    prefix = os.environ.get("TETHER_PREFIX")
    if prefix:
        yield os.path.join(prefix, "lib", "libtether.so")
    found = ctypes.util.find_library("tether")
    if found:
        yield found
    yield "/usr/local/lib/libtether.so"


def load():
    tried = []
    for path in _candidates():
        tried.append(path)
        if os.path.sep in path and not os.path.exists(path):
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        if lib.tether_abi_version() != ABI_VERSION:
            raise ImportError(f"{path} speaks C ABI version {lib.tether_abi_version()}, this package {ABI_VERSION}; "
                              "install matching versions of Tether and its Python package")
        _declare(lib)
        return lib, path
    raise ImportError("cannot find libtether.so (tried: " + ", ".join(tried) + "); install Tether with "
                      "`tools/install --prefix PREFIX` and set PKG_CONFIG_PATH=PREFIX/lib/pkgconfig, "
                      "or set TETHER_LIBRARY=/path/to/libtether.so")


class DeviceOptions(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("socket_path", ctypes.c_char_p), ("policy", ctypes.c_int32),
                ("backend", ctypes.c_int32), ("close_on_fork", ctypes.c_int32),
                ("request_timeout_seconds", ctypes.c_double)]


class ThreadReport(ctypes.Structure):
    _fields_ = [("thread", ctypes.c_uint64), ("state", ctypes.c_int32), ("priority", ctypes.c_int32),
                ("device_nanos", ctypes.c_uint64), ("error_status", ctypes.c_int32), ("kernel", ctypes.c_char * 32),
                ("error_message", ctypes.c_char * 256)]


class DeviceInfo(ctypes.Structure):
    _fields_ = [("space", ctypes.c_uint64), ("pid", ctypes.c_int32), ("policy", ctypes.c_int32),
                ("backend", ctypes.c_int32), ("connection_fd", ctypes.c_int32), ("device_name", ctypes.c_char * 128)]


class SpaceInfo(ctypes.Structure):
    _fields_ = [("space", ctypes.c_uint64), ("pid", ctypes.c_int32), ("uid", ctypes.c_uint32),
                ("policy", ctypes.c_int32), ("owner_alive", ctypes.c_int32), ("connections", ctypes.c_uint32),
                ("regions", ctypes.c_uint32), ("mirrored_bytes", ctypes.c_uint64), ("device_nanos", ctypes.c_uint64),
                ("thread_count", ctypes.c_uint32)]


class Timeline(ctypes.Structure):
    _fields_ = [("space", ctypes.c_uint64), ("pid", ctypes.c_int32), ("threads_killed", ctypes.c_uint32),
                ("notice_nanos", ctypes.c_uint64), ("quiesced_nanos", ctypes.c_uint64),
                ("released_nanos", ctypes.c_uint64), ("bytes_freed", ctypes.c_uint64),
                ("regions_freed", ctypes.c_uint32), ("reason", ctypes.c_char * 16)]


class ModuleInfo(ctypes.Structure):
    _fields_ = [("local_size", ctypes.c_uint32 * 3), ("push_constant_bytes", ctypes.c_uint32),
                ("binding_count", ctypes.c_uint32), ("spec_constant_count", ctypes.c_uint32),
                ("uses_num_workgroups", ctypes.c_int32), ("entry_point", ctypes.c_char * 64)]


class ModuleBindingInfo(ctypes.Structure):
    _fields_ = [("set", ctypes.c_uint32), ("binding", ctypes.c_uint32), ("kind", ctypes.c_int32),
                ("reserved", ctypes.c_uint32), ("min_bytes", ctypes.c_uint64), ("name", ctypes.c_char * 64)]


class ModuleSpecInfo(ctypes.Structure):
    _fields_ = [("constant_id", ctypes.c_uint32), ("type", ctypes.c_int32), ("default_bits", ctypes.c_uint64),
                ("name", ctypes.c_char * 64)]


class Binding(ctypes.Structure):
    _fields_ = [("set", ctypes.c_uint32), ("binding", ctypes.c_uint32), ("memory", ctypes.c_void_p),
                ("offset", ctypes.c_size_t), ("bytes", ctypes.c_size_t)]


class Specialization(ctypes.Structure):
    _fields_ = [("constant_id", ctypes.c_uint32), ("reserved", ctypes.c_uint32), ("bits", ctypes.c_uint64)]


assert ctypes.sizeof(ThreadReport) == 320 and ctypes.sizeof(Timeline) == 72
assert ctypes.sizeof(ModuleInfo) == 92 and ctypes.sizeof(Binding) == 32 and ctypes.sizeof(Specialization) == 16
assert ctypes.sizeof(ModuleBindingInfo) == 88 and ctypes.sizeof(ModuleSpecInfo) == 80


def _declare(lib):
    P, I32, U32, U64, D, SZ = ctypes.c_void_p, ctypes.c_int32, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_double, ctypes.c_size_t
    ref = ctypes.POINTER
    signatures = {
        "tether_open": [ref(DeviceOptions), ref(P)],
        "tether_close": [P],
        "tether_device_get_info": [P, ref(DeviceInfo)],
        "tether_mirror": [P, SZ, ref(P), ref(P)],
        "tether_unmirror": [P],
        "tether_memory_base": [P, ref(P)],
        "tether_memory_size": [P, ref(SZ)],
        "tether_kernel_from_name": [ctypes.c_char_p, ref(U32)],
        "tether_spawn": [P, U32, ref(U64), SZ, U32, U32, D, ref(U64)],
        "tether_run": [P, U32, ref(U64), SZ, U32, D, ref(ThreadReport)],
        "tether_join": [P, U64, D, ref(ThreadReport)],
        "tether_kill": [P, U64, ref(ctypes.c_int)],
        "tether_thread_status": [P, U64, ref(ThreadReport)],
        "tether_control_open": [ctypes.c_char_p, D, ref(P)],
        "tether_control_close": [P],
        "tether_ping": [P],
        "tether_ps": [P, ref(P)],
        "tether_process_table_count": [P, ref(SZ)],
        "tether_process_table_space": [P, SZ, ref(SpaceInfo)],
        "tether_process_table_thread": [P, SZ, SZ, ref(ThreadReport)],
        "tether_process_table_free": [P],
        "tether_kill_process": [P, I32, ref(U32)],
        "tether_kill_thread": [P, U64, ref(ctypes.c_int)],
        "tether_timelines": [P, I32, ref(Timeline), SZ, ref(SZ)],
        "tether_await_teardown": [P, I32, D, ref(Timeline), SZ, ref(SZ)],
        "tether_module_load": [P, ref(U32), SZ, ctypes.c_char_p, ref(P)],
        "tether_module_unload": [P],
        "tether_module_get_info": [P, ref(ModuleInfo)],
        "tether_module_binding": [P, SZ, ref(ModuleBindingInfo)],
        "tether_module_spec_constant": [P, SZ, ref(ModuleSpecInfo)],
        "tether_spawn_module": [P, P, ref(Binding), SZ, P, SZ, ref(Specialization), SZ, ref(U32), U32, ref(U64)],
        "tether_run_module": [P, P, ref(Binding), SZ, P, SZ, ref(Specialization), SZ, ref(U32), D, ref(ThreadReport)],
    }
    for name, args in signatures.items():
        f = getattr(lib, name)
        f.argtypes = args
        f.restype = ctypes.c_uint32
    lib.tether_device_options_init.argtypes = [ref(DeviceOptions)]
    lib.tether_device_options_init.restype = None
    lib.tether_last_error.argtypes = []
    lib.tether_last_error.restype = ctypes.c_char_p
    lib.tether_status_name.argtypes = [ctypes.c_uint32]
    lib.tether_status_name.restype = ctypes.c_char_p
    lib.tether_abi_version.restype = ctypes.c_int
