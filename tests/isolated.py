"""Run snippets in a fresh Python process, so a crash (SIGFPE, SIGSEGV, abort) fails one test, not the run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_isolated(code: str, timeout: float = 300.0) -> subprocess.CompletedProcess:
    """Run ``code`` with ``python -c`` (this interpreter, this checkout first on the path); returns the process,
    whose ``returncode`` is negative when a signal killed it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def raised_each(setup: str, calls: dict[str, str]) -> dict[str, str]:
    """Run ``setup`` then each expression of ``calls`` (name -> code) in one child process. Returns, per name,
    ``"<ExceptionType>: <message>"`` of what the call raised, or ``"NO_ERROR"``; fails the test when the process
    dies (naming the cases that had finished)."""
    lines = [textwrap.dedent(setup)]
    for name, code in calls.items():
        lines.append(
            f"try:\n    _out = {code}\nexcept Exception as _error:\n"
            f"    print({name!r} + '\\tRAISED ' + type(_error).__name__ + ': ' + ' '.join(str(_error).split()))\n"
            f"else:\n    print({name!r} + '\\tNO_ERROR', flush=True)\n"
        )
    proc = run_isolated("\n".join(lines))
    done = dict(line.split("\t", 1) for line in proc.stdout.splitlines() if "\t" in line)
    assert proc.returncode == 0, (
        f"the process died (return code {proc.returncode}) after {list(done)}: {proc.stderr[-2000:]}"
    )
    return {name: (result[len("RAISED "):] if result.startswith("RAISED ") else result) for name, result in done.items()}
