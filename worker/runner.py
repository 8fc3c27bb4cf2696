"""Run one job: load, warm up, time greedy generation, measure. Knows nothing of Celery.

The process must already be pinned (`worker.pinning.pin_process`) before this
module's first job imports torch. Every outcome is a JSON-able payload: a
job that raises becomes a `failed` payload with its traceback, never an
exception that escapes into the worker loop.
"""

from __future__ import annotations

import os
import re
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whistle_stop.backends import registry
from whistle_stop.backends.base import SupportsReserve, SupportsTeacherForcing
from whistle_stop.backends.config import ModelConfig
from whistle_stop.backends.sources import parse_model_source
from whistle_stop.backends.weights import materialize, weights_digest
from whistle_stop.contract.cpus import format_cpu_list
from whistle_stop.contract.figures import roofline_fraction, roofline_tokens_per_s
from whistle_stop.contract.jobspec import JobSpec
from whistle_stop.contract.payload import HostFacts, Metrics, ResultPayload
from whistle_stop.contract.status import JobStatus
from whistle_stop.worker import activations, fidelity, measure, perplexity, roofline
from whistle_stop.worker.environment import host_environment
from whistle_stop.worker.observe import Observer
from whistle_stop.worker.pinning import threads_outside
from whistle_stop.worker.prompts import TextPrompt, held_out_windows, random_prompt

if TYPE_CHECKING:
    import numpy as np


def run_job(
    spec: dict[str, Any],
    *,
    cache_dir: Path,
    worker_name: str,
    assigned_cpus: list[int] | None = None,
) -> ResultPayload:
    """Measure one job and return its result payload (status `done` or `failed`).

    `assigned_cpus` is the CPU set the worker was given: pinning is checked against it,
    not against whatever this process's affinity has become."""
    started = time.time()
    cpus = sorted(os.sched_getaffinity(0))
    known: dict[str, Any] = {
        "worker": worker_name,
        "cpus": format_cpu_list(cpus),
        "environment": HostFacts.from_dict(host_environment()),
        "started_at": started,
    }
    try:
        job = JobSpec.from_dict(spec)
        known["key"] = job.key
        metrics = _measure(job, sorted(assigned_cpus or cpus), cache_dir)
        return ResultPayload(JobStatus.DONE, metrics=metrics, finished_at=time.time(), **known)
    except Exception:
        return ResultPayload.failed(error=traceback.format_exc(), finished_at=time.time(), **known)


def preload() -> None:
    """Import what every job needs before the job starts (torch alone takes ~1.3 s, and
    transformers' GPT-2 ~3 s here), so a fresh job process spends it outside the job."""
    import torch  # noqa: F401
    import transformers.models.gpt2.modeling_gpt2  # noqa: F401


