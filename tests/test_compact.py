"""Tests for fumjax.compact (issue 5): pre_bucket, conversions, the device builder's graph law and
invariants, device weights, the memory estimate/check of `fumjax scale`, and fused(CompactNetwork) ==
reference(Network)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fumjax import compact
from fumjax.cli import main
from fumjax.compact import PRE_SHIFT, CompactNetwork, build_compact, build_plan, pre_bucket_table
from fumjax.config import FumConfig
from fumjax.dynamics import run_driven
from fumjax.kernels import fused
from fumjax.network import Network, grid_positions, sample_distance_graph
from fumjax.state import init_state
from fumjax.train.scale import (
    DeviceMemoryError,
    check_device_memory,
    default_pre_shift,
    estimate_device_bytes,
)


def _net_with_empty_rows(n: int = 300, e: int = 3000, seed: int = 0) -> Network:
    """A regular Network (all delays 1) where every third neuron has no outgoing synapse."""
    rng = np.random.default_rng(seed)
    pres = np.flatnonzero(np.arange(n) % 3 != 0)
    pre = rng.choice(pres, e)
    post = rng.integers(0, n, e)
    return Network.from_arrays(
        pre,
        post,
        rng.uniform(-0.3, 0.3, e),
        rng.uniform(15, 25, n),
        rng.uniform(-60, -50, n),
        rng.random(n) < 0.8,
    )


def test_pre_bucket_table_by_hand():
    # rows: 0 empty, 1 = [0,3), 2 empty, 3 = [3,10), 4 empty, 5 = [10,13); buckets of 4 slots: 0, 4, 8, 12
    row_ptr = np.array([0, 0, 3, 3, 10, 10, 13])
    assert pre_bucket_table(row_ptr, 13, shift=2).tolist() == [1, 3, 3, 5]
    assert pre_bucket_table(row_ptr, 13).tolist() == [1]  # one entry per 512 slots
    assert pre_bucket_table(np.zeros(4, np.int64), 0).shape == (0,)


def test_pre_bucket_lookup_gives_pre_of_every_slot():
    net = _net_with_empty_rows()
    row_ptr, pre = np.asarray(net.row_ptr, np.int64), np.asarray(net.pre)
    for shift in (0, 3, 9):
        bucket = pre_bucket_table(row_ptr, net.n_synapses, shift)
        s = np.arange(net.n_synapses)
        i = bucket[s >> shift].astype(np.int64)
        while np.any(row_ptr[i + 1] <= s):  # the kernels' walk: skip rows that end at or before s
            i += row_ptr[i + 1] <= s
        np.testing.assert_array_equal(i, pre)


def test_from_network_to_network_round_trip():
    net = _net_with_empty_rows()
    c = CompactNetwork.from_network(net)
    assert (c.row_ptr.dtype, c.post.dtype, c.in_ptr.dtype, c.in_syn.dtype, c.pre_bucket.dtype) == (
        jnp.uint32,
        jnp.int32,
        jnp.uint32,
        jnp.uint32,
        jnp.int32,
    )
    assert (c.n_synapses, c.n_pre, c.max_delay, c.delay_steps.shape) == (net.n_synapses, 300, 1, (0,))
    np.testing.assert_array_equal(np.asarray(c.sign), np.asarray(net.sign))
    back = c.to_network(net.w0)
    for f in ("row_ptr", "pre", "post", "delay_steps", "w0", "excitatory", "tau_ms", "v_th_mV", "in_ptr"):
        np.testing.assert_array_equal(np.asarray(getattr(back, f)), np.asarray(getattr(net, f)), err_msg=f)
    np.testing.assert_array_equal(np.asarray(back.in_syn), np.asarray(net.in_syn))
    assert back.max_delay == 1 and back.n_neurons == net.n_neurons


def test_from_network_rejects_delays():
    net = Network.from_arrays(
        [0, 1], [1, 0], [0.1, 0.1], [20, 20], [-55, -55], [True, True], delay_steps=[1, 2]
    )
    with pytest.raises(ValueError, match="all delays 1"):
        CompactNetwork.from_network(net)


def _check_graph(net: CompactNetwork, k: int) -> tuple[np.ndarray, np.ndarray]:
    n, e = net.n_neurons, net.n_synapses
    row_ptr = np.asarray(net.row_ptr, np.int64)
    post = np.asarray(net.post, np.int64)
    in_syn = np.asarray(net.in_syn, np.int64)
    pre = np.repeat(np.arange(n), np.diff(row_ptr))
    assert e == n * k and row_ptr[0] == 0 and row_ptr[-1] == e and np.all(np.diff(row_ptr) >= 0)
    assert np.all(np.bincount(post, minlength=n) == k)  # in-degree exactly K
    assert np.all(pre != post)
    assert np.all(np.diff(pre * n + post) > 0)  # CSR by pre then post, no duplicate pair
    np.testing.assert_array_equal(np.asarray(net.in_ptr, np.int64), np.arange(n + 1) * k)
    groups = in_syn.reshape(n, k)
    np.testing.assert_array_equal(post[groups], np.repeat(np.arange(n)[:, None], k, axis=1))
    assert np.all(np.diff(groups, axis=1) > 0)
    np.testing.assert_array_equal(np.asarray(net.pre_bucket), pre_bucket_table(row_ptr, e))
    return pre, post


def test_build_invariants_and_block_independence():
    n, k = 6000, 20
    plan = build_plan(n, k)
    assert not plan.exact and plan.radius < plan.side - 1  # the truncated-window path
    net = build_compact(n, k, seed=5)
    pre, post = _check_graph(net, k)
    pos = grid_positions(n).astype(np.float64)
    assert np.hypot(*(pos[pre] - pos[post]).T).max() <= plan.radius
    # several pre blocks (windows of posts around each) give the same arrays
    small = (2 * plan.halo + 1500) * k
    assert build_plan(n, k, block_elements=small).pre_block == 1500
    other = build_compact(n, k, seed=5, block_elements=small)
    for f in ("row_ptr", "post", "in_syn", "pre_bucket", "excitatory", "tau_ms", "v_th_mV"):
        np.testing.assert_array_equal(np.asarray(getattr(other, f)), np.asarray(getattr(net, f)), err_msg=f)


def test_sampling_methods_agree():
    plan = build_plan(4000, 20)
    assert not plan.exact  # grid edges inside the window and cells cut off by it
    a = compact._sample_all(plan, 5.0, 2, "top_k")
    b = compact._sample_all(plan, 5.0, 2, "bisect")
    np.testing.assert_array_equal(a, b)


def test_distance_law_matches_numpy_sampler():
    """Per-post distance histograms of the device builder vs network.sample_distance_graph (another random
    stream, same law): every bin's mean fraction within 4.5 standard errors."""
    n, k = 2000, 50
    assert build_plan(n, k).exact  # the window covers the grid: no truncation at this size
    net = build_compact(n, k, seed=1)
    pre_c, post_c = _check_graph(net, k)
    pre_n, post_n = sample_distance_graph(n, k, seed=1)
    pos = grid_positions(n).astype(np.float64)
    edges = np.array([0.0, 1.5, 2.5, 4.0, 6.0, 9.0, 14.0, 20.0, np.inf])

    def per_post_fractions(pre, post):
        d = np.hypot(*(pos[pre] - pos[post]).T)
        b = np.digitize(d, edges) - 1
        h = np.zeros((n, len(edges) - 1))
        np.add.at(h, (post, b), 1.0)
        return h / k

    fc, fn = per_post_fractions(pre_c, post_c), per_post_fractions(pre_n, post_n)
    se = np.sqrt(fc.var(0) / n + fn.var(0) / n)
    assert np.all(np.abs(fc.mean(0) - fn.mean(0)) < 4.5 * se), (fc.mean(0), fn.mean(0), se)


