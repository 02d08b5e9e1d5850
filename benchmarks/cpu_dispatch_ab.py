"""Times the CPU kernels whose hot loops run through cpu::parallel_for (one line per process; the instruction-set
choice is per process). Compares builds in interleaved runs, as benchmarks/RESULTS.md "Portable build" does:

  PYTHONPATH=<tree> python benchmarks/cpu_dispatch_ab.py LABEL      (AD_FAST_CPU_CAPABILITY=default: baseline clones)
"""
import time, torch, ad_fast, sys
torch.manual_seed(0)
torch.set_num_threads(2)
def median_ms(fn, reps: int = 5) -> float:
    fn(); ts = []
    for _ in range(reps):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2] * 1e3
img = torch.rand(1, 3, 1024, 1024)
fa = [torch.randn(1, 256, 64, 64), torch.randn(1, 512, 32, 32), torch.randn(1, 1024, 16, 16)]
fb = [torch.randn_like(f) for f in fa]
z = torch.randn(50_000, 128)
q, k, v = torch.randn(16, 28, 16, 16), torch.randn(16, 28, 16, 16), torch.randn(16, 56, 16, 16)
rows = {
    "hog 1x3x1024^2": lambda: ad_fast.ops.hog(img, backend="kernel"),
    "anomaly_map b1 out256": lambda: ad_fast.ops.anomaly_map(fa, fb, out_size=256, blur_sigma=4.0, backend="kernel"),
    "kcenter 50k x128, 100 picks": lambda: ad_fast.ops.kcenter_greedy(z, n_select=100, projection_dim=None, backend="kernel"),
    "soft_align 16x(256x256) fwd": lambda: ad_fast.ops.soft_align(q, k, v, backend="kernel"),
}
print(sys.argv[1], ad_fast.ops.backend_info().get("cpu_capability"), " ".join(f"{n}={median_ms(f):.1f}" for n, f in rows.items()), flush=True)