def _measure(job: JobSpec, cpus: list[int], cache_dir: Path) -> Metrics:
    _size_torch_pool(job.threads)

    clock = time.perf_counter()
    model_dir = materialize(parse_model_source(job.model), cache_dir, job.seed)
    materialize_s = time.perf_counter() - clock

    rss_before_load = _rss_bytes()
    clock = time.perf_counter()
    backend = registry.create(job.backend, model_dir, dict(job.options), job.threads, cache_dir)
    load_s = time.perf_counter() - clock
    model_rss_bytes = _rss_bytes() - rss_before_load

    text = None
    if job.prompt_text:
        text = TextPrompt(model_dir, job.prompt_text, job.context, job.tokenizer)
    config = ModelConfig.from_dir(model_dir)
    # a model that ships held-out text (a trained one) is prompted and judged on it
    windows = None
    if not text:
        count, length = job.fidelity_prompts, max(1, job.fidelity_tokens)
        windows = held_out_windows(model_dir, job.context, length, count)
    prompt = text.ids if text else random_prompt(job.seed, job.context, config.vocab_size)
    if windows:
        prompt = windows[0][0]
    # fidelity does not change from round to round: measured in the first only
    teacher = isinstance(backend, SupportsTeacherForcing) and job.round == 1
    references = None
    # the reference against itself is 1 and 0; on held-out text it has a perplexity
    if job.fidelity_tokens and teacher and (windows or not _is_reference(job)):
        references = _references(job, model_dir, prompt, config, cache_dir, windows)
    extra = _timer_extra(job, config.n_positions)
    for index in range(job.warmups):
        # the last warm-up runs the timer check's longer generation: its timed run then
        # meets caches and allocations already sized and touched (first touches in the
        # timed run made the outer clock read ~10% slow per token)
        last = index == job.warmups - 1
        backend.generate(prompt, job.generation + (extra if last else 0))

    before = _bandwidth_now(job)
    _reset_peak_rss()
    with Observer(cpus, job.threads, backend.load_report.extra_threads) as seen:
        repeats, tokens, text_s = _timed_repeats(backend, prompt, job, text, seen)
        remeasured = job.rerun_noisy and measure.summarize(repeats, job.noise_threshold)["noisy"]
        if remeasured:  # noise is often a passing disturbance: one more try, and say so
            repeats, tokens, text_s = _timed_repeats(backend, prompt, job, text, seen)
    rss_peak_bytes = _peak_rss_bytes()  # the timed region only: read before anything else runs
    after = _bandwidth_now(job)
    generated = {len(r.token_times) for r in repeats}
    if generated != {job.generation}:
        raise RuntimeError(f"backend produced {generated} tokens, expected {job.generation}")
    flags = list(seen.flags)
    check = _timer_check(backend, prompt, job, repeats, extra)
    if check is not None and (verdict := check.verdict(TIMER_LIMIT)):
        flags.append(verdict)

    figures: dict[str, Any] = {}
    if job.fidelity_tokens and teacher and _is_reference(job):
        own = _reference_text(references, job.fidelity_tokens) if references else {}
        figures = _reference_itself(job) | own
        flags.append(
            "fidelity: this is the reference (transformers float32): 1 and 0 by "
            "construction, not measured"
        )
    elif references is not None:
        figures = _fidelity(backend, references, tokens, job.fidelity_tokens)
    if job.eval_text and teacher:
        figures.update(_perplexity(job, backend, model_dir, config, cache_dir))

    report = backend.load_report
    summary = measure.summarize(repeats, job.noise_threshold)
    roofline_figures = _roofline(
        config, report, summary["decode_tokens_per_s"], cpus, cache_dir, before, after, job
    )
    flags += roofline_figures.pop("flags")
    figures.update(roofline_figures)
    return Metrics(
        **summary,
        materialize_s=materialize_s,
        load_s=load_s,
        compile_s=report.compile_s,
        artifact_built=report.artifact_built,
        artifact_build_s=report.artifact_build_s,
        artifact_bytes=report.artifact_bytes,
        rss_peak_bytes=rss_peak_bytes,
        model_rss_bytes=model_rss_bytes,
        torch_threads=_torch_threads(),
        load_extra=report.extra,
        remeasured=bool(remeasured),
        samples=measure.raw_samples(repeats),
        tokens=tokens,
        pinning_violations=_pinning_violations(job, cpus, _torch_threads(), report.extra)
        + seen.violations,
        timer_check=check.disagreement if check else None,
        machine=seen.machine,
        flags=flags,
        **text_s,
        **figures,
    )


TIMER_LIMIT = 0.05  # token stamps and the outer clock may disagree by this much
# fewer extra tokens than this, and the run-to-run noise of two generations' totals (1-2%
# on a 2-vCPU VM) makes the check unreliable (6% disagreement at 8 extra tokens, 1% at 32)
TIMER_MIN_EXTRA = 16


def _is_reference(job: JobSpec) -> bool:
    """transformers float32 is the reference: its agreement with itself is not a figure."""
    return job.backend == "hf" and dict(job.options).get("dtype") == "float32"


