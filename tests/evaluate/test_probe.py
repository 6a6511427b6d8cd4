"""The attentive probe: the pooler's attention, learning a separable toy token set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rayssl.config import ConfigError
from rayssl.evaluate.probe import AttentivePooler, as_tokens, probe_logits, train_probe
from rayssl.evaluate.suite import load_suite
from tests.conftest import ROOT


def test_pooler_attention_weights_sum_to_one_over_tokens():
    torch.manual_seed(0)
    pooler = AttentivePooler(dim=8, num_heads=2, num_queries=3)
    tokens = torch.randn(4, 5, 8)
    pooled, weights = pooler(tokens, return_weights=True)
    assert pooled.shape == (4, 8)
    assert weights.shape == (4, 2, 3, 5)  # (B, heads, queries, tokens)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(4, 2, 3))


def test_pooler_of_one_token_attends_to_it_alone_and_ignores_token_order():
    torch.manual_seed(0)
    pooler = AttentivePooler(dim=4, num_heads=2).eval()
    one = torch.randn(3, 1, 4)
    _, w = pooler(one, return_weights=True)
    assert torch.equal(w, torch.ones(3, 2, 1, 1))
    tokens = torch.randn(2, 6, 4)
    perm = torch.randperm(6)
    with torch.no_grad():  # no position embedding: a set function of the tokens
        torch.testing.assert_close(pooler(tokens), pooler(tokens[:, perm]))


def test_heads_must_divide_the_token_width():
    with pytest.raises(ValueError, match="heads: 3 does not divide the token width 8"):
        AttentivePooler(dim=8, num_heads=3)


def _toy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n videos of 6 tokens of width 8: noise, except one token at a random position
    carrying 4 x the unit vector of the class (3 classes). The class is in one token,
    wherever it is: the mean over tokens dilutes it six-fold, attention need not."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    tokens = rng.normal(0, 0.3, (n, 6, 8)).astype(np.float32)
    where = rng.integers(0, 6, n)
    tokens[np.arange(n), where, labels] += 4.0
    return tokens, labels


@pytest.fixture
def one_thread():
    """A probe this small trains fastest on one thread (and is not slowed tenfold by
    other processes on a busy machine); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_probe_learns_a_separable_toy_token_set(one_thread):
    x, y = _toy(150, seed=0)
    xt, yt = _toy(60, seed=1)
    probe = train_probe(x, y, 3, heads=2, epochs=20, batch_size=16, lr=1e-2, seed=0)
    accuracy = float((probe_logits(probe, xt).argmax(1) == yt).mean())
    assert accuracy >= 0.9, accuracy
    # the same seed gives the same probe
    again = train_probe(x, y, 3, heads=2, epochs=20, batch_size=16, lr=1e-2, seed=0)
    np.testing.assert_array_equal(probe_logits(probe, xt), probe_logits(again, xt))
    before = torch.random.get_rng_state()
    train_probe(x[:8], y[:8], 3, heads=2, epochs=1, seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is left alone


def test_probe_input_checks():
    assert as_tokens(np.zeros((4, 3))).shape == (4, 1, 3)  # vectors: one token each
    with pytest.raises(ValueError, match="expected tokens"):
        as_tokens(np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="labels must be in"):
        train_probe(np.zeros((2, 1, 4)), np.array([0, 3]), 3, heads=2, epochs=1)
    with pytest.raises(ValueError, match="token sets for"):
        train_probe(np.zeros((2, 1, 4)), np.array([0]), 3, heads=2, epochs=1)


def test_probe_settings_are_strict():
    suite = ROOT / "configs" / "eval_debug.yaml"
    s = load_suite(suite, ["data.manifest=m", "attentive_probe.lr=0.01"]).attentive_probe
    assert s.enabled and s.lr == 0.01 and s.layer == ""
    for bad, key in [
        ("attentive_probe.heads=0", "attentive_probe.heads"),
        ("attentive_probe.epochs=0", "attentive_probe.epochs"),
        ("attentive_probe.layer=bad-name", "attentive_probe.layer"),
        ("attentive_probe.test_split=train", "attentive_probe.train_split"),
        ("features.token_grid=[2,2]", "features.token_grid"),
    ]:
        with pytest.raises(ConfigError, match=key):
            load_suite(suite, ["data.manifest=m", bad])
