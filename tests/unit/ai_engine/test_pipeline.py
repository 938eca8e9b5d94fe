"""The inference pipeline on real sample radiographs, with a tiny checkpoint trained here."""

import copy
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from ai_engine import pipeline
from ai_engine.dicom_io.markers import OUTPUT_MANUFACTURER
from ai_engine.dicom_io.sr_writer import read_sr_scores
from ai_engine.errors import UnsupportedInputError

DATA = Path(__file__).resolve().parents[2] / "data" / "dicom"


def copy_study(name: str, dst: Path) -> Path:
    for f in (DATA / name).glob("*.dcm"):
        shutil.copy(f, dst / f.name)
    return dst


@pytest.fixture
def study_dir(tmp_path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    return copy_study("kermany_pneumonia_mono2", d)


def test_writes_binary_seg_fractional_seg_and_sr_that_reference_the_source(
    tiny_checkpoint, study_dir, tmp_path
):
    out = tmp_path / "out"
    [result] = pipeline.run(study_dir, out, [str(tiny_checkpoint)])
    source = pydicom.dcmread(next(study_dir.glob("*.dcm")))
    assert result.study_instance_uid == source.StudyInstanceUID
    [image] = result.images
    assert image.score is not None
    assert image.is_abnormal == (image.score >= image.threshold)
    assert result.study_score == image.score
    written = [pydicom.dcmread(f) for f in result.files]
    kinds = sorted((ds.Modality, str(ds.get("SegmentationType", ""))) for ds in written)
    flagged = [("KO", "")] if image.is_abnormal else []  # a KOS only for a flagged study
    assert kinds == [*flagged, ("SEG", "BINARY"), ("SEG", "FRACTIONAL"), ("SR", "")]
    for ds in written:
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.Manufacturer == OUTPUT_MANUFACTURER
        assert ds.SeriesDescription.startswith("RESEARCH USE ONLY: ")
        assert source.SOPInstanceUID in str(ds)  # referenced somewhere in the object
    sr = next(ds for ds in written if ds.Modality == "SR")
    parsed = read_sr_scores(sr)
    assert parsed["study"]["score"] == pytest.approx(image.score, rel=1e-6)
    seg = next(ds for ds in written if ds.get("SegmentationType") == "FRACTIONAL")
    assert (seg.Rows, seg.Columns) == (source.Rows, source.Columns)
    # per-stage engine times, for the node's metrics and the throughput benchmark
    assert set(result.seconds) == {"read", "preprocess", "infer", "write"}
    assert all(v >= 0 for v in result.seconds.values())


def test_monochrome1_and_monochrome2_of_the_same_image_score_the_same(tiny_checkpoint, tmp_path):
    src = pydicom.dcmread(next((DATA / "kermany_normal_mono2").glob("*.dcm")))
    inverted = copy.deepcopy(src)
    inverted.PhotometricInterpretation = "MONOCHROME1"
    inverted.PixelData = (255 - src.pixel_array).astype(np.uint8).tobytes()
    inverted.SOPInstanceUID = pydicom.uid.generate_uid()
    d = tmp_path / "in"
    d.mkdir()
    src.save_as(d / "a.dcm")
    inverted.save_as(d / "b.dcm")
    [result] = pipeline.run(d, tmp_path / "out", [str(tiny_checkpoint)])
    a, b = (r.score for r in result.images)
    assert a == pytest.approx(b, rel=1e-6)


def test_images_the_model_is_not_for_are_not_analysed_with_a_reason(
    tiny_checkpoint, study_dir, tmp_path
):
    source = pydicom.dcmread(next(study_dir.glob("*.dcm")))
    lateral = copy.deepcopy(source)
    lateral.ViewPosition = "LL"
    lateral.SOPInstanceUID = pydicom.uid.generate_uid()
    lateral.save_as(study_dir / "lateral.dcm")
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ct.StudyInstanceUID = source.StudyInstanceUID
    ct.save_as(study_dir / "ct.dcm")
    (study_dir / "notes.txt").write_text("not DICOM")
    [result] = pipeline.run(study_dir, tmp_path / "out", [str(tiny_checkpoint)])
    by_uid = {r.sop_instance_uid: r for r in result.images}
    assert by_uid[source.SOPInstanceUID].score is not None
    assert by_uid[lateral.SOPInstanceUID].score is None
    assert "lateral" in by_uid[lateral.SOPInstanceUID].not_analysed_reason
    assert by_uid[ct.SOPInstanceUID].score is None
    assert "Modality CT" in by_uid[ct.SOPInstanceUID].not_analysed_reason
    parsed = read_sr_scores(pydicom.dcmread(next(f for f in result.files if "_sr_" in f)))
    assert len(parsed["images"]) == 3


def test_own_outputs_in_the_input_are_ignored(tiny_checkpoint, study_dir, tmp_path):
    [first] = pipeline.run(study_dir, tmp_path / "out1", [str(tiny_checkpoint)])
    for f in first.files:
        shutil.copy(f, study_dir)
    [second] = pipeline.run(study_dir, tmp_path / "out2", [str(tiny_checkpoint)])
    assert len(second.images) == 1
    assert second.study_score == pytest.approx(first.study_score)


def test_a_folder_without_images_raises_a_clear_error(tiny_checkpoint, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "x.dcm").write_bytes(b"garbage")
    with pytest.raises(UnsupportedInputError, match="no readable DICOM image"):
        pipeline.run(d, tmp_path / "out", [str(tiny_checkpoint)])


def test_mr_source_gets_a_parametric_map_instead_of_a_fractional_seg(tmp_path):
    """An MR slice (it has a frame of reference) analysed by an MR model gets a Parametric Map."""
    import dataclasses
    import json

    from ai_engine import checkpoints

    mr = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    d = tmp_path / "in"
    d.mkdir()
    mr.save_as(d / "mr.dcm")
    # the shipped CXR model refuses MR; a copy of it whose card accepts MR scores it
    ckpt = tmp_path / "mr-model"
    shutil.copytree(checkpoints.resolve("default-cxr"), ckpt)
    card = checkpoints.read_card(ckpt)
    card = dataclasses.replace(card, name="mr-test", modalities=("MR",), body_parts=(), views=())
    (ckpt / "card.json").write_text(json.dumps(checkpoints.card_to_dict(card)))
    [result] = pipeline.run(d, tmp_path / "out", [str(ckpt)])
    assert result.images[0].score is not None
    sop_classes = sorted(pydicom.dcmread(f).SOPClassUID.name for f in result.files)
    flagged = ["Key Object Selection Document Storage"] if result.is_abnormal else []
    assert sop_classes == sorted(
        ["Comprehensive SR Storage", "Parametric Map Storage", "Segmentation Storage", *flagged]
    )


def test_optional_overlay_secondary_capture_is_written_and_references_the_source(
    tiny_checkpoint, study_dir, tmp_path
):
    [result] = pipeline.run(study_dir, tmp_path / "out", [str(tiny_checkpoint)], overlay_sc=True)
    source = pydicom.dcmread(next(study_dir.glob("*.dcm")))
    [sc] = [pydicom.dcmread(f) for f in result.files if "_sc_" in f]
    assert sc.SOPClassUID.name == "Secondary Capture Image Storage"
    assert sc.PhotometricInterpretation == "RGB"
    assert sc.BurnedInAnnotation == "YES"
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID


def test_projection_mode_writes_overlays_for_radiographs_only(tiny_checkpoint, tmp_path):
    """The node's default (``projection``): a radiograph (no Frame of Reference, where stock
    viewers show no SEG) gets its burned-in overlay; a slice series with one does not."""
    import json

    mr_ckpt = tmp_path / "tiny-mr"
    shutil.copytree(tiny_checkpoint, mr_ckpt)
    card = json.loads((mr_ckpt / "card.json").read_text())
    card.update(modalities=["CR", "DX", "MR"], body_parts=[], views=[])
    (mr_ckpt / "card.json").write_text(json.dumps(card))
    d = tmp_path / "in"
    d.mkdir()
    copy_study("kermany_pneumonia_mono2", d)
    copy_study("lgg_flair_mr", d)
    mr_study = str(pydicom.dcmread(next((DATA / "lgg_flair_mr").glob("*.dcm"))).StudyInstanceUID)
    results = pipeline.run(d, tmp_path / "out", [str(mr_ckpt)], overlay_sc="projection")
    overlays = {
        r.study_instance_uid: [f for f in r.files if "_sc_" in f] for r in results if r.files
    }
    assert len(overlays) == 2
    assert overlays.pop(mr_study) == []  # 20 slices with a Frame of Reference: SEG and map
    [radiograph_overlays] = overlays.values()
    assert len(radiograph_overlays) == 1
    assert pydicom.dcmread(radiograph_overlays[0]).BurnedInAnnotation == "YES"
    with pytest.raises(ValueError, match="overlay_sc must be one of"):
        pipeline.run(d, tmp_path / "out2", [str(mr_ckpt)], overlay_sc="sometimes")


def test_a_flagged_study_gets_a_key_object_selection_of_its_flagged_images_and_sr(tmp_path):
    """PACS worklists find flagged studies by Modality KO; a study without a flag gets none."""
    from tests.unit.ai_engine.dicom_io.conftest import dciodvfy_report

    d = tmp_path / "in"
    d.mkdir()
    copy_study("kermany_pneumonia_mono2", d)  # flagged by default-cxr (README samples)
    copy_study("original_rg1_cr", d)  # not flagged
    results = {r.study_instance_uid: r for r in pipeline.run(d, tmp_path / "out")}
    by_flag = {r.is_abnormal: r for r in results.values()}
    assert set(by_flag) == {True, False}
    flagged_study = by_flag[True]
    written = [pydicom.dcmread(f) for f in flagged_study.files]
    [kos] = [ds for ds in written if ds.Modality == "KO"]
    [sr] = [ds for ds in written if ds.Modality == "SR"]
    assert kos.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.59"
    assert kos.Manufacturer == OUTPUT_MANUFACTURER
    assert kos.SeriesDescription.startswith("RESEARCH USE ONLY: ")
    assert kos.ConceptNameCodeSequence[0].CodeValue == "113000"  # Of Interest
    referenced = {
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for item in kos.ContentSequence
        if item.ValueType in ("IMAGE", "COMPOSITE")
    }
    flagged_images = {i.sop_instance_uid for i in flagged_study.images if i.is_abnormal}
    assert referenced == flagged_images | {sr.SOPInstanceUID}
    errors, output = dciodvfy_report(Path(next(f for f in flagged_study.files if "_kos_" in f)))
    assert not errors, output
    assert not any(pydicom.dcmread(f).Modality == "KO" for f in by_flag[False].files)


def test_an_image_whose_results_cannot_be_written_is_not_analysed_and_the_rest_is_kept(
    tiny_checkpoint, study_dir, tmp_path, monkeypatch
):
    """Strict writing refusing one source must not sink the study (issue 21)."""
    from ai_engine.dicom_io import seg_writer

    first = next(study_dir.glob("*.dcm"))
    second = pydicom.dcmread(first)
    second.SOPInstanceUID = second.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    second.save_as(study_dir / "second.dcm", enforce_file_format=True)
    bad_uid = str(second.SOPInstanceUID)
    real = seg_writer.write_binary_seg

    def refusing(source, *args, **kwargs):  # type: ignore[no-untyped-def]
        if str(source.SOPInstanceUID) == bad_uid:
            raise ValueError("a value the IOD does not allow")
        return real(source, *args, **kwargs)

    monkeypatch.setattr(seg_writer, "write_binary_seg", refusing)
    [result] = pipeline.run(study_dir, tmp_path / "out", [str(tiny_checkpoint)])
    by_uid = {i.sop_instance_uid: i for i in result.images}
    assert by_uid[bad_uid].score is None
    assert by_uid[bad_uid].not_analysed_reason == (
        "the result objects for this image could not be written (ValueError)"
    )
    good = next(i for uid, i in by_uid.items() if uid != bad_uid)
    assert good.score is not None
    written = [pydicom.dcmread(f) for f in result.files]
    assert not any(bad_uid in str(ds) for ds in written if ds.Modality == "SEG")
    assert sum(ds.Modality == "SEG" for ds in written) == 2  # the good image's two SEGs
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        Path(f).name for f in result.files
    )  # nothing half-written is left beside them
    sr = next(ds for ds in written if ds.Modality == "SR")
    reported = read_sr_scores(sr)["images"][bad_uid]
    assert reported["status"] == "Not analysed"
    assert "could not be written" in reported["reason"]


