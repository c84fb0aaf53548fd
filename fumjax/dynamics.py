"""Network dynamics: one step, T-step simulation under `lax.scan`, and the end-of-window update.

Public functions check their inputs at the boundary (shapes, dtypes, finiteness, sizes) before anything
runs; inside `jax.jit`/`vmap` the value checks (NaN/Inf) cannot run on tracers and are skipped, while shape
and dtype checks still apply. The jitted cores (`step`, `_simulate`, `_end_window`) do no checking.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from fumjax import plasticity, sie
from fumjax.config import FumConfig
from fumjax.encoders import poisson_background_current
from fumjax.kernels import fused_ops, get_kernel, resolve_backend
from fumjax.network import Network
from fumjax.state import State, compute_dtype

__all__ = [
    "step",
    "lif_phase",
    "synapse_phase",
    "simulate",
    "end_window",
    "simulate_window",
    "run_driven",
    "background_current",
    "resolve_mode",
]

MODES = ("rstdp", "stdp", "off")


def step(
    state: State,
    net: Network,
    i_ext_mV: Array,
    cfg: FumConfig,
    mode: str,
    backend: str,
    exchange: Callable[[Array], Array] | None = None,
) -> tuple[State, Array]:
    """Advance one dt: input, LIF, transmission, STDP. i_ext_mV: (N,) mV. Returns (state, spikes (N,) uint8).

    Transmission of this step's spikes uses the weights as they were before this step's plasticity.
    `exchange` maps this part's spikes (N,) to the spikes of every neuron `net.pre` names (N_pre,) when the
    network is one part of a partition (collectives or MPI); None for a whole network.
    """
    state, spikes = lif_phase(state, net, i_ext_mV, cfg, backend)
    spikes_pre = spikes if exchange is None else exchange(spikes)
    state = synapse_phase(state, net, spikes_pre, spikes, cfg, mode, backend)
    return state.replace(step=state.step + 1), spikes


def lif_phase(
    state: State, net: Network, i_ext_mV: Array, cfg: FumConfig, backend: str
) -> tuple[State, Array]:
    """First half of `step` (state.step unchanged): read and clear the input due now, LIF, count spikes.

    Needs no spike of this step, so with every delay >= D a part can run it for D steps before exchanging.
    Returns (state, spikes (N,) uint8).
    """
    nc = cfg.neuron
    slot = state.step % net.max_delay
    i_mV = state.ring_mV[slot] + i_ext_mV.astype(state.v_mV.dtype)
    ring = state.ring_mV.at[slot].set(0.0)
    v, spikes, refrac = get_kernel("lif_step", backend)(
        state.v_mV,
        i_mV,
        state.tau_ms,
        state.v_th_mV,
        state.refrac_left,
        v_rest_mV=nc.v_rest_mV,
        v_reset_mV=nc.v_reset_mV,
        dt_ms=nc.dt_ms,
        refractory_steps=nc.refractory_steps,
    )
    new = state.replace(
        v_mV=v, refrac_left=refrac, ring_mV=ring, window_spikes=state.window_spikes + spikes.astype(jnp.int32)
    )
    return new, spikes


def synapse_phase(
    state: State,
    net: Network,
    spikes_pre: Array,
    spikes: Array,
    cfg: FumConfig,
    mode: str,
    backend: str,
) -> State:
    """Second half of `step` (state.step unchanged): transmission of this step's spikes into the delay ring
    and STDP. spikes_pre: (N_pre,) spikes of the neurons `net.pre` names; spikes: (N,) this network's.
    The fused backend visits only the rows of spiking pre and the in-lists of spiking posts (one FFI call,
    CPU); the reference does dense per-synapse operations."""
    if backend == "fused" and "synapse_step" in fused_ops():
        from fumjax.kernels import fused

        if fused.synapse_step_supported(state, net):
            return get_kernel("synapse_step", backend)(state, net, spikes_pre, spikes, cfg, mode)
    cc = cfg.connectivity
    d = net.max_delay
    ring = state.ring_mV
    if d == 1:
        syn = get_kernel("propagate", backend)(
            state.w, spikes_pre, net.pre, net.post, net.n_neurons, g_syn_mV=cc.g_syn_mV
        )
        ring = ring.at[0].add(syn.astype(ring.dtype))
    else:
        contrib = (cc.g_syn_mV * state.w.astype(ring.dtype)) * spikes_pre[net.pre].astype(ring.dtype)
        ring = ring.at[(state.step + net.delay_steps) % d, net.post].add(contrib)
    w, elig, t0, x, y = state.w, state.elig, state.elig_t0, state.x_pre, state.y_post
    if mode != "off":
        x, y = plasticity.decay_traces(x, y, cfg)
        dw = get_kernel("stdp_delta", backend)(
            x,
            y,
            spikes_pre,
            spikes,
            net.pre,
            net.post,
            net.sign,
            a_plus=cfg.stdp.a_plus,
            a_minus=cfg.stdp.a_minus,
        )
        if mode == "stdp":
            c = cc.w_clip
            w = jnp.clip(w.astype(dw.dtype) + dw, -c, c).astype(w.dtype)
        else:
            elig, t0 = _add_eligibility(elig, t0, dw, state.step, cfg)
        x, y = plasticity.increment_traces(x, y, spikes_pre, spikes)
    return state.replace(ring_mV=ring, w=w, elig=elig, elig_t0=t0, x_pre=x, y_post=y)


def _add_eligibility(
    elig: Array, t0: Array, dw: Array, step_now: Array, cfg: FumConfig
) -> tuple[Array, Array]:
    """e_hat += dw * gamma^-(step+1-t0), renormalizing first (dense) once step - t0 reaches K."""
    gamma_pow, inv_pow = plasticity.elig_tables(cfg)
    k_max = gamma_pow.shape[0] - 1
    renorm = step_now - t0 >= k_max
    scale = jnp.asarray(gamma_pow, elig.dtype)[jnp.minimum(step_now - t0, k_max)]
    elig = jax.lax.cond(renorm, lambda e: e * scale, lambda e: e, elig)
    t0 = jnp.where(renorm, step_now, t0)
    inv = jnp.asarray(inv_pow, dw.dtype)[step_now + 1 - t0]
    return (elig.astype(dw.dtype) + dw * inv).astype(elig.dtype), t0


@functools.partial(jax.jit, static_argnames=("cfg", "mode", "backend"))
def _simulate(state: State, net: Network, i_ext_mV: Array, cfg: FumConfig, mode: str, backend: str):
    if backend == "fused" and "run_steps" in fused_ops():
        from fumjax.kernels import fused

        if fused.run_steps_supported(state, net):  # whole network, f32/f64, CPU: all T steps in one call
            return get_kernel("run_steps", backend)(state, net, i_ext_mV, cfg, mode)

    def body(s, i_t):
        return step(s, net, i_t, cfg, mode, backend)

    return jax.lax.scan(body, state, i_ext_mV)


def running_rate_hz(state: State, cfg: FumConfig) -> Array:
    """The running rate estimate (N,) Hz including the current window's spikes."""
    n_steps = jnp.maximum(state.step - state.window_start, 1).astype(state.v_mV.dtype)
    window_rate = state.window_spikes.astype(state.v_mV.dtype) * (1000.0 / (n_steps * cfg.neuron.dt_ms))
    return plasticity.update_rate_estimate(state.rate_hz, window_rate, cfg)


