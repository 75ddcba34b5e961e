"""End-to-end task quality of the default edits on scikit-learn digits (MLP, two seeds).

Small versions of examples/class_removal.py and examples/backdoor_relabel.py: each compares the
edit with a model retrained from scratch, on the test split, using the engine's defaults only.
"""

import sys
from pathlib import Path

import pytest
import torch

import gif

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from backdoor_relabel import TARGET
from digits import MLP, accuracy, add_trigger, load_digits, poison, train

pytest.importorskip("sklearn")


@pytest.mark.parametrize("seed", [0, 1])
def test_default_class_removal_matches_retraining(seed):
    s = load_digits(seed)
    cls = 3
    model = train(MLP, s.x_train, s.y_train, seed=seed, epochs=30)
    retrained = train(MLP, s.x_train[s.y_train != cls], s.y_train[s.y_train != cls], seed=seed, epochs=30)
    edit = gif.remove(model, (s.x_train, s.y_train), {"class": cls}, seed=seed)
    keep = s.y_test != cls
    assert accuracy(model, s.x_test[~keep], s.y_test[~keep]) > 80  # the class was known before
    assert accuracy(edit.model, s.x_test[~keep], s.y_test[~keep]) <= 2.0
    gap = accuracy(retrained, s.x_test[keep], s.y_test[keep]) - accuracy(
        edit.model, s.x_test[keep], s.y_test[keep]
    )
    assert gap <= 1.5


@pytest.mark.parametrize("seed", [0, 1])
def test_default_backdoor_relabel_approaches_retraining(seed):
    s = load_digits(seed)
    xp, yp, idx = poison(s.x_train, s.y_train, seed, add_trigger, TARGET)
    model = train(MLP, xp, yp, seed=seed, epochs=30)
    fixed = yp.clone()
    fixed[idx] = s.y_train[idx]
    retrained = train(MLP, xp, fixed, seed=seed, epochs=30)
    edit = gif.relabel(model, (xp, yp), idx, s.y_train[idx], seed=seed)
    others = s.y_test != TARGET
    x_trig, y_true = add_trigger(s.x_test[others]), s.y_test[others]

    def metrics(m):
        return (
            accuracy(m, s.x_test, s.y_test),
            accuracy(m, x_trig, y_true),
            accuracy(m, x_trig, torch.full_like(y_true, TARGET)),
        )

    assert metrics(model)[2] > 90  # the backdoor works before the edit
    clean, relabel, attack = metrics(edit.model)
    ref_clean, ref_relabel, _ = metrics(retrained)
    assert ref_clean - clean <= 2.0
    assert ref_relabel - relabel <= 6.0
    assert attack <= 3.0