def _reference_itself(job: JobSpec) -> dict[str, Any]:
    positions = job.fidelity_tokens * job.fidelity_prompts
    low, high = fidelity.wilson(positions, positions)
    return {
        "top1_agreement": 1.0,
        "top1_low": low,
        "top1_high": high,
        "mean_kl": 0.0,
        "kl_p50": 0.0,
        "kl_p90": 0.0,
        "kl_p99": 0.0,
        "kl_max": 0.0,
        "kl_low": 0.0,
        "kl_high": 0.0,
        "top_prob_diff": 0.0,
        "max_logit_diff": 0.0,
        "first_divergence": job.generation,
        "fidelity_positions": positions,
        "fidelity_prompts": job.fidelity_prompts,
    }


@dataclass
class References:
    """transformers float32 on every fidelity prompt, and what was fed after each."""

    entries: list[tuple[list[int], list[int], np.ndarray, dict]]  # prompt, fed, logits, maxima
    greedy: list[int]  # its free-running tokens after the job's prompt
    text: bool  # fed held-out text, not its own greedy choices


def _references(job: JobSpec, model_dir: Path, prompt: list[int], config, cache_dir, windows):
    """transformers float32 on the job's prompt and `fidelity_prompts - 1` more of the same
    length: random ones fed its own greedy tokens, or held-out text windows fed the text's
    next tokens (`windows`). Cached on disk."""
    digest = weights_digest(model_dir, cache_dir)
    greedy = fidelity.reference(model_dir, digest, prompt, job.generation, cache_dir)
    if windows:
        entries = [
            (p, *fidelity.reference(model_dir, digest, p, len(fed), cache_dir, fed=fed))
            for p, fed in windows
        ]
        return References(entries, greedy[0], text=True)
    prompts = [
        random_prompt(job.seed + 1000 * i, job.context, config.vocab_size)
        for i in range(1, job.fidelity_prompts)
    ]
    entries = [(prompt, *greedy)] + [
        (p, *fidelity.reference(model_dir, digest, p, job.fidelity_tokens, cache_dir))
        for p in prompts
    ]
    return References(entries, greedy[0], text=False)


def _fidelity(backend, references: References, tokens: list[int], positions: int):
    ref_logits, logits, fed = [], [], []
    for prompt, ref_tokens, ref, _ in references.entries:
        checked = ref_tokens[:positions]
        logits.append(backend.teacher_forced_logits(prompt, checked))
        ref_logits.append(ref[: len(checked)])
        fed.append(checked)
    text = fed if references.text else None
    figures = fidelity.compare(references.greedy, ref_logits, logits, tokens, text)
    return figures | _text_facts(references)


def _reference_text(references: References, positions: int) -> dict[str, Any]:
    """The reference's own perplexity on the held-out positions, beside its 1 and 0."""
    if not references.text:
        return {}
    ref_logits = [ref[:positions] for _, _, ref, _ in references.entries]
    fed = [tokens[:positions] for _, tokens, _, _ in references.entries]
    perplexity = fidelity.text_perplexity(ref_logits, fed)
    return {"perplexity": perplexity, "perplexity_delta": 0.0} | _text_facts(references)


def _text_facts(references: References) -> dict[str, Any]:
    if not references.text:
        return {}
    maxima = [entry[3] for entry in references.entries]
    return {"fidelity_data": "held-out text", "activation_outliers": activations.summarize(maxima)}


