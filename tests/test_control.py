"""Control layer on constructed metric histories with known answers (FUM E.2, E.5, E.7)."""

from __future__ import annotations

import json
import struct
import sys
import types

import numpy as np
import pytest

from fumjax.config import FumConfig
from fumjax.control import (
    AnomalyResponse,
    ClusteringSchedule,
    ControlManager,
    ControlState,
    DebtTracker,
    InteractionModule,
    LoadModule,
    Metrics,
    Monitor,
    SOCModule,
    StabilityModule,
    StructuralSchedule,
    TuningSchedule,
    default_modules,
    effective_config,
    window_metrics,
)
from fumjax.control.load import read_gpu_load
from fumjax.control.monitor import correlation_flags, multiscale_variance

T_WIN = 50


def _stable_values(rng: np.random.Generator) -> dict[str, float]:
    """A healthy window: every metric noisy around its level, no trends, no correlations."""
    return {
        "mean_rate_hz": 8.0 + rng.normal(0, 0.3),
        "variance_global": 25.0 + rng.normal(0, 2.0),
        "variance_region_max": 40.0 + rng.normal(0, 3.0),
        "reward_total": 0.6 + rng.normal(0, 0.1),
        "avalanche_max_fraction": 0.05 + rng.normal(0, 0.005),
        "debt_fraction": 0.02 + rng.normal(0, 0.005),
    }


def _run(manager, values_per_window, monitor=None, state=None):
    """Feed windows through monitor + manager; returns (final state, [(window, action)], modes)."""
    monitor = monitor or Monitor(history=200, interaction_pairs=None)
    state = state or ControlState()
    log, modes = [], []
    for i, vals in enumerate(values_per_window):
        m = monitor.record((i + 1) * T_WIN, vals, detailed=state.detailed_logging)
        state, acts = manager.update(state, m)
        log += [(i, a) for a in acts]
        modes.append(state.mode)
    return state, log, modes


# ---- monitoring -------------------------------------------------------------------------------------------


def test_multiscale_variance_hand_checked():
    rates = np.array([1.0, 3.0, 5.0, 5.0, 10.0, 20.0])
    labels = np.array([0, 0, 1, 1, 2, 2])
    mv = multiscale_variance(rates, labels, 3, region_size=2)
    np.testing.assert_allclose(mv["cluster_var"], [1.0, 0.0, 25.0])
    # region 0 = clusters 0, 1 -> rates 1, 3, 5, 5 (mean 3.5); region 1 = cluster 2
    np.testing.assert_allclose(mv["region_var"], [2.75, 25.0])
    assert mv["global_var"] == pytest.approx(560 / 6 - (44 / 6) ** 2)
    with pytest.raises(ValueError, match="labels must lie"):
        multiscale_variance(rates, labels + 1, 3)


def test_debt_tracker_counts_and_markov_steady_state():
    d = DebtTracker(budget_ms=50.0)
    for ms in (40, 60, 70, 40, 40):
        d.record(ms)
    out = d.record(60)
    # over: F T T F F T; F->T twice out of 3 F's, T->F once out of 2 T's
    assert out["debt_windows"] == 3 and out["debt_fraction"] == 0.5 and out["debt_ms"] == 40.0
    p01, p10 = 2 / 3, 1 / 2
    assert out["p_overrun"] == pytest.approx(p01 / (p01 + p10))


def test_correlation_flags_only_the_coupled_pair():
    rng = np.random.default_rng(1)
    a = rng.normal(size=100)
    hist = {"a": a, "b": -2 * a + 0.3 * rng.normal(size=100), "c": rng.normal(size=100)}
    flags = correlation_flags(hist)
    assert [(x, y) for x, y, _ in flags] == [("a", "b")] and flags[0][2] < -0.9
    assert correlation_flags(hist, min_windows=101) == []


def test_window_metrics_names_and_values():
    rates = np.array([0.0, 0.0, 10.0, 20.0])
    counts = np.array([0, 3, 2, 0, 0, 5, 0])  # avalanches 5 and 5
    vals, arrays = window_metrics(rates, np.array([0, 0, 1, 1]), 2, counts, reward_parts={"total": 1.5})
    assert vals["silent_clusters"] == 1.0 and vals["variance_cluster_max"] == 25.0
    assert (
        vals["avalanches"] == 2.0 and vals["avalanche_max"] == 5.0 and vals["avalanche_max_fraction"] == 1.25
    )
    assert vals["reward_total"] == 1.5 and vals["mean_rate_hz"] == 7.5
    np.testing.assert_array_equal(arrays["counts"], counts)


