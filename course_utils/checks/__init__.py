"""Graded-cell checkers, one module per notebook, one function per graded question.

A graded cell calls e.g. ``nb01.check_load_mimic_cxr_dataset(load_mimic_cxr_dataset)``. Each checker
runs the student's object on fixtures chosen to expose the usual mistakes and compares it with the
reference implementation in the library. A failure raises :class:`CheckFailed` with a message that
teaches: what was expected, what came back, where to look. ``NotImplementedError`` from an unfinished
TODO is deliberately *not* caught, so the student sees which function is still a stub.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class CheckFailed(AssertionError):
    """A graded check failed; the message says what was expected and where to look."""


@dataclass
class Checker:
    """Collects the named sub-checks of one graded question and prints a one-line summary."""

    question: str
    passed: list[str] = field(default_factory=list)

    def expect(
        self, condition: bool, what: str, expected: Any = None, got: Any = None, hint: str = ""
    ) -> None:
        """Raise :class:`CheckFailed` unless ``condition``; otherwise record ``what`` as passed."""
        if condition:
            self.passed.append(what)
            return
        lines = [f"{self.question}: {what}"]
        if expected is not None or got is not None:
            lines.append(f"  expected: {_short(expected)}")
            lines.append(f"  got:      {_short(got)}")
        if hint:
            lines.append(f"  hint: {hint}")
        raise CheckFailed("\n".join(lines))

    def call(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call the student's function; NotImplementedError passes through untouched."""
        try:
            return func(*args, **kwargs)
        except NotImplementedError:
            raise
        except CheckFailed:
            raise
        except Exception as err:  # a crash is a failed check with the original error attached
            raise CheckFailed(
                f"{self.question}: calling {getattr(func, '__name__', func)} raised "
                f"{type(err).__name__}: {err}"
            ) from err

    def done(self) -> None:
        print(f"✓ {self.question}: all {len(self.passed)} checks passed")


def _short(value: Any, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