def test_expected_beyond_matches_monte_carlo():
    """The truncation model (mean-field Gumbel threshold) vs direct Gumbel-top-K on a disk of radius 40."""
    k, sigma = 20, 2.0
    g = np.arange(-40, 41)
    d = np.hypot(g[:, None], g[None, :]).ravel()
    d = d[(d > 0) & (d <= 40)]
    rng = np.random.default_rng(0)
    radii = np.array([8.0, 10.0])
    count = np.zeros(2)
    reps = 4000
    for _ in range(reps):
        chosen = d[np.argpartition(d / sigma - rng.gumbel(size=d.shape), k)[:k]]
        count += (chosen[None, :] > radii[:, None]).sum(1)
    np.testing.assert_allclose(compact._expected_beyond(k, sigma, radii), count / reps, rtol=0.05)


def test_truncation_radius_is_the_smallest_meeting_tol():
    r, frac = compact.truncation_radius(500, 5.0, 1e-4)
    at = compact._expected_beyond(1000, 5.0, np.array([r - 1.0, float(r)])) / 1000
    assert at[1] <= 1e-4 < at[0] and frac == pytest.approx(at[1])


def test_device_weights_law(monkeypatch):
    monkeypatch.setattr(compact, "_WEIGHT_CHUNK", 4096)  # several chunks
    net = build_compact(2000, 50, seed=0)
    w = np.asarray(net.draw_weights(jnp.bfloat16, w_exc_max=0.3, w_inh_min=-0.3, seed=7), np.float64)
    assert w.shape == (net.n_synapses,)
    row_ptr = np.asarray(net.row_ptr, np.int64)
    exc = np.asarray(net.excitatory)[np.repeat(np.arange(2000), np.diff(row_ptr))]
    top = float(jnp.asarray(0.3, jnp.bfloat16))
    assert np.all((w[exc] >= 0) & (w[exc] <= top)) and np.all((w[~exc] < 0) & (w[~exc] >= -top))
    # U[0, 0.3): mean 0.15, sd 0.3/sqrt(12)
    assert abs(w[exc].mean() - 0.15) < 4 * 0.3 / np.sqrt(12 * exc.sum())
    assert abs(w[~exc].mean() + 0.15) < 4 * 0.3 / np.sqrt(12 * (~exc).sum())
    cfg = FumConfig().replace(run={"dtype": "bfloat16", "seed": 7})
    np.testing.assert_array_equal(np.asarray(init_state(net, cfg).w, np.float64), w)