# ---- modules alone ----------------------------------------------------------------------------------------


def _metrics(step, hist=None, **current):
    return Metrics(step=step, current=current, history=hist or {})


def test_stability_module_rules_and_cooldown():
    mod = StabilityModule(global_var_max=100.0, region_var_max=60.0, cooldown_steps=500)
    s0 = ControlState()
    s, acts = mod.update(s0, _metrics(50, variance_global=25.0, variance_region_max=40.0))
    assert acts == [] and s == s0
    s, acts = mod.update(s0, _metrics(50, variance_global=150.0, variance_region_max=40.0))
    assert [a.name for a in acts] == ["raise_inhibition"]
    assert s.inhibition_scale == pytest.approx(1.1) and s.eta_scale == pytest.approx(0.9)
    s2, acts = mod.update(s, _metrics(100, variance_global=150.0))  # within the cooldown
    assert acts == [] and s2.eta_scale == pytest.approx(0.9)
    s3, acts = mod.update(s, _metrics(550, variance_global=150.0))
    assert [a.name for a in acts] == ["raise_inhibition"] and s3.eta_scale == pytest.approx(0.81)
    # regional instability: a region above its bound while the global variance is fine
    s, acts = mod.update(s0, _metrics(50, variance_global=30.0, variance_region_max=90.0))
    assert [a.name for a in acts] == ["regional_instability"] and s.inhibition_scale == 1.0
    # sustained extreme reward: 5 windows with |R| > 2, not 4
    hist = {"reward_total": np.array([0.5, 2.5, -2.2, 3.0, 2.1, 2.6])}
    _, acts = mod.update(s0, _metrics(50, hist))
    assert [a.name for a in acts] == ["extreme_reward"]
    hist = {"reward_total": np.array([0.5, 2.5, 1.0, 3.0, 2.1, 2.6])}
    assert mod.update(s0, _metrics(50, hist))[1] == []


def test_soc_module_judges_accumulated_windows():
    mod = SOCModule(n_neurons=100, span_windows=2, max_index=10.0)  # only the large-avalanche rule here
    quiet = np.tile([0, 1, 2, 1, 0, 0, 3, 0, 1, 0], 5)  # small avalanches
    runaway = quiet.copy()
    runaway[20:40] = 30  # median of both windows: 1; one run of 20 steps x 29 spikes above it > 0.1 N
    s, acts = mod.update(ControlState(), Metrics(50, {}, {}, {"counts": quiet}))
    assert acts == [] and len(s.memo["soc"]) == 1  # kept, judged once span_windows are in
    s, acts = mod.update(s, Metrics(100, {}, {}, {"counts": runaway}))
    assert [a.name for a in acts] == ["soc_intervention"] and "avalanche of 580 spikes" in acts[0].reason
    assert (
        s.inhibition_scale == pytest.approx(1.1) and s.eta_scale == pytest.approx(0.9) and s.memo["soc"] == ()
    )
    s, acts = mod.update(s, Metrics(150, {}, {}, {"counts": quiet}))
    s, acts = mod.update(s, Metrics(200, {}, {}, {"counts": quiet}))
    assert acts == [] and s.eta_scale == pytest.approx(0.9)
    assert mod.update(ControlState(), Metrics(50, {}))[1] == []


def test_soc_module_lowers_inhibition_when_subcritical():
    # isolated single spikes: every avalanche has size 1, so the MLE tau is 1 + n / (n ln 2) = 2.44 (> 1.7)
    counts = np.tile([1, 0, 0, 0], 50)
    tau = 1 + 1 / np.log(2.0)
    s, acts = SOCModule(n_neurons=100, span_windows=1, threshold=0.0).update(
        ControlState(inhibition_scale=2.0), Metrics(50, {}, {}, {"counts": counts})
    )
    assert [a.name for a in acts] == ["soc_intervention"] and f"tau {tau:.2f}" in acts[0].reason
    assert s.inhibition_scale == pytest.approx(2.0 / 1.1) and s.eta_scale == 1.0
    s, _ = SOCModule(n_neurons=100, span_windows=1, threshold=0.0, direction_aware=False).update(
        ControlState(inhibition_scale=2.0), Metrics(50, {}, {}, {"counts": counts})
    )
    assert s.inhibition_scale == pytest.approx(2.2) and s.eta_scale == pytest.approx(0.9)  # FUM's rule


