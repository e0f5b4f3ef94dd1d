"""The server under load, on loopback: 16 clients, 200 requests, valid and invalid mixed. Nothing is lost, nothing
valid fails, every valid answer's audio decodes; latency and throughput are printed, with batching against
``server.max_batch=1`` on the same requests."""

from __future__ import annotations

import io
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf
from browser import ARTIFACTS
from serve_client import ServerProcess

pytestmark = pytest.mark.slow

CLIENTS = 16
REQUESTS = 200
COMPARED = CLIENTS  # one burst of valid requests, sent to both servers for the throughput comparison
PROMPTS = ["rain on a tin roof", "dog on a tin roof", "a dog barks", "wind", "church bells in the distance"]
INVALID = [
    {"prompt": "rain", "steps": 0},
    {"prompt": "rain", "audio_length_s": 60},  # over server.max_audio_length_s
    {"prompt": ""},
    {"prompt": "rain", "stepz": 2},
    b"{not json",
]


def _mix() -> list[tuple[object, bool]]:
    """One request in four valid, over five prompts (several shapes), each with its own seed; the others invalid."""
    out = []
    for k in range(REQUESTS):
        if k % 4:
            out.append((INVALID[k % len(INVALID)], False))
        else:
            out.append(({"prompt": PROMPTS[k % len(PROMPTS)], "seed": k}, True))
    return out


def _load(server: ServerProcess, work: list[tuple[object, bool]]) -> tuple[list, float]:
    def send(item):
        body, _ = item
        t0 = time.perf_counter()
        reply = server.post("/v1/generate", body)
        return reply, time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        replies = list(pool.map(send, work))
    return replies, time.perf_counter() - t0


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def test_sixteen_clients_two_hundred_requests(tmp_path):
    common = ["audio_length_s=0.16", "steps=1", "server.max_queue=256", "server.max_num_waveforms=1"]
    batched = ServerProcess([*common, f"output.dir={tmp_path / 'b'}", "server.max_batch=8"], cwd=tmp_path)
    single = ServerProcess([*common, f"output.dir={tmp_path / 's'}", "server.max_batch=1"], cwd=tmp_path)
    try:
        batched.wait_ready()
        work = _mix()
        replies, wall = _load(batched, work)
        assert len(replies) == REQUESTS  # nothing lost: every request got an answer
        valid = [(reply, seconds) for (reply, seconds), (_, ok) in zip(replies, work, strict=True) if ok]
        invalid = [reply for (reply, _), (_, ok) in zip(replies, work, strict=True) if not ok]
        assert [r.status for r, _ in valid] == [200] * len(valid), [r for r, _ in valid if r.status != 200][:3]
        assert all(400 <= r.status < 500 and r.json()["error"]["message"] for r in invalid)
        for reply, _ in valid:
            (candidate,) = reply.json()["audio"]
            audio, rate = sf.read(io.BytesIO(batched.get(candidate["url"]).body), dtype="float32")
            assert rate == 16000 and len(audio) == 2560 and np.isfinite(audio).all()
        latencies = [seconds for _, seconds in valid]
        stats = batched.get("/health").json()

        single.wait_ready()
        compared = [({"prompt": PROMPTS[k % len(PROMPTS)], "seed": k}, True) for k in range(COMPARED)]
        rates = {}
        for name, server in (("max_batch=8", batched), ("max_batch=1", single)):
            got, seconds = _load(server, compared)
            assert [r.status for r, _ in got] == [200] * COMPARED
            rates[name] = COMPARED / seconds
        report = {
            "requests": REQUESTS,
            "valid": len(valid),
            "invalid": len(invalid),
            "clients": CLIENTS,
            "p50_s": round(_percentile(latencies, 50), 3),
            "p95_s": round(_percentile(latencies, 95), 3),
            "throughput_rps": round(len(valid) / wall, 2),
            "wall_s": round(wall, 2),
            "chain_calls": stats["chain_calls"],
            "batch_sizes": stats["batch_sizes"],
            "compared_rps": {k: round(v, 2) for k, v in rates.items()},
            "speedup": round(rates["max_batch=8"] / rates["max_batch=1"], 2),
            "mean_latency_s": round(statistics.mean(latencies), 3),
        }
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "serve-load.json").write_text(json.dumps(report, indent=2) + "\n")
        print(
            f"\nserve load: {REQUESTS} requests from {CLIENTS} clients ({len(valid)} valid, {len(invalid)} invalid) "
            f"in {wall:.1f} s: p50 {report['p50_s']} s, p95 {report['p95_s']} s, "
            f"{report['throughput_rps']} valid requests/s, {stats['chain_calls']} chain calls "
            f"(batch sizes {stats['batch_sizes']}); {COMPARED} requests: {report['compared_rps']['max_batch=8']} "
            f"requests/s batched, {report['compared_rps']['max_batch=1']} with server.max_batch=1 "
            f"({report['speedup']}x)"
        )
        assert stats["chain_calls"] < len(valid)  # requests were batched
    finally:
        assert batched.stop() == 0 and single.stop() == 0