def test_memory_estimate_by_hand_and_errors():
    cfg = FumConfig().replace(run={"dtype": "bfloat16"})
    est = estimate_device_bytes(1000, 10, cfg)
    # E = 10^4: post, in_syn 4E; w, elig, window temp 2E; row_ptr+in_ptr 8(N+1); pre_bucket 4*20;
    # network neuron arrays 9N; state (7*4 + 8)N; drive 50*4N; spikes 50N; GPU scratch (4 + 50 + 3, N + 2) f32
    assert est["post"] == est["in_syn"] == 40_000 and est["w"] == est["elig"] == 20_000
    assert est["pre_bucket"] == 80 and est["drive_window"] == 200_000
    assert (
        est["run_total"]
        == 40_000 * 2 + 20_000 * 3 + 8008 + 80 + 9000 + 36_000 + 200_000 + 50_000 + 57 * 1002 * 4
    )
    big = estimate_device_bytes(7_000_000, 500, cfg)
    assert big["post"] == 14_000_000_000 and big["w"] == 7_000_000_000
    assert 42e9 < big["total"] < 56e9
    check_device_memory(big, max_gb=56)  # fits the budget
    with pytest.raises(DeviceMemoryError, match=r"exceeds the device \(device bytes_limit .*: 1.00 GB\)"):
        check_device_memory(big, max_gb=56, bytes_limit=10**9)
    with pytest.raises(DeviceMemoryError, match="--max-gb budget of 40 GB.*lower --neurons or --k"):
        check_device_memory(big, max_gb=40)
    f32 = estimate_device_bytes(7_000_000, 500, cfg.replace(run={"dtype": "float32"}))
    with pytest.raises(DeviceMemoryError, match="use --dtype bfloat16"):
        check_device_memory(f32, max_gb=56)


