"""Peer comparison on the FUM-1k recipe: fumjax (reference, fused) vs Brian2 and NEST, one core each.

    python bench/bench_peers.py                             # N = 1000 and 10000, static + STDP, all peers
    python bench/bench_peers.py --neurons 1000 --peers fumjax-fused,brian2 --variants stdp
    python bench/bench_peers.py --neurons 100000 --peers fumjax-fused,brian2 --chunks 1000  # 5M synapses

Peers (--peers, comma separated; default: fumjax-reference,fumjax-fused,brian2,nest):
  fumjax-reference, fumjax-fused   fumjax.simulate, backend "reference" / "fused"
  brian2                           Brian2 cpp_standalone (its own loop timer, std::clock; compile excluded)
  brian2-cython, brian2-numpy      Brian2 runtime targets (Brian2's own loop timer, wall; codegen excluded)
  nest                             NEST 3.x iaf_psc_delta + stdp_synapse (time of nest.Run only)
A peer that is not installed is reported and skipped.

The recipe (/work/shared/BENCHMARKS.md) is built once per size with numpy (seeded) and written to a
temporary .npz; every simulator reads the same arrays: N neurons (80% excitatory), each ordered pair
connected with probability 50/N (no self), w ~ U(0, 0.3) from E and U(-0.3, 0) from I (1.0 = 2 mV), tau ~
N(20, 2) clipped [15, 25] ms, v_th ~ N(-55, 2) clipped [-60, -50] mV, v_rest = v_reset = -70 mV, no
refractory period, dt = 1 ms, 100 Poisson sources at 20 Hz (spike trains drawn once), each to each neuron
with probability 0.1, 2.25 mV per input spike. The spike of a source in step t acts in step t+1 (the same
one-step delay as recurrent synapses). STDP: pair rule with traces, tau+- = 20 ms, A+ = 0.01, A- = 0.012,
excitatory synapses only, w in [0, 1] (fumjax: [-1, 1], see the caveats printed at the end).

Each (simulator, variant) runs in a fresh subprocess pinned to one core (sched_setaffinity,
OMP_NUM_THREADS=1, single-threaded XLA), one at a time; inside it the model is built, warmed up / compiled,
then run --repeats times from a freshly initialised state (Brian2 cpp_standalone: the compiled binary is
executed --repeats times; NEST: the kernel is reset and the network rebuilt each time, after one unreported
warm-up run). Reported: the median and all values of the seconds per --seconds of model time, build/compile
excluded, as CPU time of the simulation loop (--metric cpu, the default: Brian2 cpp_standalone's own loop
timer is std::clock, and CPU time stays meaningful when other jobs share the machine) and as wall time.
fumjax is timed twice: the whole run in one `simulate` call (--chunks' first value, the headline, as Brian2
and NEST run it) and in FUM's 50-step windows (fumjax-fused@50: one Python call per window, which adds the
per-call cost of the public API).
The last line is JSON (machine, date, command, versions, every value).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ALL_PEERS = ("fumjax-reference", "fumjax-fused", "brian2", "brian2-cython", "brian2-numpy", "nest")
DEFAULT_PEERS = "fumjax-reference,fumjax-fused,brian2,nest"
VARIANTS = ("static", "stdp")

# Recipe constants (BENCHMARKS.md, FUM-1k)
E_FRACTION = 0.8
K_MEAN = 50.0  # expected out-degree: p = 50 / N
V_REST = V_RESET = -70.0
G_SYN = 2.0  # mV per unit weight
N_SOURCES, SOURCE_HZ, P_SOURCE, INPUT_MV = 100, 20.0, 0.1, 2.25
A_PLUS, A_MINUS, TAU_STDP = 0.01, 0.012, 20.0
W_MAX = 1.0

SINGLE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    "JAX_PLATFORMS": "cpu",
    "PYNEST_QUIET": "1",
}


# ------------------------------------------------------------------------------------------------------------
# The problem: built once per size, shared by every simulator through an .npz file
# ------------------------------------------------------------------------------------------------------------


def build_problem(n: int, steps: int, seed: int) -> dict[str, np.ndarray]:
    """The FUM recipe network and input as numpy arrays (edges sorted by pre, then post)."""
    rng = np.random.default_rng(seed)
    exc = np.zeros(n, bool)
    exc[: round(E_FRACTION * n)] = True
    rng.shuffle(exc)
    p = min(1.0, K_MEAN / n)
    # G(n, p) without self-loops: the edge count is Binomial(N(N-1), p), the edges a uniform sample of it
    # (the same law as N(N-1) independent Bernoulli draws), in O(E) memory instead of O(N^2).
    n_pairs = n * (n - 1)
    m = int(rng.binomial(n_pairs, p))
    flat = np.sort(rng.choice(n_pairs, size=m, replace=False))
    pre = (flat // (n - 1)).astype(np.int32)
    j = (flat % (n - 1)).astype(np.int32)
    post = j + (j >= pre)  # skip the diagonal
    u = rng.random(m)
    w = np.where(exc[pre], 0.3 * u, -0.3 * (1.0 - u))
    tau = np.clip(rng.normal(20.0, 2.0, n), 15.0, 25.0)
    v_th = np.clip(rng.normal(-55.0, 2.0, n), -60.0, -50.0)
    # float32-representable, so that every simulator (fumjax stores float32) gets the same values
    w, tau, v_th = (np.float32(a).astype(np.float64) for a in (w, tau, v_th))
    src = (rng.random((steps, N_SOURCES)) < SOURCE_HZ * 1e-3).astype(np.uint8)  # dt = 1 ms
    conn = rng.random((N_SOURCES, n)) < P_SOURCE
    src_i, src_j = np.nonzero(conn)
    spike_t, spike_i = np.nonzero(src)
    return {
        "n": np.int64(n),
        "steps": np.int64(steps),
        "pre": pre,
        "post": post.astype(np.int32),
        "w": w,
        "exc": exc,
        "tau": tau,
        "v_th": v_th,
        "conn_i": src_i.astype(np.int32),  # source -> neuron edges
        "conn_j": src_j.astype(np.int32),
        "spike_t": spike_t.astype(np.int32),  # source spikes: step, source id
        "spike_i": spike_i.astype(np.int32),
    }


def external_current(prob, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Rows [start, stop) of fumjax's I_ext (T, N) float32 mV: I_ext[t] = 2.25 * S[t-1] @ C (a source spike in
    step t acts in step t+1, like a recurrent spike), I_ext[0] = 0."""
    n, steps = int(prob["n"]), int(prob["steps"])
    stop = steps if stop is None else stop
    src = np.zeros((steps + 1, N_SOURCES), np.float32)  # src[t + 1] = S[t]
    src[prob["spike_t"] + 1, prob["spike_i"]] = 1.0
    conn = np.zeros((N_SOURCES, n), np.float32)
    conn[prob["conn_i"], prob["conn_j"]] = 1.0
    return INPUT_MV * (src[start:stop] @ conn)


