import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from ai_engine import metrics

LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 0, 1, 1])
SCORES = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.9, 0.65, 0.2, 0.3, 0.95])


def test_auroc_and_auprc_match_scikit_learn():
    assert metrics.auroc(LABELS, SCORES) == pytest.approx(roc_auc_score(LABELS, SCORES))
    assert metrics.auprc(LABELS, SCORES) == pytest.approx(average_precision_score(LABELS, SCORES))


def test_threshold_metrics_by_hand():
    # >= 0.5 flags 0.8 (normal, FP), 0.7, 0.9, 0.65, 0.95 (abnormal, TP); 0.3 abnormal is FN
    out = metrics.at_threshold(LABELS, SCORES, 0.5)
    assert out["sensitivity"] == pytest.approx(4 / 5)
    assert out["specificity"] == pytest.approx(4 / 5)
    assert out["precision"] == pytest.approx(4 / 5)
    assert out["f1"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 1))
    assert out["accuracy"] == pytest.approx(8 / 10)


def test_score_equal_to_threshold_is_abnormal():
    assert metrics.at_threshold([0, 1], [0.5, 0.5], 0.5)["sensitivity"] == 1.0


def test_bootstrap_interval_brackets_the_estimate_and_is_reproducible():
    rng = np.random.default_rng(1)
    labels = np.r_[np.zeros(100), np.ones(100)]
    scores = np.r_[rng.normal(0, 1, 100), rng.normal(1, 1, 100)]
    lo, hi = metrics.bootstrap_ci(metrics.auroc, labels, scores, n_boot=200, seed=3)
    assert lo < metrics.auroc(labels, scores) < hi
    assert (lo, hi) == metrics.bootstrap_ci(metrics.auroc, labels, scores, n_boot=200, seed=3)


def test_pixel_metrics_on_known_masks():
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True
    amap = np.zeros((4, 4))
    amap[:2, :3] = 1.0  # 4 true positives, 2 false positives
    assert metrics.dice_iou([mask], [amap], 0.5) == pytest.approx({"dice": 8 / 10, "iou": 4 / 6})
    assert metrics.pixel_auroc([mask], [amap]) == pytest.approx(
        roc_auc_score(mask.ravel(), amap.ravel())
    )


def test_image_report_has_the_contract_keys():
    report = metrics.image_report(LABELS, SCORES, 0.5, n_boot=50)
    for key in ("auroc", "auprc", "sensitivity", "specificity", "threshold", "n_normal",
                "n_abnormal", "ci95"):
        assert key in report
    assert report["n_normal"] == 5
    assert report["n_abnormal"] == 5


def test_bad_labels_are_refused():
    with pytest.raises(ValueError, match="0 \\(normal\\) or 1"):
        metrics.auroc([0, 2], [0.1, 0.2])