def test_load_module_defers_and_resumes_background_work():
    mgr = ControlManager([LoadModule(temp_max_c=80.0), ClusteringSchedule(interval_steps=100)])
    s = ControlState()
    s, acts = mgr.update(s, _metrics(0))  # no NVML readings
    assert [a.name for a in acts] == ["load_unknown", "run_clustering"] and not s.defer_background
    s, acts = mgr.update(s, _metrics(50, gpu_temp_c=70.0, gpu_util_pct=50.0))
    assert acts == []
    s, acts = mgr.update(s, _metrics(100, gpu_temp_c=88.0, gpu_util_pct=50.0))
    assert [a.name for a in acts] == ["defer_background", "defer_clustering"] and s.defer_background
    s, acts = mgr.update(s, _metrics(150, gpu_temp_c=78.0, gpu_util_pct=50.0))  # within the hysteresis
    assert acts == []
    s, acts = mgr.update(s, _metrics(200, gpu_temp_c=60.0, gpu_util_pct=50.0))
    assert [a.name for a in acts] == ["resume_background", "run_clustering"]
    assert acts[1].reason == "deferred run, load cleared"


def test_tuning_schedule_reverts_out_of_range_parameters():
    mod = TuningSchedule(interval_steps=10_000)
    s, acts = mod.update(ControlState(eta_scale=0.05), _metrics(0))
    assert [a.name for a in acts] == ["revert_parameters", "run_tuning"] and s.eta_scale == 1.0
    s, acts = mod.update(s, _metrics(5000))
    assert acts == []


def test_structural_schedule_targets_low_reward_clusters_and_stops_when_simplified():
    mod = StructuralSchedule(interval_steps=1000)
    m = Metrics(1000, {}, {}, {"cluster_avg_reward": np.array([0.9, 0.2, 0.7, 0.1])})
    _, acts = mod.update(ControlState(), m)
    assert acts[0].name == "structural_plasticity" and acts[0].params["grow_clusters"] == [1, 3]
    _, acts = mod.update(ControlState(mode="simplified"), m)
    assert [a.name for a in acts] == ["skip_structural"]


def test_read_gpu_load_degrades_and_reads_a_fake_nvml(monkeypatch):
    r = read_gpu_load("fumjax_no_such_nvml_module")
    assert not r.available and "not installed" in r.reason and r.metrics() == {}

    fake = types.ModuleType("fake_nvml")
    fake.NVML_TEMPERATURE_GPU = 0
    fake.nvmlInit = lambda: None
    fake.nvmlShutdown = lambda: None
    fake.nvmlDeviceGetCount = lambda: 2
    fake.nvmlDeviceGetHandleByIndex = lambda i: i
    fake.nvmlDeviceGetTemperature = lambda h, kind: [61, 83][h]
    fake.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=[97, 40][h])
    monkeypatch.setitem(sys.modules, "fake_nvml", fake)
    r = read_gpu_load("fake_nvml")
    assert r.available and r.metrics() == {"gpu_temp_c": 83.0, "gpu_util_pct": 97.0}

    def broken():
        raise RuntimeError("driver not loaded")

    fake.nvmlInit = broken
    r = read_gpu_load("fake_nvml")
    assert not r.available and "driver not loaded" in r.reason


# ---- the manager on whole histories ------------------------------------------------------------------------


def test_stable_history_triggers_nothing():
    rng = np.random.default_rng(0)
    mgr = ControlManager(
        [
            StabilityModule(global_var_max=100.0, region_var_max=100.0),
            InteractionModule(),
            AnomalyResponse(persist_steps=500, recover_steps=500),
        ]
    )
    monitor = Monitor(history=200)
    state, log, modes = _run(mgr, [_stable_values(rng) for _ in range(150)], monitor)
    assert log == [] and set(modes) == {"normal"} and state == ControlState(memo=state.memo)


