"""Make valid DICOM files from 8-bit greyscale PNGs (for tests, demos and benchmarks).

Radiographs: `png_to_dicom`, one PNG to one DX or CR instance (below). MR series:
`pngs_to_mr_series`, a stack of axial slices to one MR Image Storage series with its
geometry (see there).

`png_to_dicom` builds a *Digital X-Ray Image Storage - For Presentation* instance (modality
"DX") or a *CR Image Storage* instance (modality "CR") that passes ``dciodvfy`` without errors.
The pixel values are the PNG's 8-bit values (BitsStored 8); for MONOCHROME1 the stored value is
``255 - value``, so a correct reader (e.g. `ai_engine.dicom_io.reader.read_image`) returns
exactly ``png / 255`` in both cases.

Identifiers: only the given ``patient_id`` (plus optional age and sex). PatientName, birth date,
study date/time, accession number and institution are written empty (Type 2) or left out.
All UIDs are new (`pydicom.uid.generate_uid`) unless given.

The PNG carries no physical pixel size. DX requires ImagerPixelSpacing (Type 1), so a DX gets
the *nominal* ``imager_pixel_spacing`` (default 0.2 mm, an unverified placeholder; the image is
marked DERIVED/SECONDARY and its DerivationDescription says it came from a PNG). A CR gets no
spacing at all unless one is given.

Transfer syntaxes (``transfer_syntax`` argument):

- Explicit VR Little Endian (default) and Implicit VR Little Endian: uncompressed.
- JPEG Baseline 8-bit (lossy, ``1.2.840.10008.1.2.4.50``): encoded with Pillow (quality 95);
  LossyImageCompression is set to "01" with ratio and method. Pixels differ from the PNG.
- JPEG-LS Lossless (``1.2.840.10008.1.2.4.80``): `Dataset.compress`, needs the ``pyjpegls``
  package (installed here, not a declared dependency of the project).
- JPEG 2000 Lossless (``1.2.840.10008.1.2.4.90``): `Dataset.compress` with pylibjpeg-openjpeg.
- RLE Lossless (``1.2.840.10008.1.2.5``): pydicom's own encoder.

Any other transfer syntax raises ValueError, as does a lossless one whose encoder is missing.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels.encoders.base import get_encoder
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
)

from ai_engine.dicom_io._common import new_uid, save
from ai_engine.errors import UnsupportedInputError

__all__ = [
    "SUPPORTED_TRANSFER_SYNTAXES",
    "png_to_dicom",
    "pngs_to_mr_series",
    "save",
]

logger = logging.getLogger(__name__)

#: Transfer syntaxes `png_to_dicom` can write (lossless ones only if their encoder is installed).
SUPPORTED_TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    JPEG2000Lossless,
    RLELossless,
)

#: BodyPartExamined -> AnatomicRegionSequence code (SNOMED CT, CID 4031).
_BODY_PARTS: dict[str, tuple[str, str]] = {
    "CHEST": ("51185008", "Chest"),
    "ABDOMEN": ("818981001", "Abdomen"),
    "SKULL": ("89546000", "Skull"),
    "HEAD": ("69536005", "Head"),
    "PELVIS": ("816092008", "Pelvis"),
}

#: ViewPosition -> ViewCodeSequence code (SNOMED CT, CID 4010).
_VIEWS: dict[str, tuple[str, str]] = {
    "AP": ("399348003", "antero-posterior"),
    "PA": ("399300004", "postero-anterior"),
    "LL": ("399352003", "left lateral"),
    "RL": ("399032008", "right lateral"),
    "LAT": ("399352003", "left lateral"),  # not a ViewPosition DICOM term; mapped to LL
}

_JPEG_QUALITY = 95


def _code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _load_png_8bit(png_path: Path) -> npt.NDArray[np.uint8]:
    try:
        with Image.open(png_path) as im:
            mode = im.mode
            if mode not in ("L", "P"):
                raise UnsupportedInputError(
                    f"{png_path}: PNG mode {mode!r} is not 8-bit greyscale ('L'); convert it first"
                )
            if mode == "P":
                rgb = np.asarray(im.convert("RGB"))
                if not (
                    np.array_equal(rgb[..., 0], rgb[..., 1])
                    and np.array_equal(rgb[..., 1], rgb[..., 2])
                ):
                    raise UnsupportedInputError(f"{png_path}: palette PNG with colours")
                return np.ascontiguousarray(rgb[..., 0], dtype=np.uint8)
            return np.ascontiguousarray(np.asarray(im), dtype=np.uint8)
    except OSError as exc:
        raise UnsupportedInputError(f"{png_path}: not a readable PNG ({exc})") from exc


def _converted_dataset(
    sop_class: str,
    sop_instance_uid: str,
    *,
    patient_id: str,
    patient_sex: str | None,
    patient_age: str | None,
    study_instance_uid: str,
    study_description: str,
) -> Dataset:
    """File meta, SOP Common, Patient and General Study of a PNG-made image.

    Only the given identifiers; the callers add the series, image and pixel modules.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    # SOP Common
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance_uid
    # Patient (only the given identifiers)
    ds.PatientName = ""
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = patient_sex or ""
    if patient_age is not None:
        ds.PatientAge = patient_age
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "Converted from a public research PNG; no source identifiers"
    # General Study
    ds.StudyInstanceUID = study_instance_uid
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    ds.StudyDescription = study_description
    return ds


