import pytest

from fumjax import ConfigError, FumConfig


def test_defaults_follow_design():
    cfg = FumConfig()
    assert cfg.neuron.n_neurons == 1000 and cfg.neuron.excitatory_fraction == 0.8
    assert (cfg.stdp.a_plus, cfg.stdp.a_minus, cfg.stdp.tau_plus_ms) == (0.1, 0.12, 20.0)
    assert (cfg.plasticity.gamma, cfg.plasticity.eta, cfg.run.window_steps) == (0.95, 0.01, 50)
    assert cfg.k_per_neuron == 50  # 5% of 1000
    assert cfg.replace(neuron={"n_neurons": 100_000}).k_per_neuron == 100


def test_toml_round_trip(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[stdp]\na_plus = 0.05\n[neuron]\nn_neurons = 64\n[run]\nbackend = "fused"\n')
    cfg = FumConfig.from_toml(path)
    assert cfg.stdp.a_plus == 0.05 and cfg.neuron.n_neurons == 64 and cfg.run.backend == "fused"
    assert cfg.stdp.a_minus == 0.12  # untouched keys keep defaults
    assert FumConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "data, message",
    [
        ({"stdp": {"a_plsu": 0.1}}, "unknown key 'stdp.a_plsu'"),
        ({"stpd": {}}, "unknown section 'stpd'"),
        ({"stdp": {"a_plus": "big"}}, "stdp.a_plus: expected float, got str"),
        ({"neuron": {"n_neurons": 10.5}}, "neuron.n_neurons: expected int, got float"),
        ({"intrinsic": {"enabled": 1}}, "intrinsic.enabled: expected bool, got int"),
        ({"stdp": {"a_plus": -1.0}}, "stdp.a_plus = -1.0: must be in [0.0, inf]"),
        ({"neuron": {"n_neurons": 0}}, "neuron.n_neurons = 0: must be in [1, "),
        ({"plasticity": {"gamma": 1.5}}, "plasticity.gamma = 1.5: must be in [0.001, 1.0]"),
        ({"plasticity": {"mode": "hebb"}}, "plasticity.mode = 'hebb': must be one of 'rstdp', 'stdp', 'off'"),
        ({"run": {"dtype": "int8"}}, "run.dtype = 'int8': must be one of"),
        ({"neuron": {"tau_min_ms": 30.0}}, "neuron.tau_min_ms = 30.0 must be <= neuron.tau_max_ms = 25.0"),
        ({"neuron": {"n_neurons": 10}, "connectivity": {"k_per_neuron": 10}}, "must be in [0, 9]"),
        ({"stdp": {"a_plus": float("nan")}}, "stdp.a_plus = nan"),
    ],
)
def test_bad_values_name_the_key_and_range(data, message):
    with pytest.raises(ConfigError) as info:
        FumConfig.from_dict(data)
    assert message in str(info.value)


def test_bad_toml_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[stdp\na_plus = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        FumConfig.from_toml(path)
    with pytest.raises(ConfigError, match="config file not found"):
        FumConfig.from_toml(tmp_path / "missing.toml")
