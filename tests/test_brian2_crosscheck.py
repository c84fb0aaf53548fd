"""Cross-check of the reference backend against Brian2 (numpy codegen target, float64).

How fumjax's step maps onto Brian2 (dt = 1 ms, every quantity dimensionless and in mV / ms):

fumjax, step t (fumjax/dynamics.py `step`, fumjax/kernels/reference.py):
    I_i[t] = ring_i + I_ext_i[t],   ring_i = g_syn * sum_j w_ij s_j[t-1]  (weights before step t-1's STDP)
    V_i[t] = V_i[t-1] + (dt/tau_i) * (v_rest - V_i[t-1]) + I_i[t]
    s_i[t] = V_i[t] >= v_th_i;  V_i[t] = v_reset where s_i[t]   (neuron.refractory_steps = 0, the default)
    STDP ("stdp"): x *= exp(-dt/tau+), y *= exp(-dt/tau-);
                   w = clip(w + sign_j (A+ x_j s_i[t] - A- y_i s_j[t]), -1, 1);  x += s, y += s

Brian2 (each time step runs the slots 'start', 'groups', 'thresholds', 'synapses', 'resets', 'end', in that
order; when="after_synapses" puts an operation right after 'synapses'):
  * NeuronGroup with variables `v, isyn, kdt, vth : 1` and no differential equations. The Euler step is a
    `run_regularly` operation in the 'groups' slot, written as single binary operations on temporaries so
    that Brian2 cannot reorder them and the float64 operations are those of fumjax's source expression:
        itot = isyn + iext(t, i)          # ring + i_ext (ring was zero-initialised then summed into)
        dv = kdt * (v_rest - v)           # kdt = 1.0 / tau_ms, computed in numpy like fumjax's dt/tau
        v = v + dv
        v = v + itot                      # (v + dv) + itot: same association as fumjax
        isyn = 0
    `iext` is a 2-D dimensionless TimedArray(values (T, N), dt=1 ms), so iext(t_k, i) = values[k, i].
    threshold "v >= vth", reset "v = v_reset". loop-invariant optimisations are switched off so no
    subexpression is hoisted or rewritten by sympy.
  * Synapses, created in fumjax's CSR order (by pre, then post) so that `isyn_post += g*w` (numpy's
    ufunc.at over the spiking synapses in index order) sums in the order of jax's segment_sum (a different
    order would only change the sum by ~1e-16 and matter only at exact threshold ties).
    The 'pre' pathway runs in the 'synapses' slot of the step in which the presynaptic neuron spiked,
    after the thresholds; it adds into isyn, which the NEXT step's 'groups' update consumes and then zeroes:
    fumjax's one-step delay through ring_mV. It adds g*w FIRST, so transmission uses the weight from before
    this step's plasticity, as fumjax does.
  * STDP: event-driven traces apre (tau+), apost (tau-); Brian2 decays them to the current t at the start
    of each pathway, which equals fumjax's per-step multiplication by exp(-dt/tau) up to rounding (~1e-16).
    Four pathways with explicit orders:
        pre (0):        isyn_post += g*w;  w += sgn * (-A- * apost)
        post (1):       w += sgn * A+ * apre
        pre_trace (2):  apre += 1
        post_trace (3): apost += 1
    so both weight updates see traces that do not yet include this step's spikes (Δt = 0 pairs give
    nothing, as in fumjax), and a `run_regularly("w = clip(w, -1, 1)", when="after_synapses")` clips once
    per step after both contributions, like fumjax's single clip of w + Δw_total. (fumjax adds
    sign*(ltp - ltd) in one go, Brian2 adds the two terms one after the other: differences ~1e-17.)

Exactness: rasters must be identical. The membrane potentials agree to a few ulp (<= 1.5e-14 mV here) but not
bitwise, and not because of the synaptic sum order (with all weights 0 they differ the same way): XLA's CPU
backend contracts fumjax's `v + (dt/tau)*(v_rest - v)` into one fused multiply-add, fma(dt/tau, v_rest - v,
v), which numpy (hence Brian2's numpy target) cannot express. That is a rounding detail of the compiler, not
a semantic difference; the test compares V with atol 1e-12 and the rasters exactly.
The mapping was also checked to be sensitive: transmitting the post-plasticity weight, letting Δt = 0 pairs
count (trace increments before the weight updates), or dropping the clip each break the comparison.

Network parameters go through float32 in `Network.from_arrays` (w0, tau, v_th are stored as float32), so
the test rounds them to float32 first and gives both simulators the same float64 values.
"""

import math

import jax
import numpy as np
import pytest

import fumjax
from fumjax import FumConfig, Network

