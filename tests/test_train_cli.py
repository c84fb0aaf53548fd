"""`fumjax train`: a tiny end-to-end run, resume through the CLI, bad input (clear error, nothing written)."""

import json

import pytest

from fumjax.cli import main

TINY_TOML = """
[train]
items_per_domain = 30
slots_per_class = 2
init_per_class = 1
phase1_items = 16
phase1_epochs = 2
phase2_batch = 200
phase2_epochs_per_stage = 1
phase2_final_epochs = 0
phase3_windows = 16
phase3_block = 8
chunk_windows = 8
cluster_every = 16
cluster_history = 8
decay_every = 8
"""


@pytest.fixture()
def tiny_toml(tmp_path):
    p = tmp_path / "tiny.toml"
    p.write_text(TINY_TOML)
    return p


def _tree(path):
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_tiny_run_outputs_and_resume(tmp_path, tiny_toml, capsys):
    out = tmp_path / "run"
    argv = ["train", "--config", str(tiny_toml), "--out", str(out), "--no-progress"]
    assert main([*argv, "--holdout-domain", "tones"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    domains = {"digits", "letters", "shapes", "logic", "comparison", "arithmetic", "sequence"}
    assert set(summary["val_per_domain"]) == domains  # tones was held out of phases 1-2
    assert set(summary["val_accuracy_after_phase"]) == {"1", "2", "3"}
    assert summary["retention"] == pytest.approx(
        summary["val_accuracy_after_phase"]["3"] / summary["val_accuracy_after_phase"]["2"]
    )
    assert set(summary["new_domain"]) == {"direct_accuracy", "cluster_accuracy"}
    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in recs if r["type"] == "window"]
    units = [r for r in recs if r["type"] == "unit"]
    assert len(units) == 5 and len(windows) == summary["windows"] == sum(u["items"] for u in units)
    for key in ("td", "novelty", "habituation", "self_benefit", "total", "reward"):
        assert all(isinstance(w[key], float) for w in windows)
    assert all(not w["labeled"] for w in windows if w["phase"] == 3)
    assert sorted(p.split("/")[-1] for p in summary["plots"]) == sorted(
        ["spike_raster.png", "rates_per_cluster.png", "reward_components.png", "weight_histogram.png"]
        + ["knowledge_graph.png"]
    )
    for p in summary["plots"]:
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    # the same output directory is refused without --resume, and nothing in it changes
    before = _tree(out)
    assert main([*argv, "--holdout-domain", "tones"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert _tree(out) == before
    # resuming a finished run: nothing left to do, same summary
    assert main([*argv, "--holdout-domain", "tones", "--resume", "--no-plots"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["val_per_domain"] == summary["val_per_domain"] and again["windows"] == summary["windows"]
    assert (out / "metrics.jsonl").read_bytes() == (before[out.relative_to(out) / "metrics.jsonl"])


def test_bad_corpus_config_checkpoint(tmp_path, tiny_toml, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"domain": "a", "input": [0.5, 0.2], "target": 0}\n'
        '{"domain": "a", "input": [2.0, 0.1], "target": 1}\n'
    )
    out = tmp_path / "out1"
    assert main(["train", "--corpus", str(bad), "--out", str(out), "--no-progress"]) == 2
    assert "bad.jsonl:2: input values must be finite and within [0, 1]" in capsys.readouterr().err
    assert not out.exists()
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[train]\nphase1_epochs = -1\n")
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 2
    assert "train.phase1_epochs = -1" in capsys.readouterr().err
    assert not out.exists()
    assert main(["train", "--holdout-domain", "music", "--out", str(out), "--no-progress"]) == 2
    assert "not a domain of the corpus" in capsys.readouterr().err
    # a damaged checkpoint: --resume refuses it and leaves the run's files as they were
    run = tmp_path / "run"
    ckpt = run / "ckpt"
    ckpt.mkdir(parents=True)
    (ckpt / "ckpt-0000000001.npz").write_bytes(b"PK\x03\x04 not really a checkpoint")
    (run / "metrics.jsonl").write_text('{"type": "unit", "unit_index": 0}\n')
    before = _tree(run)
    argv = ["train", "--config", str(tiny_toml), "--out", str(run), "--resume", "--no-progress"]
    assert main(argv) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
    assert _tree(run) == before
    assert main(["train", "--config", str(tiny_toml), "--out", str(tmp_path / "x"), "--resume"]) == 2
    assert "no checkpoint in" in capsys.readouterr().err