def _timer_extra(job: JobSpec, n_positions: int) -> int:
    """How many extra tokens the timer check generates (0: none; too few to tell apart
    from the noise of two generations' totals)."""
    extra = min(job.generation // 2, n_positions - job.context - job.generation)
    return extra if extra >= TIMER_MIN_EXTRA else 0


def _timer_check(backend, prompt: list[int], job: JobSpec, repeats, extra: int):
    """`measure.TimerCheck` of N + `extra` tokens between the last timed repeat and one
    more N-token run (None: no room for extra tokens)."""
    if not extra:
        return None
    total = job.generation + extra
    if isinstance(backend, SupportsReserve):
        backend.reserve(len(prompt) + total - 1)
    start = time.perf_counter()
    longer = backend.generate(prompt, total)
    longer_s = time.perf_counter() - start
    start = time.perf_counter()
    backend.generate(prompt, job.generation)
    after_s = time.perf_counter() - start
    times = list(longer.token_times)
    short_runs = [r.end_to_end_s for r in repeats] + [after_s]
    return measure.TimerCheck.of(short_runs, longer_s, times[-1] - times[-1 - extra], extra)


def _timed_repeats(backend, prompt: list[int], job: JobSpec, text: TextPrompt | None, seen):
    """Greedy generations until the stopping rule says enough; with a text prompt, its
    tokenization and the detokenization of the output are timed around each one."""
    repeats: list[measure.Repeat] = []
    tokens: list[int] = []
    encode_s: list[float] = []
    decode_s: list[float] = []
    measured_s = 0.0
    while not measure.should_stop(
        len(repeats),
        measured_s,
        repeats=job.repeats,
        min_duration_s=job.min_duration_s,
        max_repeats=job.max_repeats,
    ):
        if text:
            encode_s.append(text.time_encode())
        start = time.perf_counter()
        generation = backend.generate(prompt, job.generation)
        end = time.perf_counter()
        if text:
            decode_s.append(text.time_decode(generation.tokens))
        repeats.append(measure.Repeat(start, end, tuple(generation.token_times)))
        seen.sample()  # every repeat is seen at least once, however short
        _check_same_tokens(tokens, generation.tokens, len(repeats))
        tokens = generation.tokens
        measured_s += end - start
    text_s = {}
    if text:
        text_s = {
            "tokenize_ms": 1e3 * sum(encode_s) / len(encode_s),
            "detokenize_ms": 1e3 * sum(decode_s) / len(decode_s),
        }
    return repeats, tokens, text_s


def _check_same_tokens(earlier: list[int], tokens: list[int], repeat: int) -> None:
    """Greedy decoding of one prompt is deterministic: every repeat must choose the same
    tokens. A backend that does not must say so, or its figures time different work."""
    if not earlier:
        return
    position = next(
        (i for i, (a, b) in enumerate(zip(earlier, tokens, strict=False)) if a != b), None
    )
    if position is not None or len(earlier) != len(tokens):
        where = position if position is not None else min(len(earlier), len(tokens))
        raise RuntimeError(
            f"repeat {repeat} chose other greedy tokens than repeat 1, first at position "
            f"{where} ({earlier[where] if where < len(earlier) else '-'} then "
            f"{tokens[where] if where < len(tokens) else '-'}): the backend is not deterministic"
        )


def _bandwidth_now(job: JobSpec) -> dict | None:
    """The CPU set's read bandwidth this minute, with the job's thread count (None: the
    sweep asked for the host's cached figure)."""
    if job.bandwidth != "fresh":
        return None
    return roofline.fresh_read_bandwidth(job.threads)


BANDWIDTH_DRIFT = 0.10  # before and after a job may differ by this much


def _roofline(
    config: ModelConfig,
    report,
    decode_tokens_per_s: float,
    cpus: list[int],
    cache_dir: Path,
    before: dict | None,
    after: dict | None,
    job: JobSpec,
):
    """Bytes read per token, the bandwidth bound, and how much of it this job reached:
    against the mean of the bandwidth measured around the job, or the host's figure;
    and the same counting the KV cache a step reads, where the backend says its width."""
    flags = []
    # the host's figures, measured once per CPU set: the bandwidth where the job was not
    # measured around, and in any case the size from which reads stream from DRAM
    threads = _torch_threads()
    host = roofline.cached_bandwidth(format_cpu_list(cpus), len(cpus), cache_dir)
    if threads:
        _size_torch_pool(threads)  # a measurement (not cached yet) used the whole CPU set
    if before and after:
        low, high = sorted((before["read_bytes_per_s"], after["read_bytes_per_s"]))
        read, measured_at = (low + high) / 2, before["measured_at"]
        if high > low * (1 + BANDWIDTH_DRIFT):
            flags.append(f"bandwidth moved {high / low - 1:.0%} between before and after the job")
    else:
        read, measured_at = host["read_bytes_per_s"], host.get("measured_at")
    weight_bytes = roofline.weight_bytes_per_token(
        config, report.matmul_bytes, report.lm_head_bytes
    )
    fraction = roofline_fraction(decode_tokens_per_s, read, weight_bytes)
    kv_bytes = kv_fraction = None
    if report.kv_bytes:
        kv_bytes = roofline.kv_bytes_per_token(config, report.kv_bytes, job.context, job.generation)
        kv_fraction = roofline_fraction(decode_tokens_per_s, read, weight_bytes + kv_bytes)
    if fraction is not None and fraction > 1:
        flags.append(
            f"{fraction:.0%} of the roofline: weights partly served from the "
            "last-level cache, not DRAM"
        )
    return {
        "weight_bytes_per_token": weight_bytes,
        "bandwidth_bytes_per_s": read,
        "bandwidth_before_bytes_per_s": before["read_bytes_per_s"] if before else None,
        "bandwidth_after_bytes_per_s": after["read_bytes_per_s"] if after else None,
        "bandwidth_measured_at": measured_at,
        "roofline_tokens_per_s": roofline_tokens_per_s(read, weight_bytes),
        "roofline_fraction": fraction,
        "kv_bytes_per_token": kv_bytes,
        "roofline_kv_fraction": kv_fraction,
        "llc_bytes": roofline.last_level_cache_bytes(min(cpus) if cpus else 0),
        "dram_from_bytes": host.get("dram_from_bytes"),
        "flags": flags,
    }


def _perplexity(
    job: JobSpec, backend, model_dir: Path, config: ModelConfig, cache_dir: Path
) -> dict[str, float]:
    text = perplexity.load_eval_text(job.eval_text)
    ids = perplexity.token_ids(model_dir, text, job.eval_tokens)
    window = config.n_positions
    measured = perplexity.perplexity(backend, ids, window)
    digest = weights_digest(model_dir, cache_dir)
    reference = perplexity.reference_perplexity(model_dir, digest, ids, window, cache_dir)
    return {"perplexity": measured, "perplexity_delta": measured - reference}


def _pinning_violations(
    job: JobSpec, cpus: list[int], torch_threads: int, extra: dict[str, Any]
) -> list[str]:
    violations = [f"thread {entry} outside CPU set" for entry in threads_outside(cpus)]
    if torch_threads and torch_threads != job.threads:
        violations.append(f"torch runs {torch_threads} threads, job asked for {job.threads}")
    ort_threads = extra.get("ort_intra_op_threads")
    if ort_threads is not None and ort_threads != job.threads:
        violations.append(f"ONNX Runtime runs {ort_threads} threads, job asked for {job.threads}")
    if job.threads > len(cpus):
        violations.append(f"{job.threads} threads oversubscribe {len(cpus)} CPUs")
    return violations


def _size_torch_pool(threads: int) -> None:
    """The job's thread budget, for torch if it is loaded (the preload, or a backend that
    needs it) and for OpenMP pools started later. A backend without torch leaves it out."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def _torch_threads() -> int:
    """torch's intra-op threads, or 0 if no torch was loaded for this job."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else 0


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(match.group(1)) if match else 0


def _rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024


def _peak_rss_bytes() -> int:
    return _status_kib("VmHWM") * 1024


def _reset_peak_rss() -> None:
    """Reset VmHWM so the peak covers the timed region only (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # then the peak covers the whole process lifetime
