"""fumjax: FUM-style spiking networks (LIF, STDP with eligibility, SIE reward) in JAX with fused kernels."""

from fumjax.config import ConfigError, FumConfig
from fumjax.dynamics import end_window, run_driven, simulate, simulate_window, step
from fumjax.network import Network
from fumjax.state import State, init_state

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "FumConfig",
    "Network",
    "State",
    "end_window",
    "init_state",
    "run_driven",
    "simulate",
    "simulate_window",
    "step",
    "build_network",
]


def build_network(cfg: FumConfig | None = None) -> Network:
    """The distance-biased network described by `cfg` (neuron and connectivity sections)."""
    cfg = cfg or FumConfig()
    nc, cc = cfg.neuron, cfg.connectivity
    return Network.distance_biased(
        nc.n_neurons,
        k_per_neuron=cfg.k_per_neuron,
        sigma_grid=cc.sigma_grid,
        excitatory_fraction=nc.excitatory_fraction,
        w_exc_max=cc.w_exc_max,
        w_inh_min=cc.w_inh_min,
        tau_mean_ms=nc.tau_mean_ms,
        tau_std_ms=nc.tau_std_ms,
        tau_min_ms=nc.tau_min_ms,
        tau_max_ms=nc.tau_max_ms,
        v_th_mean_mV=nc.v_th_mean_mV,
        v_th_std_mV=nc.v_th_std_mV,
        v_th_min_mV=nc.v_th_min_mV,
        v_th_max_mV=nc.v_th_max_mV,
        delay_steps=cc.delay_steps,
        seed=cfg.run.seed,
    )
