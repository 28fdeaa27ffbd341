"""Running the server as a process in tests: free ports, its environment, its JSON output."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from tests.api_helpers import TOKEN

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
# Every server log file, wherever its test put it: the secrets sweep reads them all.
LOG_FILES: list[Path] = []
SETTINGS = ("ADMIN_TOKEN", "CRON_SECRET", "JOB_STORE_URL", "DATABASE_URL", "LOG_LEVEL", "PORT", "HOST")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(tmp_path: Path, esi_url: str = "http://127.0.0.1:9", **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS and not k.startswith("ESI_")}
    return env | {
        "ADMIN_TOKEN": TOKEN, "PORT": str(free_port()), "DATABASE_URL": f"sqlite:///{tmp_path}/m.db",
        "ESI_API_BASE_URL": esi_url, "SCHEDULER_ENABLED": "false", "LOG_LEVEL": "debug",
        "PYTHONPATH": str(ROOT), **extra,
    }


class ServerProcess:
    def __init__(self, env: dict[str, str], cwd: Path, prefix: Sequence[str] = ()) -> None:
        """`prefix`: a command the server runs under (e.g. setpriv, to run as another user)."""
        self.port = int(env["PORT"])
        self.log_path = cwd / f"server-{self.port}.log"
        LOG_FILES.append(self.log_path)
        # A file, not a pipe: an unread pipe could stall the server. Closed in stop() or teardown.
        self._log = open(self.log_path, "w")  # noqa: SIM115
        self.process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "tornado_admin", "serve"], env=env, cwd=cwd,
            stdout=self._log, stderr=subprocess.STDOUT,
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_ready(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {self.output()}")
            try:
                with urllib.request.urlopen(self.url("/healthz"), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("server never answered /healthz")

    def request(self, path: str, method: str = "GET", headers: dict | None = None) -> tuple[int, dict]:
        request = urllib.request.Request(self.url(path), method=method, headers=headers or {},
                                         data=b"" if method == "POST" else None)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10) -> int:
        self.process.send_signal(signum)
        code = self.process.wait(timeout=timeout)
        self._log.close()
        return code

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.output().splitlines() if line.strip()]


def read_terminal(controller: int) -> bytes:
    """Everything a command wrote to a pseudo-terminal, until it exited and closed its side."""
    output = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the terminal closed: the command exited
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    return output


def poll(condition: Callable[[], T], *, timeout: float = 10, what: str = "condition",
         interval: float = 0.01) -> T:
    """Wait for another process to reach a state (there is no event to wait on across processes);
    returns what `condition` returned once it was truthy."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what}: never happened"
        time.sleep(interval)
    return value
