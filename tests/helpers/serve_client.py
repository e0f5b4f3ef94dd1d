"""``audioldm2-fast task=serve`` in a child process on a free loopback port, and a small HTTP client for it."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from support import child_env

# Short audio and few steps on the tiny checkpoint: a request is mostly overhead, which batching amortises.
SERVE_FAST = ["task=serve", "checkpoint=tiny", "audio_length_s=0.32", "steps=2", "server.port=0", "progress=false"]


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.body[:300]!r})"


class ServerProcess:
    """A running server; ``url`` once it listens, ``wait_ready()`` until ``/health`` says ok."""

    def __init__(self, args: list[str], cwd: Path, api_key: str | None = None, env: dict[str, str] | None = None):
        extra = dict(env or {})
        if api_key is not None:
            extra["AUDIOLDM2_FAST_API_KEY"] = api_key
        self.api_key = api_key
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("audioldm2-fast")), *SERVE_FAST, *args],
            cwd=cwd,
            env=child_env(**extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = self._wait_for(r"serving (http://\S+)/ ", 120).group(1)

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def _wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            if self.proc.poll() is not None:
                self._reader.join(5)
                raise AssertionError(f"the server exited {self.proc.returncode}:\n" + "\n".join(self.lines[-40:]))
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r} in {timeout} s:\n" + "\n".join(self.lines[-40:]))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout: float = 240) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self.get("/health")
            if reply.status == 200:
                return reply.json()
            assert reply.status == 503 and reply.json()["status"] == "loading", reply
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited {self.proc.returncode}:\n{self.output}")
            time.sleep(0.2)
        raise AssertionError(f"not ready in {timeout} s:\n{self.output}")

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None, key: bool = True
    ) -> Reply:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        sent = {"Content-Type": "application/json", **(headers or {})}
        if key and self.api_key is not None:
            sent.setdefault("Authorization", f"Bearer {self.api_key}")
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=sent)
        try:
            with urllib.request.urlopen(req, timeout=300) as response:
                return Reply(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as exc:
            return Reply(exc.code, dict(exc.headers), exc.read())

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any, **kwargs: Any) -> Reply:
        return self.request("POST", path, body, **kwargs)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._reader.join(5)
        return code
