"""CPU lists and the pinning check."""

from __future__ import annotations

import os

import pytest

from whistle_stop.contract.cpus import CpuSetError, format_cpu_list, parse_cpu_list
from whistle_stop.worker.pinning import threads_outside


@pytest.mark.parametrize(
    ("cpus", "text"),
    [([0], "0"), ([0, 1], "0-1"), ([0, 1, 2, 3, 6], "0-3,6"), ([1, 3, 5], "1,3,5")],
)
def test_format_cpu_list(cpus, text):
    assert format_cpu_list(cpus) == text


def test_parse_cpu_list_accepts_this_machines_cpus():
    available = sorted(os.sched_getaffinity(0))
    assert parse_cpu_list(format_cpu_list(available)) == available
    assert parse_cpu_list(f"{available[0]}") == [available[0]]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty CPU list; valid CPUs here"),
        ("9999", "not available here; valid CPUs"),
        ("a-b", "malformed"),
        ("3-1", "malformed"),
    ],
)
def test_bad_cpu_lists_are_refused_with_the_valid_ones(text, message):
    with pytest.raises(CpuSetError, match=message):
        parse_cpu_list(text)


def test_threads_outside_reports_escapes():
    everything = sorted(os.sched_getaffinity(0))
    assert threads_outside(everything) == []
    if len(everything) > 1:  # this process is allowed everywhere, so it escapes a smaller set
        assert threads_outside(everything[:1]) != []
