"""Progress bars on stderr (rich); silent when disabled (--json, --quiet) or not a terminal."""
from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

stderr = Console(stderr=True)


class ByteProgress:
    def __init__(self, label: str, total: int, enabled: bool = True):
        self.enabled = enabled and stderr.is_terminal
        self._p = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TimeRemainingColumn(), console=stderr, transient=True,
        ) if self.enabled else None
        self.label, self.total = label, total

    def __enter__(self) -> "ByteProgress":
        if self._p:
            self._p.start()
            self._task = self._p.add_task(self.label, total=self.total)
        return self

    def advance(self, n: int) -> None:
        if self._p:
            self._p.advance(self._task, n)

    def __exit__(self, *exc) -> None:
        if self._p:
            self._p.stop()
