"""The offload tasks a process counts (prefork_lb.offload.counters), through a real pool: each
task handed to a process is submitted once and ends in exactly one outcome."""

from __future__ import annotations

import time

import pytest

from prefork_lb.offload import OffloadError, OffloadPool
from prefork_lb.offload.counters import TASKS, TaskCounters


def outcomes() -> dict[str, int]:
    from prefork_lb.offload.counters import OUTCOMES

    return dict(zip(OUTCOMES, TASKS.words()[: len(OUTCOMES)], strict=True))


def moved(before: dict[str, int]) -> dict[str, int]:
    now = outcomes()
    return {k: now[k] - before[k] for k in now if now[k] != before[k]}


def raise_value_error(x: int) -> int:
    raise ValueError(x)


def test_completed_failed_and_timed_out_tasks() -> None:
    before = outcomes()
    histogram_before = sum(TASKS.words()[6:])
    with OffloadPool(size=2) as pool:
        assert pool.map(abs, [-1, -2, -3]) == [1, 2, 3]
        with pytest.raises(ValueError):
            pool.submit(raise_value_error, 4)
        with pytest.raises(TimeoutError):
            pool.submit(time.sleep, 30, timeout=0.2)
    assert moved(before) == {"submitted": 5, "completed": 3, "failed": 1, "timed_out": 1}
    assert sum(TASKS.words()[6:]) - histogram_before == 4, "durations of the tasks that answered"


def test_a_pool_process_that_dies_is_a_failure_and_its_map_siblings_are_cancelled() -> None:
    import os

    before = outcomes()
    with OffloadPool(size=2) as pool:
        with pytest.raises(OffloadError):
            pool.map(os._exit, [3])
        with pytest.raises(ValueError):
            pool.map(raise_or_sleep, [0, 1])  # the first raises while the second still runs
    assert moved(before) == {"submitted": 3, "failed": 2, "cancelled": 1}


def raise_or_sleep(i: int) -> None:
    if i == 0:
        raise ValueError(i)
    time.sleep(30)


def test_words_are_outcomes_then_the_sum_then_the_buckets() -> None:
    c = TaskCounters()
    c.submitted()
    c.ended(1, 0.004)
    words = c.words()
    assert words[:5] == [1, 1, 0, 0, 0] and words[5] == 4000 and words[6] == 1 and sum(words[6:]) == 1


def test_an_executors_tasks_count_as_the_pools() -> None:
    import concurrent.futures

    from prefork_lb.offload.external import ExecutorOffload

    before = outcomes()
    threads = concurrent.futures.ThreadPoolExecutor(2)
    runner = ExecutorOffload(threads, "threads")
    try:
        assert runner.submit(abs, -1) == 1 and runner.map(abs, [-2, -3]) == [2, 3]
        with pytest.raises(ValueError):
            runner.submit(raise_value_error, 4)
        with pytest.raises(TimeoutError):
            runner.submit(time.sleep, 2, timeout=0.05)
    finally:
        runner.close()
    assert moved(before) == {"submitted": 5, "completed": 3, "failed": 1, "timed_out": 1}
