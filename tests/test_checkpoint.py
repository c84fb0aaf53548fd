import numpy as np
import pytest

import fumjax
from fumjax import FumConfig
from fumjax.dynamics import background_current
from fumjax.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint

CFG = FumConfig().replace(neuron={"n_neurons": 200})


@pytest.fixture(scope="module")
def net():
    return fumjax.build_network(CFG)


def _run(state, net, n_windows):
    for _ in range(n_windows):
        state, _ = fumjax.simulate(state, net, background_current(state, net, 50, CFG), config=CFG)
        state = fumjax.end_window(state, 0.3, config=CFG)
    return state


def test_resume_is_bit_exact(tmp_path, net):
    start = fumjax.init_state(net, CFG)
    straight = _run(start, net, 6)
    half = _run(start, net, 3)
    path = save_checkpoint(tmp_path, {"state": half}, step=int(half.step), meta={"note": "half"})
    loaded, record = load_checkpoint(tmp_path, {"state": start})
    assert (
        record["step"] == 150 and record["meta"] == {"note": "half"} and path == latest_checkpoint(tmp_path)
    )
    resumed = _run(loaded["state"], net, 3)
    for name in ("v_mV", "w", "elig", "x_pre", "y_post", "tau_ms", "v_th_mV", "rate_hz", "step", "elig_t0"):
        np.testing.assert_array_equal(np.asarray(getattr(resumed, name)), np.asarray(getattr(straight, name)))


def test_never_overwrites_and_refuses_corruption(tmp_path, net):
    state = fumjax.init_state(net, CFG)
    path = save_checkpoint(tmp_path, {"state": state}, step=7)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="already exists"):
        save_checkpoint(tmp_path, {"state": state}, step=7)
    assert path.read_bytes() == before
    damaged = tmp_path / "ckpt-0000000008.npz"
    raw = bytearray(before)
    raw[len(raw) // 2] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt|not a readable"):
        load_checkpoint(damaged, {"state": state})
    truncated = tmp_path / "ckpt-0000000009.npz"
    truncated.write_bytes(before[: len(before) // 3])
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(truncated, {"state": state})
    loaded, _ = load_checkpoint(path, {"state": state})  # the good one is intact
    np.testing.assert_array_equal(np.asarray(loaded["state"].w), np.asarray(state.w))


def test_structure_mismatch_is_named(tmp_path, net):
    state = fumjax.init_state(net, CFG)
    save_checkpoint(tmp_path, {"state": state}, step=1)
    other = fumjax.init_state(fumjax.build_network(CFG.replace(neuron={"n_neurons": 100})), CFG)
    with pytest.raises(
        CheckpointError, match=r"leaf \['state'\].v_mV is float32\[200\], expected float32\[100\]"
    ):
        load_checkpoint(tmp_path, {"state": other})
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        load_checkpoint(tmp_path / "empty", {"state": state})
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.npz", {"state": state})
