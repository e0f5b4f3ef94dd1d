"""``task=serve``: an HTTP API and a web page over one warm chain (Starlette on uvicorn).

The socket is bound first and the server answers at once: ``/health`` says ``loading`` (503) while a thread builds
the chain and runs the warm-up shapes, then ``ok``. Generation requests are validated as the command line validates
(``config.requests``), queued, batched by shape (``serve_batcher``) and run on the warm chain (``serve_chain``). Files
are written by the chain's writer into ``output.dir`` and served from there by name, and only the files this server
wrote. SIGTERM or Ctrl-C stops accepting connections, lets the requests in flight finish, and exits 0.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.resources
import logging
import signal
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import uvicorn
from omegaconf import DictConfig, OmegaConf
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request as HttpRequest
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ..config.requests import REQUEST_KEYS, check_server, default_steps, parse_request, server_api_key
from ..config.schema import FORMATS, ServerConfig
from ..outputs.files import write_bytes
from ..outputs.spectrogram import render_spectrogram, spectrogram_title
from ..runtime.errors import PROG, Audioldm2FastError, ConfigError
from .serve_batcher import Batcher, Job, QueueFull
from .serve_chain import ServeChain, ServeError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
MEDIA_TYPES = {
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".ogg": "audio/ogg",
    ".mp3": "audio/mpeg",
    ".png": "image/png",
}


def _error(status: int, kind: str, message: str, field: str | None = None, headers: dict | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": kind, "message": message}
    if field is not None:
        body["field"] = field
    return JSONResponse({"error": body}, status_code=status, headers=headers)


class Service:
    """What the routes share: settings, the loading state, the chain and its queue, and the files served."""

    def __init__(self, cfg: DictConfig, server: ServerConfig, api_key: str | None):
        self.cfg, self.server, self.api_key = cfg, server, api_key
        self.out_dir = Path(str(cfg.output.dir)).expanduser().resolve()
        self.status = "loading"  # loading | ok | failed | stopping
        self.error: BaseException | None = None
        self.chain: ServeChain | None = None
        self.batcher: Batcher | None = None
        self.files: dict[str, dict[str, Any]] = {}  # name -> its manifest row, for every file this server wrote
        self.stems: dict[str, str] = {}  # a file's name without its suffix -> its name (for its spectrogram)
        self.started = time.monotonic()
        self.ready_s: float | None = None

    # ------------------------------------------------------------------------------------------------ loading

    def load(self, on_failure: Any) -> None:
        """Build the chain, warm it, start the queue (the loader thread). ``on_failure()`` stops the server."""
        from ..generator import Generator  # heavy: torch and the model libraries

        try:
            generator = Generator(self.cfg, require_prompt=False)
            chain = ServeChain(generator, self.cfg, self.server)
            calls = chain.warm_up()
            batcher = Batcher(
                chain.run,
                chain.key,
                window_s=self.server.batch_window_ms / 1000,
                max_batch=self.server.max_batch,
                max_queue=self.server.max_queue,
            )
            batcher.start()
        except BaseException as exc:
            self.status, self.error = "failed", exc
            log.error("the chain could not be loaded: %s", exc)
            on_failure()
            return
        self.chain, self.batcher = chain, batcher
        self.ready_s = time.monotonic() - self.started
        self.status = "ok"
        exact = "bit-identical alone and batched" if chain.batch_invariant else "batched within float rounding"
        print(f"{PROG}: ready after {self.ready_s:.1f} s ({calls} warm-up call(s); requests are {exact})", flush=True)

    def stop(self) -> None:
        self.status = "stopping"
        if self.batcher is not None:
            self.batcher.stop()
        if self.chain is not None:
            self.chain.generator.close()

    # ------------------------------------------------------------------------------------------------ answers

    def options(self) -> dict[str, Any]:
        cfg, server = self.cfg, self.server
        geometry = self.chain.geometry(None) if self.chain else None
        length = cfg.get("audio_length_s") or (geometry.audio_length_s if geometry else None)
        defaults = {
            "negative_prompt": cfg.get("negative_prompt"),
            "seed": None,
            "steps": default_steps(cfg),
            "guidance_scale": float(cfg.guidance_scale),
            "audio_length_s": length,
            "num_waveforms": int(cfg.num_waveforms),
            "format": cfg.output.format,
        }
        settings = {
            "seed": {"type": "integer", "min": 0, "max": 2**63 - 1, "null": "a random seed, returned in metadata"},
            "steps": {"type": "integer", "min": int(cfg.scheduler.get("min_steps", 1)), "max": server.max_steps},
            "guidance_scale": {"type": "number", "min": 0, "note": "1.0 turns guidance off"},
            "audio_length_s": {"type": "number", "min": 0, "max": server.max_audio_length_s},
            "num_waveforms": {"type": "integer", "min": 1, "max": server.max_num_waveforms},
            "format": {"type": "string", "choices": list(FORMATS)},
        }
        return {
            "checkpoint": self.chain.generator.run_info.checkpoint if self.chain else None,
            "scheduler": cfg.scheduler.name,
            "sample_rate": geometry.sample_rate if geometry else None,
            "request_keys": list(REQUEST_KEYS),
            "defaults": defaults,
            "settings": settings,
            "limits": {
                "max_audio_length_s": server.max_audio_length_s,
                "max_num_waveforms": server.max_num_waveforms,
                "max_steps": server.max_steps,
                "max_prompt_chars": server.max_prompt_chars,
                "max_batch": server.max_batch,
                "batch_window_ms": server.batch_window_ms,
                "max_queue": server.max_queue,
            },
            "auth": self.api_key is not None,
        }

    def health(self) -> tuple[int, dict[str, Any]]:
        body: dict[str, Any] = {"status": self.status, "uptime_s": round(time.monotonic() - self.started, 1)}
        if self.status == "failed":
            body["error"] = str(self.error)
        if self.chain is not None and self.batcher is not None:
            body.update(
                ready_after_s=round(self.ready_s or 0.0, 2),
                checkpoint=self.chain.generator.run_info.checkpoint,
                batch_invariant=self.chain.batch_invariant,
                **self.batcher.stats(),
            )
        return (200 if self.status == "ok" else 503), body

    def authorized(self, request: HttpRequest) -> bool:
        if self.api_key is None:
            return True
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        return given is not None and hmac.compare_digest(given.encode(), self.api_key.encode())

    def file_path(self, name: str) -> Path | None:
        """A file this server wrote (or the spectrogram of one), inside its output dir; None for anything else."""
        stem, _, suffix = name.rpartition(".")
        known = name in self.files or (suffix == "png" and stem in self.stems)
        path = (self.out_dir / name).resolve()
        if not known or "/" in name or "\\" in name or path.parent != self.out_dir:
            return None
        return path

    def spectrogram(self, png: Path) -> None:
        """Render the PNG of one of our audio files on first request (API clients that never ask pay nothing)."""
        if png.exists():
            return
        import soundfile as sf

        name = self.stems[png.stem]
        audio, sample_rate = sf.read(self.out_dir / name, dtype="float32")
        write_bytes(png, render_spectrogram(audio, sample_rate, spectrogram_title(self.files[name])))


def create_app(service: Service) -> Starlette:
    """The routes: ``/`` (the page), ``/health``, and under ``/v1`` (API key checked when one is set): ``options``,
    ``generate``, ``files/<name>`` and ``progress/<id>``."""

    def guarded(handler):
        async def route(request: HttpRequest) -> Response:
            if not service.authorized(request):
                return _error(
                    401,
                    "unauthorized",
                    "a valid API key is needed: 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            return await handler(request)

        return route

    async def page(request: HttpRequest) -> Response:
        html = importlib.resources.files(__package__).joinpath("serve_page.html").read_text(encoding="utf-8")
        return HTMLResponse(html, headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-cache"})

    async def health(request: HttpRequest) -> Response:
        status, body = service.health()
        return JSONResponse(body, status_code=status, headers=None if status == 200 else {"Retry-After": "5"})

    async def options(request: HttpRequest) -> Response:
        return JSONResponse(service.options())

    async def generate(request: HttpRequest) -> Response:
        if service.status != "ok":
            message = "the chain is still loading" if service.status == "loading" else f"the server is {service.status}"
            return _error(503, service.status, message, headers={"Retry-After": "5"})
        try:
            body = await _json_body(request)
            parsed = parse_request(body, service.cfg, service.server)
            service.chain.geometry(parsed.audio_length_s)  # a length too short for the checkpoint is refused here
        except _BodyError as exc:
            return _error(exc.status, "invalid_body", str(exc))
        except ConfigError as exc:
            return _error(422, "invalid_request", str(exc), field=exc.key)
        if parsed.id is not None and service.batcher.in_use(parsed.id):
            return _error(409, "invalid_request", f"id: {parsed.id!r} is already in use", field="id")
        job = Job(id=parsed.id or uuid.uuid4().hex[:16], request=parsed)
        try:
            service.batcher.submit(job)
        except QueueFull as exc:
            return _error(503, "queue_full", str(exc), headers={"Retry-After": str(exc.retry_after_s)})
        except RuntimeError as exc:
            return _error(503, "stopping", str(exc), headers={"Retry-After": "5"})
        try:
            served = await asyncio.wrap_future(job.future)
        except ServeError as exc:
            return _error(exc.status, exc.kind, exc.message)
        except Exception as exc:  # noqa: BLE001
            return _error(500, "internal", f"{type(exc).__name__}: {exc}".splitlines()[0])
        for row in served.records:
            name = Path(row["path"]).name
            service.files[name], service.stems[Path(name).stem] = row, name
        audio = [_candidate(row) for row in served.records]
        if request.query_params.get("response") == "audio":
            return _audio_response(service, served.records[0], job)
        return JSONResponse({"id": job.id, "audio": audio, "metadata": served.metadata})

    async def files(request: HttpRequest) -> Response:
        name = request.path_params["name"]
        path = service.file_path(name)
        if path is None:
            return _error(404, "not_found", f"no file {name!r} on this server")
        if path.suffix == ".png":
            await run_in_threadpool(service.spectrogram, path)
        return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix, "application/octet-stream"))

    async def progress(request: HttpRequest) -> Response:
        found = service.batcher.progress(request.path_params["id"]) if service.batcher else None
        if found is None:
            return _error(404, "not_found", "no request with this id is queued, running or recent")
        return JSONResponse(found)

    return Starlette(
        routes=[
            Route("/", page),
            Route("/health", health),
            Route("/v1/options", guarded(options)),
            Route("/v1/generate", guarded(generate), methods=["POST"]),
            Route("/v1/files/{name}", guarded(files)),
            Route("/v1/progress/{id}", guarded(progress)),
        ]
    )


#: The page loads nothing from elsewhere and runs only its own inline script.
_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
    "img-src 'self' blob:; media-src 'self' blob:; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)


class _BodyError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


async def _json_body(request: HttpRequest) -> Any:
    import json

    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _BodyError(413, f"the body is over {MAX_BODY_BYTES} bytes")
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise _BodyError(413, f"the body is over {MAX_BODY_BYTES} bytes")
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except ValueError as exc:
        raise _BodyError(400, f"the body is not valid JSON: {exc}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _candidate(row: dict[str, Any]) -> dict[str, Any]:
    name = Path(row["path"]).name
    return {
        "url": f"/v1/files/{name}",
        "spectrogram_url": f"/v1/files/{Path(name).stem}.png",
        "rank": row["rank"],
        "score": row["score"],
        "candidate": row["candidate"],
        "seed": row["seed"],
        "format": row["format"],
        "audio_length_s": row["audio_length_s"],
        "silent": row.get("silent", False),
    }


def _audio_response(service: Service, row: dict[str, Any], job: Job) -> Response:
    path = service.out_dir / row["path"]
    headers = {
        "Content-Disposition": f'attachment; filename="{path.name}"',
        "X-Request-Id": job.id,
        "X-Seed": str(row["seed"]),
    }
    if row["score"] is not None:
        headers["X-Score"] = f"{row['score']:.6f}"
    return Response(path.read_bytes(), media_type=MEDIA_TYPES[path.suffix], headers=headers)


class _Server(uvicorn.Server):
    """uvicorn, except that after a graceful stop on SIGTERM or SIGINT the process exits 0 instead of re-raising the
    signal (uvicorn re-raises it so that the default handler sets the exit status)."""

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise ConfigError("server.port", f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run_serve(cfg: DictConfig) -> dict[str, Any]:
    """Serve until SIGTERM or Ctrl-C; raise the loading error, if loading failed."""
    server = check_server(cfg)
    api_key = server_api_key(cfg)
    # The chain's config: no key in it (its YAML is saved beside the outputs), no report.html rewritten after every
    # request, and spectrograms rendered only when someone asks for one.
    cfg = OmegaConf.merge(cfg, {"server": {"api_key": None}, "output": {"spectrogram": False, "report": False}})
    if "writer" not in cfg.pipeline.chain:
        raise ConfigError("pipeline.chain", "task=serve serves the files its writer stage writes: keep writer in it")
    service = Service(cfg, server, api_key)
    sock = bind(server.host, server.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"{PROG}: serving http://{shown}:{port}/ (loading the chain; GET /health says when it is ready)", flush=True)

    uv = _Server(uvicorn.Config(create_app(service), log_config=None, lifespan="off", timeout_graceful_shutdown=None))

    def stop_serving() -> None:
        uv.should_exit = True

    threading.Thread(target=service.load, args=(stop_serving,), name="audioldm2-fast-loader", daemon=True).start()
    try:
        uv.run(sockets=[sock])
    finally:
        service.stop()
        sock.close()
    if service.error is not None:
        if isinstance(service.error, Audioldm2FastError):
            raise service.error
        raise RuntimeError(f"the chain could not be loaded: {service.error}") from service.error
    stats = service.batcher.stats() if service.batcher else {}
    print(f"{PROG}: stopped after {stats.get('requests', 0)} request(s) in {stats.get('chain_calls', 0)} chain call(s)")
    sys.stdout.flush()
    return {"task": "serve", **stats}
