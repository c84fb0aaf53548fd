"""Real-time paced runs (issue 5 item 4): busy fraction of the default network learning at 1 ms per ms.

    python bench/bench_realtime.py                                   # 1000 neurons, 10 s, fused + reference
    python bench/bench_realtime.py --seconds 5 --backends fused --chunk-windows 1,10

For each backend and chunk size (in windows of cfg.run.window_steps = 50 ms): the default network of
--neurons neurons (FumConfig defaults: K = min(5% N, 100), float32, rstdp learning with SIE reward and
intrinsic plasticity, default Poisson drive) runs --seconds of model time through
fumjax.control.realtime.run_paced: 2 warm-up chunks (compile) run unpaced first and are excluded, then every
chunk is paced to the wall clock. Prints per run: busy fraction (sum of busy / wall), busy per chunk (median,
max), worst lag and overruns, mean rate, and the GPU utilization NVML (or nvidia-smi) sampled every 100 ms
during the paced chunks; a JSON line per run and a final JSON list. Target (issue 5): busy < 5% on the GPU
for 1000 neurons. Busy time is host-measured (dispatch to results ready), an upper bound on device time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform

import jax

import fumjax
from fumjax.config import FumConfig
from fumjax.control.realtime import run_paced


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--neurons", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=10.0, help="paced model time per run")
    p.add_argument("--backends", default="fused,reference")
    p.add_argument("--chunk-windows", default="1", help="chunk sizes in windows, comma-separated")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    dev = jax.devices()[0]
    print(
        f"bench_realtime {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} on "
        f"{dev.device_kind} ({dev.platform}), jax {jax.__version__}, host {platform.node()}, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    rows = []
    for backend in a.backends.split(","):
        cfg = FumConfig().replace(
            neuron={"n_neurons": a.neurons}, run={"backend": backend, "dtype": a.dtype, "seed": a.seed}
        )
        net = fumjax.build_network(cfg)
        window_ms = cfg.run.window_steps * cfg.neuron.dt_ms
        for cw in (int(x) for x in a.chunk_windows.split(",")):
            n_chunks = max(1, round(a.seconds * 1000.0 / (cw * window_ms)))
            state, run = run_paced(
                fumjax.init_state(net, cfg), net, n_chunks, config=cfg, windows_per_chunk=cw
            )
            s = run.summary()
            row = {
                "backend": backend,
                "neurons": a.neurons,
                "synapses": int(net.n_synapses),
                "chunk_windows": cw,
                "platform": dev.platform,
                "device": dev.device_kind,
                **s,
            }
            rows.append(row)
            p_ = run.pacing
            g = run.gpu
            util = (
                f"{g['source']} mean {g['mean_pct']:.1f}% max {g['max_pct']:g}% ({g['samples']} samples)"
                if g["samples"]
                else f"none ({g['reason']})"
            )
            print(
                f"{backend:9s} N={a.neurons} chunk {p_.chunk_ms:g} ms x {p_.chunks}: busy "
                f"{100 * p_.busy_fraction:.3f}% (per chunk median {s['busy_chunk_median_ms']:.3f} ms, max "
                f"{s['busy_chunk_max_ms']:.3f} ms), wall {p_.wall_ms / 1000:.3f} s for "
                f"{s['model_ms'] / 1000:g} s, worst lag {p_.max_lag_ms:.3f} ms, overruns {p_.overruns}, rate "
                f"{run.mean_rate_hz:.2f} Hz, warm-up {', '.join(f'{x:.0f}' for x in run.warmup_ms)} ms "
                f"(excluded); GPU util {util}",
                flush=True,
            )
            print(json.dumps(row), flush=True)
            del state
    print(json.dumps(rows), flush=True)


if __name__ == "__main__":
    main()