def _reward_synapses(state: State, reward: Array, cfg: FumConfig) -> State:
    """rstdp's end of window on the synapses: eligibility unscaled (e = e_hat * gamma^(n - t0)), then
    w = clip(w + eta_eff(R) * R * e); elig_t0 is left for _close_window."""
    elig = plasticity.eligibility(state.elig, state.step - state.elig_t0, cfg)
    return state.replace(w=plasticity.apply_reward(state.w, elig, reward, cfg), elig=elig)


def _close_window(state: State, cfg: FumConfig) -> State:
    """The rest of a window's end: rate estimate, intrinsic plasticity, eligibility origin, counters."""
    rate = running_rate_hz(state, cfg)
    tau, v_th = plasticity.intrinsic_update(state.tau_ms, state.v_th_mV, rate, cfg)
    return state.replace(
        elig_t0=state.step,
        tau_ms=tau,
        v_th_mV=v_th,
        rate_hz=rate,
        window_spikes=jnp.zeros_like(state.window_spikes),
        window_start=state.step,
    )


def _end_window_xla(state: State, reward: Array, cfg: FumConfig, mode: str) -> State:
    if mode == "rstdp":
        state = _reward_synapses(state, reward, cfg)
    return _close_window(state, cfg)


@functools.partial(jax.jit, static_argnames=("cfg", "mode", "backend"))
def _end_window(state: State, reward: Array, cfg: FumConfig, mode: str, backend: str = "reference") -> State:
    """A window's end: reward on the synapses (rstdp), then _close_window. backend fused, mode rstdp: one
    fumjax_window_end call where a platform has it (the CPU, bit-identical; GPUs with fumjax._core_gpu); the
    reward coefficient's sigmoid stays in XLA. Else XLA ops (without the pass over E, XLA's fusion over N
    costs less than a call: 1.3 against 5 us at 1k on the CPU)."""
    if backend == "fused" and mode == "rstdp" and "window_end" in fused_ops():
        from fumjax.kernels import fused

        if fused.window_end_supported(state):
            coef = plasticity.reward_coefficient(reward, state.w.dtype, cfg)
            kernel = lambda s, c, _: fused.window_end(s, c, cfg, mode)  # noqa: E731
            return jax.lax.platform_dependent(
                state,
                coef,
                reward,
                **{p: kernel for p in fused.window_end_platforms()},
                default=lambda s, _, r: _end_window_xla(s, r, cfg, mode),
            )
    return _end_window_xla(state, reward, cfg, mode)


