"""GPU whole-run kernel (hip/run_steps.hip) against the reference backend run on the CPU.

The reference (`dynamics._simulate`, backend 'reference', jitted on the CPU device) is the truth. Three GPU
paths are run. The cluster path (Hopper thread-block cluster; opt-in with FUMJAX_GPU_RUN_PATH=cluster until
these tests have passed on a GPU with its event body) sums each neuron's inputs in ascending synapse order
like the reference, so its rasters, v and ring must match exactly. The block and multi paths add several
spikes arriving at one neuron in one step with atomicAdd, in no fixed order; from three addends on the sums
can differ by an ulp, which can flip a spike sitting exactly on threshold and then the rasters diverge. Most
runs still match exactly; `test_exact_match_rate` measures how many (default path: block for these sizes).
"""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

import fumjax
from fumjax import FumConfig, plasticity
from fumjax.dynamics import _simulate
from fumjax.kernels import fused
from fumjax.network import Network

pytestmark = pytest.mark.gpu


def _gpu_ready() -> tuple[bool, str]:
    try:
        jax.devices("gpu")
    except RuntimeError:
        return False, "no GPU visible to JAX"
    if not fused.gpu_available():
        return False, "fumjax._core_gpu not built (install with a CUDA/ROCm toolkit)"
    return True, ""


_ok, _why = _gpu_ready()
if not _ok:
    pytest.skip(_why, allow_module_level=True)

CPU = jax.devices("cpu")[0]
GPU = jax.devices("gpu")[0]


def _gpu_run_steps(state, net, i_ext, cfg, mode):
    """fused.run_steps on GPU arrays: the GPU handler of the same FFI target."""
    assert fused.run_steps_supported(state, net)
    return jax.jit(fused.run_steps, static_argnames=("cfg", "mode"))(state, net, i_ext, cfg=cfg, mode=mode)


def make_case(
    n: int, k: int, delays: str, seed: int, t_steps: int, drive_mV: float = 2.4, dtype: str = "float32"
):
    rng = np.random.default_rng(seed)
    e = n * k
    pre = rng.integers(0, n, e)
    post = rng.integers(0, n, e)
    exc = rng.random(n) < 0.8
    w = np.where(exc[pre], rng.uniform(0, 0.3, e), rng.uniform(-0.3, 0, e))
    d = np.ones(e, np.int32) if delays == "1" else rng.integers(1, 4, e).astype(np.int32)
    net = Network.from_arrays(
        pre, post, w, rng.uniform(15, 25, n), rng.uniform(-58, -52, n), exc, delay_steps=d
    )
    cfg = FumConfig().replace(neuron={"n_neurons": n, "refractory_steps": 2}, run={"dtype": dtype})
    state = fumjax.init_state(net, cfg)
    # Poisson-like drive: ~10-20 Hz background activity.
    i_ext = (rng.random((t_steps, n)) < 0.25).astype(np.float32) * np.float32(drive_mV) + rng.normal(
        0.0, 0.3, (t_steps, n)
    ).astype(np.float32)
    return net, cfg, state, i_ext


def run_both(net, cfg, state, i_ext, mode):
    to = lambda dev: lambda x: jax.device_put(x, dev)  # noqa: E731
    ref_state, ref_spk = _simulate(
        jax.tree.map(to(CPU), state), jax.tree.map(to(CPU), net), to(CPU)(i_ext), cfg, mode, "reference"
    )
    gpu_state, gpu_spk = _gpu_run_steps(
        jax.tree.map(to(GPU), state), jax.tree.map(to(GPU), net), to(GPU)(i_ext), cfg, mode
    )
    return (
        jax.tree.map(np.asarray, ref_state),
        np.asarray(ref_spk),
        jax.tree.map(np.asarray, gpu_state),
        np.asarray(gpu_spk),
    )