def _mr_model(tmp_path: Path) -> Path:
    """A copy of the shipped CXR model whose card accepts MR (the pipeline's paths, not a
    brain model: no HD-BET, so the test stays fast)."""
    import dataclasses
    import json

    from ai_engine import checkpoints

    ckpt = tmp_path / "mr-model"
    shutil.copytree(checkpoints.resolve("default-cxr"), ckpt)
    card = checkpoints.read_card(ckpt)
    card = dataclasses.replace(card, name="mr-test", modalities=("MR",), body_parts=(), views=())
    (ckpt / "card.json").write_text(json.dumps(checkpoints.card_to_dict(card)))
    return ckpt


def _mr_series(folder: Path, n: int = 5) -> list[pydicom.Dataset]:
    """An n-slice MR series from pydicom's MR_small: 4 mm apart along the slice normal,
    each slice's pixels rolled differently so every slice gets its own map; files written
    in reverse order."""
    template = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    iop = [float(v) for v in template.ImageOrientationPatient]
    normal = np.cross(iop[:3], iop[3:])
    origin = np.array([float(v) for v in template.ImagePositionPatient])
    series_uid = pydicom.uid.generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    slices = []
    for k in range(n):
        ds = copy.deepcopy(template)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.ImagePositionPatient = [float(v) for v in origin + 4.0 * k * normal]
        ds.InstanceNumber = k + 1
        ds.PixelData = np.roll(template.pixel_array, 13 * k, axis=k % 2).tobytes()
        ds.save_as(folder / f"s{n - k:02d}.dcm", enforce_file_format=True)
        slices.append(ds)
    return slices


