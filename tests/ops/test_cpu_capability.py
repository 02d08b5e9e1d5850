"""The CPU kernels' runtime instruction-set choice (csrc/common/cpu_isa.h): AD_FAST_CPU_CAPABILITY forces a level.

CI runs the whole op suite once more with AD_FAST_CPU_CAPABILITY=default (.ci/package), so the baseline clones
are checked against the references too; here: the switch itself, in fresh processes (the choice is per process).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ad_fast import _extension

pytestmark = pytest.mark.skipif(_extension.cpu_capability() is None, reason="needs the compiled kernels")

# Prints the level in use, then checks a kNN run through the clones against the reference.
_PROBE = """
import ad_fast, torch
print(ad_fast.ops.backend_info()["cpu_capability"], flush=True)
q, b = torch.randn(37, 19), torch.randn(301, 19)
d, i = ad_fast.ops.knn(q, b, k=5, backend="kernel")
d_ref, i_ref = ad_fast.ops.knn(q, b, k=5, backend="reference")
assert torch.equal(i, i_ref) and torch.allclose(d, d_ref, rtol=1e-5, atol=1e-5), (d - d_ref).abs().max()
"""


def _probe(capability: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "AD_FAST_CPU_CAPABILITY"}
    if capability is not None:
        env["AD_FAST_CPU_CAPABILITY"] = capability
    return subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def best_level() -> str:
    """The level a process picks with no AD_FAST_CPU_CAPABILITY: the best this CPU supports."""
    best = _probe(None)
    assert best.returncode == 0, best.stderr
    return best.stdout.strip()


def test_capability_defaults_to_the_best_level_and_can_be_lowered_to_the_baseline(best_level):
    assert best_level in {"default", "avx2", "avx512"}
    baseline = _probe("default")
    assert baseline.returncode == 0, baseline.stderr
    assert baseline.stdout.strip() == "default"


def test_a_bad_or_unsupported_level_is_a_clear_error(best_level):
    bad = _probe("sse9")
    assert bad.returncode != 0
    assert "AD_FAST_CPU_CAPABILITY: expected 'default', 'avx2' or 'avx512', got 'sse9'" in bad.stderr
    if best_level != "avx512":
        above = _probe("avx512")
        assert above.returncode != 0 and "this CPU supports only" in above.stderr