def _self_benefit_reward(state: State, cfg: FumConfig) -> Array:
    """run_driven's reward: w_self_benefit * self_benefit of the running rates (reads neuron state only)."""
    rates = running_rate_hz(state, cfg)
    return cfg.sie.w_self_benefit * sie.self_benefit(rates, target_var=cfg.sie.target_rate_var)


def _simulate_rewarded(state: State, net: Network, i_ext_mV: Array, cfg: FumConfig, mode: str, backend: str):
    """One window of run_driven: T steps, the self-benefit reward of the state after them, the window's end
    (_end_window: fumjax_window_end with the fused backend in mode rstdp).
    Returns (state, spikes (T, N) uint8, reward ()). On a GPU with the fused backend in mode rstdp, where
    run_steps takes the multi path (fused.window_end_in_kernel), the window's end on the synapses runs in the
    kernel's last pass over E (fused.run_window_gpu), with the same arithmetic as _reward_synapses."""

    def reward_of(s):
        return _self_benefit_reward(s, cfg).astype(s.v_mV.dtype)

    def generic(s):
        s, spikes = _simulate(s, net, i_ext_mV, cfg, mode, backend)
        reward = reward_of(s)
        return _end_window(s, reward, cfg, mode, backend), spikes, reward

    in_kernel = False
    if backend == "fused" and mode == "rstdp" and "run_steps" in fused_ops():
        from fumjax.kernels import fused

        in_kernel = (
            fused.gpu_available()
            and fused.run_steps_supported(state, net)
            and fused.window_end_in_kernel(state, net, cfg)
        )
    if not in_kernel:
        return generic(state)

    def reward_and_coef(s):
        reward = reward_of(s)
        return reward, plasticity.reward_coefficient(reward, s.w.dtype, cfg)

    def on_gpu(s):
        s, spikes, reward = fused.run_window_gpu(s, net, i_ext_mV, cfg, reward_and_coef)
        return _close_window(s, cfg), spikes, reward

    return jax.lax.platform_dependent(state, cpu=generic, default=on_gpu)


def background_current(state: State, net: Network, n_steps: int, cfg: FumConfig) -> Array:
    """The default drive for the next n_steps from state.step on: (T, N) mV, keyed by (seed, neuron, step)."""
    dc = cfg.drive
    return poisson_background_current(
        seed=state.seed,
        n_neurons=net.n_neurons,
        first_step=state.step,
        n_steps=n_steps,
        n_inputs=dc.n_inputs,
        rate_hz=dc.rate_hz,
        amp_mV=dc.amp_mV,
        dt_ms=cfg.neuron.dt_ms,
    ).astype(state.v_mV.dtype)


