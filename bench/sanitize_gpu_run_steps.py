"""Small GPU run_steps cases for compute-sanitizer (memcheck, racecheck): ~100 steps, each path, all modes.

SAN_PATHS=cluster,block,multi picks the paths. The cluster path runs with 2 CTAs (spike flags through
distributed shared memory), once with the event body and once with the pull body.
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
    cases = [("2", "event"), ("2", "pull")] if path == "cluster" else [("", "")]
    for csize, body in cases:
        os.environ["FUMJAX_GPU_CLUSTER"] = csize or "8"
        os.environ["FUMJAX_GPU_CLUSTER_BODY"] = body
        jax.clear_caches()  # a new kernel choice needs a new program (captured CUDA graphs update in place)
        n, k = 300, 30
        for delays in ("1", "mixed"):
            net, cfg, state, i_ext = make_case(n, k, delays, seed=3, t_steps=100)
            for mode in ("off", "stdp", "rstdp"):
                s, spk = run(state, net, i_ext, cfg=cfg, mode=mode)
                jax.block_until_ready(s)
                print(path, csize, body, n, delays, mode, int(spk.sum()), flush=True)
print("sanitize script done")
