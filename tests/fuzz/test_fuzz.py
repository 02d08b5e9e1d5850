"""Property-based fuzzing (hypothesis) of every public op, every raw ``torch.ops.ad_fast.*`` entry point and every
loader. Each case module runs in its own child pytest process, so a case that crashes the interpreter (SIGSEGV,
SIGFPE, abort) fails its test here instead of killing the run; the child's stderr names the last case it started.

Marked slow (the default run stays lean): ``pytest tests/fuzz -m slow`` runs it with ``HYPOTHESIS_PROFILE=dev``
(default: 5 examples per case function, a smoke run); CI's fuzz step (.ci/run) sets ``HYPOTHESIS_PROFILE=ci``
(25 examples each, a few minutes in all). The cases run per function are printed (``-s``) and checked non-zero.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("hypothesis")

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MODULES = ("cases_ops", "cases_raw_ops", "cases_loaders")


@pytest.mark.slow
@pytest.mark.parametrize("module", MODULES)
def test_fuzz_module(module, tmp_path):
    counts_file = tmp_path / "counts.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
        "AD_FAST_FUZZ_COUNTS": str(counts_file),
        "HF_HUB_OFFLINE": "1",
        "PYTHONFAULTHANDLER": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "--no-header", "-p", "no:cacheprovider", "-p", "no:randomly",
         "-o", "python_files=cases_*.py", "-o", "python_functions=case_*", "-o", "addopts=",
         "-W", "ignore::UserWarning", str(HERE / f"{module}.py")],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=1500,
    )
    if proc.returncode != 0:
        last_case = [line for line in proc.stderr.splitlines() if line.startswith("fuzz case")][-1:]
        died = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
        pytest.fail(f"{module}: {died}; last case started: {last_case}\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}")
    counts = json.loads(counts_file.read_text())
    print(f"{module}: {sum(counts.values())} cases {dict(sorted(counts.items()))}")
    assert counts and all(n > 0 for n in counts.values())