# One unit in the last place of 16-bit synapse storage, relative: the GPU computes the STDP pair difference
# without the FMA the CPU reference's XLA contracts, and each update ends in one rounding to storage, so a
# stored value may differ by one storage ulp (float16 2^-10, bfloat16 2^-7; float32 keeps 1e-5).
STORAGE_RTOL = {np.dtype("float16"): 2.0**-10, np.dtype(jax.numpy.bfloat16): 2.0**-7}


def compare(ref_state, ref_spk, gpu_state, gpu_spk) -> dict:
    """Raster agreement and, where rasters match, the state's largest relative deviation."""
    same = ref_spk == gpu_spk
    bad_steps = np.flatnonzero(~same.all(axis=1))
    out = {
        "exact": bool(same.all()),
        "first_diff_step": int(bad_steps[0]) if bad_steps.size else -1,
        "diff_entries": int((~same).sum()),
        "spikes": int(ref_spk.sum()),
        "rate_hz": float(ref_spk.mean() * 1000.0),
        "w_rtol": STORAGE_RTOL.get(np.dtype(ref_state.w.dtype), 1e-5),
    }
    for f in ("w", "elig", "x_pre", "y_post", "v_mV", "ring_mV"):
        r, g = getattr(ref_state, f).astype(np.float64), getattr(gpu_state, f).astype(np.float64)
        scale = max(np.abs(r).max(), 1e-30)
        out[f] = float(np.abs(r - g).max() / scale)
    for f in ("refrac_left", "window_spikes", "step", "elig_t0"):
        out[f] = bool(np.array_equal(getattr(ref_state, f), getattr(gpu_state, f)))
    return out


def assert_match(c: dict) -> None:
    assert c["exact"], c
    for f in ("w", "elig"):
        assert c[f] <= c["w_rtol"], (f, c)
    for f in ("x_pre", "y_post"):
        assert c[f] <= 1e-5, (f, c)
    for f in ("refrac_left", "window_spikes", "step", "elig_t0"):
        assert c[f], (f, c)


def _cluster_path_available() -> bool:
    cc = getattr(GPU, "compute_capability", None)  # "9.0" on CUDA devices
    return cc is not None and float(cc) >= 9.0


def assert_match_all(c: dict) -> None:
    """The cluster path sums inputs in the reference's order: identical rasters, and v and the ring within
    1e-5 relative too (not bitwise: the CPU reference contracts the STDP update into an FMA as XLA does)."""
    assert_match(c)
    for f in ("v_mV", "ring_mV"):
        assert c[f] <= 1e-5, (f, c)


