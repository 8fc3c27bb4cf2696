"""Compile native/gpt2.cc for this CPU, once per source, compiler and CPU, and load it.

The library is built with -march=native on the worker that runs it (the farm's machines
differ: AVX2 only, AVX-512, AMX), under the artifact cache's build-once lock, so two
workers never race and a half-written library is never loaded. A compiler is the only
requirement; nothing is downloaded.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import shutil
import subprocess
from pathlib import Path

from whistle_stop.artifacts import cached_artifact
from whistle_stop.contract.cpuinfo import cpuinfo_field, read_cpuinfo

SOURCE = Path(__file__).with_name("gpt2.cc")
LIBRARY = "libws_gpt2.so"
# -O3 with the float reassociation the dot products and layer norms need to vectorize;
# not -ffast-math: the softmax keeps its -inf start and nothing assumes finite values
FLAGS = [
    "-O3",
    "-march=native",
    "-std=c++17",
    "-shared",
    "-fPIC",
    "-pthread",
    "-fno-math-errno",
    "-fassociative-math",
    "-fno-signed-zeros",
    "-fno-trapping-math",
]


class CompilerMissingError(RuntimeError):
    """No C++ compiler on this machine; str() says what to install."""


def compiler() -> str:
    for name in ("c++", "g++", "clang++"):
        if path := shutil.which(name):
            return path
    raise CompilerMissingError(
        "the native backend compiles its kernels for this CPU and needs a C++ compiler: "
        "apt install g++ (or set CXX)"
    )


def vendor_flags(cpuinfo: str) -> list[str]:
    """Flags for what -march=native does not say: no software prefetch on AMD CPUs with
    AVX-512 (Zen 4 on: a Zen 4 VM's int8 decode step ran 1-13% faster without it), and
    the prefetch elsewhere (an Intel Xeon VM's step 14-26% faster with it, a Zen 3 VM's
    4-bit step 25%): docs/benchmarks.md. Zen 5 not measured."""
    amd = cpuinfo_field(cpuinfo, "vendor_id") == "AuthenticAMD"
    zen4_on = "avx512f" in cpuinfo_field(cpuinfo, "flags").split()
    return ["-DWS_PREFETCH=0"] if amd and zen4_on else []


@functools.cache
def load(
    cache_dir: Path, profile: bool = False, cflags: tuple[str, ...] = ()
) -> tuple[ctypes.CDLL, dict]:
    """The compiled engine (built here if needed) and how it was built. `profile`: a
    build that times each phase of a forward pass (`ws_profile`), for
    farm bench native-profile; jobs never use it. `cflags`: more compiler flags (a
    build of its own, loaded beside the others: the profile compares builds in one run)."""
    cxx = compiler()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    cpuinfo = read_cpuinfo()
    flags = [*FLAGS, *vendor_flags(cpuinfo), *(["-DWS_PROFILE"] if profile else []), *cflags]
    parts = [
        hashlib.sha256(SOURCE.read_bytes()).hexdigest(),
        version.splitlines()[0] if version else cxx,
        flags,
        # -march=native differs by CPU: the ISA flags are part of the library's key
        hashlib.sha256(cpuinfo_field(cpuinfo, "flags").encode()).hexdigest()[:16],
    ]

    def build(out: Path) -> None:
        command = [cxx, *flags, str(SOURCE), "-o", str(out / LIBRARY)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"compiling {SOURCE.name} failed: {done.stderr.strip()[-400:]}")

    cached = cached_artifact(cache_dir, "native-kernels", parts, build)
    library = ctypes.CDLL(str(cached.path / LIBRARY))
    _declare(library)
    return library, {"built": cached.built, "build_s": cached.build_s, "path": str(cached.path)}


def _declare(lib: ctypes.CDLL) -> None:
    p, i, f = ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_float)
    lib.ws_pool_create.argtypes, lib.ws_pool_create.restype = [i, i], p
    lib.ws_pool_destroy.argtypes, lib.ws_pool_destroy.restype = [p], None
    lib.ws_pool_bench.argtypes, lib.ws_pool_bench.restype = [p, i, i], None
    lib.ws_pool_benched_runs.argtypes, lib.ws_pool_benched_runs.restype = [p], i
    lib.ws_matmul.argtypes = [p, p, f, f, i, i, i, i, f, i, f]
    lib.ws_matmul.restype = None
    lib.ws_model_create.argtypes = [p, ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(p)]
    lib.ws_model_create.restype = p
    lib.ws_model_reserve.argtypes, lib.ws_model_reserve.restype = [p, i], i
    lib.ws_model_forward.argtypes = [p, ctypes.POINTER(ctypes.c_int32), i, i, f]
    lib.ws_model_forward.restype = i
    lib.ws_model_destroy.argtypes, lib.ws_model_destroy.restype = [p], None
    lib.ws_profile.argtypes, lib.ws_profile.restype = [ctypes.POINTER(ctypes.c_double)], i