def test_scale_cli_refuses_before_building(capsys):
    assert main(["scale", "--neurons", "7000000", "--k", "500", "--max-gb", "1"]) == 2
    err = capsys.readouterr().err
    assert "estimated device memory" in err and "--max-gb budget of 1 GB" in err


def test_plan_rejects_too_many_synapses():
    with pytest.raises(ValueError, match="E must be < 2\\^32"):
        build_plan(10_000_000, 500)


needs_fused = pytest.mark.skipif(not fused.available(), reason="compiled fumjax._core not installed")


@needs_fused
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_compact_equals_reference_network(dtype):
    """The same 2k x 50 network as a CompactNetwork through fused run_steps and as a regular Network through
    the reference backend: identical spikes, weights, eligibility and membrane potentials."""
    n, k = 2000, 50
    cfg = FumConfig().replace(neuron={"n_neurons": n}, connectivity={"k_per_neuron": k}, run={"dtype": dtype})
    net = build_compact(n, k, cfg=cfg)
    s_c = init_state(net, cfg)
    reg = net.to_network(np.asarray(s_c.w, np.float32))
    s_r = init_state(reg, cfg)
    s_c, sp_c, _ = run_driven(s_c, net, 3, config=cfg, backend="fused", record_spikes=True)
    s_r, sp_r, _ = run_driven(s_r, reg, 3, config=cfg, backend="reference", record_spikes=True)
    assert int(np.asarray(sp_r).sum()) > 100
    np.testing.assert_array_equal(np.asarray(sp_c), np.asarray(sp_r))
    for f in ("w", "elig", "v_mV", "v_th_mV"):
        np.testing.assert_array_equal(np.asarray(getattr(s_c, f)), np.asarray(getattr(s_r, f)), err_msg=f)


@needs_fused
def test_with_pre_shift_coarser_table_same_run():
    """with_pre_shift(s) holds pre_bucket_table(row_ptr, E, s), and the fused kernel (walking forward from
    the coarser table) gives the same spikes and weights as with the default table."""
    n, k = 2000, 50
    cfg = FumConfig().replace(neuron={"n_neurons": n}, connectivity={"k_per_neuron": k})
    net = build_compact(n, k, cfg=cfg)
    coarse = net.with_pre_shift(12)
    assert coarse.pre_shift == 12 and net.pre_shift == PRE_SHIFT
    want = pre_bucket_table(np.asarray(net.row_ptr, np.int64), net.n_synapses, 12)
    np.testing.assert_array_equal(np.asarray(coarse.pre_bucket), want)
    with pytest.raises(ValueError, match="pre_shift"):
        net.with_pre_shift(PRE_SHIFT - 1)
    runs = [
        run_driven(init_state(x, cfg), x, 2, config=cfg, backend="fused", record_spikes=True)
        for x in (net, coarse)
    ]
    assert int(np.asarray(runs[0][1]).sum()) > 100
    np.testing.assert_array_equal(np.asarray(runs[0][1]), np.asarray(runs[1][1]))
    for f in ("w", "elig", "v_mV"):
        np.testing.assert_array_equal(np.asarray(getattr(runs[0][0], f)), np.asarray(getattr(runs[1][0], f)))


