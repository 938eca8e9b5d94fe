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
    for key in (
        "auroc",
        "auprc",
        "sensitivity",
        "specificity",
        "threshold",
        "n_normal",
        "n_abnormal",
        "ci95",
    ):
        assert key in report
    assert report["n_normal"] == 5
    assert report["n_abnormal"] == 5


def test_bad_labels_are_refused():
    with pytest.raises(ValueError, match="0 \\(normal\\) or 1"):
        metrics.auroc([0, 2], [0.1, 0.2])


def test_fppi_counts_unmatched_predictions_per_image():
    truth = [[[0, 0, 10, 10]], []]
    pred = [[[1, 1, 10, 10], [50, 50, 60, 60]], [[0, 0, 5, 5]]]
    out = metrics.fppi(truth, pred, iou_threshold=0.5)
    assert out == {"fppi": 1.0, "lesion_sensitivity": 1.0}


def test_fid_is_zero_for_identical_sets_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 4))
    assert metrics.fid(a, a) == pytest.approx(0.0, abs=1e-6)
    # Gaussians with equal covariance: FID = squared mean shift
    assert metrics.fid(a, a + 2.0) == pytest.approx(16.0, rel=1e-6)


def test_kid_is_near_zero_for_samples_of_one_distribution_and_positive_otherwise():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    same, _ = metrics.kid(a, b, n_subsets=20)
    shifted, _ = metrics.kid(a, b + 1.0, n_subsets=20)
    assert abs(same) < 0.05
    assert shifted > 10 * abs(same)


def test_encoder_features_of_the_default_model_separate_noise_from_radiographs():
    from pathlib import Path

    from ai_engine.dicom_io.reader import read_png
    from ai_engine.features import encoder_features

    pngs = sorted(
        (Path(__file__).resolve().parents[2] / "data" / "mini" / "cxr_kermany_pediatric").rglob(
            "*.png"
        )
    )
    xrays = [read_png(p) for p in pngs[:20]]
    noise = [np.random.default_rng(i).random((224, 224), dtype=np.float32) for i in range(20)]
    extract = encoder_features("ae-cxr")
    fx, fn = extract(xrays), extract(noise)
    assert fx.shape == (20, 128)
    assert metrics.fid(fx[:10], fx[10:]) < metrics.fid(fx, fn)


def test_best_dice_threshold_and_per_group_dice() -> None:
    from ai_engine.metrics import best_dice_threshold, mean_dice_by_group, pixel_auprc

    truth = np.zeros((8, 8), dtype=bool)
    truth[2:5, 2:5] = True
    amap = np.where(truth, 0.8, 0.1).astype(np.float32)
    amap[0, 0] = 0.5  # one bright healthy pixel: a threshold at 0.5 or below costs precision
    threshold, dice = best_dice_threshold([truth], [amap])
    assert 0.5 < threshold <= 0.8
    assert dice == 1.0
    assert pixel_auprc([truth], [amap]) == 1.0
    # per group: group b has no anomalous pixel and is left out; group a scores 1.0 and c 0.0
    empty = np.zeros_like(truth)
    assert (
        mean_dice_by_group(
            [truth, empty, truth], [amap, amap, np.zeros_like(amap)], ["a", "b", "c"], threshold
        )
        == 0.5
    )


def test_the_threshold_baselines_map_is_a_median_filter_inside_the_eroded_brain() -> None:
    import torch

    from ai_engine.models.flair_threshold.torch_model import IntensityMap

    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, 4:28, 4:28] = 0.25  # the brain
    x[0, 0, 14:18, 14:18] = 0.9  # a lesion of 4x4 pixels
    x[0, 0, 8, 8] = 1.0  # one hot pixel: the median filter removes it
    out = IntensityMap(median_size=5, erosion_px=3)(x)[0, 0]
    assert out[8, 8] == pytest.approx(0.25)
    assert out[16, 16] == pytest.approx(0.9)
    assert out[5, 16] == 0  # within 3 px of the brain's edge: eroded away
    assert out[0, 0] == 0  # outside the brain
