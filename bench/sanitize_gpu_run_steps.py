"""Small GPU run_steps cases for compute-sanitizer (memcheck, racecheck): ~100 steps, each path, all modes;
two rstdp windows of run_driven on the block and multi paths (the window's end in fumjax_window_end on the
block path, in fumjax_window_reward on the multi path).

SAN_PATHS=cluster,block,multi picks the paths. The cluster path runs with 2 CTAs (spike flags through
distributed shared memory), once with the event body and once with the pull body.
"""

import os
import sys

import jax

import fumjax
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
        if path in ("block", "multi"):  # rstdp windows' ends in the kernels (gamma 0.5: K = 13 < T)
            net, cfg, state, _ = make_case(n, k, "1", seed=4, t_steps=1)
            cfg = cfg.replace(plasticity={"gamma": 0.5}, sie={"target_rate_var": 60.0})
            s, spk, rewards = fumjax.run_driven(state, net, 2, config=cfg, backend="fused", plasticity=True)
            jax.block_until_ready(s)
            print(path, "window reward", n, int(spk.sum()), [float(r) for r in rewards], flush=True)
print("sanitize script done")
