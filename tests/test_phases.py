"""Phase trainer: schedule, population rewards, growth, settings, reward-only learning, bit-exact resume."""

import dataclasses

import jax
import numpy as np
import pytest

from fumjax.config import ConfigError
from fumjax.train import phases
from fumjax.train.checkpoint import CheckpointError
from fumjax.train.corpus import builtin_corpus

TINY = phases.TrainSettings(
    items_per_domain=10,
    slots_per_class=2,
    init_per_class=1,
    phase1_items=16,
    phase1_epochs=2,
    phase2_batch=32,
    phase2_epochs_per_stage=1,
    phase2_final_epochs=0,
    phase3_windows=16,
    phase3_block=8,
    chunk_windows=8,
    cluster_every=16,
    cluster_history=8,
    decay_every=8,
    holdout_domain="tones",
)


@pytest.fixture(scope="module")
def corpus():
    return builtin_corpus(items_per_domain=10)


def _setup(corpus, settings=TINY):
    cfg = phases.default_engine_config()
    return phases._setup(corpus, settings, cfg, 0)


def test_schedule_phases_curriculum_and_holdout(corpus):
    s = dataclasses.replace(TINY, phase1_items=14, phase2_batch=20, phase2_final_epochs=1, phase3_windows=12)
    train, _ = corpus.split(val_fraction=0.2, seed=0)
    units = phases.schedule(train, s, 0)
    tones = train.domains.index("tones")
    p1 = [u for u in units if u.phase == 1]
    assert len(p1) == 2 and all(u.labeled for u in p1)
    # 14 items over the 7 known domains: 2 each, the same set every epoch, reshuffled
    assert np.array_equal(np.bincount(train.domain[p1[0].items], minlength=8), [2] * 7 + [0])
    assert sorted(p1[0].items) == sorted(p1[1].items)
    p2 = [u for u in units if u.phase == 2]
    known = int(np.count_nonzero(train.domain != tones))  # 62 (20% of each class, rounded, is held out)
    assert known == 62
    # stages of 20, 40, 60, 62 items; one epoch each, the last stage one extra
    assert [u.items.size for u in p2] == [20, 40, 60, 62, 62] and [u.stage for u in p2] == [0, 1, 2, 3, 3]
    first = train.n_classes[train.domain[p2[0].items]]
    assert first.max() <= train.n_classes[train.domain[p2[-1].items]].max()  # simplest domains first
    assert not np.any(train.domain[np.concatenate([u.items for u in p1 + p2])] == tones)
    p3 = [u for u in units if u.phase == 3]
    assert [u.items.size for u in p3] == [8, 4] and not any(u.labeled for u in p3)
    assert np.any(train.domain[np.concatenate([u.items for u in p3])] == tones)
    again = phases.schedule(train, s, 0)
    assert all(np.array_equal(a.items, b.items) for a, b in zip(units, again, strict=True))


def test_population_rewards_hand_checked(corpus):
    su = _setup(corpus)
    ts = su["trainer"]
    g, d = su["spec"].n_pops, corpus.x.shape[1]
    r_pop = np.zeros((3, g), np.float32)
    r_pop[0, [2, 5]] = [1.0, -1.0]  # window 0 labeled, wrong: target 2 gets +1, rival 5 gets -1
    r_pop[1, 2] = 0.2  # window 1 labeled, right
    log = {
        "r_pop": r_pop,
        "r_ext": np.array([-1.0, 1.0, 0.0], np.float32),
        "reward": np.array([0.3, 0.4, -0.25], np.float32),
        "winner": np.array([5, 2, 7]),
    }
    x = np.stack([np.full(d, 0.1), np.full(d, 0.2), np.full(d, 0.3)]).astype(np.float32)
    ts = phases._update_pop_rewards(ts, log, x, np.array([True, True, True]), 0.5)
    avg, cnt = np.asarray(ts.pop_avg), np.asarray(ts.pop_cnt)
    # pop 2: first -1 (count 0 -> the value itself), then 0.5 * -1 + 0.5 * 1 = 0; pop 5: -1
    assert avg[2] == 0.0 and cnt[2] == 2 and avg[5] == -1.0 and cnt[5] == 1 and cnt.sum() == 3
    # unlabeled window 2: the winner 7's self-supervised average is the SIE reward -0.25
    assert np.asarray(ts.pop_self_avg)[7] == np.float32(-0.25) and np.asarray(ts.pop_self_cnt).sum() == 1
    err = np.asarray(ts.pop_err_x)
    assert np.all(err[2] == np.float32(0.1)) and np.all(err[7] == np.float32(0.3)) and np.all(err[5] == 0)