@functools.partial(jax.jit, static_argnames=("n_windows", "cfg", "mode", "backend", "record_spikes"))
def _run_driven(
    state: State, net: Network, n_windows: int, cfg: FumConfig, mode: str, backend: str, record_spikes: bool
):
    t_win = cfg.run.window_steps

    def window(s, _):
        drive = background_current(s, net, t_win, cfg)
        s, spikes, reward = _simulate_rewarded(s, net, drive, cfg, mode, backend)
        counts = spikes.sum(1, dtype=jnp.int32)
        return s, (spikes if record_spikes else counts, reward)

    return jax.lax.scan(window, state, None, length=n_windows)


def run_driven(
    state: State,
    network: Network,
    n_windows: int,
    *,
    config: FumConfig | None = None,
    plasticity: bool | str | None = None,
    backend: str | None = None,
    record_spikes: bool = False,
) -> tuple[State, Array, Array]:
    """Run n_windows windows under the default Poisson background drive with SIE self-benefit reward.

    Returns (state, spikes (n_windows, T, N) uint8 if record_spikes else spike counts (n_windows, T) int32,
    rewards (n_windows,)).
    """
    cfg = config or FumConfig()
    if n_windows <= 0:
        raise ValueError(f"n_windows = {n_windows}: must be >= 1")
    mode = resolve_mode(plasticity, cfg)
    backend = resolve_backend(backend or cfg.run.backend)
    check_state(state, network, cfg)
    state, (out, rewards) = _run_driven(state, network, n_windows, cfg, mode, backend, record_spikes)
    return state, out, rewards


def resolve_mode(plasticity_arg: bool | str | None, cfg: FumConfig) -> str:
    """Plasticity mode of a call: None/True -> cfg.plasticity.mode, False -> 'off', or a mode name."""
    if plasticity_arg is None or plasticity_arg is True:
        return cfg.plasticity.mode
    if plasticity_arg is False:
        return "off"
    if plasticity_arg not in MODES:
        raise ValueError(f"plasticity = {plasticity_arg!r}: must be a bool or one of {', '.join(MODES)}")
    return plasticity_arg


def simulate(
    state: State,
    network: Network,
    i_ext_mV: Array,
    *,
    config: FumConfig | None = None,
    plasticity: bool | str | None = None,
    backend: str | None = None,
) -> tuple[State, Array]:
    """Run T steps. i_ext_mV: (T, N) external input in mV per step. Returns (state, spikes (T, N) uint8)."""
    cfg = config or FumConfig()
    mode = resolve_mode(plasticity, cfg)
    backend = resolve_backend(backend or cfg.run.backend)
    i_ext_mV = jnp.asarray(i_ext_mV)
    drive = _check_array("i_ext_mV", i_ext_mV, ndim=2, last=network.n_neurons, floating=True)
    if i_ext_mV.shape[0] == 0:
        raise ValueError("i_ext_mV has 0 steps: give at least one row (shape (T, N), T >= 1)")
    check_state(state, network, cfg, extra=[drive])
    return _simulate(state, network, i_ext_mV, cfg, mode, backend)


def end_window(
    state: State,
    reward: float | Array,
    *,
    config: FumConfig | None = None,
    plasticity: bool | str | None = None,
    backend: str | None = None,
) -> State:
    """Close a window: apply reward R to the weights via eligibility (mode rstdp) and intrinsic plasticity.
    backend: as in `simulate` (fused, mode rstdp: one fumjax_window_end call, bit-identical to the reference
    on the CPU)."""
    cfg = config or FumConfig()
    mode = resolve_mode(plasticity, cfg)
    backend = resolve_backend(backend or cfg.run.backend)
    reward = jnp.asarray(reward, compute_dtype(cfg))
    if reward.ndim != 0:
        raise ValueError(f"reward must be a scalar, got shape {reward.shape}")
    _check_all_finite([("reward", reward)])
    return _end_window(state, reward, cfg, mode, backend)


def simulate_window(
    state: State,
    network: Network,
    i_ext_mV: Array,
    reward: float | Array,
    *,
    config: FumConfig | None = None,
    plasticity: bool | str | None = None,
    backend: str | None = None,
) -> tuple[State, Array]:
    """One window: simulate T steps, then apply the given reward. Returns (state, spikes (T, N) uint8)."""
    state, spikes = simulate(state, network, i_ext_mV, config=config, plasticity=plasticity, backend=backend)
    return end_window(state, reward, config=config, plasticity=plasticity, backend=backend), spikes


