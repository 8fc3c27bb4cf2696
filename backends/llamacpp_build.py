"""What a llama.cpp build may run on this machine: checked before a job loads a model, and
importable without llama-cpp-python (the check is plain text in, an error out)."""

from __future__ import annotations

import os

from whistle_stop.contract.cpuinfo import cpuinfo_field


def refuse_amx_under_hypervisor(system_info: str, cpuinfo: str) -> None:
    """llama.cpp's AMX matmul killed its process on every quant under a hypervisor (SIGSEGV
    on one Intel VM, SIGILL on another: only the main thread asks the kernel for AMX state,
    llama.cpp PR #26954). Say so, and how to build without it, before a job crashes a
    worker. FARM_LLAMA_AMX=1 lets a build through (a VM where it works, a fixed llama.cpp)."""
    if (
        "AMX_INT8 = 1" in system_info
        and "hypervisor" in cpuinfo_field(cpuinfo, "flags").split()
        and os.environ.get("FARM_LLAMA_AMX") != "1"
    ):
        raise RuntimeError(
            "this llama.cpp build runs AMX kernels, which crash under a hypervisor; "
            "rebuild it without them with `make engines` (or set FARM_LLAMA_AMX=1 to try)"
        )
