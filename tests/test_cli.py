"""The command line itself: help stays fast (no torch), and every command explains itself."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from whistle_stop.cli import app

COMMANDS = [
    "submit",
    "worker",
    "status",
    "collect",
    "report",
    "sweeps",
    "show",
    "plot",
    "compare",
    "bandwidth",
]


@pytest.mark.parametrize("args", [["--help"], *[[c, "--help"] for c in COMMANDS]])
def test_help_never_imports_torch(args):
    code = (
        "import sys\nfrom whistle_stop.cli import app\n"
        f"try:\n    app({args!r})\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'onnxruntime', 'transformers', 'matplotlib') if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert "HEAVY []" in result.stdout, result.stdout + result.stderr
    assert "Usage" in result.stdout


def test_bandwidth_reads_the_cache(tmp_path):
    import os

    from whistle_stop.contract.cpus import format_cpu_list

    cpus = format_cpu_list(sorted(os.sched_getaffinity(0)))
    cached = tmp_path / "bandwidth" / f"{socket.gethostname()}-cpus{cpus}.json"
    cached.parent.mkdir()
    cached.write_text(
        json.dumps(
            {
                "read_bytes_per_s": 25e9,
                "copy_bytes_per_s": 20e9,
                "threads": 2,
                "host": "box",
                "cpus": cpus,
            }
        )
    )
    result = CliRunner().invoke(app, ["bandwidth", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0 and "read 25.0 GB/s" in result.output