b2 = pytest.importorskip("brian2")

pytestmark = pytest.mark.brian2

N, T = 200, 1000
P_CONNECT = 0.1
G_SYN = 2.0
A_PLUS, A_MINUS, TAU_PLUS, TAU_MINUS = 0.1, 0.12, 20.0, 20.0
V_REST, V_RESET = -70.0, -70.0

CFG = FumConfig().replace(
    run={"dtype": "float64"},
    intrinsic={"enabled": False},
    connectivity={"g_syn_mV": G_SYN},
    stdp={"a_plus": A_PLUS, "a_minus": A_MINUS, "tau_plus_ms": TAU_PLUS, "tau_minus_ms": TAU_MINUS},
    neuron={"v_rest_mV": V_REST, "v_reset_mV": V_RESET},
)


@pytest.fixture
def x64():
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)


@pytest.fixture
def numpy_target():
    prefs = b2.prefs
    old = (prefs.codegen.target, prefs.codegen.loop_invariant_optimisations, prefs.core.default_float_dtype)
    prefs.codegen.target = "numpy"
    prefs.codegen.loop_invariant_optimisations = False
    prefs.core.default_float_dtype = np.float64
    yield
    (prefs.codegen.target, prefs.codegen.loop_invariant_optimisations, prefs.core.default_float_dtype) = old


def _f32(a):
    return np.asarray(a, np.float32).astype(np.float64)


def _random_problem(seed=1234):
    """Explicit random network (CSR-ordered edges, float32-representable parameters) and (T, N) kicks."""
    rng = np.random.default_rng(seed)
    exc = np.zeros(N, bool)
    exc[: int(round(0.8 * N))] = True
    rng.shuffle(exc)
    adj = rng.random((N, N)) < P_CONNECT
    np.fill_diagonal(adj, False)
    pre, post = np.nonzero(adj)  # row-major: sorted by pre, then post = fumjax's CSR order
    w = np.where(exc[pre], rng.uniform(0.0, 0.3, pre.size), rng.uniform(-0.3, 0.0, pre.size))
    tau = np.clip(rng.normal(20.0, 2.0, N), 15.0, 25.0)
    v_th = np.clip(rng.normal(-55.0, 2.0, N), -60.0, -50.0)
    i_ext = 3.0 * (rng.random((T, N)) < 0.2)  # 3 mV kicks with probability 0.2 per step
    return pre.astype(np.int64), post.astype(np.int64), _f32(w), exc, _f32(tau), _f32(v_th), i_ext


def _run_fumjax(pre, post, w, exc, tau, v_th, i_ext, plasticity):
    net = Network.from_arrays(pre, post, w, tau_ms=tau, v_th_mV=v_th, excitatory=exc)
    state = fumjax.init_state(net, CFG)
    state, spikes = fumjax.simulate(state, net, i_ext, config=CFG, plasticity=plasticity)
    return (
        np.asarray(spikes),
        np.asarray(net.to_input_order(state.w), np.float64),
        np.asarray(state.v_mV, np.float64),
    )


def _run_brian2(pre, post, w, exc, tau, v_th, i_ext, plastic):
    ms = b2.ms
    n_steps, n = i_ext.shape
    iext = b2.TimedArray(np.asarray(i_ext, np.float64), dt=1 * ms)
    group = b2.NeuronGroup(
        n,
        "v : 1\nisyn : 1\nkdt : 1\nvth : 1",
        threshold="v >= vth",
        reset="v = v_reset",
        method="exact",
        namespace={"v_reset": V_RESET},
        dt=1 * ms,
    )
    group.v = V_REST
    group.isyn = 0.0
    group.kdt = 1.0 / tau  # fumjax: dt_ms / tau_ms with dt_ms = 1.0
    group.vth = v_th
    group.run_regularly(
        "itot = isyn + iext(t, i)\ndv = kdt * (v_rest - v)\nv = v + dv\nv = v + itot\nisyn = 0",
        when="groups",
        dt=1 * ms,
    )
    group.namespace.update({"v_rest": V_REST, "iext": iext})

    model = """w : 1
               sgn : 1
               dapre/dt = -apre / taupre : 1 (event-driven)
               dapost/dt = -apost / taupost : 1 (event-driven)"""
    if plastic:
        on_pre = {"pre": "isyn_post += g * w\nw += sgn * (-Am * apost)", "pre_trace": "apre += 1"}
        on_post = {"post": "w += sgn * (Ap * apre)", "post_trace": "apost += 1"}
    else:
        on_pre = {"pre": "isyn_post += g * w"}
        on_post = None
    syn = b2.Synapses(
        group,
        group,
        model=model,
        on_pre=on_pre,
        on_post=on_post,
        namespace={
            "g": G_SYN,
            "Am": A_MINUS,
            "Ap": A_PLUS,
            "taupre": TAU_PLUS * ms,
            "taupost": TAU_MINUS * ms,
        },
        dt=1 * ms,
    )
    syn.connect(i=pre, j=post)
    syn.w = w
    syn.sgn = np.where(exc[pre], 1.0, -1.0)
    syn.pre.order = 0
    if plastic:
        syn.post.order = 1
        syn.pre_trace.order = 2
        syn.post_trace.order = 3
        syn.run_regularly("w = clip(w, -1, 1)", when="after_synapses", dt=1 * ms)
    mon = b2.SpikeMonitor(group)
    net = b2.Network(group, syn, mon)
    net.run(n_steps * ms, namespace={})  # names resolve only in the groups' explicit namespaces

    raster = np.zeros((n_steps, n), np.uint8)
    steps = np.round(np.asarray(mon.t / ms)).astype(np.int64)
    raster[steps, np.asarray(mon.i)] = 1
    assert np.array_equal(np.asarray(syn.i), pre) and np.array_equal(np.asarray(syn.j), post)
    return raster, np.asarray(syn.w[:], np.float64), np.asarray(group.v[:], np.float64)


