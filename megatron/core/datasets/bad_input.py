"""Bad input lines of the conversion: their kinds, where they are, and the report of them.

Lines that cannot be used are skipped, counted by `BadLineKind` and reported with their file and
line number (`BadInputReport`); in strict mode the first one raises `StrictModeError`.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import logging
from typing import Dict, List

logger = logging.getLogger(__name__)


class BadLineKind(str, enum.Enum):
    """Why an input line was skipped."""

    INVALID_UTF8 = "invalid UTF-8"
    BLANK_LINE = "blank line"
    INVALID_JSON = "invalid JSON"
    NOT_OBJECT = "not a JSON object"
    MISSING_KEY = "missing key"
    NOT_STRING = "value not a string"
    EMPTY_DOCUMENT = "empty document"
    TOKENIZER_ERROR = "tokenizer error"


@dataclasses.dataclass(frozen=True)
class BadLine:
    """One skipped input line: `path:line: kind: detail`."""

    path: str
    line: int
    kind: BadLineKind
    detail: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.kind.value}: {self.detail}"


class StrictModeError(ValueError):
    """Raised in strict mode at the first bad input line."""

    def __init__(self, message: str):
        super().__init__(message)

    @classmethod
    def from_bad_line(cls, bad: BadLine) -> "StrictModeError":
        """The error for `bad`, naming file:line and the problem."""
        return cls(f"{bad} (--strict stops at the first bad line; drop it to skip bad lines)")


class BadInputReport:
    """Bad lines counted per kind; the first `max_reported` of each kind are kept for the report."""

    def __init__(self, max_reported: int = 20):
        self.max_reported = max_reported
        self.counts: Dict[BadLineKind, int] = collections.Counter()
        self.examples: Dict[BadLineKind, List[BadLine]] = collections.defaultdict(list)

    def add(self, bad: BadLine) -> None:
        """Count one bad line (in input order)."""
        self.counts[bad.kind] += 1
        if len(self.examples[bad.kind]) < self.max_reported:
            self.examples[bad.kind].append(bad)

    def merge(self, other: "BadInputReport") -> None:
        """Append the lines of a report that covers later input."""
        for kind, n in other.counts.items():
            self.counts[kind] += n
            room = self.max_reported - len(self.examples[kind])
            self.examples[kind].extend(other.examples.get(kind, [])[: max(room, 0)])

    @property
    def total(self) -> int:
        """Number of bad lines."""
        return sum(self.counts.values())

    def summary_lines(self) -> List[str]:
        """Human-readable report: per kind the count, the first lines, then "... and N more"."""
        if not self.total:
            return ["bad input lines: none"]
        out = [f"bad input lines skipped: {self.total}"]
        for kind in BadLineKind:
            n = self.counts.get(kind, 0)
            if not n:
                continue
            out.append(f"  {kind.value}: {n} line{'s' if n > 1 else ''}")
            shown = self.examples.get(kind, [])
            out.extend(f"    {bad.path}:{bad.line}: {bad.detail}" for bad in shown)
            if n > len(shown):
                out.append(f"    ... and {n - len(shown)} more")
        return out