def test_injected_instability_diagnostic_then_simplified_then_back(tmp_path):
    rng = np.random.default_rng(3)
    windows = [_stable_values(rng) for _ in range(200)]
    for i in range(80, 100):  # 20 windows = 1000 steps of runaway variance
        windows[i]["variance_global"] *= 8.0
        windows[i]["variance_region_max"] *= 6.0
    mgr = ControlManager(
        [StabilityModule(), AnomalyResponse(persist_steps=500, recover_steps=1000)],
        log_path=tmp_path / "actions.jsonl",
    )
    monitor = Monitor(history=200, jsonl_path=tmp_path / "metrics.jsonl", log_keys=("reward_total",))
    state, log, modes = _run(mgr, windows, monitor)
    by_name = {}
    for i, a in log:
        by_name.setdefault(a.name, []).append(i)
    assert by_name["enter_diagnostic"] == [80]
    assert by_name["enter_simplified"] == [90]  # 500 steps after the first anomalous window
    assert by_name["resume_normal"] == [119]  # 1000 steps after the last anomalous window (99)
    assert by_name["raise_inhibition"] == [80, 90]  # the stability rule, with its 500-step cooldown
    assert set(by_name) == {"enter_diagnostic", "enter_simplified", "resume_normal", "raise_inhibition"}
    assert modes[79] == "normal" and modes[85] == "diagnostic" and modes[95] == "simplified"
    assert modes[118] == "simplified" and modes[119:] == ["normal"] * 81
    # the simplified mode runs a static STDP window and the diagnostic eta
    s_simpl = ControlState(mode="simplified", eta_scale=0.81)
    cfg = effective_config(FumConfig().replace(stdp={"tau_plus_ms": 30.0}), s_simpl)
    assert cfg.stdp.tau_plus_ms == 20.0 and cfg.plasticity.eta == pytest.approx(0.01 * 0.81 * 0.5)
    assert not s_simpl.structural_enabled
    # every action logged with its reason; detailed logging while not normal
    lines = [json.loads(x) for x in (tmp_path / "actions.jsonl").read_text().splitlines()]
    assert len(lines) == len(log) and all(x["reason"] for x in lines)
    metric_lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert set(metric_lines[10]) == {"step", "reward_total"}  # normal: only the chosen keys
    assert "variance_global" in metric_lines[85]  # diagnostic: everything


def test_interaction_module_via_monitor_correlations():
    rng = np.random.default_rng(5)
    windows = [_stable_values(rng) for _ in range(60)]
    for w in windows:  # debt rises with the variance: an interaction
        w["debt_fraction"] = 0.01 * (w["variance_global"] - 20.0) + rng.normal(0, 0.005)
    _, log, _ = _run(ControlManager([InteractionModule(cooldown_steps=2500)]), windows, Monitor(history=200))
    assert [(i, a.name) for i, a in log] == [(19, "damp_interactions")]  # 20 windows of history needed
    assert "variance_global, debt_fraction" in log[0][1].reason


def test_manager_rejects_duplicate_and_nameless_modules():
    mgr = ControlManager(default_modules(100))
    with pytest.raises(ValueError, match="already registered"):
        mgr.register(StabilityModule())
    with pytest.raises(ValueError, match="no name"):
        mgr.register(object())
    with pytest.raises(ValueError, match="mode"):
        ControlState(mode="panic")


def _read_tfrecords(path):
    data, out, i = path.read_bytes(), [], 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i : i + 8])
        out.append(data[i + 12 : i + 12 + n])
        i += 12 + n + 4
    return out


def test_tensorboard_event_file_or_clean_skip(tmp_path):
    mon = Monitor(tensorboard_dir=tmp_path / "tb")
    for i in range(3):
        mon.record(i * 50, {"reward_total": 0.5 + i})
    mon.close()
    try:
        from tensorboardX.proto import event_pb2
    except ImportError:
        assert mon.tb is None and "not installed" in mon.tb_status
        return
    (event_file,) = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    seen = []
    for rec in _read_tfrecords(event_file):
        ev = event_pb2.Event.FromString(rec)
        seen += [(ev.step, v.tag, v.simple_value) for v in ev.summary.value]
    assert [x for x in seen if x[1] == "reward_total"] == [
        (0, "reward_total", 0.5),
        (50, "reward_total", 1.5),
        (100, "reward_total", 2.5),
    ]
    assert (100, "interaction_flags", 0.0) in seen
