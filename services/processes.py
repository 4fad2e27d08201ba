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
        name, copies = command, 1
        while name in self.children:  # several of one command (ingest processes): `ingest #2`, ...
            copies += 1
            name = f"{command} #{copies}"
        self.children[name] = subprocess.Popen([sys.executable, "-m", "services.cli", command, *args])

    def start_all(self, commands: list[str]) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for command in commands:
            self.start(command)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._stopping = True

    def exited(self) -> list[str]:
        """Children that ended on their own (not asked to): each is a failure, whatever its code."""
        if self._stopping:
            return []
        return [f"`rapport {name}` exited with code {child.returncode}"
                for name, child in self.children.items() if child.poll() is not None]

    def check(self) -> None:
        """Raise if a child ended on its own."""
        if exited := self.exited():
            raise RuntimeError("; ".join(exited) + "; see its log above")

    def wait(self) -> int:
        """Until a signal arrives or a child ends; then stop the rest. Non-zero if a child ended."""
        while not self._stopping and not self.exited():
            time.sleep(0.2)
        exited = self.exited()
        codes = [c.returncode for c in self.children.values() if c.returncode not in (None, 0)]
        self.stop()
        if exited:
            print("rapport: " + "; ".join(exited) + "; stopped the others", file=sys.stderr)
            return codes[0] if codes else 1  # the first failing child's code (3, 4 keep their meaning)
        return 0

    @property
    def stopping(self) -> bool:
        """A signal asked everything to stop."""
        return self._stopping

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
