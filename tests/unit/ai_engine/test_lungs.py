"""The lung-field segmenter and the lung restriction of chest maps, on committed real images.

- Montgomery test images (tests/data/mini/cxr_lung_masks, held out from the segmenter's
  training and selection) with their manual masks;
- the committed chest DICOM studies (tests/data/dicom: pediatric and adult, DX and CR);
- a blank exposure: no plausible lung field.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.uid import generate_uid

from ai_engine import pipeline
from ai_engine.anatomy import region_tensor, restrict, widen
from ai_engine.anatomy.lungs import LUNG_AREA_RANGE, lung_fields
from ai_engine.dicom_io.reader import read_image
from ai_engine.metrics import map_boxes, pointing_game, share_inside
from ai_engine.types import AnomalyOutput
from training.calibrate import recalibrate
from training.data import load_image, load_mask, read_manifest
from training.evaluate import evaluate

DATA = Path(__file__).resolve().parents[2] / "data"
MONTGOMERY = DATA / "mini" / "cxr_lung_masks" / "manifest.csv"
KERMANY = DATA / "mini" / "cxr_kermany_pediatric" / "manifest.csv"


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_segmenter_matches_the_manual_masks_of_held_out_images() -> None:
    items = read_manifest(MONTGOMERY, "test")
    regions = lung_fields([load_image(i.path) for i in items])
    for item, region in zip(items, regions, strict=True):
        assert region.reason is None
        truth = load_mask(item.mask_path) if item.mask_path else None
        assert truth is not None
        assert region.mask.shape == truth.shape
        assert _dice(region.mask, truth) > 0.85, item.path.name
        assert region.parts == 2


def test_two_lungs_on_the_committed_chest_studies() -> None:
    files = [  # the chest studies (the MR sample series is not a radiograph)
        p
        for p in sorted((DATA / "dicom").rglob("*.dcm"))
        if pydicom.dcmread(p, stop_before_pixels=True).Modality != "MR"
    ]
    assert len(files) >= 9
    images = [read_image(p).pixels for p in files]
    regions = lung_fields(images)
    for path, image, region in zip(files, images, regions, strict=True):
        assert region.reason is None, path
        assert region.mask.shape == image.shape  # at the source's resolution
        assert LUNG_AREA_RANGE[0] <= region.mask.mean() <= LUNG_AREA_RANGE[1]
        # the lungs lie in the upper two thirds, left and right of the midline
        rows, cols = np.nonzero(region.mask)
        assert rows.mean() < 0.7 * image.shape[0]
        assert (cols < image.shape[1] / 2).any()
        assert (cols > image.shape[1] / 2).any()
    assert sum(r.parts == 2 for r in regions) >= len(regions) - 1


def test_a_blank_exposure_has_no_plausible_lung_field() -> None:
    for blank in (np.zeros((256, 256), np.float32), np.full((300, 240), 0.7, np.float32)):
        [region] = lung_fields([blank])
        assert "lung field" in (region.reason or "")
        assert not region.mask.any()


def test_restrict_scores_inside_the_region_only() -> None:
    amap = torch.zeros(2, 1, 8, 8)
    amap[:, :, :, :4] = 0.1  # inside (left half)
    amap[0, 0, 0, 6] = 9.0  # a hot pixel outside the region must not count
    amap[1, 0, 2, 1] = 5.0  # a hot pixel inside must
    region = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    region[:, :, :, :4] = True
    out = restrict(AnomalyOutput(torch.zeros(2), amap, None), amap, region, "map_top", 0.0625, 0)
    assert out.anomaly_map[0, 0, 0, 6] == 0  # zeroed outside
    assert out.score[0] == pytest.approx(0.1, rel=1e-5)  # top 2 of 32 inside: 0.1, 0.1
    assert out.score[1] == pytest.approx((5.0 + 0.1) / 2, rel=1e-5)
    mean = restrict(AnomalyOutput(torch.zeros(2), amap, None), amap, region, "map_mean", margin=0)
    assert mean.score[0] == pytest.approx(0.1, rel=1e-5)
    empty = restrict(AnomalyOutput(torch.ones(2), amap, None), amap, torch.zeros_like(region))
    assert empty.score.tolist() == [0.0, 0.0]
    assert not empty.anomaly_map.any()


def test_region_is_squashed_to_the_model_size_and_widened_by_the_margin() -> None:
    mask = np.zeros((256, 256), bool)
    mask[100:141, 60:100] = True  # row 140 half covers model row 70: inside
    small = region_tensor([mask], (128, 128))
    rows, cols = np.nonzero(small[0, 0].numpy())
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (50, 70, 30, 49)
    amap = torch.ones(1, 1, 128, 128)
    out = restrict(AnomalyOutput(torch.zeros(1), amap, None), amap, small, margin=2)
    rows, cols = np.nonzero(out.anomaly_map[0, 0].numpy())
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (48, 72, 28, 51)


def test_localisation_metrics() -> None:
    amap = np.zeros((20, 20))
    amap[5:8, 5:8] = 1.0  # one blob, maximum at (5, 5)
    amap[15, 15] = 0.5
    assert map_boxes(amap, 0.4) == [[5.0, 5.0, 8.0, 8.0], [15.0, 15.0, 16.0, 16.0]]
    assert pointing_game([amap, amap], [[[4, 4, 9, 9]], [[10, 10, 20, 20]]]) == 0.5
    assert np.isnan(pointing_game([amap], [[]]))
    region = np.zeros((20, 20), bool)
    region[:10, :10] = True
    assert share_inside([amap], [region], 0.4) == pytest.approx(9 / 10)


@pytest.fixture(scope="module")
def lung_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """default-cxr's weights made lung-restricted by ``training calibrate --anatomy lungs``."""
    folder = tmp_path_factory.mktemp("ckpt") / "lung-cxr"
    card = recalibrate("default-cxr", folder, KERMANY, anatomy="lungs", version="0.5.0-lungs")
    assert card.anatomy == "lungs"
    assert "lung" in card.preprocessing
    assert card.training["recalibrated"]["anatomy"] == "lungs"
    assert len(card.calibration.healthy_scores) == 6  # the mini set's healthy val images
    return folder