def test_a_multi_slice_mr_series_gets_one_seg_and_one_map_mapped_to_its_slices(tmp_path):
    """Issue 19: one multi-frame binary SEG and one Parametric Map per volume series, each
    frame referencing its source slice and holding that slice's result (the same pixels as
    the single-image path writes for that slice on its own); the SR keeps per-slice scores."""
    import highdicom as hd

    from ai_engine.dicom_io.pmap_writer import frame_sources
    from tests.unit.ai_engine.dicom_io.conftest import dciodvfy_report

    ckpt = _mr_model(tmp_path)
    slices = _mr_series(tmp_path / "in")
    [result] = pipeline.run(tmp_path / "in", tmp_path / "out", [str(ckpt)])
    assert all(i.score is not None for i in result.images)
    assert len(result.images) == len(slices)
    written = {Path(f): pydicom.dcmread(f) for f in result.files}
    [seg_path] = [p for p, ds in written.items() if ds.Modality == "SEG"]
    [pm_path] = [p for p, ds in written.items() if ds.SOPClassUID.name == "Parametric Map Storage"]
    seg, pm = written[seg_path], written[pm_path]
    uids = {str(s.SOPInstanceUID) for s in slices}
    assert seg.SegmentationType == "BINARY"
    n_levels = len(seg.SegmentSequence)
    assert seg.NumberOfFrames == len(slices) * n_levels
    assert pm.NumberOfFrames == len(slices)
    # frames are mapped by reference (highdicom orders them in space, not by input order)
    assert set(frame_sources(pm)) == uids
    assert set(frame_sources(seg)) == uids
    for path in (seg_path, pm_path):
        errors, output = dciodvfy_report(path)
        assert not errors, output
    # per-slice scores in the SR, as before
    sr = next(ds for ds in written.values() if ds.Modality == "SR")
    assert set(read_sr_scores(sr)["images"]) == uids
    # the SR ties each SEG segment of the volume (TID 1411, same Tracking UID) and each slice
    # to the map its score came from (issue 24)
    report = hd.sr.ComprehensiveSR.from_dataset(sr).content
    for segment in seg.SegmentSequence:
        [group] = report.get_volumetric_roi_measurement_groups(tracking_uid=segment.TrackingUID)
        assert group.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert group.referenced_segment.referenced_segment_numbers == [segment.SegmentNumber]
    slice_groups = [g for g in report.get_image_measurement_groups() if g.source_images]
    assert len(slice_groups) == len(slices)
    for group in slice_groups:
        assert [i.referenced_sop_instance_uid for i in group.source_images][1:] == [
            pm.SOPInstanceUID
        ]
    errors, output = dciodvfy_report(next(p for p, ds in written.items() if ds.Modality == "SR"))
    assert not errors, output

    # each slice alone (a single-image unit) gives the reference pixels for that slice
    by_source_pm = dict(zip(frame_sources(pm), pm.pixel_array, strict=True))
    volume_seg = hd.seg.Segmentation.from_dataset(seg)
    for k, ds in enumerate(slices):
        alone = tmp_path / f"alone{k}"
        alone.mkdir()
        shutil.copy(next(p for p in (tmp_path / "in").iterdir()
                         if pydicom.dcmread(p).SOPInstanceUID == ds.SOPInstanceUID),
                    alone / "slice.dcm")  # fmt: skip
        [single] = pipeline.run(alone, tmp_path / f"out{k}", [str(ckpt)])
        assert single.images[0].score == pytest.approx(
            next(i.score for i in result.images if i.sop_instance_uid == ds.SOPInstanceUID)
        )
        one = [pydicom.dcmread(f) for f in single.files]
        [one_pm] = [d for d in one if d.SOPClassUID.name == "Parametric Map Storage"]
        [one_seg] = [d for d in one if d.Modality == "SEG"]
        # a batch of 5 and a batch of 1 differ by float rounding: 1 stored step (1e-4) at most
        frame = by_source_pm[str(ds.SOPInstanceUID)].astype(int)
        assert np.abs(frame - one_pm.pixel_array.astype(int)).max() <= 1
        others = [v for u, v in by_source_pm.items() if u != ds.SOPInstanceUID]
        assert all(np.abs(frame - v.astype(int)).mean() > 100 for v in others)  # slices differ
        numbers = list(range(1, n_levels + 1))
        in_volume = volume_seg.get_pixels_by_source_instance(
            [str(ds.SOPInstanceUID)], segment_numbers=numbers
        )
        alone_seg = hd.seg.Segmentation.from_dataset(one_seg).get_pixels_by_source_instance(
            [str(ds.SOPInstanceUID)], segment_numbers=numbers
        )
        assert in_volume.any()
        assert np.mean(in_volume != alone_seg) < 1e-3  # the same region up to that rounding


