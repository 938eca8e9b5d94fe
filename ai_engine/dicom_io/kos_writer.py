"""Key Object Selection of a flagged study's flagged images, for PACS worklists (highdicom).

A PACS or a worklist that knows nothing of SEG or TID 1500 can still find the studies the
node flagged: a QIDO-RS search for ``Modality=KO`` with ``Manufacturer`` =
`markers.OUTPUT_MANUFACTURER` lists them, and each KOS references exactly the images that
scored at or above their model's threshold, plus the node's SR with the scores (so a consumer
goes from the flag to the numbers).

One KOS per flagged study and model, none for a study without a flagged image. Content:

- document title (113000, DCM, "Of Interest") (CID 7010);
- observer context: the device (the model: name = model name, manufacturer =
  `markers.OUTPUT_MANUFACTURER`, model name = model id, serial number = first 16 hex digits
  of the weights' sha256);
- key object description: "Flagged by an unsupervised anomaly model (<name> <version>);
  research use only, not for clinical use";
- references: every flagged image and the SR; the evidence lists the same objects.

Series: SeriesDescription "RESEARCH USE ONLY: AI anomaly flagged (not for clinical use)",
series number 9006, Manufacturer, ManufacturerModelName = model name, SoftwareVersions = model
version.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from ai_engine.dicom_io import _iod_lookup, markers
from ai_engine.dicom_io._common import new_uid, series_description
from ai_engine.types import AlgorithmInfo

__all__ = ["KOS_SERIES_NUMBER", "write_flagged_kos"]

_iod_lookup.install()  # highdicom's IOD table scans, cached (see the module)
logger = logging.getLogger(__name__)

KOS_SERIES_NUMBER = 9006
_OF_INTEREST = hd.sr.CodedConcept("113000", "DCM", "Of Interest")


def write_flagged_kos(
    flagged: Sequence[Dataset],
    sr: Dataset,
    algorithm: AlgorithmInfo,
    *,
    series_instance_uid: str | None = None,
    instance_number: int = 1,
) -> hd.ko.KeyObjectSelectionDocument:
    """The KOS of one study's flagged images (see the module docstring).

    Args:
        flagged: headers of the flagged source images (as prepared for the writers), one study.
        sr: the node's SR of the same study and model.
        algorithm: the model that flagged them.
        series_instance_uid: the KOS series (default: a new one).
        instance_number: InstanceNumber of the KOS.

    Returns:
        The KOS (not yet saved).

    Raises:
        ValueError: no flagged image, or objects of different studies.
    """
    if not flagged:
        raise ValueError("a KOS of flagged images needs at least one flagged image")
    studies = {str(ds.StudyInstanceUID) for ds in [*flagged, sr]}
    if len(studies) != 1:
        raise ValueError("the flagged images and the SR must belong to one study")
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=new_uid(),
        name=algorithm.name[:64],
        manufacturer_name=markers.OUTPUT_MANUFACTURER,
        model_name=algorithm.model_id[:64],
        serial_number=algorithm.weights_sha256[:16] or None,
    )
    content = hd.ko.KeyObjectSelection(
        document_title=_OF_INTEREST,
        referenced_objects=[*flagged, sr],
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        ),
        description=(
            f"Flagged by an unsupervised anomaly model ({algorithm.name} {algorithm.version}); "
            f"{markers.RESEARCH_USE_NOTICE}"
        )[:1024],
    )
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=[*flagged, sr],
        content=content,
        series_instance_uid=series_instance_uid or new_uid(),
        series_number=KOS_SERIES_NUMBER,
        sop_instance_uid=new_uid(),
        instance_number=instance_number,
        manufacturer=markers.OUTPUT_MANUFACTURER,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    kos.SeriesDescription = series_description("flagged")
    kos.ManufacturerModelName = algorithm.name
    kos.SoftwareVersions = algorithm.version
    logger.debug("built KOS %s with %d flagged images", kos.SOPInstanceUID, len(flagged))
    return kos