def test_node_maps_stay_inside_the_lungs_and_a_non_chest_image_is_not_analysed(
    lung_checkpoint: Path, tmp_path: Path
) -> None:
    study = tmp_path / "in"
    shutil.copytree(DATA / "dicom" / "kermany_pneumonia_mono2", study / "chest")
    # a blank exposure in the same study: the model's card accepts its header, the lung
    # field finder does not
    src = next((study / "chest").rglob("*.dcm"))
    ds = pydicom.dcmread(src)
    pixels = np.full((256, 256), 3, np.uint8)
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = pixels.tobytes()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(study / "chest" / "not_a_chest.dcm")
    [result] = pipeline.run(study, tmp_path / "out", checkpoints=(str(lung_checkpoint),))
    by_reason = {r.not_analysed_reason is None: r for r in result.images}
    assert by_reason[True].score is not None
    refused = by_reason[False]
    assert refused.score is None
    assert "lung field" in (refused.not_analysed_reason or "")
    # the map of the analysed image is zero outside the (widened) lung field
    image = read_image(src).pixels
    [field] = lung_fields([image])
    model = pipeline.get_model(str(lung_checkpoint))
    out = pipeline.predict_images(model, [image], regions=[field.mask])
    outside = ~widen(region_tensor([field.mask], model.card.image_size), 2)
    assert out.anomaly_map[outside].abs().max() == 0
    assert out.anomaly_map.max() > 0
    assert float(out.score[0]) == pytest.approx(by_reason[True].score, rel=1e-4)


def test_evaluate_reports_where_chest_maps_point(lung_checkpoint: Path, tmp_path: Path) -> None:
    plain = evaluate("default-cxr", KERMANY, "test", n_boot=10)
    lungs = evaluate(str(lung_checkpoint), KERMANY, "test", n_boot=10)
    for result in (plain, lungs):
        assert 0.0 <= result["in_lung_share"] <= 1.0
        assert result["two_lung_share"] >= 0.9
    assert lungs["n_not_analysed"] == 0
    # restricted to the (widened) lung field, more of the hot map lies in the lungs
    assert lungs["in_lung_share"] > plain["in_lung_share"]
