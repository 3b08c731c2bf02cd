"""Run ``xsp worker`` as a real subprocess: used by the demo, the benchmarks and the tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from streams.settings import Settings

__all__ = ["WorkerProcess"]


class WorkerProcess:
    """One ``xsp worker`` process configured by ``settings``; its output goes to ``log_path``."""

    def __init__(
        self, settings: Settings, log_path: Path, *, extra_env: dict[str, str] | None = None
    ):
        self.settings = settings
        self.log_path = log_path
        self.extra_env = extra_env or {}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        """Start the worker (returns at once; it joins its consumer group in the background)."""
        env = {**os.environ, **self.settings.to_env(), **self.extra_env}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streams", "worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no final commit, as in a crash."""
        if self.alive and self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM and wait (Faust commits offsets and closes); SIGKILL after ``timeout_s``."""
        if not self.alive or self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            time.sleep(0.1)
        if self.process.poll() is None:
            self.kill()

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(FileNotFoundError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
