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
    "bench",
    "history",
    "bisect",
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
                "llc_bytes": 480 * 2**20,
                "dram_from_bytes": 128 * 2**20,
            }
        )
    )
    result = CliRunner().invoke(app, ["bandwidth", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0 and "read 25.0 GB/s" in result.output
    assert "reads stream at DRAM speed from 128 MiB (LLC 480 MiB)" in result.output
    # where no size up to twice the LLC read at DRAM speed, the LLC is the cache
    figures = json.loads(cached.read_text()) | {"llc_bytes": 32 * 2**20, "dram_from_bytes": None}
    cached.write_text(json.dumps(figures))
    result = CliRunner().invoke(app, ["bandwidth", "--cache-dir", str(tmp_path)])
    assert (
        "LLC 32 MiB (no read up to 64 MiB settled at DRAM speed: the cache is the LLC)"
        in result.output
    )


def test_every_help_fits_80_columns_and_names_its_values():
    """No option name cut, no Python type for a metavar, no format a command refuses."""
    env = {**__import__("os").environ, "COLUMNS": "80"}
    for command in COMMANDS + ["results"]:
        result = subprocess.run(
            [sys.executable, "-c", "from whistle_stop.cli import main; main()", command, "-h"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        text = result.stdout
        assert result.returncode == 0 and "Usage" in text, result.stderr
        assert all(len(line) <= 80 for line in text.splitlines()), (command, text)
        assert "…" not in text and "<list[" not in text and "against ." not in text, text
    compare = subprocess.run(
        [sys.executable, "-c", "from whistle_stop.cli import main; main()", "compare", "-h"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    ).stdout
    assert "html" not in compare and "--fidelity-threshold" in compare


BAD_VALUES = ["", "%", "-1", "9" * 30, "/sys/x/y", "localhost:6379", "a=b", "\x00"]


def _malformed_invocations():
    """Every command with every option given each bad value (arguments too), the rest
    of its required parameters filled with something plausible but absent."""
    import click
    import typer

    group = typer.main.get_command(app)
    for name, command in sorted(group.commands.items()):
        if name == "worker":
            continue  # a well-formed worker serves forever: its refusals are in test_farm.py
        params = [p for p in command.params if not getattr(p, "is_flag", False)]
        params = [p for p in params if p.name != "help"]
        for target in params:
            for value in BAD_VALUES:
                args = [name]
                for param in params:  # in declared order: positional arguments stay in place
                    given = value if param is target else "missing" if param.required else None
                    if given is None:
                        continue
                    args += [given] if isinstance(param, click.Argument) else [param.opts[0], given]
                yield args


def test_no_malformed_argument_reaches_a_traceback(tmp_path, monkeypatch):
    """The class behind issue 28's cases: whatever a user types, the answer is a line,
    never a traceback or an 'internal error' (the catch-all that means a bug)."""
    monkeypatch.chdir(tmp_path)  # farm.db, plots/ and the like land here, not in the tree
    monkeypatch.setenv("FARM_CACHE_DIR", str(tmp_path / "cache"))
    runner = CliRunner()
    seen = 0
    for args in _malformed_invocations():
        result = runner.invoke(app, args)
        seen += 1
        assert not isinstance(result.exception, Exception) or isinstance(
            result.exception, SystemExit
        ), (args, result.exception)
        assert "Traceback" not in result.output and "internal error" not in result.output, (
            args,
            result.output,
        )
        assert result.exit_code in (0, 2, 3), (args, result.exit_code, result.output)
    assert seen > 200


@pytest.mark.parametrize("bench", ["native_profile", "neighbour"])
def test_a_benchmark_refuses_a_model_it_cannot_load_before_it_builds_anything(bench, capsys):
    from importlib import import_module

    main = import_module(f"whistle_stop.bench.{bench}").main
    with pytest.raises(SystemExit) as exit:
        main(["--model", "bogus:thing", *(["--db", "unused.db"] if bench == "neighbour" else [])])
    assert exit.value.code == 2
    assert "argument --model: unknown model source 'bogus:thing'" in capsys.readouterr().err


def test_a_benchmarks_set_option_takes_yaml_values_and_refuses_a_pair_without_a_value(
    tmp_path, capsys
):
    from whistle_stop.bench import calibration
    from whistle_stop.bench.common import settings

    assert settings(["max_rounds=60", "precision=0.02", "bandwidth=host"]) == {
        "max_rounds": 60,
        "precision": 0.02,
        "bandwidth": "host",
    }
    # refused in one line before a sweep is written or run
    with pytest.raises(SystemExit) as exit:
        calibration.main(["--db", str(tmp_path / "c.db"), "--set", "max_rounds"])
    assert exit.value.code == 2  # a usage error, as every other bad option
    assert "argument --set: takes KEY=VALUE, not 'max_rounds'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_benchmark_stops_at_a_sweep_the_farm_refuses(tmp_path, capfd):
    """A value the sweep file refuses (`--set max_rounds=abc`): the farm's one line, then
    the benchmark stops; it neither runs the next sweeps nor reports on a database that
    was never written."""
    from whistle_stop.bench import calibration

    with pytest.raises(SystemExit) as exit:
        calibration.main(
            ["--sweeps", "2", "--db", str(tmp_path / "c.db"), "--set", "max_rounds=abc"]
        )
    assert exit.value.code == 2
    out, err = capfd.readouterr()
    assert "max_rounds: Input should be a valid integer" in err
    assert "sweep 2/2" not in out and "no database" not in err
    assert not (tmp_path / "c.db").exists()


def test_the_neighbour_benchmark_refuses_a_cpu_the_machine_lacks(tmp_path, capsys):
    from whistle_stop.bench import neighbour

    with pytest.raises(SystemExit) as exit:
        neighbour.main(["--db", str(tmp_path / "n.db"), "--cpu", "4096"])
    assert exit.value.code == 2
    assert "--cpu 4096: this machine's CPUs are 0-" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_matmul_sequence_reads_every_weight_once_as_a_step_and_as_one_matrix():
    from whistle_stop.bench.matmul_kernels import BLOCK, Weights

    shapes = [(384, 128), (128, 128), (512, 128), (128, 512)] * 2
    for bits in (8, 4):
        weights = Weights(shapes, bits)
        calls, data, scales = weights.as_shapes(), weights.data, weights.scales
        # back to back: each matrix starts where the last ended, and the last ends at the end
        ends = [(d + n * k * bits // 8, s + 4 * n * k // BLOCK) for n, k, d, s in calls]
        starts = [(d, s) for _, _, d, s in calls[1:]]
        assert starts == ends[:-1]
        assert ends[-1] == (data.ctypes.data + data.nbytes, scales.ctypes.data + scales.nbytes)
        [(n, k, d, s)] = weights.as_one()
        assert (n * k, d, s) == (weights.total, data.ctypes.data, scales.ctypes.data)


@pytest.mark.parametrize(
    "bench, args",
    [
        ("native_profile", ["--rounds", "0"]),
        ("matmul_kernels", ["--sequence", "random:gpt2", "--rounds", "0"]),
        ("long_context", ["--threads", "-1"]),
        ("history", ["--points", "x"]),
    ],
)
def test_a_benchmark_refuses_a_count_under_one_in_one_line(bench, args, capsys):
    from importlib import import_module

    with pytest.raises(SystemExit) as exit:
        import_module(f"whistle_stop.bench.{bench}").main(args)
    assert exit.value.code == 2
    assert f"{args[-2]}: takes a whole number from 1, not {args[-1]!r}" in capsys.readouterr().err
