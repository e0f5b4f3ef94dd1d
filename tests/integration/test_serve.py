"""task=serve over HTTP, against a real server process on a loopback port: the API, validation, batching with
bit-identical audio, faults kept to their request, the queue limit, the API key, file access, and SIGTERM."""

from __future__ import annotations

import functools
import io
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf
from serve_client import ServerProcess
from support import child_env

from audioldm2_fast.cli import check_overrides
from audioldm2_fast.runtime.errors import ConfigError

pytestmark = pytest.mark.slow  # a server process: start-up, loading and a few dozen chain calls

KEY = "serve-test-key"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve")
    srv = ServerProcess(
        [
            f"output.dir={out}",
            "output.subtype=FLOAT",  # exact samples, so that equal audio means equal bits
            "server.batch_window_ms=400",
            "server.max_batch=4",
            "server.max_queue=4",
            "server.max_audio_length_s=2",
            "server.max_num_waveforms=3",
            "server.max_steps=8",
            "server.max_prompt_chars=200",
            "stages.vocoder.impl=batch_stages:NaNVocoder",  # non-finite audio for prompts containing "nan"
            "stages.denoiser.impl=serve_stages:OomDenoiser",  # out of memory for calls with an "oom" prompt
        ],
        cwd=out,
        api_key=KEY,
    )
    srv.out = out
    srv.while_loading = (srv.get("/health"), srv.post("/v1/generate", {"prompt": "rain"}))
    srv.wait_ready()
    yield srv
    srv.stop(signal.SIGKILL)


def _stats(server) -> dict:
    return server.get("/health").json()


def _audio(server, reply) -> list[np.ndarray]:
    out = []
    for candidate in reply.json()["audio"]:
        got = server.get(candidate["url"])
        assert got.status == 200 and got.headers["content-type"] == "audio/wav"
        out.append(sf.read(io.BytesIO(got.body), dtype="float32")[0])
    return out


@functools.cache
def _kernels_batch_invariant_here() -> bool:
    """What the server measures at start-up (``batch_invariance.check``), in a fresh process with its MKL setting:
    whether this CPU's kernels give a row the same bits at every batch size (not every CPU's MKL does)."""
    code = "from audioldm2_fast.tasks.batch_invariance import check; print(check())"
    env = child_env(MKL_CBWR=os.environ.get("MKL_CBWR", "AUTO,STRICT"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip() == "True"


def test_loading_then_ok_and_what_the_server_offers(server):
    health, generate = server.while_loading
    assert health.status == 503 and health.json()["status"] == "loading"
    assert generate.status == 503 and generate.headers["retry-after"] and generate.json()["error"]["type"] == "loading"

    stats = _stats(server)
    assert stats["status"] == "ok" and stats["checkpoint"] == "tiny"
    assert stats["batch_invariant"] is _kernels_batch_invariant_here()
    options = server.get("/v1/options").json()
    assert options["checkpoint"] == "tiny" and options["sample_rate"] == 16000 and options["auth"] is True
    assert options["defaults"]["steps"] == 2 and options["defaults"]["audio_length_s"] == 0.32
    assert options["limits"]["max_audio_length_s"] == 2 and options["settings"]["num_waveforms"]["max"] == 3
    assert options["settings"]["format"]["choices"][0] == "wav"

    page = server.get("/", key=False)
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    html = page.body.decode()
    assert '<form id="form"' in html and "http://" not in html and "https://" not in html  # nothing from elsewhere


def test_generate_returns_ranked_files_a_spectrogram_and_raw_audio(server):
    reply = server.post("/v1/generate", {"prompt": "rain on a tin roof", "seed": 7, "num_waveforms": 2})
    assert reply.status == 200, reply
    body = reply.json()
    assert [c["rank"] for c in body["audio"]] == [1, 2] and body["audio"][0]["score"] >= body["audio"][1]["score"]
    meta = body["metadata"]
    assert (meta["prompt"], meta["seed"], meta["num_waveforms"], meta["steps"]) == ("rain on a tin roof", 7, 2, 2)
    assert meta["checkpoint"] == "tiny" and meta["sample_rate"] == 16000 and meta["audio_length_s"] == 0.32
    audio = _audio(server, reply)
    assert [len(a) for a in audio] == [5120, 5120] and not np.array_equal(audio[0], audio[1])
    png = server.get(body["audio"][0]["spectrogram_url"])
    assert png.status == 200 and png.body[:8] == PNG and png.headers["content-type"] == "image/png"

    raw = server.post("/v1/generate?response=audio", {"prompt": "rain", "format": "flac", "audio_length_s": 0.64})
    assert raw.status == 200 and raw.headers["content-type"] == "audio/flac"
    assert raw.headers["content-disposition"].endswith('.flac"') and int(raw.headers["x-seed"]) >= 0
    samples, rate = sf.read(io.BytesIO(raw.body))
    assert rate == 16000 and len(samples) == 10240


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"prompt": "rain", "steps": 0}, 422, "steps"),
        ({"prompt": "rain", "steps": "4"}, 422, "steps"),
        ({"prompt": "rain", "steps": 9}, 422, "steps"),  # server.max_steps
        ({"prompt": "rain", "stepz": 3}, 422, "stepz"),
        ({"negative_prompt": "hiss"}, 422, "prompt"),
        ({"prompt": "  "}, 422, "prompt"),
        ({"prompt": "rain\x1b[2J"}, 422, "prompt"),
        ({"prompt": ["rain", "wind"]}, 422, "prompt"),
        ({"prompt": "r" * 201}, 422, "prompt"),  # server.max_prompt_chars
        ({"prompt": "rain", "negative_prompt": 3}, 422, "negative_prompt"),
        ({"prompt": "rain", "audio_length_s": 2.5}, 422, "audio_length_s"),  # server.max_audio_length_s
        ({"prompt": "rain", "audio_length_s": 0.01}, 422, "audio_length_s"),  # below one latent frame
        ({"prompt": "rain", "num_waveforms": 4}, 422, "num_waveforms"),  # server.max_num_waveforms
        ({"prompt": "rain", "seed": -1}, 422, "seed"),
        ({"prompt": "rain", "seed": True}, 422, "seed"),
        ({"prompt": "rain", "guidance_scale": None, "format": "aiff"}, 422, "format"),
        ({"prompt": "rain", "id": "../../x"}, 422, "id"),
        (["rain"], 422, ""),
        (b'{"prompt": "rain", "guidance_scale": NaN}', 400, None),
        (b"prompt=rain", 400, None),
    ],
)
def test_bad_requests_are_refused_naming_the_field_and_run_nothing(server, body, status, field):
    before = _stats(server)
    reply = server.post("/v1/generate", body)
    assert reply.status == status, reply
    error = reply.json()["error"]
    assert error.get("field") == field and "\n" not in error["message"]
    if field:
        assert error["message"].startswith(f"{field}: ")
    after = _stats(server)
    assert (after["requests"], after["chain_calls"]) == (before["requests"], before["chain_calls"])


