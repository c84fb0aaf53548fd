"""Small GPU run_steps cases for compute-sanitizer (memcheck, racecheck): ~100 steps, each path, all modes.

SAN_PATHS=cluster,block,multi picks the paths. The cluster path runs with 2 CTAs (synapses staged in shared
memory, spike flags through distributed shared memory) and with 1 CTA on 1000 x 50 synapses, which do not
fit one CTA's shared memory (the global-memory fallback).
"""

import os
import sys

import jax

from fumjax.kernels import fused

assert fused.gpu_available()

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from test_fused_gpu import make_case  # noqa: E402

run = jax.jit(fused.run_steps, static_argnames=("cfg", "mode"))
for path in os.environ.get("SAN_PATHS", "cluster,block,multi").split(","):
    os.environ["FUMJAX_GPU_RUN_PATH"] = path
    cases = [("2", 300, 30), ("1", 1000, 50)] if path == "cluster" else [("", 300, 30)]
    for csize, n, k in cases:
        os.environ["FUMJAX_GPU_CLUSTER"] = csize or "8"
        for delays in ("1", "mixed"):
            net, cfg, state, i_ext = make_case(n, k, delays, seed=3, t_steps=100)
            for mode in ("off", "stdp", "rstdp"):
                s, spk = run(state, net, i_ext, cfg=cfg, mode=mode)
                jax.block_until_ready(s)
                print(path, csize, n, delays, mode, int(spk.sum()), flush=True)
print("sanitize script done")
