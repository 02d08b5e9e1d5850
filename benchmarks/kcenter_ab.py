"""Old vs new CPU k-center kernel: two builds timed in one session, and their results compared bit for bit.

Each build runs in its own process (both register the same op); each case is one full selection at N=200k x 128
(benchmarks/bench_kcenter_greedy.py's inputs: Gaussian rows from row 0, and DMAD's coreset input on real-like
patch features), 2% and 10% picks. ``run`` saves indices, radii, min-distances and seconds; ``compare`` prints
the table and checks torch.equal on all three outputs:

  PYTHONPATH=<old tree>:benchmarks python benchmarks/kcenter_ab.py run old /tmp/kc_ab [RATIO ...]
  PYTHONPATH=<new tree>:benchmarks python benchmarks/kcenter_ab.py run new /tmp/kc_ab
  PYTHONPATH=<new tree>:benchmarks python benchmarks/kcenter_ab.py compare /tmp/kc_ab old new
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

import ad_fast
from ad_fast.ops import kcenter_greedy
from bench_kcenter_greedy import gaussian_rows, patch_rows

RATIOS = (0.02, 0.1)


def cases(ratios=RATIOS):
    gauss = gaussian_rows()
    z, init = patch_rows()
    for ratio in ratios:
        yield f"gauss-{ratio}", lambda r=ratio: kcenter_greedy(
            gauss, int(gauss.shape[0] * r), projection_dim=None, start_index=0, return_radii=True,
            return_min_distances=True, backend="kernel")
        yield f"patches-{ratio}", lambda r=ratio: kcenter_greedy(
            z, int(z.shape[0] * r), projection_dim=None, init_distances=init, return_radii=True,
            return_min_distances=True, backend="kernel")


def run(label: str, folder: Path, ratios=RATIOS) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    print(f"{label}: ad_fast from {ad_fast.__file__}, {torch.get_num_threads()} threads", flush=True)
    for name, fn in cases(ratios):
        start = time.perf_counter()
        indices, radii, min_dist = fn()
        seconds = time.perf_counter() - start
        torch.save({"indices": indices, "radii": radii, "min_dist": min_dist, "seconds": seconds},
                   folder / f"{label}-{name}.pt")
        print(f"{label} {name}: {seconds:.2f} s", flush=True)


def compare(folder: Path, old: str, new: str) -> None:
    print(f"| case | picks | {old} (s) | {new} (s) | speed-up | identical indices / radii / min_dist |")
    print("|---|---|---|---|---|---|")
    for name in [n for ratio in RATIOS for n in (f"gauss-{ratio}", f"patches-{ratio}")]:
        if not (folder / f"{old}-{name}.pt").is_file() or not (folder / f"{new}-{name}.pt").is_file():
            continue
        a = torch.load(folder / f"{old}-{name}.pt", weights_only=True)
        b = torch.load(folder / f"{new}-{name}.pt", weights_only=True)
        same = [torch.equal(a[key], b[key]) for key in ("indices", "radii", "min_dist")]
        print(f"| {name} | {a['indices'].numel()} | {a['seconds']:.2f} | {b['seconds']:.2f} | "
              f"{a['seconds'] / b['seconds']:.1f}x | {' / '.join('yes' if s else 'NO' for s in same)} |")


if __name__ == "__main__":
    if sys.argv[1] == "run":
        run(sys.argv[2], Path(sys.argv[3]), tuple(float(r) for r in sys.argv[4:]) or RATIOS)
    else:
        compare(Path(sys.argv[2]), sys.argv[3], sys.argv[4])
