"""Errors raised for user data that cannot be used, listing every problem case at once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sam3d.errors import Sam3dError

__all__ = ["DatasetError", "Problem", "format_problems"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one case.

    Attributes:
        case_id: The case the problem belongs to (``"-"`` for dataset-wide problems).
        message: What is wrong and, where useful, what to do about it.
        path: The offending file, if there is one.
    """

    case_id: str
    message: str
    path: Path | None = None

    def __str__(self) -> str:
        where = f" [{self.path}]" if self.path is not None else ""
        return f"{self.case_id}: {self.message}{where}"


def format_problems(problems: Sequence[Problem]) -> str:
    """Render problems as an indented bullet list, one line each."""
    return "\n".join(f"  - {problem}" for problem in problems)


class DatasetError(Sam3dError):
    """A dataset, split or setting that cannot be used; the message names every offending case and file.

    A :class:`sam3d.errors.Sam3dError` (hence a ``ValueError``): the ``sam3d`` command prints it without
    a traceback.

    Args:
        summary: One sentence saying what is wrong overall and what to do.
        problems: The individual problems, listed under the summary.
    """

    def __init__(self, summary: str, problems: Sequence[Problem] = ()) -> None:
        self.problems = list(problems)
        message = summary if not self.problems else f"{summary}\n{format_problems(self.problems)}"
        super().__init__(message)