def png_to_dicom(
    png_path: Path,
    *,
    modality: str = "DX",
    patient_id: str,
    patient_age: str | None = None,
    patient_sex: str | None = None,
    photometric: str = "MONOCHROME2",
    transfer_syntax: str = ExplicitVRLittleEndian,
    view_position: str = "AP",
    body_part: str = "CHEST",
    study_instance_uid: str | None = None,
    study_description: str = "Radiograph converted from PNG",
    series_number: int = 1,
    instance_number: int = 1,
    series_instance_uid: str | None = None,
    patient_orientation: Sequence[str] = ("L", "F"),
    imager_pixel_spacing: tuple[float, float] | None = None,
) -> Dataset:
    """Make a DX (For Presentation) or CR instance from an 8-bit greyscale PNG.

    Args:
        png_path: 8-bit greyscale PNG (mode "L", or a grey palette).
        modality: "DX" (Digital X-Ray Image Storage - For Presentation) or "CR"
            (CR Image Storage).
        patient_id: PatientID, the only identifier written.
        patient_age: PatientAge as nnnD/W/M/Y, e.g. "006Y".
        patient_sex: "M", "F" or "O".
        photometric: "MONOCHROME2" (stored = PNG value) or "MONOCHROME1" (stored = 255 - value).
        transfer_syntax: one of `SUPPORTED_TRANSFER_SYNTAXES` (see the module docstring).
        view_position: ViewPosition, e.g. "AP", "PA", "LL", "RL".
        body_part: BodyPartExamined, e.g. "CHEST" (a known SNOMED CT region is required).
        study_instance_uid: put the image into this study; new if None.
        study_description: StudyDescription.
        series_number: SeriesNumber.
        instance_number: InstanceNumber.
        series_instance_uid: put the image into this series; new if None.
        patient_orientation: PatientOrientation (row, column direction); ("L", "F") is the
            conventional display of a frontal chest radiograph.
        imager_pixel_spacing: (row, column) spacing in mm at the detector. DX requires it;
            when None a DX gets a nominal 0.2 mm (unverified; the PNG has no size) and a CR
            gets none.

    Returns:
        The dataset, with ``file_meta`` (write it with `save`).

    Raises:
        UnsupportedInputError: the PNG is not 8-bit greyscale or cannot be read.
        ValueError: an argument is not a valid DICOM value, or the transfer syntax is not
            supported (or its encoder is not installed).
    """
    modality = modality.upper()
    if modality not in ("DX", "CR"):
        raise ValueError(f"modality must be 'DX' or 'CR', not {modality!r}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, not {photometric!r}")
    tsyntax = UID(transfer_syntax)
    if tsyntax not in SUPPORTED_TRANSFER_SYNTAXES:
        raise ValueError(
            f"transfer syntax {tsyntax} ({tsyntax.name}) is not supported; use one of "
            + ", ".join(UID(t).name for t in SUPPORTED_TRANSFER_SYNTAXES)
        )
    if patient_sex is not None and patient_sex not in ("M", "F", "O"):
        raise ValueError(f"patient_sex must be 'M', 'F' or 'O', not {patient_sex!r}")
    if patient_age is not None and not (
        len(patient_age) == 4 and patient_age[:3].isdigit() and patient_age[3] in "DWMY"
    ):
        raise ValueError(f"patient_age must look like '006Y', not {patient_age!r}")
    body_part = body_part.upper()
    if body_part not in _BODY_PARTS:
        raise ValueError(f"body_part {body_part!r} unknown; known: {sorted(_BODY_PARTS)}")
    view_position = view_position.upper()
    if view_position not in _VIEWS:
        raise ValueError(f"view_position {view_position!r} unknown; known: {sorted(_VIEWS)}")
    if len(patient_orientation) != 2:
        raise ValueError("patient_orientation needs two values (row and column direction)")
    if not patient_id or len(patient_id) > 64:
        raise ValueError("patient_id must be 1 to 64 characters")

    values = _load_png_8bit(png_path)
    stored = values if photometric == "MONOCHROME2" else (255 - values).astype(np.uint8)
    rows, cols = stored.shape

    sop_class = (
        DigitalXRayImageStorageForPresentation
        if modality == "DX"
        else (ComputedRadiographyImageStorage)
    )
    ds = _converted_dataset(
        sop_class,
        new_uid(),
        patient_id=patient_id,
        patient_sex=patient_sex,
        patient_age=patient_age,
        study_instance_uid=study_instance_uid or new_uid(),
        study_description=study_description,
    )
    # General Series (+ DX Series / CR Series)
    ds.Modality = modality
    ds.SeriesInstanceUID = series_instance_uid or new_uid()
    ds.SeriesNumber = series_number
    ds.BodyPartExamined = body_part
    ds.ViewPosition = view_position
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    # General Equipment
    ds.Manufacturer = ""
    # General Image
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = list(patient_orientation)
    ds.ContentDate = ""
    ds.ContentTime = ""
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = "Converted from an 8-bit greyscale PNG"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    # Image Pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    # VOI LUT: the full 8-bit range; LINEAR maps stored value v to exactly v / 255.
    ds.WindowCenter = 128
    ds.WindowWidth = 256
    if modality == "DX":
        _add_dx_modules(ds, photometric, body_part, view_position, imager_pixel_spacing)
    else:
        ds.ImageLaterality = "U"
        if imager_pixel_spacing is not None:
            ds.ImagerPixelSpacing = [float(imager_pixel_spacing[0]), float(imager_pixel_spacing[1])]

    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OB"
    _encode(ds, stored, tsyntax)
    logger.debug("converted a PNG to %s %s (%s)", modality, ds.SOPInstanceUID, UID(tsyntax).name)
    return ds


