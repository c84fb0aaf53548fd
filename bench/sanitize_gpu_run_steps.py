"""Small GPU run_steps case for compute-sanitizer (memcheck, racecheck): ~100 steps, both paths, all modes."""

import os

import jax

from fumjax.kernels import fused

assert fused.gpu_available()

import sys  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from test_fused_gpu import make_case  # noqa: E402

for path in ("block", "multi"):
    os.environ["FUMJAX_GPU_RUN_PATH"] = path
    for delays in ("1", "mixed"):
        net, cfg, state, i_ext = make_case(300, 30, delays, seed=3, t_steps=100)
        for mode in ("off", "stdp", "rstdp"):
            s, spk = jax.jit(fused.run_steps, static_argnames=("cfg", "mode"))(
                state, net, i_ext, cfg=cfg, mode=mode
            )
            jax.block_until_ready(s)
            print(path, delays, mode, int(spk.sum()), flush=True)
print("sanitize script done")
