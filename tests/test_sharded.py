"""Sharded runs (one part per device, shard_map) are bit-identical to the single-device run.

The multi-device checks need XLA_FLAGS=--xla_force_host_platform_device_count=4 set before jax is first
imported, so they run as scripts in a fresh Python process; each prints one JSON line that is asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fumjax
import fumjax.kernels.fused
from fumjax.config import FumConfig
from fumjax.distributed import partition

_PRELUDE = """
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
import json
import jax, jax.numpy as jnp, numpy as np
import fumjax
from fumjax.config import FumConfig
from fumjax.distributed import partition
from fumjax.distributed.sharded import ShardedRun, simulate_sharded
from fumjax.dynamics import background_current

def same(a, b):
    fields = {}
    for f in a.__dataclass_fields__:
        x, y = np.asarray(getattr(a, f)), np.asarray(getattr(b, f))
        fields[f] = bool(x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y))
    return fields
"""


def _run_script(body: str) -> dict:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    code = _PRELUDE + textwrap.dedent(body)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_sharded_windows_bit_identical():
    """Two windows with end_window between them vs fumjax.simulate: rstdp and stdp on 4 devices, rstdp on
    2 (ShardedRun), stdp on 3 through simulate_sharded (uneven parts: padding)."""
    out = _run_script(
        """
        cfg = FumConfig().replace(neuron={"n_neurons": 1000})
        net = fumjax.build_network(cfg)
        s0 = fumjax.init_state(net, cfg)
        T = 60
        d1 = background_current(s0, net, T, cfg) * 1.5
        d2 = background_current(s0.replace(step=s0.step + T), net, T, cfg) * 1.5
        res, ref = {}, {}
        for mode in ("stdp", "rstdp"):
            s1, sp1 = fumjax.simulate(s0, net, d1, config=cfg, plasticity=mode)
            s1 = fumjax.end_window(s1, 0.7, config=cfg, plasticity=mode)
            s2, sp2 = fumjax.simulate(s1, net, d2, config=cfg, plasticity=mode)
            ref[mode] = (sp1, sp2, s2)
            res[mode] = {"spikes": [int(sp1.sum()), int(sp2.sum())], "w_changed": int((s2.w != net.w0).sum())}
        for mode, P in (("stdp", 4), ("rstdp", 4), ("rstdp", 2)):
            sp1, sp2, s2 = ref[mode]
            part = partition(net, P)
            run = ShardedRun(net, part, config=cfg, plasticity=mode)
            ss, q1 = run.run(run.shard(s0), d1)
            ss = run.end_window(ss, 0.7)
            ss, q2 = run.run(ss, d2)
            res[f"{mode}{P}"] = {
                "sizes": [int(x) for x in part.sizes], "n_max": run.n_max,
                "spikes": bool(np.array_equal(q1, sp1) and np.array_equal(q2, sp2)) and q1.dtype == np.uint8,
                "state": same(run.gather(ss), s2),
            }
        sp1, sp2, s2 = ref["stdp"]
        part = partition(net, 3)
        g, q1 = simulate_sharded(s0, net, d1, n_devices=3, config=cfg, plasticity="stdp", partition=part)
        g = fumjax.end_window(g, 0.7, config=cfg, plasticity="stdp")
        g, q2 = simulate_sharded(g, net, d2, n_devices=3, config=cfg, plasticity="stdp", partition=part)
        res["stdp3"] = {"sizes": [int(x) for x in part.sizes],
                        "spikes": bool(np.array_equal(q1, sp1) and np.array_equal(q2, sp2)),
                        "state": same(g, s2)}
        print(json.dumps(res))
        """
    )
    for mode in ("stdp", "rstdp"):
        assert min(out[mode]["spikes"]) > 300  # an active network, not a trivial check
        assert out[mode]["w_changed"] > 1000  # plasticity really moved the weights
    for key in ("stdp4", "rstdp4", "rstdp2", "stdp3"):
        r = out[key]
        assert sum(r["sizes"]) == 1000 and len(r["sizes"]) == int(key[-1])
        assert r["spikes"], key
        assert all(r["state"].values()), (key, r["state"])
    for key in ("stdp4", "rstdp4", "rstdp2"):
        assert out[key]["n_max"] == max(out[key]["sizes"]) + 1  # every part has at least one pad neuron
    assert min(out["stdp3"]["sizes"]) < max(out["stdp3"]["sizes"])  # 1000 / 3: parts are uneven


def test_sharded_driven_and_delays_bit_identical():
    """run_driven (background drive keyed by original id, SIE reward from global rates) and delay = 3."""
    out = _run_script(
        """
        cfg = FumConfig().replace(neuron={"n_neurons": 800}, run={"window_steps": 40})
        net = fumjax.build_network(cfg)
        s0 = fumjax.init_state(net, cfg)
        s1, c1, r1 = fumjax.run_driven(s0, net, 4, config=cfg, plasticity="rstdp")
        run = ShardedRun(net, n_devices=4, config=cfg, plasticity="rstdp")
        ss, c2, r2 = run.run_driven(run.shard(s0), 4)
        res = {"counts": bool(np.array_equal(c1, c2)), "total": int(np.asarray(c1).sum()),
               "rewards": np.asarray(r1).tolist(), "rewards_eq": bool(np.array_equal(r1, r2)),
               "state": same(run.gather(ss), s1)}
        cfg3 = cfg.replace(connectivity={"delay_steps": 3})
        net3 = fumjax.build_network(cfg3)
        s0 = fumjax.init_state(net3, cfg3)
        d = background_current(s0, net3, 80, cfg3) * 1.5
        s1, sp1 = fumjax.simulate(s0, net3, d, config=cfg3, plasticity="stdp")
        s2, sp2 = simulate_sharded(s0, net3, d, n_devices=3, config=cfg3, plasticity="stdp")
        res["delay3"] = {"spikes": bool(np.array_equal(sp1, sp2)), "total": int(sp1.sum()),
                         "state": same(s1, s2), "ring": list(s1.ring_mV.shape)}
        print(json.dumps(res))
        """
    )
    assert out["counts"] and out["rewards_eq"], out
    assert out["total"] > 300
    assert max(out["rewards"]) > 0  # the reward path carries a real nonzero value
    assert all(out["state"].values()), out["state"]
    d3 = out["delay3"]
    assert d3["ring"] == [3, 800] and d3["total"] > 100
    assert d3["spikes"] and all(d3["state"].values()), d3


@pytest.mark.skipif(not fumjax.kernels.fused.available(), reason="fumjax._core not built")
def test_sharded_fused_backend_equals_single_process_steps():
    """backend='fused' inside shard_map (the FFI kernels' results retyped as varying over the mesh): the
    same spikes and state as one process scanning `step` with the fused backend (LIF + synapse kernels)."""
    out = _run_script(
        """
        from fumjax.dynamics import step
        cfg = FumConfig().replace(neuron={"n_neurons": 600})
        net = fumjax.build_network(cfg)
        s0 = fumjax.init_state(net, cfg)
        d = background_current(s0, net, 150, cfg) * 1.5
        body = lambda c, i: step(c, net, i, cfg, "rstdp", "fused")
        s1, sp1 = jax.jit(lambda s: jax.lax.scan(body, s, d))(s0)
        run = ShardedRun(net, n_devices=4, config=cfg, plasticity="rstdp", backend="fused")
        ss, sp2 = run.run(run.shard(s0), d)
        print(json.dumps({"spikes": bool(np.array_equal(sp1, sp2)), "total": int(np.asarray(sp1).sum()),
                          "state": same(run.gather(ss), s1)}))
        """
    )
    assert out["spikes"] and out["total"] > 100, out
    assert all(out["state"].values()), out["state"]


def test_one_device_run_in_process():
    """P = 1 on the single host device of the test process: same spikes and weights as simulate."""
    from fumjax.distributed.sharded import ShardedRun
    from fumjax.dynamics import background_current

    cfg = FumConfig().replace(neuron={"n_neurons": 300})
    net = fumjax.build_network(cfg)
    s0 = fumjax.init_state(net, cfg)
    d = background_current(s0, net, 40, cfg) * 1.5
    s1, sp1 = fumjax.simulate(s0, net, d, config=cfg, plasticity="stdp")
    run = ShardedRun(net, partition(net, 1), n_devices=1, config=cfg, plasticity="stdp")
    ss, sp2 = run.run(run.shard(s0), d)
    s2 = run.gather(ss)
    assert int(sp1.sum()) > 50
    np.testing.assert_array_equal(sp2, sp1)
    np.testing.assert_array_equal(s2.w, s1.w)
    np.testing.assert_array_equal(s2.x_pre, s1.x_pre)
    assert run.n_max == 301 and run.e_max == net.n_synapses
    with pytest.raises(ValueError, match="devices are visible"):
        ShardedRun(net, n_devices=64, config=cfg)