def test_growth_revives_a_slot_with_the_missed_input(corpus):
    su = _setup(corpus)
    ts, ro, spec = su["trainer"], su["readout"], su["spec"]
    d = corpus.x.shape[1]
    x = np.linspace(0.0, 1.0, d).astype(np.float32)
    avg = np.ones(spec.n_pops, np.float32)
    cnt = np.full(spec.n_pops, 100, np.int32)
    avg[[3, 4]] = [0.2, -0.5]  # both below 0.5; pop 4 is worse and goes first
    err = np.zeros((spec.n_pops, d), np.float32)
    err[4] = x
    ts = ts.replace(pop_avg=avg, pop_cnt=cnt, pop_err_x=err)
    # one growth per event: max(1, int(0.01 x 42 alive outputs)) = 1
    grown, n = phases.grow(ts, ro, spec, TINY)
    assert n == 1
    slot = int(np.flatnonzero((ro.pop == 4) & ~np.asarray(ts.alive))[0])
    assert np.asarray(grown.alive)[slot] and np.asarray(grown.grown)[slot] == 2
    assert np.asarray(grown.state.v_th_mV)[slot] == -55.0 and np.asarray(grown.v_th0)[slot] == -55.0
    post, pre = np.asarray(ro.net.post), np.asarray(ro.net.pre)
    syn = np.flatnonzero((post == slot) & ro.plastic_syn)
    code = np.concatenate([x, 1.0 - x])[pre[syn]]
    np.testing.assert_allclose(
        np.asarray(grown.state.w)[syn], code / np.linalg.norm(code) * spec.w_norm, rtol=1e-6
    )
    assert np.asarray(grown.pop_cnt)[4] == 0 and np.asarray(grown.pop_cnt)[3] == 100
    # the next event serves pop 3; then both have no free slot (2 slots each) and nothing grows
    grown, n = phases.grow(grown.replace(pop_avg=avg, pop_cnt=cnt), ro, spec, TINY)
    assert n == 1 and np.asarray(grown.alive)[ro.pop == 3].all()
    _, n = phases.grow(grown.replace(pop_avg=avg, pop_cnt=cnt), ro, spec, TINY)
    assert n == 0


def test_settings_and_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'train.epochs'"):
        phases.TrainSettings.from_dict({"epochs": 3})
    with pytest.raises(ConfigError, match="train.phase1_epochs: expected int"):
        phases.TrainSettings.from_dict({"phase1_epochs": "5"})
    with pytest.raises(ConfigError, match="init_per_class = 5 must be <= train.slots_per_class = 4"):
        phases.TrainSettings(slots_per_class=4, init_per_class=5)
    with pytest.raises(ConfigError, match="train.phases = '2,1'"):
        phases.TrainSettings(phases="2,1")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nphase1_epochs = 0\n")
    with pytest.raises(ConfigError, match=r"bad.toml: train.phase1_epochs = 0: must be in \[1, 10000\]"):
        phases.load_settings(bad)
    bad.write_text("[stdp]\na_plus = -1.0\n")
    with pytest.raises(ConfigError, match="stdp.a_plus = -1.0"):
        phases.load_settings(bad)
    bad.write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        phases.load_settings(bad)
    good = tmp_path / "good.toml"
    good.write_text('[train]\nphase1_epochs = 7\nholdout_domain = "logic"\n[plasticity]\neta = 0.002\n')
    s, cfg = phases.load_settings(good)
    assert s.phase1_epochs == 7 and s.holdout_domain == "logic" and cfg.plasticity.eta == 0.002
    assert cfg.plasticity.gamma == 0.99  # the trainer's defaults stay under the file's changes


def test_reward_only_learning_of_two_domains():
    """Sequence and tones (4 and 5 classes) from reward alone: 96 training items, 5 epochs."""
    full = builtin_corpus(items_per_domain=60)
    keep = np.isin(full.domain, [full.domains.index("sequence"), full.domains.index("tones")])
    corpus = full.subset(np.flatnonzero(keep))
    s = phases.TrainSettings(
        phases="2",
        slots_per_class=4,
        init_per_class=2,
        phase2_batch=1000,
        phase2_epochs_per_stage=5,
        phase2_final_epochs=0,
    )
    res = phases.train(corpus, s, phases.default_engine_config(), seed=0)
    before = phases.evaluate(
        _setup(corpus, s)["trainer"], res["readout"], res["spec"], phases.default_engine_config(), corpus, 0
    )
    assert before["accuracy"] < 0.5  # random initial weights
    assert res["val"]["accuracy"] >= 0.9, res["val"]


def test_resume_is_bit_exact(tmp_path, corpus):
    cfg = phases.default_engine_config()
    straight = phases.train(corpus, TINY, cfg, seed=3)
    n_units = straight["n_units"]
    assert n_units == 2 + 2 + 2  # phase 1: 2 epochs, phase 2: stages of 32 and 56 items, phase 3: 2 blocks
    first = phases.train(corpus, TINY, cfg, seed=3, checkpoint_dir=tmp_path, stop_after_units=3)
    assert first["units_done"] == 3
    with pytest.raises(CheckpointError, match="another corpus, settings, config or seed"):
        phases.train(corpus, TINY, cfg, seed=4, checkpoint_dir=tmp_path, resume=True)
    resumed = phases.train(corpus, TINY, cfg, seed=3, checkpoint_dir=tmp_path, resume=True)
    a = jax.tree_util.tree_leaves(straight["trainer"])
    b = jax.tree_util.tree_leaves(resumed["trainer"])
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert straight["val"] == resumed["val"]
    assert straight["val_after_phase"] == resumed["val_after_phase"]
