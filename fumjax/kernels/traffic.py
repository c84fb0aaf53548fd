"""Bytes one simulation step must move through device memory (issue 5 bandwidth accounting).

The model counts what the State layout and the step's equations need, each access once: the dense neuron
pass, the drive, the out-row of every spiking presynaptic neuron (transmission and LTD), the in-list of every
spiking postsynaptic neuron (LTP) and the once-per-window eligibility/reward and intrinsic pass, amortized
over the window's steps. Synapses are in the compact layout (uint32/int32 indices, no per-synapse pre or
delay) as the GPU multi path reads them: a synapse's pre is found through pre_bucket and the pre's 8-byte
cell {pre_dw, row_end}, which the dense pass writes for every neuron each step (with post_yd). Two counts:
`bytes`, each element once, and `sector_bytes`, where memory moves in 32-byte sectors: a contiguous run of L
bytes of b-byte elements at a random b-aligned offset touches 1 + (L - b) / 32 sectors on average, a random
element one sector (two for a read-modify-write). The sector count is pessimistic for the N-sized arrays
gathered at random (post_yd, ring: 4 N bytes each, the pre cells 8 N: 28 and 56 MB at 7M neurons) and the
pre_bucket table, parts of which stay in a 50 MB L2, and for posts of one out-row, which distance-biased
wiring places near each other; E-sized arrays cannot.
"""

from __future__ import annotations

import dataclasses
import math

from fumjax.config import FumConfig
from fumjax.state import elig_tables, weight_dtype

__all__ = ["SECTOR_BYTES", "StepTraffic", "step_traffic", "run_bytes"]

SECTOR_BYTES = 32
INDEX_BYTES = 4  # post (int32), in_syn (uint32), pre_bucket (int32), row_ptr / in_ptr (uint32)


@dataclasses.dataclass(frozen=True)
class StepTraffic:
    """Bytes per step by part (`bytes`: elements once; `sector_bytes`: 32-byte sectors) and the inputs."""

    bytes: dict[str, float]
    sector_bytes: dict[str, float]
    spikes_per_step: float
    n_synapses: int

    @property
    def total(self) -> float:
        return sum(self.bytes.values())

    @property
    def sector_total(self) -> float:
        return sum(self.sector_bytes.values())


def run_bytes(length_bytes: float, element_bytes: float) -> float:
    """Expected bytes of 32-byte sectors a contiguous run of length_bytes touches (element-aligned start)."""
    if length_bytes <= 0:
        return 0.0
    return SECTOR_BYTES * (1.0 + (length_bytes - element_bytes) / SECTOR_BYTES)


def step_traffic(
    n_neurons: int,
    k_per_neuron: int,
    rate_hz: float,
    cfg: FumConfig | None = None,
    *,
    mode: str | None = None,
    synapse_bytes: int | None = None,
    state_bytes: int = 4,
) -> StepTraffic:
    """Bytes a step moves for N neurons with K synapses each (out-degree = in-degree = K on average) firing
    at rate_hz. cfg gives dt_ms, window_steps, gamma, refractory_steps, the mode and the synapse dtype
    (run.dtype; synapse_bytes overrides it); state_bytes: bytes of a neuron-state value (float32: 4)."""
    cfg = cfg or FumConfig()
    mode = cfg.plasticity.mode if mode is None else mode
    if mode not in ("rstdp", "stdp", "off"):
        raise ValueError(f"mode = {mode!r}: must be rstdp, stdp or off")
    if n_neurons < 1 or k_per_neuron < 0 or rate_hz < 0:
        raise ValueError(
            f"N = {n_neurons}, K = {k_per_neuron}, rate = {rate_hz} Hz: need N >= 1, K >= 0, rate >= 0"
        )
    n, k, s = n_neurons, k_per_neuron, state_bytes
    wb = synapse_bytes or weight_dtype(cfg).itemsize
    e = n * k
    spikes = n * rate_hz * cfg.neuron.dt_ms / 1000.0
    plastic = mode != "off"
    t_win = cfg.run.window_steps
    refrac = 8 if cfg.neuron.refractory_steps > 0 else 0
    ib, sec = INDEX_BYTES, SECTOR_BYTES
    pair = 2 * ib  # row_ptr[i], row_ptr[i+1] (or in_ptr) read together

    # Dense neuron pass: read v, ring slot, tau, v_th (+ x_pre, y_post decayed); write v, ring slot (clear)
    # (+ x_pre, y_post); the spike flag written and read back once; refractory counter where it is on.
    # window_spikes += 1 only where a neuron spiked (read-modify-write per spike).
    dense = n * ((10 if plastic else 6) * s + 2 + refrac)
    b = {"neuron_state": dense + spikes * 8, "drive": n * 2 * s}
    sb = {"neuron_state": dense + spikes * 2 * sec, "drive": n * 2 * s}
    # plastic: the dense pass also writes each neuron's pre cell {pre_dw, row_end} and post_yd for the synapse
    # pass, so that it reads one cell per visit instead of the pre's code, x_pre and row_ptr pair
    cell = s + ib
    b["scratch"] = sb["scratch"] = n * (cell + s) if plastic else 0.0

    # Out-row of a spiking pre: row_ptr pair, then per synapse post, w, the ring read-modify-write at post;
    # plastic: y_post[post] and the LTD write (elig read+write in rstdp, w written back in stdp).
    ltd = {"rstdp": 2 * wb, "stdp": wb, "off": 0}[mode]  # elig read+write, or w written back (read anyway)
    out_syn = ib + wb + 2 * s + ((s + ltd) if plastic else 0)
    b["out_rows"] = spikes * (pair + k * out_syn)
    out_sec = run_bytes(pair, ib) + run_bytes(k * ib, ib) + run_bytes(k * wb, wb) + k * 2 * sec
    if plastic:
        out_sec += k * sec + (ltd // wb) * run_bytes(k * wb, wb)
    sb["out_rows"] = spikes * out_sec

    # In-list of a spiking post (plastic modes): in_ptr pair, then per synapse in_syn, pre_bucket, the pre's
    # cell (the walk from the bucket's row mostly stays in that sector) and the LTP read-modify-write of elig
    # (rstdp) or w (stdp).
    if plastic:
        in_syn = ib + ib + cell + 2 * wb
        b["in_lists"] = spikes * (pair + k * in_syn)
        per = sec + sec + 2 * sec
        sb["in_lists"] = spikes * (run_bytes(pair, ib) + run_bytes(k * ib, ib) + k * per)
    else:
        b["in_lists"] = sb["in_lists"] = 0.0

    # Once per window: rstdp reads and writes w and elig of every synapse (eligibility rescale + reward),
    # plus a dense elig rescale every k_max steps inside a long window; intrinsic plasticity reads and writes
    # tau, v_th, rate (state dtype) and window_spikes (int32) of every neuron.
    k_max = _renorm_interval(cfg)
    syn_window = e * (4 * wb + (math.ceil(t_win / k_max) - 1) * 2 * wb) if mode == "rstdp" else 0
    neuron_window = n * 2 * (3 * s + 4) if cfg.intrinsic.enabled else 0
    b["window_pass"] = sb["window_pass"] = (syn_window + neuron_window) / t_win
    return StepTraffic(bytes=b, sector_bytes=sb, spikes_per_step=spikes, n_synapses=e)


def _renorm_interval(cfg: FumConfig) -> int:
    return len(elig_tables(cfg)[0]) - 1
