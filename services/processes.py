"""Child processes of `rapport run` and `rapport demo`: started together, stopped together."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from types import TracebackType


class Processes:
    """Runs `rapport <command>` children; SIGTERM/SIGINT or any child exiting stops them all."""

    def __init__(self) -> None:
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self._stopping = False

    def start(self, command: str, *args: str) -> None:
        self.children[command] = subprocess.Popen([sys.executable, "-m", "services.cli", command, *args])

    def start_all(self, commands: list[str]) -> None:
        for command in commands:
            self.start(command)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._stopping = True

    def check(self) -> None:
        """Raise if a child died on its own."""
        for name, child in self.children.items():
            code = child.poll()
            if code is not None and not self._stopping:
                raise RuntimeError(f"`rapport {name}` exited with code {code}; see its log above")

    def wait(self) -> int:
        """Until a signal arrives or a child exits; then stop the rest."""
        while not self._stopping and all(c.poll() is None for c in self.children.values()):
            time.sleep(0.2)
        failed = [n for n, c in self.children.items() if c.poll() not in (None, 0)]
        self.stop()
        return 1 if failed and not self._stopping else 0

    def stop(self, timeout: float = 30) -> None:
        self._stopping = True
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
