"""Cutting a byte stream into lines with a bound on what one line may hold.

``produce`` reads stdin in chunks of any size and must neither copy the
unfinished line again for every chunk (quadratic: a 200 MB line took
minutes) nor hold a line that can never become a record (``cat /dev/zero``
grew without bound). :class:`LineSplitter` is the pure part: chunks in,
lines out, at most ``line_bytes_max`` bytes of one line held; a longer line
is reported as soon as it passes the bound and the rest of it is dropped as
it arrives.
"""

from __future__ import annotations

from collections.abc import Iterator


class LineSplitter:
    """Lines of a byte stream fed in chunks, each without its ``\\n``.

    :meth:`feed` and :meth:`finish` yield each complete line as ``bytes``, or
    ``None`` for a line longer than ``line_bytes_max``: reported once, as
    soon as the bound is passed (before the line's end has arrived), after
    which the rest of that line is discarded unread. ``number`` is the
    1-based number of the line last yielded. The bytes held never exceed
    ``line_bytes_max`` (plus the chunk being fed), and every input byte is
    looked at a constant number of times: the work is linear in the input.
    """

    def __init__(self, line_bytes_max: int) -> None:
        self.line_bytes_max = line_bytes_max
        self.number = 0
        self._parts: list[bytes] = []  # the unfinished line, joined once at its end
        self._held = 0
        self._skipping = False  # inside a reported line: drop until its newline

    def feed(self, chunk: bytes) -> Iterator[bytes | None]:
        """The lines that ``chunk`` completes (or reports as too long)."""
        limit = self.line_bytes_max
        start = 0
        if self._skipping or self._parts:
            end = chunk.find(b"\n")
            if self._skipping:
                if end < 0:
                    return
                self._skipping = False
            else:
                piece = chunk if end < 0 else chunk[:end]
                if self._held + len(piece) > limit:
                    self._parts = []
                    self._held = 0
                    self._skipping = end < 0
                    self.number += 1
                    yield None
                    if end < 0:
                        return
                elif end < 0:
                    self._parts.append(chunk)
                    self._held += len(chunk)
                    return
                else:
                    self._parts.append(piece)
                    line = b"".join(self._parts)
                    self._parts = []
                    self._held = 0
                    self.number += 1
                    yield line
            start = end + 1
        lines = (chunk[start:] if start else chunk).split(b"\n")
        tail = lines.pop()
        for line in lines:
            self.number += 1
            yield line if len(line) <= limit else None
        if len(tail) > limit:
            self._skipping = True
            self.number += 1
            yield None
        elif tail:
            self._parts.append(tail)
            self._held = len(tail)

    def finish(self) -> Iterator[bytes]:
        """The last line, when the input does not end with a newline."""
        self._skipping = False
        if self._parts:
            line = b"".join(self._parts)
            self._parts = []
            self._held = 0
            self.number += 1
            yield line

    @property
    def held_bytes(self) -> int:
        """Bytes of the unfinished line kept so far (never above ``line_bytes_max``)."""
        return self._held


__all__ = ["LineSplitter"]
