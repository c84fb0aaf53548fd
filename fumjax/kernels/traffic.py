"""Bytes one simulation step must move through device memory (issue 5 bandwidth accounting).

The model counts what the State layout and the step's equations need, each access once, as the GPU multi
path moves it: the dense neuron pass (which also writes each neuron's 16-byte post cell {post_yd, spike bits
of the segment}, a summary byte and its row of the deferred-LTP history), the drive, the out-row of every
spiking presynaptic neuron (transmission, LTD and the LTP its synapses deferred: the history values of the
pending steps), the flush that ends each segment of L = min(K, 64) steps (every synapse's post, the summary
byte of that post, the eligibility or weight of the row, written back where LTP pends) and the once-per-window
reward (in rstdp, in the window's last flush: w read and written, every eligibility value written back) and
intrinsic pass, amortized over the window's steps. Synapses are in the compact layout
(uint32/int32 indices, no per-synapse pre or delay). Two counts: `bytes`, each element once, and
`sector_bytes`, where memory moves in 32-byte sectors: a contiguous run of L bytes of b-byte elements at a
random b-aligned offset touches 1 + (L - b) / 32 sectors on average, a random element one sector (two for a
read-modify-write). The sector count is pessimistic for the N-sized arrays gathered at random (post cells,
ring: 16 and 4 N bytes, 112 and 28 MB at 7M neurons), parts of which stay in a 50 MB L2, and for posts of one
out-row, which distance-biased wiring places near each other; E-sized arrays cannot. The flush's summary-byte
lookups (one per synapse, an N-byte table that stays in L2) are counted as bytes, not sectors; they are L2
requests, not DRAM traffic.
"""

from __future__ import annotations

import dataclasses
import math

from fumjax.config import FumConfig
from fumjax.kernels.fused import gpu_segment_steps
from fumjax.state import elig_tables, weight_dtype

__all__ = ["SECTOR_BYTES", "StepTraffic", "step_traffic", "run_bytes"]

SECTOR_BYTES = 32
INDEX_BYTES = 4  # post (int32), row_ptr (uint32)
BATCH_SYNAPSES = 128  # synapses of one out-row batch (32 lanes x 4) in the GPU synapse kernel


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
    # plastic: the dense pass writes each neuron's post cell {post_yd, spike bits} (16 B) after reading its
    # bits (8 B of the cell: the sector), its history value hist[b][i] and, at a segment's first step and on a
    # spike, its summary byte.
    seg = _segment_steps(cfg) if plastic else 1
    p = spikes / n  # spike probability of a neuron per step
    if plastic:
        b["scratch"] = n * (16 + 8 + s) + n / seg + spikes
        sb["scratch"] = n * (16 + 16 + s) + n / seg + spikes * sec
    else:
        b["scratch"] = sb["scratch"] = 0.0

    # Out-row of a spiking pre: row_ptr pair, then per synapse post, w, the ring read-modify-write at post;
    # plastic: the post cell and the LTD write (elig read+write in rstdp, w written back in stdp), and per
    # batch of 128 synapses the history values of the distinct pending steps (on average (L - 1) / 2 steps
    # before this one, each with a spike among the batch's posts with probability 1 - (1 - p)^128).
    ltd = {"rstdp": 2 * wb, "stdp": wb, "off": 0}[mode]  # elig read+write, or w written back (read anyway)
    out_syn = ib + wb + 2 * s + ((16 + ltd) if plastic else 0)
    b["out_rows"] = spikes * (pair + k * out_syn)
    out_sec = run_bytes(pair, ib) + run_bytes(k * ib, ib) + run_bytes(k * wb, wb) + k * 2 * sec
    if plastic:
        out_sec += k * sec + (ltd // wb) * run_bytes(k * wb, wb)
        batches = math.ceil(k / BATCH_SYNAPSES) if k else 0
        steps = batches * (seg - 1) / 2 * (1.0 - (1.0 - p) ** min(k, BATCH_SYNAPSES))
        b["out_rows"] += spikes * steps * s
        out_sec += steps * sec
    sb["out_rows"] = spikes * out_sec

    # Flush at each segment's end (plastic modes), amortized: per row the row_ptr pair, the pre's code and
    # spike bits and its L history values (consecutive rows share the history's sectors); per synapse post,
    # the post's summary byte, the spike bits of posts with >= 2 spikes in the segment, the eligibility (or
    # w) read, and written back where an LTP pends: a post spike in the segment, probability
    # f = 1 - (1 - p)^L (the pre's own spikes ignored).
    if plastic:
        f = 1.0 - (1.0 - p) ** seg
        f2 = f - seg * p * (1.0 - p) ** (seg - 1)
        per_seg = n * (pair + 1 + 8 + seg * s) + e * (ib + 1 + 8 * f2 + wb + f * wb)
        per_wb = sec // wb  # synapse values per sector
        per_seg_sec = (
            n * (run_bytes(pair, ib) + 1 + 16 + seg * s + run_bytes(k * ib, ib) + run_bytes(k * wb, wb))
            + e * (1 + sec * f2)
            + (e / per_wb) * (1.0 - (1.0 - f) ** per_wb) * sec
        )
        segments = math.ceil(t_win / seg) / t_win  # per step: segments of a window (calls end at windows)
        b["flush"] = per_seg * segments
        sb["flush"] = per_seg_sec * segments
    else:
        b["flush"] = sb["flush"] = 0.0

    # Once per window: rstdp's eligibility rescale and reward run in the window's last flush
    # (fumjax_window_reward), which reads and writes w and writes back every eligibility value, the flush
    # above having counted those where LTP pended; plus a dense elig rescale every k_max steps inside a long
    # window. Intrinsic plasticity reads and writes tau, v_th, rate (state dtype) and window_spikes (int32) of
    # every neuron.
    k_max = _renorm_interval(cfg)
    syn_window = syn_window_sec = 0.0
    if mode == "rstdp":
        dense = (math.ceil(t_win / k_max) - 1) * 2 * wb
        syn_window = e * (2 * wb + (1.0 - f) * wb + dense)
        syn_window_sec = e * (2 * wb + dense) + (e / per_wb) * (1.0 - f) ** per_wb * sec
    neuron_window = n * 2 * (3 * s + 4) if cfg.intrinsic.enabled else 0
    b["window_pass"] = (syn_window + neuron_window) / t_win
    sb["window_pass"] = (syn_window_sec + neuron_window) / t_win
    return StepTraffic(bytes=b, sector_bytes=sb, spikes_per_step=spikes, n_synapses=e)


def _renorm_interval(cfg: FumConfig) -> int:
    return len(elig_tables(cfg)[0]) - 1


def _segment_steps(cfg: FumConfig) -> int:
    """Steps of a deferred-LTP segment (fused.gpu_segment_steps of the renormalization interval)."""
    return gpu_segment_steps(_renorm_interval(cfg))