def test_a_series_whose_objects_cannot_be_written_is_not_analysed_as_a_whole(tmp_path, monkeypatch):
    """All objects of a series are saved or none: a refused volume SEG leaves no map behind."""
    from ai_engine.dicom_io import seg_volume_writer

    def refusing(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise ValueError("a value the IOD does not allow")

    monkeypatch.setattr(seg_volume_writer, "write_binary_seg_volume", refusing)
    slices = _mr_series(tmp_path / "in", n=3)
    [result] = pipeline.run(tmp_path / "in", tmp_path / "out", [str(_mr_model(tmp_path))])
    assert {i.not_analysed_reason for i in result.images} == {
        "the result objects for this series could not be written (ValueError)"
    }
    assert len(result.images) == len(slices)
    kinds = sorted(pydicom.dcmread(f).Modality for f in result.files)
    assert kinds == ["SR"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [Path(result.files[0]).name]


def test_an_ai_results_consumer_ties_score_finding_and_region_with_highdicom_alone(tmp_path):
    """Issue 24 (IHE AIR): from the SR alone, a consumer reads the standard Finding and the
    score of the image, the procedure, the algorithm as contributing equipment and the
    research-use notice, and follows the region to the SEG segment (same Tracking UID) and
    to its outline on the image (SCOORD); every object written is in the evidence."""
    import highdicom as hd

    from ai_engine.dicom_io.sr_writer import RESEARCH_NOTICE_TEXT
    from tests.unit.ai_engine.dicom_io.conftest import dciodvfy_report

    d = tmp_path / "in"
    d.mkdir()
    copy_study("kermany_pneumonia_mono2", d)  # flagged by default-cxr (README samples)
    [result] = pipeline.run(d, tmp_path / "out")
    [image] = result.images
    assert image.is_abnormal
    source = pydicom.dcmread(next(d.glob("*.dcm")))
    written = {Path(f): pydicom.dcmread(f) for f in result.files}
    [(sr_path, sr_ds)] = [(p, ds) for p, ds in written.items() if ds.Modality == "SR"]
    errors, output = dciodvfy_report(sr_path)
    assert not errors, output
    [binary] = [ds for ds in written.values() if ds.get("SegmentationType") == "BINARY"]

    report = hd.sr.ComprehensiveSR.from_dataset(sr_ds).content
    assert isinstance(report, hd.sr.MeasurementReport)  # highdicom reads it as TID 1500
    procedures = [
        item.ConceptCodeSequence[0].CodeValue
        for item in sr_ds.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == "121058"  # Procedure reported
    ]
    assert procedures == ["399208008"]  # Plain chest X-ray, not a generic "Imaging procedure"
    [image_group] = [
        g
        for g in report.get_image_measurement_groups()
        if [i.referenced_sop_instance_uid for i in g.source_images][:1] == [source.SOPInstanceUID]
    ]
    assert image_group.finding_type.value == "263654008"  # Abnormal, under Finding (121071)
    score_concept = hd.sr.CodedConcept("ANOMALY_SCORE", "99AINODE", "x")
    [score] = image_group.get_measurements(name=score_concept)
    assert score.value == pytest.approx(image.score, rel=1e-6)

    # the region: one planar group per SEG segment, sharing the segment's Tracking UID
    for segment in binary.SegmentSequence:
        [group] = report.get_planar_roi_measurement_groups(
            tracking_uid=segment.TrackingUID,
            reference_type=hd.sr.CodedConcept("121214", "DCM", "Referenced Segmentation Frame"),
        )
        ref = group.referenced_segmentation_frame
        assert ref.referenced_sop_instance_uid == binary.SOPInstanceUID
        assert ref.referenced_segment_numbers == [segment.SegmentNumber]
        assert group.finding_type.value == segment.SegmentedPropertyTypeCodeSequence[0].CodeValue
    # and its outline on the source image, in pixel coordinates inside the image
    level_1 = binary.SegmentSequence[0].TrackingUID
    outlines = report.get_planar_roi_measurement_groups(
        tracking_uid=level_1, graphic_type=hd.sr.GraphicTypeValues.POLYLINE
    )
    assert outlines
    mask = (
        hd.seg.Segmentation.from_dataset(binary)
        .get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1])[0, :, :, 0]
        .astype(bool)
    )
    rows, cols = np.nonzero(mask)
    points = np.concatenate([g.roi.value for g in outlines])
    images = [g.roi.ContentSequence[0].ReferencedSOPSequence[0] for g in outlines]
    assert {i.ReferencedSOPInstanceUID for i in images} == {source.SOPInstanceUID}
    # the outlines enclose the region (hulls of its components; at most MAX_OUTLINES)
    low, high = points.min(axis=0), points.max(axis=0)  # (column, row)
    np.testing.assert_array_less(low - 1e-6, [cols.min(), rows.min()])
    np.testing.assert_array_less([cols.max() + 1, rows.max() + 1], high + 1e-6)
    np.testing.assert_array_less(high, [source.Columns + 1e-6, source.Rows + 1e-6])

    # the algorithm as contributing equipment, the notice in the content tree
    [equipment] = [  # highdicom adds an item for itself
        e
        for e in sr_ds.ContributingEquipmentSequence
        if e.ManufacturerModelName == result.algorithm.name
    ]
    assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    assert result.algorithm.weights_sha256 in equipment.ContributionDescription
    texts = [str(item.TextValue) for item in _content_items(sr_ds) if item.ValueType == "TEXT"]
    assert RESEARCH_NOTICE_TEXT in texts
    # every result object of the study is evidence of the SR
    evidence = {
        instance.ReferencedSOPInstanceUID
        for study in sr_ds.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for instance in series.ReferencedSOPSequence
    }
    others = {str(ds.SOPInstanceUID) for ds in written.values() if ds.Modality in ("SEG", "OT")}
    assert others <= evidence
    assert source.SOPInstanceUID in evidence


