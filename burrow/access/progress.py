"""A one-line "waiting for ..." status on stderr: a spinner on a TTY, one line otherwise.

Never writes to stdout (``burrow ssh --stdio`` owns it).
"""

from __future__ import annotations

import sys
from typing import TextIO

FRAMES = "|/-\\"


class Progress:
    """Status while waiting (for a build, for the agent).

    Args:
        stream: where to write (default stderr).
        quiet: write nothing at all.
    """

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        try:
            self.tty = self.stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self._frame = 0
        self._last_plain = ""
        self._shown = False

    def update(self, message: str, detail: str = "") -> None:
        """Show ``message`` (and ``detail``, e.g. the last log line)."""
        if self.quiet:
            return
        message = message.replace("\n", " ").replace("\r", " ")
        detail = detail.replace("\n", " ").replace("\r", " ").strip()
        if self.tty:
            self._frame = (self._frame + 1) % len(FRAMES)
            line = f"{FRAMES[self._frame]} {message}"
            if detail:
                line += f"  | {detail}"
            self.stream.write("\r\x1b[K" + line[:160])
            self.stream.flush()
            self._shown = True
        else:
            line = f"burrow: {message}"
            if line != self._last_plain:
                self.stream.write(line + "\n")
                self.stream.flush()
                self._last_plain = line
            if detail and detail != getattr(self, "_last_detail", ""):
                self.stream.write(f"  {detail[:200]}\n")
                self.stream.flush()
                self._last_detail = detail

    def done(self) -> None:
        """Clear the spinner line."""
        if self.tty and self._shown and not self.quiet:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
        self._shown = False
