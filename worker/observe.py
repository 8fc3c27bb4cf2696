"""What the machine did while a job was timed, read from /proc rather than from what
the job believes about itself.

    with Observer(assigned_cpus, job_threads) as seen:
        ...timed region; call seen.sample() between repeats...
    seen.machine, seen.flags, seen.violations

A thread samples every thread of this process (`/proc/self/task/*/stat`: the CPU it
last ran on, its CPU time) every `interval_s`, so a thread that runs outside the
assigned CPU set, or a pool nobody asked for, is seen however the job configured
itself. Around the region it reads the CPUs' steal and busy time (`/proc/stat`), the
threads' context switches and the process's major faults, and how much of the job's
CPUs went to other processes (a kernel thread such as DAMON's kdamond, the farm's own
orchestrator, a neighbour that ignores pinning), naming the busiest of them.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

# Flag a result when the machine took this much from the job (a slow outlier then
# explains itself); below them a quiet 2-vCPU VM stays unflagged.
STEAL_LIMIT = 0.02  # share of the job's CPUs' time the hypervisor gave to someone else
# preemptions per second of the timed region, all threads: 150-900 on a quiet 2-vCPU VM
# running a 2-thread job (each of its threads gives way to the other's and the sampler)
INVOLUNTARY_PER_S = 2000.0
BUSY_FLOOR = 0.10  # a thread "did real work" above this share of one CPU
# share of the job's CPUs' time that other processes ran on them: 0-0.5% beside jobs on
# a 2-vCPU VM whose kernel ran DAMON's reclaim thread
OTHERS_LIMIT = 0.05


@dataclass
class ThreadTimes:
    name: str
    cpu_s: float  # user + system
    switches: tuple[int, int] = (0, 0)  # voluntary, involuntary


@dataclass
class Observer:
    cpus: list[int]
    threads: int
    extra_threads: int = 0  # declared by the backend (LoadReport.extra_threads)
    interval_s: float = 0.02
    machine: dict = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.allowed = set(self.cpus)
        self.ran_outside: dict[int, set[int]] = {}
        self.names: dict[int, str] = {}
        self.cpu_seen: dict[int, float] = {}  # the latest CPU time seen of each thread
        self.samples = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def __enter__(self) -> Observer:
        self.processes_start = _processes()  # first: a host with many takes milliseconds
        self.started = time.perf_counter()
        self.cpu_start = _cpu_ticks()
        self.threads_start = _threads()
        self.faults_start = _major_faults()
        self.own_start = _process_cpu_s()
        self.sampler = threading.Thread(target=self._run, name="ws-observer", daemon=True)
        self.sampler.start()
        return self

    def _run(self) -> None:
        self.own = threading.get_native_id()
        while not self.stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        """Where every thread last ran (callable between repeats, too)."""
        seen = _last_cpus()
        with self.lock:
            self.samples += 1
            for tid, (name, cpu, cpu_s) in seen.items():
                self.names[tid] = name
                self.cpu_seen[tid] = max(cpu_s, self.cpu_seen.get(tid, 0.0))
                if cpu not in self.allowed:
                    self.ran_outside.setdefault(tid, set()).add(cpu)

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.sampler.join()
        self.sample()
        wall = time.perf_counter() - self.started
        threads_end = _threads()
        cpu_end = _cpu_ticks()
        own = getattr(self, "own", None)
        # threads that ended during the region are known from the samples only
        worked = {
            tid: cpu_s - self.threads_start.get(tid, ThreadTimes("", 0.0)).cpu_s
            for tid, cpu_s in self.cpu_seen.items()
            if tid != own
        }
        busy = sorted(tid for tid, cpu_s in worked.items() if cpu_s > BUSY_FLOOR * wall)
        voluntary = involuntary = 0
        for tid, t in threads_end.items():
            if tid == own:
                continue
            before = self.threads_start.get(tid, ThreadTimes(t.name, 0.0)).switches
            voluntary += t.switches[0] - before[0]
            involuntary += t.switches[1] - before[1]
        steal, others_busy = _cpu_shares(self.cpu_start, cpu_end, self.allowed)
        own_s = _process_cpu_s() - self.own_start
        others = _others_on(self.cpu_start, cpu_end, self.allowed, own_s)
        busiest = _busiest_others(self.processes_start, _processes())
        self.machine = {
            "timed_s": wall,
            "steal": steal,
            "other_cpus_busy": others_busy,
            "others_on_cpus": others,  # share of the job's CPUs other processes used
            "busiest_others": busiest,  # [name, CPU seconds] of the top other processes
            "voluntary_switches": voluntary,
            "involuntary_switches": involuntary,
            "major_faults": _major_faults() - self.faults_start,
            "anon_huge_bytes": _anon_huge_bytes(),
            "threads_seen": len(threads_end) - (own in threads_end),
            "busy_threads": len(busy),
            "declared_extra_threads": self.extra_threads,
            "busy_thread_names": [self.names[tid] for tid in busy],
            "thread_samples": self.samples,
            "ran_outside": {str(tid): sorted(cpus) for tid, cpus in self.ran_outside.items()},
        }
        if steal is not None and steal > STEAL_LIMIT:
            self.flags.append(f"steal {steal:.0%} of the job's CPU time")
        if wall > 0 and involuntary / wall > INVOLUNTARY_PER_S:
            self.flags.append(f"{involuntary / wall:.0f} involuntary context switches/s")
        if others is not None and others > OTHERS_LIMIT:
            names = ", ".join(f"{name} {cpu_s:.2f} s" for name, cpu_s in busiest) or "unknown"
            self.flags.append(
                f"other processes took {others:.0%} of the job's CPUs (busiest: {names})"
            )
        if others_busy is not None and others_busy > 0.5:
            self.flags.append(f"the other CPUs were {others_busy:.0%} busy")
        for tid, cpus in sorted(self.ran_outside.items()):
            listed = ",".join(map(str, sorted(cpus)))
            name = self.names.get(tid, "?")
            self.violations.append(
                f"thread {tid} ({name}) ran on CPU {listed}, outside the "
                f"assigned {_listed(self.cpus)}"
            )
        if len(busy) > self.threads + self.extra_threads:
            names = ", ".join(sorted({self.names[tid] for tid in busy}))
            declared = f" and {self.extra_threads} more its backend runs" * bool(self.extra_threads)
            self.violations.append(
                f"{len(busy)} threads did real work for a {self.threads}-thread job{declared} "
                f"({names}): a pool the job did not ask for"
            )


def _listed(cpus: list[int]) -> str:
    from whistle_stop.contract.cpus import format_cpu_list

    return format_cpu_list(cpus)


def _fields(stat: str) -> list[str]:
    """The fields after the command name (which may hold spaces and parentheses)."""
    return stat[stat.rindex(")") + 2 :].split()


def _name(stat: str) -> str:
    return stat[stat.index("(") + 1 : stat.rindex(")")]


def _cpu_seconds(fields: list[str], tick: int) -> float:
    """utime + stime of a /proc stat line's fields (after the name), in seconds."""
    return (int(fields[11]) + int(fields[12])) / tick


