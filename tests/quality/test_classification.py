"""The seeds' metrics of the labelled polarity task: accuracy, and precision, recall and F1
macro-averaged, against scikit-learn's definitions; and minilm's, reported with their protocol."""
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from engine.quality.stats import classification_scores


@pytest.mark.parametrize("truth, predicted", [
    ([0, 0, 1, 1], [0, 1, 1, 1]),
    ([1, 1, 1, 1], [1, 1, 1, 1]),                 # one class: its own scores only
    ([0, 1, 0, 1, 0], [1, 1, 1, 1, 1]),           # a class never predicted: its precision and F1 are 0
    ([0, 0, 0], [1, 1, 1]),                       # all wrong: a class with no item counts (0) too
])
def test_macro_scores_are_scikit_learns(truth, predicted):
    p, r, f, _ = precision_recall_fscore_support(truth, predicted, average="macro", zero_division=0)
    got = classification_scores(truth, predicted)
    assert got == pytest.approx({"accuracy": accuracy_score(truth, predicted), "precision": p, "recall": r, "f1": f})


def test_random_labels_by_hand_and_by_scikit_learn():
    rng = np.random.default_rng(0)
    truth, predicted = rng.integers(0, 3, 500), rng.integers(0, 3, 500)
    p, r, f, _ = precision_recall_fscore_support(truth, predicted, average="macro", zero_division=0)
    got = classification_scores(truth, predicted)
    assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((p, r, f), abs=1e-12)
    tp = [((predicted == c) & (truth == c)).sum() for c in range(3)]
    assert got["recall"] == pytest.approx(np.mean([tp[c] / (truth == c).sum() for c in range(3)]))


def test_minilm_reports_the_polarity_tasks_four_metrics_with_their_protocol(minilm_explorer):
    ev = minilm_explorer.evaluator()
    base = ev.baseline()
    keys = ("polarity_accuracy", "polarity_precision", "polarity_recall", "polarity_f1")
    assert all(0.5 < base[k] <= 1 for k in keys)  # the probe on the original's embeddings beats chance
    assert all(k in ev.protocol for k in keys)
    work = minilm_explorer.workspace()
    from engine.recipe.recipe import Recipe

    work.apply(Recipe(bits=2))
    m = work.evaluate()
    assert all(k in m for k in keys) and m["polarity_f1"] < base["polarity_f1"]  # 2 bits hurt the probe


def test_a_sequence_classifier_reports_precision_recall_and_f1_against_the_originals_labels(tiny_explorers):
    """The classifier's compressed labels scored against the original's on the polarity sentences,
    macro-averaged as scikit-learn does; the uncompressed model scores 1 on each."""
    import torch

    from engine import Recipe

    ex = tiny_explorers["bert-classifier"]
    evaluator = ex.evaluator()
    assert {"label_precision", "label_recall", "label_f1"} <= set(evaluator.protocol)
    assert evaluator.baseline() == {"label_agreement": 1.0, "kl_to_original": 0.0, "label_precision": 1.0,
                                    "label_recall": 1.0, "label_f1": 1.0}
    work = ex.workspace()
    work.apply(Recipe(bits=2, group_size=16, sparsity=0.6))
    got = work.evaluate()
    with torch.inference_mode():
        original = evaluator.texts.run(lambda b: ex.loaded.model(**b).logits).argmax(-1).numpy()
        compressed = evaluator.texts.run(lambda b: work.model(**b).logits).argmax(-1).numpy()
    p, r, f, _ = precision_recall_fscore_support(original, compressed, average="macro", zero_division=0)
    assert (got["label_precision"], got["label_recall"], got["label_f1"]) == pytest.approx((p, r, f), abs=1e-12)
    assert got["label_agreement"] == pytest.approx(accuracy_score(original, compressed))