@needs_fused
def test_scale_cli_small_run(capsys, tmp_path):
    argv = ["scale", "--neurons", "2000", "--k", "50", "--seconds", "0.2", "--drive-hz", "20"]
    assert main(argv + ["--group-windows", "2", "--out", str(tmp_path / "run")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["synapses"] == 100_000 and summary["model_s"] == pytest.approx(0.2)
    # post 4 + in_syn 4 + w 2 + elig 2 (bfloat16) + pre_bucket 4 * 196 / E
    assert summary["bytes_per_synapse"] == pytest.approx(12 + 4 * 196 / 100_000)
    assert summary["finite"] and summary["rate_hz"] > 0
    assert len((tmp_path / "run" / "windows.jsonl").read_text().splitlines()) == 2
    assert main(argv + ["--out", str(tmp_path / "run")]) == 2  # never overwrites
    # a coarser pre_bucket table (every 4th entry: 49 of 196) runs the same network to the same spikes
    assert summary["pre_shift"] == PRE_SHIFT == 9
    assert main(argv + ["--pre-shift", "11"]) == 0
    coarse = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert coarse["pre_shift"] == 11
    assert coarse["bytes_per_synapse"] == pytest.approx(12 + 4 * 49 / 100_000)
    assert coarse["rate_hz"] == summary["rate_hz"]


def test_default_pre_shift():
    # GPU: ~8 rows of K per entry (2^12 slots at K = 500); never finer than PRE_SHIFT; the CPU keeps PRE_SHIFT
    assert default_pre_shift(500, "gpu") == 12
    assert default_pre_shift(100, "gpu") == 10
    assert default_pre_shift(50, "gpu") == PRE_SHIFT
    assert default_pre_shift(500, "cpu") == PRE_SHIFT


@needs_fused
def test_window_end_in_kernel_needs_the_multi_path_or_the_gpu_planner(monkeypatch):
    """The window kernel is chosen for the multi path without asking the GPU extension; any other path asks
    the handler's planner, and without the GPU extension that is a clear error, not an AttributeError."""
    cfg = FumConfig().replace(neuron={"n_neurons": 200}, connectivity={"k_per_neuron": 10})
    net = build_compact(200, 10, cfg=cfg)
    state = init_state(net, cfg)
    monkeypatch.setenv("FUMJAX_GPU_RUN_PATH", "multi")
    assert fused.window_end_in_kernel(state, net, cfg) is True
    monkeypatch.setenv("FUMJAX_GPU_RUN_PATH", "auto")
    if fused._load("_core_gpu") is None:
        with pytest.raises(RuntimeError, match="_core_gpu is not built"):
            fused.window_end_in_kernel(state, net, cfg)


@needs_fused
def test_run_driven_traces_the_gpu_window_branch_on_cpu(monkeypatch):
    """run_driven's rstdp windows take fumjax_window_reward on a GPU through lax.platform_dependent (where
    the multi path runs). With the GPU extension claimed present and the multi path claimed, the GPU branch
    (fused.run_window_gpu) is traced beside the CPU one but lowered only for GPUs: on the CPU the results
    stay those of the plain path, exactly."""
    n, k = 500, 20
    cfg = FumConfig().replace(neuron={"n_neurons": n}, connectivity={"k_per_neuron": k})
    net = build_compact(n, k, cfg=cfg)
    state = init_state(net, cfg)
    plain = run_driven(state, net, 2, config=cfg, backend="fused", record_spikes=True)
    traced = []
    run_window_gpu = fused.run_window_gpu

    def spy(*args, **kwargs):
        traced.append(1)
        return run_window_gpu(*args, **kwargs)

    monkeypatch.setattr(fused, "gpu_available", lambda: True)
    monkeypatch.setattr(fused, "window_end_in_kernel", lambda *a: True)
    monkeypatch.setattr(fused, "run_window_gpu", spy)
    jax.clear_caches()
    both = run_driven(state, net, 2, config=cfg, backend="fused", record_spikes=True)
    assert traced, "the GPU branch was not traced"
    assert int(np.asarray(plain[1]).sum()) > 0
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(both), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
