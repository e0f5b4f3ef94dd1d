"""The server's queue: requests of one shape that arrive close together run in one chain call.

A worker thread takes the oldest waiting request, waits until ``window_s`` has passed since it arrived (or until
``max_batch`` requests of its shape are waiting), and hands that many, oldest first, to ``run``. Requests of other
shapes keep their place in the queue. Under load the window costs nothing: the oldest request has already waited
longer than it while the previous call ran. Nothing here knows about models; ``key`` says what a shape is.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import math
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue holds ``max_queue`` requests; ``retry_after_s`` estimates when there will be room."""

    def __init__(self, retry_after_s: int):
        super().__init__(f"the queue is full; retry in about {retry_after_s} s")
        self.retry_after_s = retry_after_s


@dataclass(eq=False)
class Job:
    """One request on its way through the queue; ``future`` gets what ``run`` sets for it."""

    id: str
    request: Any
    arrival: float = field(default_factory=time.monotonic)
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    key: Hashable | None = None
    status: str = "queued"  # queued | running | done | failed
    step: int = 0  # denoising steps done (while running)
    batch_size: int = 0  # requests in its chain call
    started: float | None = None


class Batcher:
    """Queue + one worker thread. ``run(jobs)`` must set every job's future (a result or an exception)."""

    def __init__(
        self,
        run: Callable[[list[Job]], None],
        key: Callable[[Any], Hashable],
        window_s: float,
        max_batch: int,
        max_queue: int,
        keep_finished: int = 1024,
    ):
        self._run, self._key = run, key
        self.window_s, self.max_batch, self.max_queue = window_s, max_batch, max_queue
        self._waiting: list[Job] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()  # in flight, then recent ones
        self._keep_finished = keep_finished
        self.chain_calls = 0
        self.requests = 0
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        self._call_s = 0.0  # a running mean of a chain call's wall time

    # ------------------------------------------------------------------------------------------------ the queue

    def submit(self, job: Job) -> Job:
        """Queue a job; QueueFull when ``max_queue`` are waiting, RuntimeError when stopping."""
        with self._cond:
            if self._stopping:
                raise RuntimeError("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(self.retry_after_s())
            self._waiting.append(job)
            self._jobs[job.id] = job
            self._cond.notify_all()
        return job

    def retry_after_s(self) -> int:
        calls_ahead = math.ceil((len(self._waiting) + 1) / self.max_batch)
        return max(1, math.ceil(calls_ahead * (self._call_s or 1.0)))

    def in_use(self, job_id: str) -> bool:
        job = self._jobs.get(job_id)
        return job is not None and job.status in ("queued", "running")

    def progress(self, job_id: str) -> dict[str, Any] | None:
        job = self._jobs.get(job_id)
        if job is None:
            return None
        out: dict[str, Any] = {"id": job.id, "status": job.status}
        if job.status == "queued":
            with self._cond:
                out["position"] = next((i for i, j in enumerate(self._waiting) if j is job), 0)
        if job.status == "running":
            out.update(step=job.step, steps=getattr(job.request, "steps", None), batch_size=job.batch_size)
        return out

    def stats(self) -> dict[str, Any]:
        with self._cond:
            waiting = len(self._waiting)
        return {
            "queued": waiting,
            "requests": self.requests,
            "chain_calls": self.chain_calls,
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
        }

    # ------------------------------------------------------------------------------------------------ the worker

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="audioldm2-fast-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Run what is queued, then stop the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while True:
                if not self._waiting:
                    if self._stopping:
                        return None
                    self._cond.wait()
                    continue
                for job in self._waiting:
                    if job.key is None:
                        job.key = self._key(job.request)
                oldest = self._waiting[0]
                same = [job for job in self._waiting if job.key == oldest.key]
                wait = oldest.arrival + self.window_s - time.monotonic()
                if len(same) >= self.max_batch or wait <= 0 or self._stopping:
                    batch = same[: self.max_batch]
                    self._waiting = [job for job in self._waiting if job not in batch]
                    return batch
                self._cond.wait(wait)

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            t0 = time.monotonic()
            for job in batch:
                job.status, job.started, job.batch_size = "running", t0, len(batch)
            self.chain_calls += 1  # counted before the call: a reply may be read before it returns
            self.requests += len(batch)
            self.batch_sizes[len(batch)] += 1
            try:
                self._run(batch)
            except Exception as exc:  # noqa: BLE001 - run() must not take the worker down with it
                log.exception("a chain call failed outside its error handling")
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(RuntimeError("the chain call gave this request no result"))
            elapsed = time.monotonic() - t0
            self._call_s = elapsed if self.chain_calls == 1 else 0.8 * self._call_s + 0.2 * elapsed
            with self._cond:
                for job in batch:
                    job.status = "failed" if job.future.exception() is not None else "done"
                while len(self._jobs) > self._keep_finished and next(iter(self._jobs.values())).status in (
                    "done",
                    "failed",
                ):
                    self._jobs.popitem(last=False)