def test_request_text_is_never_an_interpolation(server):
    reply = server.post("/v1/generate", {"prompt": "${oc.env:HOME}", "seed": 1})
    assert reply.status == 200 and reply.json()["metadata"]["prompt"] == "${oc.env:HOME}"
    reply = server.post("/v1/generate", {"prompt": "rain", "steps": "${oc.env:HOME}"})
    assert reply.status == 422 and os.environ["HOME"] not in reply.body.decode()


def test_batched_requests_take_fewer_chain_calls_and_give_the_audio_of_each_alone(server):
    bodies = [
        {"prompt": "rain on a tin roof", "seed": 1},
        {"prompt": "dog on a tin roof", "seed": 2, "guidance_scale": 2.5},
        {"prompt": "car on a tin roof", "seed": 3, "negative_prompt": "hiss"},
        {"prompt": "rain on a tin roof", "seed": 4, "guidance_scale": 5.0},
    ]  # one shape: equal T5 token counts, guidance on; each its own seed, guidance scale and negative prompt
    before = _stats(server)
    with ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(lambda body: server.post("/v1/generate", body), bodies))
    after = _stats(server)
    assert [r.status for r in together] == [200] * 4, together
    assert after["requests"] - before["requests"] == 4 and after["chain_calls"] - before["chain_calls"] < 4
    assert max(r.json()["metadata"]["batch_size"] for r in together) > 1

    for body, batched in zip(bodies, together, strict=True):
        alone = server.post("/v1/generate", body)
        assert alone.json()["metadata"]["batch_size"] == 1
        for a, b in zip(_audio(server, batched), _audio(server, alone), strict=True):
            assert a.dtype == np.float32 and np.abs(a).max() > 0
            if _kernels_batch_invariant_here():
                assert np.array_equal(a, b)  # bit for bit
            else:  # this CPU's GEMM rounds a row differently at other batch sizes (the server reports it)
                np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
        assert batched.json()["audio"][0]["url"] != alone.json()["audio"][0]["url"]  # two files; none replaced


