"""What every fuzz case checks: an op either returns the reference's answer or raises a clear exception that names
one of its arguments; a crash kills the child process that runs the case module (see test_fuzz.py).

Hypothesis profiles (``HYPOTHESIS_PROFILE``): ``dev`` (default, the plain test run: seconds) and ``ci`` (the CI
fuzz step, a few minutes in all). Each module counts its cases in ``AD_FAST_FUZZ_COUNTS`` (a JSON file) so the
parent test can report them.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from collections import Counter
from typing import Callable, Iterable

from hypothesis import HealthCheck, settings

settings.register_profile(
    "dev", max_examples=5, deadline=None, database=None, derandomize=True,
    suppress_health_check=list(HealthCheck),
)
# CI runs a fixed (derandomized) set of cases, so a red run is reproducible and a submission's CI does not hinge on
# what a random draw found that day; "explore" draws new cases each run, to hunt for defects by hand.
settings.register_profile(
    "ci", max_examples=25, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck),
)
settings.register_profile(
    "explore", max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck),
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# Exceptions that count as a clear refusal; anything else (IndexError, AttributeError, KeyError, ...) is a bug.
CLEAR_ERRORS = (ValueError, TypeError, RuntimeError, FileNotFoundError, NotImplementedError)

COUNTS: Counter = Counter()


def _write_counts() -> None:
    path = os.environ.get("AD_FAST_FUZZ_COUNTS")
    if path:
        previous = json.loads(open(path).read()) if os.path.exists(path) else {}
        previous.update(COUNTS)
        with open(path, "w") as out:
            json.dump(previous, out)


atexit.register(_write_counts)


def announce(name: str, case: object) -> None:
    """Count the case and write it to stderr first, so the case that kills the process is the last one shown."""
    COUNTS[name] += 1
    print(f"fuzz case {name}: {case!r}"[:2000], file=sys.stderr, flush=True)


def outcome(call: Callable[[], object]) -> tuple[object, BaseException | None]:
    try:
        return call(), None
    except CLEAR_ERRORS as error:
        return None, error


def assert_clear(error: BaseException, names: Iterable[str]) -> None:
    """A refusal must name one of ``names`` (the op's arguments, or the file it read)."""
    message = str(error)
    assert any(name in message for name in names), f"{type(error).__name__} names none of {list(names)}: {message}"


def check_against_reference(
    name: str, case: object, kernel: Callable[[], object], reference: Callable[[], object],
    arguments: Iterable[str], compare: Callable[[object, object], None],
) -> None:
    """Run both; both must refuse (clearly) or both must return results that ``compare`` accepts."""
    announce(name, case)
    arguments = list(arguments)
    got, got_error = outcome(kernel)
    want, want_error = outcome(reference)
    if got_error is not None or want_error is not None:
        assert got_error is not None and want_error is not None, (
            f"kernel and reference disagree: kernel {got_error!r}, reference {want_error!r}"
        )
        assert_clear(got_error, arguments)
        assert_clear(want_error, arguments)
        return
    compare(got, want)