def check_state(
    state: State, network: Network, cfg: FumConfig, extra: Sequence[tuple[str, Array]] = ()
) -> None:
    """Raise ValueError naming the field if the state does not fit the network or holds NaN/Inf.

    extra: more (name, array) pairs whose shapes the caller checked, to scan for NaN/Inf in the same
    single device program as the state's floating arrays."""
    n, e = network.n_neurons, network.n_synapses
    if n <= 0:
        raise ValueError(f"network has {n} neurons: need at least 1")
    finite = []
    for name in ("v_mV", "y_post", "tau_ms", "v_th_mV", "rate_hz"):
        finite.append(_check_array(f"state.{name}", getattr(state, name), ndim=1, last=n, floating=True))
    finite.append(_check_array("state.x_pre", state.x_pre, ndim=1, last=network.n_pre, floating=True))
    for name in ("refrac_left", "window_spikes"):
        _check_array(f"state.{name}", getattr(state, name), ndim=1, last=n, floating=False)
    for name in ("w", "elig"):
        finite.append(_check_array(f"state.{name}", getattr(state, name), ndim=1, last=e, floating=True))
    finite.append(_check_array("state.ring_mV", state.ring_mV, ndim=2, last=n, floating=True))
    if state.ring_mV.shape[-2] != network.max_delay:
        raise ValueError(
            f"state.ring_mV has {state.ring_mV.shape[-2]} slots, network max delay is {network.max_delay}"
        )
    if state.v_mV.dtype != compute_dtype(cfg):
        raise ValueError(
            f"state.v_mV has dtype {state.v_mV.dtype}, config run.dtype needs {compute_dtype(cfg)}"
        )
    _check_all_finite(finite + list(extra))


def _is_concrete(x: Array) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_array(name: str, x: Array, *, ndim: int, last: int, floating: bool) -> tuple[str, Array]:
    """Shape and dtype checks; returns (name, x) for _check_all_finite."""
    # Under vmap the tracer shows the unbatched shape, so ndim/last checks still hold.
    if x.ndim != ndim or x.shape[-1] != last:
        raise ValueError(f"{name} has shape {tuple(x.shape)}: expected {ndim} dims with last dim {last}")
    if floating != bool(jnp.issubdtype(x.dtype, jnp.floating)):
        kind = "a floating" if floating else "an integer"
        raise ValueError(f"{name} has dtype {x.dtype}: expected {kind} dtype")
    return name, x


@jax.jit
def _finite_flags_xla(xs: tuple[Array, ...]) -> Array:
    """(k,) bool: whether each array holds no NaN/Inf, in one device program."""
    return jnp.stack([jnp.isfinite(x).all() for x in xs])


def _finite_flags(xs: tuple[Array, ...]) -> Array:
    """(k,) bool: whether each array holds no NaN/Inf. On the CPU one fumjax_all_finite call scans them all
    (FUM-1k state + a window's input: ~25 against ~110 us for XLA's reductions); else one XLA program."""
    from fumjax.kernels import fused

    if fused.all_finite_supported(xs):
        return fused.all_finite(xs)
    return _finite_flags_xla(xs)


def _check_all_finite(named: list[tuple[str, Array]]) -> None:
    """Raise ValueError naming the first array that holds NaN or Inf. One jitted program (_finite_flags)
    and one read back for all of them (an eager check per array cost ~0.5 ms of each FUM-1k `simulate`
    call); tracers (under a user's jit or vmap) are skipped, as are arrays on devices a single program
    cannot take together, which are then checked one by one."""
    named = [(name, x) for name, x in named if _is_concrete(x)]
    if not named:
        return
    try:
        flags = np.asarray(_finite_flags(tuple(x for _, x in named)))
    except ValueError:  # arrays committed to different devices
        flags = np.asarray([bool(jnp.isfinite(x).all()) for _, x in named])
    bad = np.flatnonzero(~flags)
    if bad.size:
        raise ValueError(f"{named[bad[0]][0]} contains NaN or Inf")