def _content_items(ds: pydicom.Dataset):
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _content_items(item)


def test_a_later_part_of_a_study_gets_one_sr_covering_all_parts_that_replaces_the_first(
    tmp_path,
):
    """Issue 21: the images of a study that arrive after its analysis get a new SR version
    that covers the earlier images too (their groups carried over, the study score over
    all) and names the earlier SR as its predecessor; an image sent again is replaced."""
    import highdicom as hd

    from tests.unit.ai_engine.dicom_io.conftest import dciodvfy_report

    first, later = tmp_path / "part1", tmp_path / "part2"
    first.mkdir()
    later.mkdir()
    copy_study("kermany_pneumonia_mono2", first)
    copy_study("kermany_normal_mono2", later)
    [a_path] = first.glob("*.dcm")
    [b_path] = later.glob("*.dcm")
    a = pydicom.dcmread(a_path)
    b = pydicom.dcmread(b_path)
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "AccessionNumber"):
        setattr(b, keyword, a.get(keyword, ""))
    b.save_as(b_path)  # the same study, sent in two parts

    [r1] = pipeline.run(first, tmp_path / "out1")
    [sr1_path] = [f for f in r1.files if "_sr_" in f]
    sr1 = pydicom.dcmread(sr1_path)
    prior_dir = tmp_path / "prior"
    prior_dir.mkdir()
    shutil.copy(sr1_path, prior_dir / "earlier.dcm")

    [r2] = pipeline.run(later, tmp_path / "out2", prior_dir=prior_dir)
    [sr2_path] = [Path(f) for f in r2.files if "_sr_" in f]
    sr2 = pydicom.dcmread(sr2_path)
    errors, output = dciodvfy_report(sr2_path)
    assert not errors, output
    parsed = read_sr_scores(sr2)
    assert set(parsed["images"]) == {a.SOPInstanceUID, b.SOPInstanceUID}
    scores = {i.sop_instance_uid: i.score for i in (*r1.images, *r2.images)}
    assert parsed["images"][a.SOPInstanceUID]["score"] == pytest.approx(scores[a.SOPInstanceUID])
    assert parsed["study"]["score"] == pytest.approx(max(scores.values()))
    assert r2.study_score == pytest.approx(max(scores.values()))  # what the node indexes
    assert r2.is_abnormal == r1.is_abnormal or r2.is_abnormal
    [predecessor] = sr2.PredecessorDocumentsSequence
    assert predecessor.ReferencedSeriesSequence[0].ReferencedSOPSequence[
        0
    ].ReferencedSOPInstanceUID == (sr1.SOPInstanceUID)
    # the first part's region stays linked: its SEG groups and SEG are carried
    [seg1] = [pydicom.dcmread(f) for f in r1.files if "_seg_" in f]
    report = hd.sr.ComprehensiveSR.from_dataset(sr2).content
    for segment in seg1.SegmentSequence:
        assert report.get_planar_roi_measurement_groups(tracking_uid=segment.TrackingUID)
    evidence = {
        item.ReferencedSOPInstanceUID
        for study in sr2.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert {a.SOPInstanceUID, b.SOPInstanceUID, seg1.SOPInstanceUID} <= evidence

    # the first image sent again: its new result replaces the carried one (one group each)
    shutil.copy(sr2_path, prior_dir / "later.dcm")
    [r3] = pipeline.run(first, tmp_path / "out3", prior_dir=prior_dir)
    sr3 = pydicom.dcmread(next(f for f in r3.files if "_sr_" in f))
    assert set(read_sr_scores(sr3)["images"]) == {a.SOPInstanceUID, b.SOPInstanceUID}
    image_groups = [
        g for g in hd.sr.ComprehensiveSR.from_dataset(sr3).content.get_image_measurement_groups()
        if g.source_images
    ]  # fmt: skip
    assert sorted(g.source_images[0].referenced_sop_instance_uid for g in image_groups) == sorted(
        [a.SOPInstanceUID, b.SOPInstanceUID]
    )
    assert (
        sr3.PredecessorDocumentsSequence[0]
        .ReferencedSeriesSequence[0]
        .ReferencedSOPSequence[0]
        .ReferencedSOPInstanceUID
        == sr2.SOPInstanceUID
    )