def _use_gpu_path(monkeypatch, **env: str) -> None:
    """Set the FUMJAX_GPU_* variables and drop compiled programs: a handler that changes its kernel under an
    already captured CUDA graph (XLA command buffer) cannot be updated in place."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    jax.clear_caches()


@pytest.fixture(params=["cluster", "block", "multi"])
def path(request, monkeypatch):
    if request.param == "cluster" and not _cluster_path_available():
        pytest.skip("cluster path needs compute capability >= 9.0")
    _use_gpu_path(monkeypatch, FUMJAX_GPU_RUN_PATH=request.param)
    return request.param


@pytest.mark.parametrize("mode", ["off", "stdp", "rstdp"])
@pytest.mark.parametrize("n,delays", [(300, "1"), (1000, "1"), (1000, "mixed"), (5000, "mixed")])
def test_gpu_matches_cpu_reference(n, delays, mode, path):
    net, cfg, state, i_ext = make_case(n, 50 if n <= 1000 else 100, delays, seed=n + len(delays), t_steps=400)
    c = compare(*run_both(net, cfg, state, i_ext, mode))
    print(path, n, delays, mode, c)
    if path == "cluster":  # N = 5000 x 100 does not fit shared memory: the global-memory fallback runs
        assert_match_all(c)
        return
    if not c["exact"]:
        # Summation order of >= 3 same-step inputs (atomics): allowed to diverge only after some steps.
        assert c["first_diff_step"] > 0, c
        pytest.xfail(f"raster diverged at step {c['first_diff_step']} (atomicAdd order): {c}")
    assert_match(c)


@pytest.mark.parametrize("delays", ["1", "mixed"])
@pytest.mark.parametrize("gpu_path", ["block", "multi"])
def test_calls_carry_state(gpu_path, delays, monkeypatch):
    """Block and multi paths over calls of 150, 0 and 250 steps against one 400-step reference run: the input
    summed into the ring at a call's end is the next call's step-0 input, the eligibility clock resumes where
    the last call left it (the third call starts on a renormalization step, 50 after elig_t0), each call
    restages its per-call tables (block) or starts a segment of deferred LTP and flushes it at its end
    (multi), and a 0-step call leaves every state array bit for bit as it was."""
    _use_gpu_path(monkeypatch, FUMJAX_GPU_RUN_PATH=gpu_path)
    net, cfg, state, i_ext = make_case(1000, 50, delays, seed=41, t_steps=400)
    to = lambda dev: lambda x: jax.device_put(x, dev)  # noqa: E731
    ref_state, ref_spk = _simulate(
        jax.tree.map(to(CPU), state), jax.tree.map(to(CPU), net), to(CPU)(i_ext), cfg, "rstdp", "reference"
    )
    g, gnet, spikes = jax.tree.map(to(GPU), state), jax.tree.map(to(GPU), net), []
    for a, b in ((0, 150), (150, 150), (150, 400)):
        before = jax.tree.map(np.asarray, g)
        g, spk = _gpu_run_steps(g, gnet, to(GPU)(i_ext[a:b]), cfg, "rstdp")
        assert spk.shape == (b - a, 1000)
        if a == b:
            after = jax.tree.map(np.asarray, g)
            for f in ("v_mV", "ring_mV", "x_pre", "y_post", "w", "elig", "refrac_left", "step", "elig_t0"):
                assert np.array_equal(getattr(before, f), getattr(after, f)), f
        spikes.append(np.asarray(spk))
    c = compare(
        jax.tree.map(np.asarray, ref_state),
        np.asarray(ref_spk),
        jax.tree.map(np.asarray, g),
        np.concatenate(spikes),
    )
    print(gpu_path, "calls", delays, c)
    if not c["exact"]:
        assert c["first_diff_step"] > 0, c
        pytest.xfail(f"raster diverged at step {c['first_diff_step']} (atomicAdd order): {c}")
    assert_match(c)
    assert c["ring_mV"] <= 1e-5, c  # the carried input itself (summation order: a few ulp at most)


@pytest.mark.parametrize(
    "n,delays,t_steps", [(300, "1", 400), (1000, "1", 400), (1000, "mixed", 400), (1000, "1", 3000)]
)
@pytest.mark.parametrize("traces", ["dyn", "plast"])
def test_block_split_traces(n, delays, t_steps, traces, monkeypatch):
    """The rstdp split kernel with the traces kept by the dynamics warps (FUMJAX_GPU_SPLIT_TRACES=dyn, the
    default: each step's x and y reach the plasticity warps through the stage, and are written back at the
    call's end) or by the plasticity warps (plast): the same values as the reference. 3000 steps: every
    stage reused many times, and the eligibility renormalized mid-call."""
    _use_gpu_path(monkeypatch, FUMJAX_GPU_RUN_PATH="block", FUMJAX_GPU_SPLIT_TRACES=traces)
    net, cfg, state, i_ext = make_case(n, 50, delays, seed=n + t_steps + len(delays), t_steps=t_steps)
    c = compare(*run_both(net, cfg, state, i_ext, "rstdp"))
    print("block split, traces in", traces, n, delays, t_steps, c)
    if not c["exact"]:
        assert c["first_diff_step"] > 0, c
        pytest.xfail(f"raster diverged at step {c['first_diff_step']} (atomicAdd order): {c}")
    assert_match(c)


@pytest.mark.parametrize(
    "csize,body", [(1, "auto"), (2, "auto"), (4, "auto"), (16, "auto"), (8, "pull"), (16, "pull")]
)
@pytest.mark.parametrize("delays", ["1", "mixed"])
def test_cluster_sizes(csize, body, delays, monkeypatch):
    """Cluster path at other sizes and bodies on N = 1000 x 50: 1 and 2 CTAs overflow shared memory (pull
    body, global fallback); 4 and 16 (or the largest the device schedules) run the event body; pull forced
    at 8 and 16. The default (8 CTAs, event body) runs above."""
    if not _cluster_path_available():
        pytest.skip("cluster path needs compute capability >= 9.0")
    cluster = {"FUMJAX_GPU_CLUSTER": str(csize), "FUMJAX_GPU_CLUSTER_BODY": body}
    _use_gpu_path(monkeypatch, FUMJAX_GPU_RUN_PATH="cluster", **cluster)
    net, cfg, state, i_ext = make_case(1000, 50, delays, seed=11 + csize, t_steps=300)
    for mode in ("stdp", "rstdp"):
        c = compare(*run_both(net, cfg, state, i_ext, mode))
        print("cluster", csize, body, delays, mode, c)
        assert_match_all(c)


@pytest.mark.parametrize("window_steps", [7, 100])
@pytest.mark.parametrize("mode", ["stdp", "rstdp"])
def test_multi_lazy_ltp_segments(window_steps, mode, monkeypatch):
    """The multi path defers a post spike's LTP to the next visit of the pre's row, in segments of
    L = min(K, 64) steps flushed at renormalizations, every L steps and at the call's end. K = 7: a flush
    merged with a renormalization every 7 steps; K = 100: segments cut at 64 steps between renormalizations
    (stdp: every 64 steps). Same rasters, w and elig as the reference."""
    _use_gpu_path(monkeypatch, FUMJAX_GPU_RUN_PATH="multi")
    net, cfg, state, i_ext = make_case(1000, 50, "mixed", seed=60 + window_steps, t_steps=300)
    cfg = cfg.replace(run={"window_steps": window_steps})
    assert len(fumjax.state.elig_tables(cfg)[0]) - 1 == window_steps
    c = compare(*run_both(net, cfg, state, i_ext, mode))
    print("multi segments", window_steps, mode, c)
    if not c["exact"]:
        assert c["first_diff_step"] > 0, c
        pytest.xfail(f"raster diverged at step {c['first_diff_step']} (atomicAdd order): {c}")
    assert_match(c)


@pytest.mark.parametrize("mode", ["stdp", "rstdp"])
def test_multi_long_rows(mode, monkeypatch):
    """Rows of ~600 synapses, longer than two rounds of a warp's chunks (2 x 32 lanes x 8 synapses) plus the
    unaligned head and tail: every round of the multi path's flush matches the reference."""
    _use_gpu_path(monkeypatch, FUMJAX_GPU_RUN_PATH="multi")
    net, cfg, state, i_ext = make_case(400, 600, "1", seed=71, t_steps=200)  # bursts, ~110 Hz
    cfg = cfg.replace(run={"window_steps": 50})
    assert int(np.diff(np.asarray(net.row_ptr)).max()) > 8 * 64 + 16  # past the one-phase part
    c = compare(*run_both(net, cfg, state, i_ext, mode))
    print("multi long rows", mode, c)
    if not c["exact"]:
        assert c["first_diff_step"] > 0, c
        pytest.xfail(f"raster diverged at step {c['first_diff_step']} (atomicAdd order): {c}")
    assert_match(c)


def test_long_run_10k_steps(path):
    net, cfg, state, i_ext = make_case(1000, 50, "mixed", seed=7, t_steps=10_000)
    c = compare(*run_both(net, cfg, state, i_ext, "rstdp"))
    print(path, "10k", c)
    if path == "cluster":
        assert_match_all(c)
        return
    if not c["exact"]:
        pytest.xfail(f"raster diverged at step {c['first_diff_step']} (atomicAdd order): {c}")
    assert_match(c)


def test_exact_match_rate():
    """How often do whole 1000-step rasters match exactly? (reported; fails only if below half)."""
    hits, total, firsts = 0, 0, []
    for seed in range(int(os.environ.get("FUMJAX_MATCH_SEEDS", "8"))):
        net, cfg, state, i_ext = make_case(
            1000, 50, "mixed" if seed % 2 else "1", seed=100 + seed, t_steps=1000
        )
        c = compare(*run_both(net, cfg, state, i_ext, "rstdp"))
        hits += c["exact"]
        total += 1
        firsts.append(c["first_diff_step"])
    print(f"exact raster match: {hits}/{total}; first differing steps {firsts}")
    assert hits * 2 >= total


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("mode", ["stdp", "rstdp"])
def test_16bit_synapses(dtype, mode, path):
    """w and elig stored in float16/bfloat16 with float32 neuron state, as on the CPU: widened, updated in
    float32, rounded to nearest even; within one storage ulp of the CPU reference."""
    net, cfg, state, i_ext = make_case(1000, 50, "1", seed=31, t_steps=400, dtype=dtype)
    assert state.w.dtype == np.dtype(jax.numpy.dtype(dtype)) and state.v_mV.dtype == np.float32
    c = compare(*run_both(net, cfg, state, i_ext, mode))
    print(path, "16-bit", dtype, mode, c)
    if path != "cluster" and not c["exact"]:
        pytest.xfail(f"raster diverged at step {c['first_diff_step']} (atomicAdd order): {c}")
    assert_match(c)


@pytest.mark.parametrize("mode,dtype", [("stdp", "float32"), ("rstdp", "float32"), ("rstdp", "float16")])
def test_correctness_at_scale_100k(mode, dtype, monkeypatch):
    """Issue 5's correctness at scale: 100,000 neurons x 100 synapses (10^7), 300 steps with plasticity, the
    default GPU path (multi: the network does not fit one block's shared memory) against the reference
    backend on the CPU. Identical rasters expected; where atomicAdd order flips a spike the test reports
    how many raster entries differ and from which step (xfail), never silently passes."""
    _use_gpu_path(monkeypatch, FUMJAX_GPU_RUN_PATH="auto")
    net, cfg, state, i_ext = make_case(100_000, 100, "1", seed=5, t_steps=300, dtype=dtype)
    c = compare(*run_both(net, cfg, state, i_ext, mode))
    print("multi 100k", mode, dtype, c)
    assert 1.0 < c["rate_hz"] < 100.0, c
    if not c["exact"]:
        assert c["first_diff_step"] > 0, c
        pytest.xfail(
            f"{c['diff_entries']} of {300 * 100_000} raster entries differ, first at step "
            f"{c['first_diff_step']} (atomicAdd order): {c}"
        )
    assert_match(c)


def _windows_unfused(state, net, cfg, rewards):
    """run_driven's windows the long way on the GPU: fused run_steps, then XLA's end of window with the given
    rewards (a reward computed in another XLA program can differ in its last bit: the variance's reduction
    order). Returns (state, spikes (n_windows, T, N), the rewards this path computes)."""
    from fumjax.dynamics import _self_benefit_reward, background_current

    spikes, own = [], []
    for reward in rewards:
        drive = background_current(state, net, cfg.run.window_steps, cfg)
        state, sp = fumjax.simulate(state, net, drive, config=cfg, backend="fused")
        own.append(float(_self_benefit_reward(state, cfg)))
        state = fumjax.end_window(state, reward, config=cfg)
        spikes.append(np.asarray(sp))
    return state, np.stack(spikes), np.asarray(own)


@pytest.mark.parametrize("gamma", [0.95, 0.5])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("gpu_path", ["block", "multi"])
def test_window_reward_in_kernel(gpu_path, dtype, gamma, monkeypatch):
    """run_driven on the GPU (rstdp) ends each window, on the multi path, in fumjax_window_reward: the
    deferred LTP, the eligibility unscaled and w += eta_eff(R) R e in one pass over E; on the block path
    (nothing pending) with XLA's window end (fused.window_end_in_kernel, asked of the handler's planner).
    gamma 0.5 makes K = 13 < T = 50, so renormalizations fall inside the call and the window's end unscales
    from the last of them. Against the same windows with XLA's end of window on the GPU and the same rewards
    (same kernels otherwise): identical rasters and eligibility, rewards within 1e-6, w within one rounding
    (see below). Against the CPU reference backend: identical first window, w and elig within the golden
    tolerances while the rasters agree."""
    from fumjax.compact import build_compact

    _use_gpu_path(monkeypatch, FUMJAX_GPU_RUN_PATH=gpu_path)
    n, k, n_windows = 1000, 50, 3
    cfg = FumConfig().replace(
        neuron={"n_neurons": n},
        connectivity={"k_per_neuron": k},
        run={"dtype": dtype},
        plasticity={"gamma": gamma},
        sie={"target_rate_var": 60.0},  # near this network's rate variance: rewards 0.7-1, not clipped to 0
    )
    net = build_compact(n, k, cfg=cfg)
    state = fumjax.init_state(net, cfg)
    assert fused.window_end_in_kernel(state, net, cfg) == (gpu_path == "multi")
    fits = fused._load("_core_gpu").block_path_fits
    assert fits(n, n * k, 4) and not fits(100_000, 10_000_000, 4) and not fits(10_000, 10_000, 4)
    if gamma == 0.5:
        assert len(fumjax.state.elig_tables(cfg)[0]) - 1 == 13
    s_f, sp_f, r_f = fumjax.run_driven(state, net, n_windows, config=cfg, backend="fused", record_spikes=True)
    sp_f, r_f = np.asarray(sp_f), np.asarray(r_f)
    s_u, sp_u, r_u = _windows_unfused(state, net, cfg, r_f)
    assert sp_f.sum() > 100 and np.abs(r_f).max() > 0, (sp_f.sum(), r_f)
    w_f, w_u = np.asarray(s_f.w, np.float64), np.asarray(s_u.w, np.float64)
    print("window reward", gpu_path, dtype, gamma, int(sp_f.sum()), r_f, "w differ:", int((w_f != w_u).sum()))
    np.testing.assert_array_equal(sp_f, sp_u)
    np.testing.assert_allclose(r_f, r_u, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(s_f.elig), np.asarray(s_u.elig))
    # One rounding apart at most: the kernel's fma is XLA's on the CPU (the reference); XLA on the GPU rounds
    # the product first (float32) or may keep the unscaled eligibility unrounded (bfloat16).
    ulp = {np.dtype("float32"): 2.0**-23}.get(np.dtype(s_f.w.dtype)) or STORAGE_RTOL[np.dtype(s_f.w.dtype)]
    assert np.abs(w_f - w_u).max() <= ulp * np.abs(w_u).max(), int((w_f != w_u).sum())
    assert int(s_f.elig_t0) == int(s_f.step) == n_windows * cfg.run.window_steps

    with jax.default_device(CPU):  # the reference backend takes the compact network as a Network
        reg = net.to_network(np.asarray(state.w, np.float32))
        s_r, sp_r, r_r = fumjax.run_driven(
            fumjax.init_state(reg, cfg),
            reg,
            n_windows,
            config=cfg,
            backend="reference",
            record_spikes=True,
        )
    sp_r = np.asarray(sp_r)
    np.testing.assert_array_equal(sp_f[0], sp_r[0])
    if not np.array_equal(sp_f, sp_r):
        pytest.xfail("raster diverged from the CPU reference after the first window (atomicAdd order)")
    np.testing.assert_allclose(r_f, np.asarray(r_r), rtol=1e-5)
    tol = STORAGE_RTOL.get(np.dtype(s_f.w.dtype), 1e-5)
    for f in ("w", "elig"):
        r, g = np.asarray(getattr(s_r, f), np.float64), np.asarray(getattr(s_f, f), np.float64)
        assert np.abs(r - g).max() <= tol * max(np.abs(r).max(), 1e-30), f


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_window_end_kernel_matches_cpu_reference(dtype):
    """fumjax_window_end's GPU kernel (hip/run_steps.hip) against the reference window end jitted on the CPU:
    the eligibility unscaled, w += eta_eff(R) R e clipped, the running rate, intrinsic plasticity and the
    counters, bit for bit (the kernel places its FMAs where XLA:CPU contracts). The reward coefficient is
    computed once, on the CPU, and given to both."""
    from fumjax.dynamics import _end_window_xla

    assert "cuda" in fused.window_end_platforms() or "rocm" in fused.window_end_platforms()
    n, k = 1000, 50
    rng = np.random.default_rng(11)
    cfg = FumConfig().replace(
        neuron={"n_neurons": n},
        connectivity={"k_per_neuron": k},
        run={"dtype": dtype},
        plasticity={"gamma": 0.9},
    )
    with jax.default_device(CPU):
        st = fumjax.init_state(fumjax.build_network(cfg), cfg)
        e = int(st.w.shape[0])
        st = st.replace(
            w=jax.numpy.asarray(rng.uniform(-1, 1, e), st.w.dtype),
            elig=jax.numpy.asarray(rng.normal(0, 3, e), st.elig.dtype),
            rate_hz=jax.numpy.asarray(np.where(rng.random(n) < 0.2, -1.0, rng.uniform(0, 40, n)), np.float32),
            window_spikes=jax.numpy.asarray(rng.integers(0, 4, n), np.int32),
            v_th_mV=jax.numpy.asarray(
                np.where(rng.random(n) < 0.05, 1e9, rng.uniform(-62, -48, n)), np.float32
            ),
            tau_ms=jax.numpy.asarray(rng.uniform(14, 26, n), np.float32),
            step=jax.numpy.asarray(250, np.int32),
            window_start=jax.numpy.asarray(200, np.int32),
            elig_t0=jax.numpy.asarray(220, np.int32),
        )
        # The reference's own coefficient, in its own program (as _end_window computes it), to give the GPU.
        reward = jax.numpy.float32(0.8)
        coef = jax.jit(lambda r: plasticity.reward_coefficient(r, st.w.dtype, cfg))(reward)
        ref = jax.jit(lambda s: _end_window_xla(s, reward, cfg, "rstdp"))(st)
        mid = jax.jit(lambda s, c: fused.window_end(s, c, cfg, "rstdp"))(st, coef)  # the CPU kernel
    got = jax.jit(lambda s, c: fused.window_end(s, c, cfg, "rstdp"))(
        jax.device_put(st, GPU), jax.device_put(coef, GPU)
    )
    for f in ("w", "elig", "elig_t0", "tau_ms", "v_th_mV", "rate_hz", "window_spikes", "window_start"):
        r, c, g = np.asarray(getattr(ref, f)), np.asarray(getattr(mid, f)), np.asarray(getattr(got, f))
        d = np.flatnonzero(r.ravel() != g.ravel())
        print("window_end gpu", dtype, f, "differ:", d.size, int((r != c).sum()))
        if f == "w" and d.size:  # the coefficient's own rounding: at most one ulp of the storage
            rtol = STORAGE_RTOL.get(np.dtype(r.dtype), 2.0**-23)
            assert np.abs(r.astype(np.float64) - g).max() <= rtol * np.abs(r).max(), (f, d.size)
        else:
            np.testing.assert_array_equal(r, g, err_msg=f)
