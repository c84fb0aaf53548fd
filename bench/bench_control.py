"""The control layer on a running network: monitor + ControlManager each window, an instability injected.

    python bench/bench_control.py --neurons 300 --windows 240 --inject 100:140 --out bench/control_run

A default FUM network runs under Poisson background drive with plasticity (R-STDP, SIE self-benefit reward,
intrinsic plasticity), one 50-step window at a time. Clusters come from `cluster_activity` on the first 20
windows' rates. Each window: `window_metrics` (multi-scale variance, avalanches, reward, processing debt
against a real-time budget of one window of model time, NVML load where present) -> `Monitor` (JSONL) ->
`ControlManager(default_modules)` -> `effective_config` for the next window; inhibition actions scale the
inhibitory weights. During the injected windows the background drive amplitude is multiplied by --gain.
Prints one JSON line: actions per window, mode timeline, where the anomaly response fired.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import fumjax
from fumjax.config import FumConfig
from fumjax.control import (
    ControlManager,
    ControlState,
    DebtTracker,
    Monitor,
    effective_config,
    window_metrics,
)
from fumjax.control.load import read_gpu_load
from fumjax.control.modules import AnomalyResponse, default_modules
from fumjax.dynamics import run_driven
from fumjax.train.clustering import cluster_activity


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--neurons", type=int, default=300)
    ap.add_argument("--windows", type=int, default=240)
    ap.add_argument("--inject", default="100:140", help="first:last window of the injected drive gain")
    ap.add_argument("--gain", type=float, default=3.0)
    ap.add_argument("--out", default="bench/control_run")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for f in ("metrics.jsonl", "actions.jsonl"):
        if (out / f).exists():
            raise SystemExit(f"{out / f} exists: choose another --out")
    i0, i1 = (int(x) for x in a.inject.split(":"))

    base = FumConfig().replace(neuron={"n_neurons": a.neurons})
    net = fumjax.build_network(base)
    state = fumjax.init_state(net, base)
    inhibitory_syn = ~np.asarray(net.excitatory)[np.asarray(net.pre)]
    t_win = base.run.window_steps
    load = read_gpu_load()
    modules = default_modules(a.neurons)
    modules[4] = AnomalyResponse(persist_steps=1000, recover_steps=1000)  # short episodes for a short run
    mgr = ControlManager(modules, log_path=out / "actions.jsonl")
    mon = Monitor(history=200, jsonl_path=out / "metrics.jsonl", log_keys=("variance_global", "reward_total"))
    debt = DebtTracker(budget_ms=t_win * base.neuron.dt_ms)
    cs = ControlState()
    warm = []
    labels, k = np.zeros(a.neurons, np.int32), 1
    modes, per_window, compiles = [], [], set()
    for wi in range(a.windows):
        cfg = effective_config(base, cs)
        if i0 <= wi < i1:
            cfg = cfg.replace(drive={"amp_mV": base.drive.amp_mV * a.gain})
        fresh = cfg not in compiles  # its first window compiles: not processing debt of the model
        compiles.add(cfg)
        t0 = time.perf_counter()
        state, spikes, rewards = run_driven(state, net, 1, config=cfg, record_spikes=True)
        spikes = np.asarray(jax.block_until_ready(spikes))[0]
        wall_ms = (time.perf_counter() - t0) * 1e3
        # the running rate estimate (EMA over windows): one window's count is too coarse (1 spike = 20 Hz)
        rates = np.asarray(state.rate_hz, np.float64)
        if wi < 20:
            warm.append(rates)
        if wi == 19:
            cl = cluster_activity(np.stack(warm, 1), k_min=2, k_max=8)
            labels, k = cl.labels, cl.k
        vals, arrays = window_metrics(
            rates,
            labels,
            k,
            spikes.sum(1),
            reward_parts={"total": float(rewards[0])},
            debt=None if fresh else debt,
            wall_ms=wall_ms,
            gpu=load.metrics(),
        )
        m = mon.record(int(state.step), vals, arrays=arrays, detailed=cs.detailed_logging)
        old_scale = cs.inhibition_scale
        cs, acts = mgr.update(cs, m)
        if cs.inhibition_scale != old_scale:  # global inhibition: inhibitory weights follow the knob
            f, c = cs.inhibition_scale / old_scale, base.connectivity.w_clip
            scaled = jnp.clip(state.w * f, -c, c)
            state = state.replace(w=jnp.where(jnp.asarray(inhibitory_syn), scaled, state.w))
        modes.append(cs.mode)
        per_window += [(wi, x.module, x.name) for x in acts]
    mon.close()
    summary = {
        "neurons": a.neurons,
        "windows": a.windows,
        "inject": [i0, i1],
        "gain": a.gain,
        "clusters": int(k),
        "nvml": load.reason,
        "actions": [f"w{w} {m}.{n}" for w, m, n in per_window],
        "mode_changes": [(i, modes[i]) for i in range(len(modes)) if i == 0 or modes[i] != modes[i - 1]],
        "distinct_configs_compiled": len(compiles),
        "final_eta_factor": cs.eta_factor,
        "final_inhibition_scale": cs.inhibition_scale,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
