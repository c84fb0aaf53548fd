"""One FUM-1k run_steps call (1000 steps, rstdp) for Nsight Compute: ncu ... python3 <this file>.

The path comes from FUMJAX_GPU_RUN_PATH (cluster, block, multi). A warm-up call runs first; profile the
second launch of the kernel (ncu -k regex:RunSteps --launch-skip 1 -c 1).
"""

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
for _ in range(2):
    s, spk = run(st, net, i_ext, cfg=cfg, mode="rstdp")
    jax.block_until_ready(s)
print("ncu script done, spikes", int(spk.sum()))
