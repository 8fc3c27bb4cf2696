"""`farm bench NAME [ARGS]`: the benchmarks, figures printed, never timed tests.

Each is a module with `main(argv)`; `farm bench NAME -h` shows its own options. Those that
run sweeps read their variants from the sweep files in examples/ (one table of engine
variants: examples/engines.yaml) and submit them through the real `farm`; the profilers
time paths in one process. `harness` holds the real parts (a private redis-server,
`farm worker` processes, a tiny GPT-2) that the benchmarks and the tests both start.
"""

from __future__ import annotations

# name -> (module, what it prints): `farm bench` lists them in this order
BENCHES = {
    "calibration": ("calibration", "verdicts against known 5% and 10% slowdowns"),
    "noise-floor": ("noise_floor", "a sweep 3x with a control: noise floor, intervals"),
    "fidelity": ("fidelity", "fidelity.yaml on trained weights and on untrained ones"),
    "goals": ("goals", "issue #17's goals from engines.yaml sweeps, beside targets"),
    "history": ("history", "a planted slowdown in a scratch branch: history, bisect"),
    "neighbour": ("neighbour", "each path quiet, then beside a busy loop on its CPU"),
    "lost-worker": ("lost_worker", "a worker SIGKILLed at its 2nd job: when it is back"),
    "farm-scale": ("farm_scale", "10,000 no-op jobs through Celery: throughput, CPU"),
    "long-context": ("long_context", "decode at context 32 against 512, per path"),
    "native-profile": ("native_profile", "the native engine's decode step by phase"),
    "decode-profile": ("decode_profile", "one ONNX decode step: time, bytes, ORT's ops"),
    "matmul-kernels": ("matmul_kernels", "matmuls alone: ORT's against ours, a step's from DRAM"),
    "session-options": ("session_options", "ONNX Runtime session settings, measured"),
    "gqa-cache": ("gqa_cache", "GroupQueryAttention: float32 cache against int8"),
}