def _add_dx_modules(
    ds: Dataset,
    photometric: str,
    body_part: str,
    view_position: str,
    imager_pixel_spacing: tuple[float, float] | None,
) -> None:
    """DX Anatomy Imaged, DX Image, DX Detector, DX Positioning, Acquisition Context."""
    # DX Anatomy Imaged
    ds.ImageLaterality = "U"
    region_code, region_meaning = _BODY_PARTS[body_part]
    ds.AnatomicRegionSequence = DicomSequence([_code_item(region_code, "SCT", region_meaning)])
    # DX Image
    ds.PixelIntensityRelationship = "LIN"
    # +1: lower values = less X-ray intensity (bright bone in MONOCHROME1 after inversion).
    ds.PixelIntensityRelationshipSign = 1 if photometric == "MONOCHROME1" else -1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
    # DX Detector
    ds.DetectorType = ""
    spacing = imager_pixel_spacing or (0.2, 0.2)
    ds.ImagerPixelSpacing = [float(spacing[0]), float(spacing[1])]
    # DX Positioning
    view_code, view_meaning = _VIEWS[view_position]
    ds.ViewCodeSequence = DicomSequence([_code_item(view_code, "SCT", view_meaning)])
    ds.PositionerType = ""
    # Acquisition Context (Type 2, empty)
    ds.AcquisitionContextSequence = DicomSequence([])


def _encode(ds: Dataset, stored: npt.NDArray[np.uint8], tsyntax: UID) -> None:
    """Set the transfer syntax, compressing the pixel data where needed."""
    if tsyntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = tsyntax
        return
    if tsyntax == JPEGBaseline8Bit:
        buf = io.BytesIO()
        Image.fromarray(stored).save(buf, format="JPEG", quality=_JPEG_QUALITY)
        frame = buf.getvalue()
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = round(stored.size / len(frame), 2)
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        return
    encoder = get_encoder(tsyntax)
    if not encoder.is_available:
        raise ValueError(
            f"no encoder installed for {tsyntax.name}: " + "; ".join(encoder.missing_dependencies)
        )
    ds.compress(tsyntax, stored)


