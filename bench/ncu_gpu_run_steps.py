"""One FUM-1k run_steps call (1000 steps) for Nsight Compute: ncu ... python3 <this file> [off|stdp|rstdp].

The plasticity mode is the optional argument (default rstdp).

The path comes from FUMJAX_GPU_RUN_PATH (cluster, block, multi). A warm-up call runs first; profile the
second launch of the kernel (ncu -k regex:RunSteps --launch-skip 1 -c 1).
"""

import sys

import jax

import fumjax
from fumjax import FumConfig
from fumjax.dynamics import background_current
from fumjax.kernels import fused

assert fused.gpu_available()
cfg = FumConfig()
net = fumjax.build_network(cfg)
st = fumjax.init_state(net, cfg)
i_ext = background_current(st, net, 1000, cfg)
run = jax.jit(fused.run_steps, static_argnames=("cfg", "mode"))
mode = sys.argv[1] if len(sys.argv) > 1 else "rstdp"
for _ in range(2):
    s, spk = run(st, net, i_ext, cfg=cfg, mode=mode)
    jax.block_until_ready(s)
print("ncu script done, mode", mode, "spikes", int(spk.sum()))
