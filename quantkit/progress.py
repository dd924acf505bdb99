"""Progress bars on stderr (rich); silent when disabled (--json, --quiet) or not a terminal."""
from __future__ import annotations

from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeRemainingColumn, TransferSpeedColumn)

stderr = Console(stderr=True)


class _Bar:
    columns: tuple = ()

    def __init__(self, label: str, total: int, enabled: bool = True):
        self.enabled = enabled and stderr.is_terminal
        self._p = Progress(TextColumn("{task.description}"), BarColumn(), *(c() for c in self.columns),
                           TimeRemainingColumn(), console=stderr, transient=True) if self.enabled else None
        self.label, self.total = label, total

    def __enter__(self):
        if self._p:
            self._p.start()
            self._task = self._p.add_task(self.label, total=self.total)
        return self

    def advance(self, n: int = 1) -> None:
        if self._p:
            self._p.advance(self._task, n)

    def __exit__(self, *exc) -> None:
        if self._p:
            self._p.stop()


class ByteProgress(_Bar):
    """A bar over bytes (conversions)."""
    columns = (DownloadColumn, TransferSpeedColumn)


class CountProgress(_Bar):
    """A bar over a count of steps (windows, layers)."""
    columns = (MofNCompleteColumn,)
