"""Tuning: the vmapped ensemble (candidates independent, eta gates all learning) and the TOML output."""

from __future__ import annotations

import numpy as np
import pytest

from fumjax.config import FumConfig
from fumjax.control.tune import TuneTask, config_with, default_params, evaluate_candidates, write_config_toml

TASK = TuneTask(classes=(0, 1), n_per_class=1, n_train=24, n_val=16, epochs=1, seed=0, n_seeds=2)


def test_ensemble_candidates_are_independent_and_eta_gates_learning():
    d = default_params()
    frozen_a = {**d, "eta": 0.0}
    frozen_b = {**d, "eta": 0.0, "w_td": 2.0, "w_novelty": 0.0, "w_habituation": 0.5, "w_self_benefit": 1.5}
    learner = {**d, "eta": 0.02, "w_novelty": 0.0, "w_self_benefit": 0.0, "w_habituation": 0.0}
    r1 = evaluate_candidates([frozen_a, frozen_b, learner, learner], TASK, batch=4)
    r2 = evaluate_candidates([learner, frozen_b, frozen_a, frozen_a], TASK, batch=4)
    # a candidate's result does not depend on its place or its companions in the ensemble
    np.testing.assert_array_equal(r1[[0, 1, 2]], r2[[2, 1, 0]])
    # with eta = 0 no weight moves, so the SIE weights cannot matter
    assert r1[0] == r1[1]
    assert all(0.0 <= v <= 1.0 for v in r1) and np.allclose(np.round(r1 * 32), r1 * 32)  # k of 2 x 16 items


def test_best_config_toml_round_trip_and_no_silent_overwrite(tmp_path):
    params = {
        "eta": 0.004,
        "gamma": 0.92,
        "w_td": 1.7,
        "w_novelty": 0.1,
        "w_habituation": 0.0,
        "w_self_benefit": 0.3,
    }
    cfg = config_with(FumConfig(), params)
    path = write_config_toml(tmp_path / "best.toml", cfg, header="test run\nsecond line")
    assert FumConfig.from_toml(path) == cfg
    assert default_params(FumConfig.from_toml(path)) == pytest.approx(params)
    with pytest.raises(ValueError, match="exists"):
        write_config_toml(path, FumConfig())
    assert FumConfig.from_toml(path) == cfg  # untouched
    write_config_toml(path, FumConfig(), force=True)
    assert FumConfig.from_toml(path) == FumConfig()
    with pytest.raises(ValueError, match="objective"):
        TuneTask(objective="loss")
