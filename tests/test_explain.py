"""Interpretability on a hand-wired network with a known answer: input -> A -> B -> output, distractors."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

import fumjax
from fumjax.config import FumConfig
from fumjax.control.explain import causal_contribution, coactivity, explain_raster
from fumjax.control.explain_cli import explain_checkpoint, load_explainable, save_explainable
from fumjax.train.checkpoint import CheckpointError

# neurons: 0 = input, 1 = A, 2 = B, 3 = output (class 0), 4 = output (class 1),
# 5 = distractor input, 6 = distractor hidden, 7 = silent distractor
IN, A, B, OUT0, OUT1, D_IN, D_H, SILENT = range(8)
EDGES = [  # (pre, post, w): one spike with w = 1 at g_syn = 20 mV fires its target (15 mV to threshold)
    (IN, A, 1.0),
    (A, B, 1.0),
    (B, OUT0, 1.0),
    (D_IN, OUT0, 0.3),  # subthreshold distractor onto the winning output
    (D_IN, D_H, 1.0),  # a second chain that fires D_H ...
    (D_H, OUT1, 0.2),  # ... but only nudges the other class
    (D_H, A, 0.1),  # a weak side input into A (D_H fires after A, so it never helps A here)
    (SILENT, B, 1.0),  # strong but silent
    (OUT0, OUT1, -1.0),  # lateral inhibition
]


def _known_network():
    pre, post, w = (np.array(c) for c in zip(*EDGES, strict=True))
    n = 8
    net = fumjax.Network.from_arrays(
        pre, post, w, np.full(n, 20.0), np.full(n, -55.0), np.r_[np.ones(4, bool), False, True, True, True]
    )
    cfg = FumConfig().replace(connectivity={"g_syn_mV": 20.0}, intrinsic={"enabled": False})
    return net, cfg


def _drive(t_win=20):
    i_ext = np.zeros((t_win, 8), np.float32)
    i_ext[[2, 8, 14], IN] = 20.0  # three input spikes
    i_ext[[4, 10, 16], D_IN] = 20.0  # distractor fires with B, so both arrive at the output together
    return i_ext


def test_coactivity_and_causal_hand_checked():
    # spikes: 0 fires at 1, 1 at 2 (caused by 0), 2 fires at 3 (caused by 1); 3 never caused by anyone
    s = np.zeros((5, 4), np.uint8)
    s[1, 0] = s[2, 1] = s[3, 2] = s[4, 3] = 1
    pre, post, d = np.array([0, 1, 3, 0]), np.array([1, 2, 0, 2]), np.array([1, 1, 1, 2])
    np.testing.assert_array_equal(coactivity(s, pre, post, d), [1, 1, 0, 1])
    causal, mark = causal_contribution(s, pre, post, d, np.array([0.5, 2.0, 1.0, -1.0]), np.array([2]))
    np.testing.assert_allclose(causal, [0.5, 2.0, 0.0, 0.0])  # inhibitory synapse 0 -> 2 is not causal
    assert mark[:, 0].tolist() == [0, 1, 0, 0, 0] and not mark[:, 3].any()


def test_explain_names_the_hand_wired_pathway(tmp_path):
    net, cfg = _known_network()
    state = fumjax.init_state(net, cfg)
    _, spikes = fumjax.simulate(state, net, jnp.asarray(_drive()), config=cfg, plasticity="off")
    spikes = np.asarray(spikes)
    assert (
        spikes[:, OUT0].sum() == 3 and spikes[:, SILENT].sum() == 0
    )  # the network does what it is built for
    population = np.array([-1, -1, -1, 0, 1, -1, -1, -1])
    ex = explain_raster(
        spikes,
        np.asarray(net.pre),
        np.asarray(net.post),
        np.asarray(net.delay_steps),
        np.asarray(state.w),
        population,
        sources=np.array([IN, D_IN]),
    )
    assert ex.prediction == 0 and ex.population_counts[0] == 3
    assert ex.pathway == [IN, A, B, OUT0]
    # output 3's causal input: B (w 1) and D_IN (w 0.3), three coincidences each
    assert ex.pathways[0]["share_product"] == pytest.approx(1.0 / 1.3)
    top = {(t["pre"], t["post"]): t["contribution"] for t in ex.top_synapses}
    assert top[(IN, A)] == top[(A, B)] == top[(B, OUT0)] == pytest.approx(3.0)
    assert top[(D_IN, OUT0)] == pytest.approx(0.9)
    assert (SILENT, B) not in top
    flows = {(e["from"], e["to"]): e["causal"] for e in ex.cluster_edges}
    assert flows == {
        ("input", "hidden"): 3.0,
        ("hidden", "hidden"): 3.0,
        ("hidden", "class 0"): 3.0,
        ("input", "class 0"): pytest.approx(0.9),
    }


def test_explain_checkpoint_round_trip_and_bad_input(tmp_path):
    from fumjax.train.digits import DigitsRecipe, build_readout_network, recipe_config

    recipe = DigitsRecipe(n_per_class=1, encoding="regular", lateral=True)
    net, pop = build_readout_network(128, 10, recipe, seed=0)
    cfg = recipe_config()
    state = fumjax.init_state(net, cfg)
    enc = {"n_in": 128, "p_max": 0.25, "in_amp_mV": 20.0, "encoding": "regular", "seed": 3}
    path = save_explainable(tmp_path, net, state, pop, config=cfg, encoding=enc, step=1)
    arrays, meta = load_explainable(tmp_path)
    np.testing.assert_array_equal(arrays["w"], np.asarray(state.w))
    ex, info = explain_checkpoint(path, "digits:0")
    assert info["target"] is not None and ex.prediction in range(10)
    if ex.pathways:  # every pathway runs from a driven input channel straight to an output neuron
        assert all(p["neurons"][0] < 128 <= p["neurons"][-1] for p in ex.pathways)
    with pytest.raises(ValueError, match="IDX must be in"):
        explain_checkpoint(path, "digits:100000")
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps([0.5] * 10))
    with pytest.raises(ValueError, match="expects 64"):
        explain_checkpoint(path, str(bad))
    other = tmp_path / "other"
    from fumjax.train.checkpoint import save_checkpoint

    save_checkpoint(other, {"a": np.zeros(2)}, step=1)
    with pytest.raises(CheckpointError, match="not an explainable snapshot"):
        load_explainable(other)


def test_explain_command_writes_json_and_png_and_never_overwrites(tmp_path, capsys):
    from fumjax.cli import main
    from fumjax.train.digits import DigitsRecipe, build_readout_network, recipe_config

    net, pop = build_readout_network(128, 10, DigitsRecipe(n_per_class=1, encoding="regular"), seed=0)
    cfg = recipe_config()
    enc = {"n_in": 128, "p_max": 0.25, "in_amp_mV": 20.0, "encoding": "regular", "seed": 3}
    save_explainable(tmp_path / "ck", net, fumjax.init_state(net, cfg), pop, config=cfg, encoding=enc, step=7)
    out = str(tmp_path / "ex")
    assert main(["explain", str(tmp_path / "ck"), "digits:5", "--out", out]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads((tmp_path / "ex.json").read_text())
    assert (
        summary["prediction"] == saved["prediction"] and summary["pathway"] == saved["pathways"][0]["neurons"]
    )
    assert (tmp_path / "ex.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["explain", str(tmp_path / "ck"), "digits:5", "--out", out]) == 2
    assert "exists" in capsys.readouterr().err
