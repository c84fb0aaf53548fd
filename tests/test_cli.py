import json

from fumjax.cli import main


def test_simulate_json_summary(capsys):
    assert main(["simulate", "--neurons", "100", "--steps", "230", "--seed", "3", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["neurons"] == 100 and summary["steps"] == 230 and summary["synapses"] == 100 * 5
    assert summary["spike_count"] > 0 and summary["finite"]
    rate = summary["spike_count"] / (100 * 0.230)
    assert abs(summary["mean_rate_hz"] - rate) < 1e-9
    assert summary["plasticity"] == "rstdp" and summary["wall_s"] > 0


def test_simulate_says_when_no_window_was_rewarded(capsys):
    # 2000 neurons: K = 100 with the default U(0, 0.3) weights saturates (> 100 Hz), the rate variance stays
    # far from the self-benefit target, so every window's reward is clipped to 0 and no weight moves
    assert main(["simulate", "--neurons", "2000", "--steps", "500", "--json"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["mean_reward"] == 0.0 and summary["mean_abs_dw"] == 0.0
    assert summary["mean_rate_hz"] > 100
    assert "the reward was 0 in every window" in err
    # the default 1000-neuron network (K = 50, ~10 Hz) is rewarded from its 4th window on, learns, and says
    # nothing
    assert main(["simulate", "--steps", "500", "--json"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["mean_reward"] > 0 and summary["mean_abs_dw"] > 0
    assert "reward was 0" not in err


def test_simulate_without_plasticity_leaves_weights(capsys):
    assert main(["simulate", "--neurons", "64", "--steps", "100", "--no-plasticity", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["plasticity"] == "off" and summary["mean_abs_dw"] == 0.0


def test_bad_arguments_exit_2_with_message(capsys, tmp_path):
    assert main(["simulate", "--steps", "0"]) == 2
    assert "--steps = 0: must be >= 1" in capsys.readouterr().err
    assert main(["simulate", "--neurons", "0"]) == 2
    assert "neuron.n_neurons = 0" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[stdp]\na_plus = -3.0\n")
    assert main(["simulate", "--config", str(bad)]) == 2
    assert "stdp.a_plus = -3.0: must be in" in capsys.readouterr().err
