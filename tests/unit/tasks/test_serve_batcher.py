"""The server's queue on its own (no model): which requests share a chain call, the window, the queue limit, faults."""

from __future__ import annotations

import threading
import time

import pytest

from audioldm2_fast.tasks.serve_batcher import Batcher, Job, QueueFull


class Recorder:
    """A chain call that records its batches (as request names) and answers each request with its name."""

    def __init__(self, fail_on: str | None = None):
        self.batches: list[list[str]] = []
        self.started: list[float] = []
        self.fail_on = fail_on

    def __call__(self, jobs: list[Job]) -> None:
        self.started.append(time.monotonic())
        self.batches.append([job.request["name"] for job in jobs])
        if any(job.request["name"] == self.fail_on for job in jobs):
            raise RuntimeError("boom")
        for job in jobs:
            job.future.set_result(job.request["name"])


def _job(name: str, shape: str) -> Job:
    return Job(id=f"{name}-0000000", request={"name": name, "shape": shape})


def _batcher(run, window_s=0.05, max_batch=2, max_queue=16) -> Batcher:
    return Batcher(
        run, key=lambda request: request["shape"], window_s=window_s, max_batch=max_batch, max_queue=max_queue
    )


def test_the_oldest_requests_shape_goes_first_up_to_max_batch_and_others_keep_their_place():
    run = Recorder()
    batcher = _batcher(run, window_s=0.05, max_batch=2)
    jobs = [_job("a1", "A"), _job("b1", "B"), _job("a2", "A"), _job("a3", "A")]
    for job in jobs:
        batcher.submit(job)  # all waiting before the worker starts
    batcher.start()
    assert [job.future.result(10) for job in jobs] == ["a1", "b1", "a2", "a3"]
    batcher.stop()
    assert run.batches == [["a1", "a2"], ["b1"], ["a3"]]
    assert batcher.stats() == {"queued": 0, "requests": 4, "chain_calls": 3, "batch_sizes": {"1": 2, "2": 1}}


def test_requests_arriving_within_the_window_share_a_call():
    run = Recorder()
    batcher = _batcher(run, window_s=0.3, max_batch=8)
    batcher.start()
    first = batcher.submit(_job("x", "A"))
    time.sleep(0.1)
    second = batcher.submit(_job("y", "A"))
    assert (first.future.result(10), second.future.result(10)) == ("x", "y")
    late = batcher.submit(_job("z", "A"))  # after the call: a call of its own
    late.future.result(10)
    batcher.stop()
    assert run.batches == [["x", "y"], ["z"]]
    assert run.started[0] - first.arrival >= 0.29  # the first request waited for the window, no longer than needed
    assert first.batch_size == 2 and first.status == "done"


def test_a_full_queue_is_refused_with_a_retry_estimate():
    batcher = _batcher(Recorder(), max_queue=2)  # not started: nothing leaves the queue
    batcher.submit(_job("a", "A"))
    batcher.submit(_job("b", "A"))
    with pytest.raises(QueueFull) as info:
        batcher.submit(_job("c", "A"))
    assert info.value.retry_after_s >= 1
    assert batcher.progress("b-0000000") == {"id": "b-0000000", "status": "queued", "position": 1}
    assert batcher.in_use("a-0000000") and not batcher.in_use("c-0000000")


def test_a_failing_call_fails_its_requests_and_the_worker_goes_on():
    run = Recorder(fail_on="bad")
    batcher = _batcher(run, max_batch=1)
    batcher.start()
    bad, good = batcher.submit(_job("bad", "A")), batcher.submit(_job("good", "A"))
    with pytest.raises(RuntimeError, match="boom"):
        bad.future.result(10)
    assert good.future.result(10) == "good"
    batcher.stop()
    assert (bad.status, good.status) == ("failed", "done")


def test_stop_runs_what_is_queued_then_refuses_more():
    run = Recorder()
    batcher = _batcher(run, window_s=5.0, max_batch=4)  # a long window: stopping does not wait for it
    batcher.start()
    jobs = [batcher.submit(_job(f"j{k}", "A")) for k in range(3)]
    stopper = threading.Thread(target=batcher.stop)
    t0 = time.monotonic()
    stopper.start()
    stopper.join(10)
    assert time.monotonic() - t0 < 4 and [job.future.result(0) for job in jobs] == ["j0", "j1", "j2"]
    with pytest.raises(RuntimeError, match="shutting down"):
        batcher.submit(_job("late", "A"))
