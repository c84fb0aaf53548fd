import json

import numpy as np
import pytest

from fumjax.train.corpus import DOMAINS, CorpusError, builtin_corpus, load_jsonl


@pytest.fixture(scope="module")
def corpus():
    return builtin_corpus(items_per_domain=150, seed=0)


def test_builtin_corpus_is_balanced_and_bounded(corpus):
    assert len(corpus) == 8 * 150 and corpus.domains == DOMAINS
    assert np.bincount(corpus.domain).tolist() == [150] * 8 and corpus.domain_skew() == 0.0
    assert corpus.x.shape == (1200, 64) and corpus.x.dtype == np.float32
    assert corpus.x.min() >= 0.0 and corpus.x.max() <= 1.0
    for d in range(8):
        t = corpus.target[corpus.domain == d]
        assert t.min() == 0 and t.max() == corpus.n_classes[d] - 1
    digits = corpus.target[corpus.domain == 0]
    assert np.bincount(digits).tolist() == [15] * 10  # balanced over the 10 classes
    assert corpus.domain[:16].tolist() != sorted(corpus.domain[:16].tolist())  # shuffled


def test_digits_domain_is_scikit_learn_data(corpus):
    from sklearn.datasets import load_digits

    data = load_digits()
    rows = {tuple(np.round(r / 16.0, 6)) for r in data.data}
    mine = corpus.x[corpus.domain == 0]
    assert all(tuple(np.round(r.astype(np.float64), 6)) in rows for r in mine)


def test_labels_follow_their_rules(corpus):
    comp = corpus.domain == DOMAINS.index("comparison")
    x, y = corpus.x[comp], corpus.target[comp]
    # thermometer units flip with 3% noise: decode a, b by majority of the first 16 / units 32..47
    a, b = (x[:, :16] > 0.5).sum(1), (x[:, 32:48] > 0.5).sum(1)
    agree = np.mean(np.select([a < b, a == b], [0, 1], 2) == y)
    assert agree > 0.8


def test_split_is_stratified_and_disjoint(corpus):
    train, val = corpus.split(val_fraction=0.2, seed=1)
    assert len(train) == 960 and len(val) == 240
    assert np.bincount(val.domain).tolist() == [30] * 8
    both = np.concatenate([train.x, val.x])
    assert np.unique(both, axis=0).shape[0] == np.unique(corpus.x, axis=0).shape[0]


def test_load_jsonl_round_trip(tmp_path):
    path = tmp_path / "c.jsonl"
    items = [
        {"domain": "a", "input": [0.0, 1.0], "target": 1},
        {"domain": "b", "input": [0.5, 0.5], "target": 0},
    ]
    path.write_text("\n".join(json.dumps(i) for i in items) + "\n")
    c = load_jsonl(path)
    assert c.domains == ("a", "b") and c.target.tolist() == [1, 0] and c.n_classes.tolist() == [2, 1]
    np.testing.assert_array_equal(c.x, [[0.0, 1.0], [0.5, 0.5]])


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"domain": "a", "input": [0.1], "target": 0}', "{oops"], "c.jsonl:2: not valid JSON"),
        (
            ['{"domain": "a", "input": [0.1]}'],
            "c.jsonl:1: expected an object with keys domain, input, target",
        ),
        (['{"domain": "a", "input": [0.1], "target": -1}'], "c.jsonl:1: target must be an integer >= 0"),
        (
            ['{"domain": "a", "input": [1.5], "target": 0}'],
            "c.jsonl:1: input values must be finite and within",
        ),
        (
            [
                '{"domain": "a", "input": [0.1], "target": 0}',
                '{"domain": "a", "input": [0.1, 0.2], "target": 0}',
            ],
            "c.jsonl:2: input has 2 values, earlier lines have 1",
        ),
        (['{"domain": "", "input": [0.1], "target": 0}'], "c.jsonl:1: domain must be a non-empty string"),
        ([""], "no items"),
    ],
)
def test_load_jsonl_bad_lines(tmp_path, lines, message):
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(lines))
    with pytest.raises(CorpusError) as info:
        load_jsonl(path)
    assert message in str(info.value)
    with pytest.raises(CorpusError, match="corpus file not found"):
        load_jsonl(tmp_path / "missing.jsonl")