# ------------------------------------------------------------------------------------------------------------
# Children: one simulator, one variant, --repeats timed runs; print one JSON line
# ------------------------------------------------------------------------------------------------------------


def child_fumjax(prob, variant: str, repeats: int, backend: str, chunk: int, all_plastic: bool) -> dict:
    import jax
    import jax.numpy as jnp

    import fumjax
    from fumjax import FumConfig, Network

    n, steps = int(prob["n"]), int(prob["steps"])
    cfg = FumConfig().replace(
        neuron={"n_neurons": n, "v_rest_mV": V_REST, "v_reset_mV": V_RESET, "refractory_steps": 0},
        connectivity={"g_syn_mV": G_SYN, "w_clip": W_MAX, "delay_steps": 1},
        stdp={"a_plus": A_PLUS, "a_minus": A_MINUS, "tau_plus_ms": TAU_STDP, "tau_minus_ms": TAU_STDP},
        intrinsic={"enabled": False},  # simulate() never ends a window anyway
        run={"dtype": "float32", "backend": backend, "threads": 1},  # one core each
    )
    mode = "stdp" if variant == "stdp" else False
    exc = prob["exc"]
    net = Network.from_arrays(
        prob["pre"],
        prob["post"],
        prob["w"],
        prob["tau"],
        prob["v_th"],
        exc,
        plastic_pre=None if all_plastic else exc,
    )
    bounds = list(range(0, steps, chunk)) + [steps]
    chunks = [
        jax.device_put(external_current(prob, a, b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    jax.block_until_ready(chunks)
    fused_whole = None
    if backend == "fused":
        from fumjax.kernels import fused, fused_ops

        st = fumjax.init_state(net, cfg)
        fused_whole = "run_steps" in fused_ops() and bool(fused.run_steps_supported(st, net))

    from fumjax.dynamics import _simulate, resolve_mode

    mode_name = resolve_mode(mode, cfg)

    def run(api: bool):
        """One timed run. api: through fumjax.simulate (validates its inputs each call: NaN/Inf scans of the
        state and of the (T, N) input, host syncs); else the jitted loop alone (dynamics._simulate), which
        is what Brian2's loop timer and nest.Run measure."""
        state = fumjax.init_state(net, cfg)
        jax.block_until_ready(state)
        t0, c0 = time.perf_counter(), time.process_time()
        for c in chunks:
            if api:
                state, _ = fumjax.simulate(state, net, c, config=cfg, plasticity=mode, backend=backend)
            else:
                state, _ = _simulate(state, net, c, cfg, mode_name, backend)
        jax.block_until_ready(state)
        return time.perf_counter() - t0, time.process_time() - c0, state

    # warm-up: compile every chunk shape (all equal unless steps % chunk != 0)
    state = fumjax.init_state(net, cfg)
    for shape in {c.shape for c in chunks}:
        c = next(x for x in chunks if x.shape == shape)
        jax.block_until_ready(fumjax.simulate(state, net, c, config=cfg, plasticity=mode, backend=backend))
    walls, cpus, spikes, api_walls, api_cpus = [], [], [], [], []
    for _ in range(repeats):
        wall, cpu, state = run(api=False)
        walls.append(wall)
        cpus.append(cpu)
        spikes.append(int(jnp.sum(state.window_spikes)))
        wall, cpu, _ = run(api=True)
        api_walls.append(wall)
        api_cpus.append(cpu)
    w_end = np.asarray(net.to_input_order(state.w), np.float64)
    return {
        "walls": walls,
        "cpus": cpus,
        "api_walls": api_walls,
        "api_cpus": api_cpus,
        "spikes": spikes,
        "mean_w_exc_end": float(w_end[exc[prob["pre"]]].mean()),
        "frac_w_exc_below_0": float((w_end[exc[prob["pre"]]] < 0).mean()),
        "info": f"chunk {chunk} steps per call"
        + (f"; fused whole-run kernel: {fused_whole}" if backend == "fused" else "")
        + f"; through fumjax.simulate (input checks): cpu {statistics.median(api_cpus):.3f} s",
        "version": f"fumjax {getattr(fumjax, '__version__', '?')}, jax {jax.__version__}",
    }


def _brian2_model(b2, prob, variant: str):
    """Brian2 objects of the recipe following tests/test_brian2_crosscheck.py's step-order mapping."""
    ms = b2.ms
    n = int(prob["n"])
    group = b2.NeuronGroup(
        n,
        "v : 1\nisyn : 1\nkdt : 1\nvth : 1\nnspk : 1",
        threshold="v >= vth",
        reset="v = v_reset\nnspk += 1",
        namespace={"v_reset": V_RESET},
        dt=1 * ms,
        name="neurons",
    )
    group.v = V_REST
    group.kdt = 1.0 / prob["tau"]
    group.vth = prob["v_th"]
    group.run_regularly("v = v + kdt * (v_rest - v) + isyn\nisyn = 0", when="groups", dt=1 * ms)
    group.namespace["v_rest"] = V_REST
    pre, post, w, exc = prob["pre"], prob["post"], prob["w"], prob["exc"]
    e_syn = exc[pre]
    objs = [group]
    if variant == "stdp":
        se = b2.Synapses(
            group,
            group,
            model="""w : 1
                     dapre/dt = -apre / taus : 1 (event-driven)
                     dapost/dt = -apost / taus : 1 (event-driven)""",
            on_pre="isyn_post += g * w\nw = clip(w - Am * apost, 0, wmax)\napre += 1",
            on_post="w = clip(w + Ap * apre, 0, wmax)\napost += 1",
            namespace={"g": G_SYN, "Am": A_MINUS, "Ap": A_PLUS, "taus": TAU_STDP * ms, "wmax": W_MAX},
            dt=1 * ms,
            name="syn_exc",
        )
        se.pre.order = 0  # transmit with the weight before this step's plasticity, then LTD, then LTP
        se.post.order = 1
        se.connect(i=pre[e_syn], j=post[e_syn])
        se.w = w[e_syn]
        si = b2.Synapses(
            group,
            group,
            "w : 1",
            on_pre="isyn_post += g * w",
            namespace={"g": G_SYN},
            dt=1 * ms,
            name="syn_inh",
        )
        si.connect(i=pre[~e_syn], j=post[~e_syn])
        si.w = w[~e_syn]
        objs += [se, si]
    else:
        s = b2.Synapses(
            group, group, "w : 1", on_pre="isyn_post += g * w", namespace={"g": G_SYN}, dt=1 * ms, name="syn"
        )
        s.connect(i=pre, j=post)
        s.w = w
        objs.append(s)
    gen = b2.SpikeGeneratorGroup(N_SOURCES, prob["spike_i"], prob["spike_t"] * ms, dt=1 * ms, name="sources")
    sin = b2.Synapses(
        gen, group, on_pre="isyn_post += a_in", namespace={"a_in": INPUT_MV}, dt=1 * ms, name="syn_in"
    )
    sin.connect(i=prob["conn_i"], j=prob["conn_j"])
    objs += [gen, sin]
    return group, objs


def _brian2_w_exc(objs, prob) -> np.ndarray:
    """Final weights of the excitatory synapses (units of the recipe: 1.0 = 2 mV)."""
    by_name = {o.name: o for o in objs}
    if "syn_exc" in by_name:
        return np.asarray(by_name["syn_exc"].w[:], np.float64)
    return np.asarray(by_name["syn"].w[:], np.float64)[prob["exc"][prob["pre"]]]


def child_brian2_standalone(
    prob, variant: str, repeats: int, workdir: str, fresh: bool, cache_dir: str
) -> dict:
    import brian2 as b2

    b2.prefs.logging.console_log_level = "WARNING"
    steps = int(prob["steps"])
    if fresh:
        proj = tempfile.mkdtemp(prefix="brian2_peer_", dir=workdir)  # a fresh project: full compile
    else:  # a persistent project per variant: make recompiles only what changed (N-dependent sources)
        proj = os.path.join(cache_dir, f"brian2_standalone_{variant}")
        os.makedirs(proj, exist_ok=True)
    b2.set_device("cpp_standalone", directory=proj, build_on_run=False)
    b2.prefs.devices.cpp_standalone.openmp_threads = 0
    group, objs = _brian2_model(b2, prob, variant)
    net = b2.Network(*objs)
    net.run(steps * b2.ms, namespace={})
    # compile on every core (not timed), run pinned to one
    pinned = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    t0 = time.perf_counter()
    b2.device.build(directory=proj, compile=True, run=False, with_output=False)
    compile_s = time.perf_counter() - t0
    os.sched_setaffinity(0, pinned)
    walls, cpus, spikes = [], [], []
    for r in range(repeats):
        results = f"results_{os.getpid()}_{r}"  # a fresh results directory per run
        b2.device.run(directory=proj, results_directory=results, with_output=False)
        cpus.append(float(b2.device._last_run_time))  # the generated loop's std::clock(): CPU time
        walls.append(float(b2.device.timers["run_binary"]))  # wall time of the binary, incl. loading arrays
        spikes.append(int(np.sum(group.nspk[:])))
        if r == repeats - 1:
            w_exc = _brian2_w_exc(objs, prob)
        shutil.rmtree(os.path.join(proj, results), ignore_errors=True)
    if fresh:
        shutil.rmtree(proj, ignore_errors=True)
    return {
        "walls": walls,
        "cpus": cpus,
        "wall_includes_loading": True,
        "spikes": spikes,
        "mean_w_exc_end": float(w_exc.mean()),
        "info": f"Brian2 loop timer = CPU time; wall = the whole binary (loading arrays, writing results); "
        f"{'fresh ' if fresh else 'cached '}compile {compile_s:.1f} s (all cores, excluded)",
        "version": f"brian2 {b2.__version__}",
    }


def child_brian2_runtime(prob, variant: str, repeats: int, target: str) -> dict:
    import brian2 as b2

    b2.prefs.logging.console_log_level = "WARNING"
    b2.prefs.codegen.target = target
    steps = int(prob["steps"])
    walls, spikes = [], []
    for _ in range(repeats):
        group, objs = _brian2_model(b2, prob, variant)
        net = b2.Network(*objs)
        net.run(steps * b2.ms, namespace={})  # code generation/compilation happens in before_run: not timed
        walls.append(float(b2.device._last_run_time))
        spikes.append(int(np.sum(group.nspk[:])))
    return {
        "walls": walls,
        "cpus": None,
        "spikes": spikes,
        "mean_w_exc_end": float(_brian2_w_exc(objs, prob).mean()),
        "info": f"runtime target {target}",
        "version": f"brian2 {b2.__version__}",
    }


def child_nest(prob, variant: str, repeats: int) -> dict:
    import nest

    nest.set_verbosity("M_ERROR")
    n, steps = int(prob["n"]), int(prob["steps"])
    pre, post, w, exc = prob["pre"], prob["post"], prob["w"], prob["exc"]
    e_syn = exc[pre]
    # exact integration: V <- E_L + (V - E_L) exp(-h/tau_m) + jumps; exp(-1/tau_m) = 1 - 1/tau: fumjax's Euler
    tau_m = -1.0 / np.log1p(-1.0 / prob["tau"])
    walls, cpus, prep, spikes = [], [], [], []
    for rep in range(-1, repeats):  # rep -1: warm-up on a tenth of the model time, not reported
        nest.ResetKernel()
        nest.set_verbosity("M_ERROR")
        nest.SetKernelStatus({"local_num_threads": 1, "resolution": 1.0, "print_time": False})
        neurons = nest.Create(
            "iaf_psc_delta",
            n,
            params={
                "E_L": V_REST,
                "V_reset": V_RESET,
                "V_m": V_REST,
                "t_ref": 0.0,
                "I_e": 0.0,
                "C_m": 250.0,
                "tau_minus": TAU_STDP,
                "V_min": -1e9,
            },
        )
        neurons.set(tau_m=tau_m.tolist(), V_th=prob["v_th"].tolist())
        ids = np.asarray(neurons.tolist(), np.int64)
        sources = nest.Create("spike_generator", N_SOURCES)
        st, si = prob["spike_t"], prob["spike_i"]
        keep = st < steps - 1
        order = np.lexsort((st[keep], si[keep]))
        st_k, si_k = st[keep][order], si[keep][order]
        cuts = np.searchsorted(si_k, np.arange(N_SOURCES + 1))
        # a spike in step t acts in step t+1: NEST stamp t+1, 1 ms delay
        sources.set([{"spike_times": (st_k[cuts[k] : cuts[k + 1]] + 1.0).tolist()} for k in range(N_SOURCES)])
        src_ids = np.asarray(sources.tolist(), np.int64)
        nest.Connect(
            src_ids[prob["conn_i"]],
            ids[prob["conn_j"]],
            "one_to_one",
            {
                "synapse_model": "static_synapse",
                "weight": np.full(prob["conn_i"].size, INPUT_MV),
                "delay": np.ones(prob["conn_i"].size),
            },
        )
        if variant == "stdp":
            nest.CopyModel(
                "stdp_synapse",
                "stdp_fum",
                {
                    "tau_plus": TAU_STDP,
                    "lambda": A_PLUS,
                    "alpha": A_MINUS / A_PLUS,
                    "mu_plus": 0.0,
                    "mu_minus": 0.0,
                    "Wmax": G_SYN * W_MAX,
                },
            )
            nest.Connect(
                ids[pre[e_syn]],
                ids[post[e_syn]],
                "one_to_one",
                {"synapse_model": "stdp_fum", "weight": G_SYN * w[e_syn], "delay": np.ones(int(e_syn.sum()))},
            )
            nest.Connect(
                ids[pre[~e_syn]],
                ids[post[~e_syn]],
                "one_to_one",
                {
                    "synapse_model": "static_synapse",
                    "weight": G_SYN * w[~e_syn],
                    "delay": np.ones(int((~e_syn).sum())),
                },
            )
        else:
            nest.Connect(
                ids[pre],
                ids[post],
                "one_to_one",
                {"synapse_model": "static_synapse", "weight": G_SYN * w, "delay": np.ones(w.size)},
            )
        rec = nest.Create("spike_recorder")
        nest.Connect(neurons, rec)
        t0 = time.perf_counter()
        nest.Prepare()
        prep.append(time.perf_counter() - t0)
        t0, c0 = time.perf_counter(), time.process_time()
        nest.Run(float(steps if rep >= 0 else max(1, steps // 10)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        nest.Cleanup()
        if rep >= 0:
            walls.append(wall)
            cpus.append(cpu)
            spikes.append(int(rec.get("n_events")))
            if rep == repeats - 1:
                model = "stdp_fum" if variant == "stdp" else "static_synapse"
                conns = nest.GetConnections(source=neurons, target=neurons, synapse_model=model)
                wn = np.asarray(conns.get("weight"), np.float64) / G_SYN
                mean_w_exc = float(wn[wn >= 0].mean()) if variant == "static" else float(wn.mean())
        else:
            prep.pop()
    return {
        "walls": walls,
        "cpus": cpus,
        "spikes": spikes,
        "mean_w_exc_end": mean_w_exc,
        "info": f"nest.Run only; nest.Prepare (connection infrastructure) "
        f"{', '.join(f'{x:.3f}' for x in prep)} s excluded; spike_recorder attached",
        "version": f"nest {nest.__version__}",
    }


def child_main(args) -> None:
    os.sched_setaffinity(0, {args.core})
    with np.load(args.problem) as f:
        prob = {k: f[k] for k in f.files}
    sim = args.child
    if sim.startswith("fumjax-"):
        out = child_fumjax(
            prob, args.variant, args.repeats, sim.split("-", 1)[1], args.chunk, args.fumjax_all_plastic
        )
    elif sim == "brian2":
        out = child_brian2_standalone(
            prob, args.variant, args.repeats, args.workdir, args.brian2_fresh, args.brian2_cache
        )
    elif sim.startswith("brian2-"):
        out = child_brian2_runtime(prob, args.variant, args.repeats, sim.split("-", 1)[1])
    elif sim == "nest":
        out = child_nest(prob, args.variant, args.repeats)
    else:
        raise SystemExit(f"unknown simulator {sim}")
    print("RESULT " + json.dumps(out), flush=True)


# ------------------------------------------------------------------------------------------------------------
# Parent
# ------------------------------------------------------------------------------------------------------------


def peer_available(sim: str) -> str | None:
    """None if the peer can run here, else why not."""
    mod = {"brian2": "brian2", "brian2-cython": "brian2", "brian2-numpy": "brian2", "nest": "nest"}.get(
        sim, "fumjax"
    )
    code = f"import {mod}"
    if sim == "fumjax-fused":
        code = "from fumjax.kernels import fused; assert fused.available(), 'fused extension not built'"
    elif sim in ("brian2", "brian2-cython"):
        code = (
            "import brian2, Cython, shutil; assert shutil.which('g++') or shutil.which('c++'), 'no g++/c++'"
        )
    env = {**os.environ, **SINGLE_THREAD_ENV}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if r.returncode == 0:
        return None
    lines = (r.stderr or r.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit {r.returncode}"


def run_child(sim: str, variant: str, problem: str, args, workdir: str, chunk: int) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        sim,
        "--variant",
        variant,
        "--problem",
        problem,
        "--repeats",
        str(args.repeats),
        "--chunk",
        str(chunk),
        "--core",
        str(args.core),
        "--workdir",
        workdir,
        "--brian2-cache",
        args.brian2_cache,
    ]
    if args.brian2_fresh:
        cmd.append("--brian2-fresh")
    if args.fumjax_all_plastic:
        cmd.append("--fumjax-all-plastic")
    env = {**os.environ, **SINGLE_THREAD_ENV}
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout} s"}
    total = time.perf_counter() - t0
    for line in reversed(r.stdout.splitlines()):
        if line.startswith("RESULT "):
            out = json.loads(line[len("RESULT ") :])
            out["process_s"] = total
            out["loadavg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
            return out
    tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-8:])
    return {"error": f"exit {r.returncode}: {tail}"}


def machine_info() -> dict:
    model = ""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = float("nan")
    return {
        "processor": platform.processor() or platform.machine(),
        "lscpu_model": model,
        "cpus": os.cpu_count(),
        "mem_gib": round(mem, 1),
        "python": platform.python_version(),
    }


def versions() -> dict:
    out = {"numpy": np.__version__}
    for mod in ("jax", "brian2", "nest"):
        r = subprocess.run(
            [sys.executable, "-c", f"import {mod}; print({mod}.__version__)"],
            capture_output=True,
            text=True,
            env={**os.environ, "PYNEST_QUIET": "1"},
        )
        out[mod] = r.stdout.strip().splitlines()[-1] if r.returncode == 0 and r.stdout.strip() else None
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out["fumjax_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here
        ).stdout.strip()
    except OSError:
        pass
    return out


CAVEATS = """Caveats (semantic differences; all simulators get the same network arrays and input spikes):
- Timing: CPU time of the loop (process_time around simulate / nest.Run; Brian2 cpp_standalone's
  std::clock). On an idle machine it equals the wall time of a single-threaded run; wall times are printed
  too (Brian2's wall = the whole binary, including loading its arrays). Brian2 runtime targets report wall
  time only.
- fumjax runs float32; Brian2 and NEST float64. The dynamics are chaotic, so rasters diverge after a while
  even where the step semantics agree; compare rates, not spike counts.
- Brian2: step order mapped as in tests/test_brian2_crosscheck.py (Euler update in 'groups', synaptic input
  lands in the next step). STDP uses Brian2's usual two pathways (pre: transmit, LTD, apre += 1; post: LTP,
  apost += 1) with a clip in each pathway, so a pre and post spike in the same step count as an LTP pair
  (A+), where fumjax gives 0; fumjax clips once per step. Time = Brian2's loop timer (std::clock in
  cpp_standalone), excluding compilation and loading the arrays (binary wall times printed alongside).
- NEST: iaf_psc_delta integrates the leak exactly; tau_m = -1/ln(1 - 1/tau) makes its decay equal fumjax's
  Euler factor 1 - dt/tau. t_ref = 0. stdp_synapse (lambda = A+, alpha = A-/A+, mu = 0, Wmax = 2 mV) pairs
  spikes at the synapse with the 1 ms delay counted as dendritic delay (pair timing shifted by 1 ms vs
  fumjax/Brian2) and applies facilitation lazily at the next presynaptic spike. Time = nest.Run only
  (nest.Prepare excluded and printed); a spike_recorder is attached.
- fumjax STDP: only excitatory presynaptic neurons are plastic (Network plastic_pre), but its clip is [-1,
  1] (w_clip), so depressed excitatory weights may go below 0, where Brian2/NEST stop at 0; fumjax then
  fires less (compare the per-spike ratio). fumjax's headline time is its jitted loop (dynamics._simulate,
  one core, kernel threads = 1), like Brian2's loop timer and nest.Run; the time through the public
  fumjax.simulate, which validates its inputs each call (NaN/Inf scans of the state and of the (T, N)
  input, host syncs), is printed in the info column. fumjax-fused@50 makes 200 calls of 50 steps.
- fumjax reads its input as a dense (T, N) current I_ext = 2.25 * S @ C (its API), computed before the timed
  loop; Brian2 and NEST get the same source spikes as events through input synapses.
"""


def _fmt(xs) -> str:
    return ", ".join(f"{x:.3f}" for x in xs) if xs else "-"


def _headline(rec: dict, metric: str) -> float:
    """The reported time: CPU time of the loop where the simulator gives it (metric cpu), else wall time."""
    if metric == "cpu" and rec.get("median_cpu_s") is not None:
        return rec["median_cpu_s"]
    return rec["median_wall_s"]


def merge_rounds(outs: list[dict]) -> dict:
    """One child result from the results of --rounds interleaved runs: every timed value and load kept."""
    bad = [o for o in outs if "error" in o]
    if bad:
        return bad[0]
    merged = dict(outs[-1])
    for key in ("walls", "cpus", "spikes", "api_walls", "api_cpus"):
        if all(o.get(key) is not None for o in outs):
            merged[key] = [x for o in outs for x in o[key]]
    merged["loadavg_1min"] = [o["loadavg_1min"] for o in outs] if len(outs) > 1 else outs[0]["loadavg_1min"]
    merged["process_s"] = sum(o.get("process_s", 0.0) for o in outs)
    return merged


def report_one(out: dict, label, variant, chunk, n, n_syn, args) -> dict:
    rec = {"simulator": label, "variant": variant, "neurons": n, "synapses": n_syn, **out}
    if label.startswith("fumjax"):
        rec["chunk"] = chunk
    if "error" in out:
        print(f"  {variant:6s} {label:20s} FAILED: {out['error']}", flush=True)
        return rec
    rec["median_wall_s"] = statistics.median(out["walls"])
    rec["median_cpu_s"] = statistics.median(out["cpus"]) if out.get("cpus") else None
    rec["median_s"] = _headline(rec, args.metric)
    rate = statistics.median(out["spikes"]) / (n * args.seconds)
    rec["rate_hz"] = rate
    print(
        f"  {variant:6s} {label:20s} {args.metric} {rec['median_s']:8.3f} s  "
        f"cpu [{_fmt(out.get('cpus'))}]  wall [{_fmt(out['walls'])}]  "
        f"spikes {out['spikes'][0]:,} ({rate:.2f} Hz)  "
        f"mean E w end {out.get('mean_w_exc_end', float('nan')):.4f}"
        + (f" ({100 * out['frac_w_exc_below_0']:.1f}% < 0)" if "frac_w_exc_below_0" in out else "")
        + f"  load {out['loadavg_1min']}  "
        f"{out.get('info', '')}",
        flush=True,
    )
    return rec


def parent_main(args) -> None:
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    for p in peers:
        if p not in ALL_PEERS:
            raise SystemExit(f"unknown peer {p!r}; choose from {', '.join(ALL_PEERS)}")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    sizes = [int(x) for x in str(args.neurons).split(",")]
    chunks = [int(x) for x in str(args.chunks).split(",")]
    steps = int(round(args.seconds * 1000))
    if args.core not in os.sched_getaffinity(0):
        raise SystemExit(f"core {args.core} not available (affinity {sorted(os.sched_getaffinity(0))})")
    skipped = {}
    for p in peers:
        why = peer_available(p)
        if why:
            skipped[p] = why
            print(f"[skip] {p}: not available: {why}", flush=True)
    runnable = [p for p in peers if p not in skipped]
    workdir = tempfile.mkdtemp(prefix="bench_peers_")
    started = datetime.datetime.now().isoformat(timespec="seconds")
    results = []
    try:
        for n in sizes:
            t0 = time.perf_counter()
            prob = build_problem(n, steps, args.seed)
            path = os.path.join(workdir, f"fum_{n}.npz")
            np.savez(path, **prob)
            n_syn, n_in = int(prob["pre"].size), int(prob["conn_i"].size)
            print(
                f"\n== N = {n}: {n_syn:,} synapses ({int(prob['exc'][prob['pre']].sum()):,} excitatory), "
                f"{n_in:,} input synapses, {prob['spike_t'].size:,} source spikes, {steps} steps "
                f"(built in {time.perf_counter() - t0:.1f} s)",
                flush=True,
            )
            jobs = []  # (sim, label, variant, chunk)
            for variant in variants:
                for sim in runnable:
                    if sim == "fumjax-reference" and n > args.reference_max_neurons:
                        print(
                            f"  {variant:6s} {sim:20s} skipped: N > --reference-max-neurons "
                            f"{args.reference_max_neurons} (dense per step: minutes per run)",
                            flush=True,
                        )
                        continue
                    for chunk in chunks if sim == "fumjax-fused" else chunks[:1]:
                        label = (
                            sim if not sim.startswith("fumjax") or chunk == chunks[0] else f"{sim}@{chunk}"
                        )
                        jobs.append((sim, label, variant, chunk))
            # --rounds > 1: every job once per round, round-robin, so a change of the machine's load
            # during the run hits every simulator alike.
            outs: dict[int, list[dict]] = {k: [] for k in range(len(jobs))}
            for rnd in range(args.rounds):
                if args.rounds > 1:
                    print(f"  -- round {rnd + 1}/{args.rounds}, load {os.getloadavg()}", flush=True)
                for k, (sim, _label, variant, chunk) in enumerate(jobs):
                    if outs[k] and "error" in outs[k][-1]:
                        continue
                    outs[k].append(run_child(sim, variant, path, args, workdir, chunk))
            for k, (_sim, label, variant, chunk) in enumerate(jobs):
                results.append(report_one(merge_rounds(outs[k]), label, variant, chunk, n, n_syn, args))
            del prob
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    ok = [r for r in results if "median_s" in r]

    def base_of(r):
        return next(
            (
                x
                for x in ok
                if x["simulator"] == "fumjax-fused"
                and x["neurons"] == r["neurons"]
                and x["variant"] == r["variant"]
            ),
            None,
        )

    print(
        f"\nSeconds per {args.seconds:g} s of model time, median of {args.repeats * args.rounds} "
        f"({args.rounds} interleaved round(s) of {args.repeats}), one core each, "
        f"headline = {args.metric} time of the simulation loop; ratio = simulator / fumjax fused"
    )
    print(
        "| simulator | N | synapses | variant | median cpu s | median wall s | cpu runs | wall runs "
        "| rate Hz | / fumjax fused | per spike / fumjax fused |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in ok:
        base = base_of(r)
        ratio = f"{r['median_s'] / base['median_s']:.2f}x" if base else "-"
        per_spike = (
            f"{r['median_s'] / r['rate_hz'] / (base['median_s'] / base['rate_hz']):.2f}x" if base else "-"
        )
        cpu = f"{r['median_cpu_s']:.3f}" if r["median_cpu_s"] is not None else "-"
        wall = f"{r['median_wall_s']:.3f}" + (" (whole binary)" if r.get("wall_includes_loading") else "")
        print(
            f"| {r['simulator']} | {r['neurons']:,} | {r['synapses']:,} | {r['variant']} | {cpu} | {wall} | "
            f"{_fmt(r.get('cpus'))} | {_fmt(r['walls'])} | {r['rate_hz']:.2f} | {ratio} | {per_spike} |"
        )
    print()
    for r in ok:
        base = base_of(r)
        if base and r["simulator"] != "fumjax-fused":
            print(
                f"{r['simulator']} / fumjax fused = {r['median_s'] / base['median_s']:.2f}x "
                f"(N = {r['neurons']}, {r['variant']}, {args.metric})"
            )
    print()
    print(CAVEATS)
    summary = {
        "date": started,
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "machine": machine_info(),
        "versions": versions(),
        "settings": {
            "seconds": args.seconds,
            "repeats": args.repeats,
            "rounds": args.rounds,
            "chunks": args.chunks,
            "seed": args.seed,
            "metric": args.metric,
            "reference_max_neurons": args.reference_max_neurons,
            "core": args.core,
            "fumjax_all_plastic": args.fumjax_all_plastic,
        },
        "skipped": skipped,
        "results": [{k: v for k, v in r.items()} for r in results],
    }
    print(json.dumps(summary))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--neurons", default="1000,10000", help="comma-separated sizes (100000 works, slowly)")
    p.add_argument("--peers", default=DEFAULT_PEERS, help=f"comma-separated, from {', '.join(ALL_PEERS)}")
    p.add_argument("--variants", default="static,stdp")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per simulator process")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="interleaved rounds: every simulator's process runs once per round, round-robin",
    )
    p.add_argument("--seconds", type=float, default=10.0, help="model time (dt = 1 ms)")
    p.add_argument(
        "--chunks",
        default="10000,50",
        help="fumjax steps per simulate call: the first is the headline (10000 = the whole run in one "
        "call, as Brian2/NEST run it); fumjax-fused also runs the others (50 = FUM's window), "
        "reported as fumjax-fused@50",
    )
    p.add_argument("--chunk", type=int, default=10000, help=argparse.SUPPRESS)  # child
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--core", type=int, default=0, help="the core every simulator is pinned to")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per simulator process")
    p.add_argument(
        "--metric",
        choices=("cpu", "wall"),
        default="cpu",
        help="headline time: CPU time of the loop (robust on a shared machine; what Brian2 "
        "cpp_standalone's own timer measures) or wall time",
    )
    p.add_argument(
        "--reference-max-neurons",
        type=int,
        default=1000,
        help="skip fumjax-reference above this N (it visits every synapse every step)",
    )
    p.add_argument(
        "--fumjax-all-plastic",
        action="store_true",
        help="fumjax: inhibitory synapses plastic too (its default rule, sign-flipped)",
    )
    p.add_argument(
        "--brian2-fresh",
        action="store_true",
        help="Brian2 cpp_standalone: a fresh project directory per build (full compile, ~50 s each)",
    )
    p.add_argument(
        "--brian2-cache",
        default=os.path.join(os.path.expanduser("~"), ".cache", "fumjax_bench_peers"),
        help="persistent Brian2 project directories (reused across runs unless --brian2-fresh)",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--problem", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child_main(args)
    else:
        parent_main(args)


if __name__ == "__main__":
    main()