def test_a_fault_fails_its_own_request_only_and_the_server_goes_on(server):
    prompts = ["oom on a tin roof", "nan on a tin roof", "hum on a tin roof", "owl on a tin roof"]  # one shape
    with ThreadPoolExecutor(len(prompts)) as pool:
        replies = list(pool.map(lambda p: server.post("/v1/generate", {"prompt": p, "seed": 5}), prompts))
    oom, nan, *good = replies
    assert oom.status == 500 and oom.json()["error"]["type"] == "out_of_memory" and "audio" not in oom.json()
    assert "ran out of memory" in oom.json()["error"]["message"]
    assert nan.status == 500 and nan.json()["error"]["type"] == "non_finite"
    assert "non-finite values" in nan.json()["error"]["message"] and "\n" not in nan.json()["error"]["message"]
    assert [r.status for r in good] == [200, 200]
    assert "running its requests one by one" in server.output  # the batch failed as a whole, its requests alone
    assert _stats(server)["status"] == "ok"
    assert server.post("/v1/generate", {"prompt": "rain", "seed": 1}).status == 200


def test_a_full_queue_answers_503_with_retry_after(server):
    with ThreadPoolExecutor(10) as pool:
        replies = list(pool.map(lambda k: server.post("/v1/generate", {"prompt": "rain", "seed": k}), range(10)))
    statuses = sorted(r.status for r in replies)
    assert set(statuses) == {200, 503} and statuses.count(200) >= 4, statuses
    full = next(r for r in replies if r.status == 503)
    assert full.json()["error"]["type"] == "queue_full" and int(full.headers["retry-after"]) >= 1


def test_the_api_key_guards_every_v1_route(server):
    for path in ("/v1/options", "/v1/files/x.wav", "/v1/progress/abcdefgh"):
        reply = server.get(path, key=False)
        assert reply.status == 401 and reply.headers["www-authenticate"] == "Bearer", path
    assert server.post("/v1/generate", {"prompt": "rain"}, key=False).status == 401
    assert server.get("/v1/options", headers={"Authorization": "Bearer wrong"}).status == 401
    assert server.get("/v1/options", headers={"X-API-Key": KEY}, key=False).status == 200
    assert server.get("/health", key=False).status == 200 and server.get("/", key=False).status == 200


def test_file_urls_reach_only_the_servers_own_files(server):
    reply = server.post("/v1/generate", {"prompt": "rain", "seed": 2})
    name = reply.json()["audio"][0]["url"].rsplit("/", 1)[1]
    config = next(p.name for p in server.out.glob("config-*.yaml"))  # in the output dir, but not a served file
    (server.out.parent / "secret.wav").write_bytes(b"RIFF")
    for path in (
        f"/v1/files/{config}",
        "/v1/files/manifest.jsonl",
        "/v1/files/..%2Fsecret.wav",
        "/v1/files/%2E%2E%2Fsecret.wav",
        "/v1/files/../secret.wav",
        f"/v1/files/{name}%2F..%2F..%2Fsecret.wav",
        "/v1/files/%2Fetc%2Fpasswd",
    ):
        assert server.get(path).status == 404, path
    assert server.get(f"/v1/files/{name}").status == 200


def test_sigterm_finishes_the_requests_in_flight_and_exits_0(server):
    ids = [f"sigterm-{k}-0000" for k in range(2)]
    replies = {}

    def send(request_id):
        replies[request_id] = server.post("/v1/generate", {"prompt": "rain", "seed": 3, "id": request_id})

    threads = [threading.Thread(target=send, args=(request_id,)) for request_id in ids]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while not all(server.get(f"/v1/progress/{i}").status == 200 for i in ids) and time.monotonic() < deadline:
        time.sleep(0.05)  # both are queued or running
    server.proc.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(120)
    assert [replies[i].status for i in ids] == [200, 200]
    assert server.stop(timeout=60) == 0, server.output
    assert "stopped after" in server.output
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.url + "/health", timeout=5)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["server.host=0.0.0.0"], "server.api_key"),
        (["server.port=70000"], "server.port"),
        (["server.max_batch=0"], "server.max_batch"),
        (["server.warmup=[{steps: 0}]"], "server.warmup[0].steps"),
        (["audio_length_s=40"], "server.warmup[0].audio_length_s"),  # the defaults are within the limits
        (["prompts_file=p.txt"], "prompts_file"),
    ],
)
def test_bad_server_settings_are_refused_before_loading(overrides, key):
    with pytest.raises(ConfigError) as info:
        check_overrides(["task=serve", "checkpoint=tiny", *overrides])
    assert info.value.key == key


def test_serve_runs_alone_not_in_a_sweep():
    with pytest.raises(ConfigError, match="task=serve runs one server"):
        check_overrides(["-m", "task=serve", "checkpoint=tiny", "seed=1,2"])