def _first_mismatch(a, b):
    t, i = np.argwhere(a != b)[0]
    return f"first raster mismatch at step {t}, neuron {i}: fumjax {a[t, i]}, brian2 {b[t, i]}"


@pytest.mark.parametrize("dt_ms", [5, -5, 0, 3])
def test_brian2_pair_mapping(x64, numpy_target, dt_ms):
    """2 neurons, 0 -> 1: Brian2 mapping gives the hand value and fumjax's Δw (Δt = post - pre)."""
    t_pre = 10
    i_ext = np.zeros((30, 2))
    i_ext[t_pre, 0] = 100.0
    i_ext[t_pre + dt_ms, 1] = 100.0
    args = (
        np.array([0]),
        np.array([1]),
        np.array([0.5]),
        np.array([True, True]),
        _f32([20, 20]),
        _f32([-55, -55]),
    )
    raster_b, w_b, _ = _run_brian2(*args, i_ext, plastic=True)
    raster_f, w_f, _ = _run_fumjax(*args, i_ext, plasticity="stdp")
    assert np.flatnonzero(raster_b[:, 0]).tolist() == [t_pre]
    assert np.flatnonzero(raster_b[:, 1]).tolist() == [t_pre + dt_ms]
    assert np.array_equal(raster_b, raster_f)
    if dt_ms > 0:
        expected = A_PLUS * math.exp(-dt_ms / TAU_PLUS)
    elif dt_ms < 0:
        expected = -A_MINUS * math.exp(dt_ms / TAU_MINUS)
    else:
        expected = 0.0
    assert w_b[0] - 0.5 == pytest.approx(expected, abs=1e-12)
    assert abs(w_f[0] - w_b[0]) < 1e-12


def test_brian2_random_network_no_plasticity(x64, numpy_target):
    prob = _random_problem()
    raster_f, w_f, v_f = _run_fumjax(*prob, plasticity=False)
    raster_b, w_b, v_b = _run_brian2(*prob, plastic=False)
    n_spikes = int(raster_f.sum())
    rate_hz = n_spikes / (N * T / 1000.0)
    assert n_spikes > 1000, n_spikes
    assert 5.0 <= rate_hz <= 30.0, rate_hz
    assert np.array_equal(raster_f, raster_b), _first_mismatch(raster_f, raster_b)
    assert np.array_equal(w_f, prob[2]) and np.array_equal(w_b, prob[2])
    np.testing.assert_allclose(v_f, v_b, rtol=0, atol=1e-12)


def test_brian2_random_network_pair_stdp(x64, numpy_target):
    prob = _random_problem()
    raster_f, w_f, v_f = _run_fumjax(*prob, plasticity="stdp")
    raster_b, w_b, v_b = _run_brian2(*prob, plastic=True)
    assert raster_f.sum() > 1000
    assert np.array_equal(raster_f, raster_b), _first_mismatch(raster_f, raster_b)
    changed = np.abs(w_f - prob[2]) > 1e-3
    assert changed.mean() > 0.5  # STDP actually moved most weights
    assert np.any(np.abs(w_f) == 1.0)  # and the clip at +-1 was exercised
    np.testing.assert_allclose(w_f, w_b, rtol=0, atol=1e-9)
    np.testing.assert_allclose(v_f, v_b, rtol=0, atol=1e-12)