def _last_cpus() -> dict[int, tuple[str, int, float]]:
    """tid -> (thread name, the CPU it last ran on (field 39 of its stat), CPU seconds)."""
    tick = os.sysconf("SC_CLK_TCK")
    seen = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended while we looked
            continue
        rest = _fields(stat)
        seen[int(task.name)] = (_name(stat), int(rest[36]), _cpu_seconds(rest, tick))
    return seen


def _threads() -> dict[int, ThreadTimes]:
    tick = os.sysconf("SC_CLK_TCK")
    threads = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            status = (task / "status").read_text()
        except OSError:
            continue
        rest = _fields(stat)
        counts = tuple(int(m) for m in re.findall(r"ctxt_switches:\s+(\d+)", status)) or (0, 0)
        threads[int(task.name)] = ThreadTimes(
            _name(stat),
            _cpu_seconds(rest, tick),
            counts[:2],  # type: ignore[arg-type]
        )
    return threads


def _major_faults() -> int:
    return int(_fields(Path("/proc/self/stat").read_text())[9])


def _cpu_ticks() -> dict[int, list[int]]:
    """cpuN -> [user, nice, system, idle, iowait, irq, softirq, steal] in clock ticks."""
    ticks = {}
    for line in Path("/proc/stat").read_text().splitlines():
        match = re.match(r"cpu(\d+)\s+(.*)", line)
        if match:
            ticks[int(match.group(1))] = [int(v) for v in match.group(2).split()[:8]]
    return ticks


def _tick_deltas(start: dict, end: dict, cpus) -> list[int]:
    """Per field of /proc/stat (user ... steal), the ticks the CPUs spent between readings."""
    sums = [0] * 8
    for cpu in cpus:
        if cpu in start and cpu in end:
            for field, (a, b) in enumerate(zip(start[cpu], end[cpu], strict=False)):
                sums[field] += b - a
    return sums


def _cpu_shares(start: dict, end: dict, allowed: set[int]) -> tuple[float | None, float | None]:
    """Steal on the job's CPUs, and how busy the other CPUs were, over the region."""
    mine = _tick_deltas(start, end, allowed)
    others = _tick_deltas(start, end, [c for c in end if c not in allowed])
    total, other_total = sum(mine), sum(others)
    steal_share = mine[7] / total if total else None
    busy = (other_total - others[3] - others[4]) / other_total if other_total else None
    return steal_share, busy


def _process_cpu_s() -> float:
    """This process's CPU time, every thread, user + system."""
    times = os.times()
    return times.user + times.system


def _others_on(start: dict, end: dict, cpus: set[int], own_s: float) -> float | None:
    """The share of the job's CPUs' time that processes other than this one ran: the
    CPUs' process time (/proc/stat: not idle, iowait, interrupts or stolen) minus this
    process's own, less the error of counting both in clock ticks (one per CPU and one
    for the process), so a short job's rounding does not read as a neighbour."""
    ticks = _tick_deltas(start, end, cpus)
    ran, total = ticks[0] + ticks[1] + ticks[2], sum(ticks)  # user, nice, system
    if not total:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    rounding = (len(cpus) + 1) / tick
    return max(0.0, ran / tick - own_s - rounding) / (total / tick)


def _processes() -> dict[int, tuple[str, float]]:
    """pid -> (command name, CPU seconds, every thread) of every process but this one."""
    tick, me, seen = os.sysconf("SC_CLK_TCK"), os.getpid(), {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone, or not ours to read
            continue
        rest = _fields(stat)
        seen[int(entry.name)] = (_name(stat), _cpu_seconds(rest, tick))
    return seen


def _busiest_others(start: dict, end: dict, top: int = 3) -> list[list]:
    """The other processes that used the most CPU between the two readings (anywhere:
    /proc does not say on which CPU), above a tick's worth."""
    used = [(name, cpu_s - start.get(pid, (name, 0.0))[1]) for pid, (name, cpu_s) in end.items()]
    used = sorted((u for u in used if u[1] > 0.01), key=lambda u: -u[1])
    return [[name, round(cpu_s, 3)] for name, cpu_s in used[:top]]


def _anon_huge_bytes() -> int:
    """Memory of this process backed by transparent huge pages."""
    try:
        text = Path("/proc/self/smaps_rollup").read_text()
    except OSError:
        return 0
    match = re.search(r"^AnonHugePages:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) * 1024 if match else 0