def pngs_to_mr_series(
    png_paths: Sequence[Path],
    spacing: tuple[float, float, float],
    *,
    patient_id: str,
    patient_age: str | None = None,
    study_instance_uid: str,
    series_instance_uid: str,
    frame_of_reference_uid: str,
    sop_instance_uids: Sequence[str],
    study_description: str = "MR series converted from PNG slices",
    series_description: str = "AX FLAIR",
    body_part: str = "BRAIN",
    series_number: int = 1,
) -> list[Dataset]:
    """Make an axial MR series (MR Image Storage, one instance per slice) from 8-bit PNGs.

    Geometry, stated rather than measured (a PNG carries none): axial slices,
    ImageOrientationPatient [1, 0, 0, 0, 1, 0] (rows run to the patient's left, columns to
    posterior), ``png_paths[k]`` at ImagePositionPatient z = k x slice spacing (the given
    order runs feet to head), the in-plane centre of the slice at x = y = 0; PixelSpacing,
    SliceThickness and SpacingBetweenSlices from ``spacing``; one Frame of Reference. The
    images are marked DERIVED/SECONDARY and their DerivationDescription says so.

    Pixels: BitsAllocated 16 (the MR Image module requires it), BitsStored 8, stored value =
    the PNG value, so a reader returns ``png / 255`` with the window written (center 128,
    width 256). MR acquisition attributes that the PNG does not carry are written empty (Type
    2: RepetitionTime, EchoTime, EchoTrainLength, InversionTime, ScanOptions,
    MRAcquisitionType); ScanningSequence is "IR" (FLAIR is an inversion recovery sequence)
    and SequenceVariant "NONE".

    Args:
        png_paths: the slices' 8-bit greyscale PNGs, in order along the slice normal; all of
            one size.
        spacing: (slice, row, column) spacing in mm, e.g. `anatomy.brain.assumed_spacing`.
        patient_id: PatientID, the only identifier written.
        patient_age: PatientAge as nnnY.
        study_instance_uid: StudyInstanceUID.
        series_instance_uid: SeriesInstanceUID.
        frame_of_reference_uid: FrameOfReferenceUID.
        sop_instance_uids: one SOPInstanceUID per slice (deterministic samples).
        study_description: StudyDescription.
        series_description: SeriesDescription.
        body_part: BodyPartExamined.
        series_number: SeriesNumber.

    Returns:
        One dataset per slice, with ``file_meta``, in the order of ``png_paths``.

    Raises:
        UnsupportedInputError: a PNG is not 8-bit greyscale or cannot be read.
        ValueError: no slice, slices of different sizes, a spacing that is not positive, or
            not one SOPInstanceUID per slice.
    """
    if not png_paths:
        raise ValueError("an MR series needs at least one slice")
    if len(sop_instance_uids) != len(png_paths):
        raise ValueError("one SOPInstanceUID per slice is needed")
    if not all(v > 0 for v in spacing):
        raise ValueError(f"spacing must be positive, not {spacing}")
    slice_mm, row_mm, col_mm = (float(v) for v in spacing)
    slices = [_load_png_8bit(Path(p)) for p in png_paths]
    rows, cols = slices[0].shape
    if any(s.shape != (rows, cols) for s in slices):
        raise ValueError("the PNG slices differ in size")
    datasets = []
    for k, (values, sop_uid) in enumerate(zip(slices, sop_instance_uids, strict=True)):
        ds = _converted_dataset(
            MRImageStorage,
            sop_uid,
            patient_id=patient_id,
            patient_sex=None,
            patient_age=patient_age,
            study_instance_uid=study_instance_uid,
            study_description=study_description,
        )
        # General Series
        ds.Modality = "MR"
        ds.SeriesInstanceUID = series_instance_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = series_description
        ds.BodyPartExamined = body_part
        ds.PatientPosition = "HFS"
        # Frame of Reference, General Equipment
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.Manufacturer = ""
        # General Image
        ds.InstanceNumber = k + 1
        ds.ContentDate = ""
        ds.ContentTime = ""
        ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
        ds.DerivationDescription = (
            "Converted from an 8-bit greyscale PNG slice; geometry assumed, not measured"
        )
        ds.BurnedInAnnotation = "NO"
        ds.LossyImageCompression = "00"
        # Image Plane
        ds.PixelSpacing = [row_mm, col_mm]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [
            round(-(cols - 1) / 2 * col_mm, 4),
            round(-(rows - 1) / 2 * row_mm, 4),
            round(k * slice_mm, 4),
        ]
        ds.SliceThickness = round(slice_mm, 4)
        ds.SpacingBetweenSlices = round(slice_mm, 4)
        ds.SliceLocation = round(k * slice_mm, 4)
        # MR Image
        ds.ScanningSequence = "IR"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = ""
        ds.RepetitionTime = ""
        ds.EchoTime = ""
        ds.EchoTrainLength = ""
        ds.InversionTime = ""
        # Image Pixel
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = cols
        ds.BitsAllocated = 16
        ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.WindowCenter = 128
        ds.WindowWidth = 256
        ds.PixelData = values.astype(np.uint16).tobytes()
        ds["PixelData"].VR = "OW"
        datasets.append(ds)
    logger.debug("converted %d PNG slices to MR series %s", len(datasets), series_instance_uid)
    return datasets
