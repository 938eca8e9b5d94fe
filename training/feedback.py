r"""Re-calibrate a checkpoint on the studies readers judged on a node (``--from-feedback``).

    python -m training calibrate --checkpoint default-cxr --from-feedback http://127.0.0.1:8099 \
        --node-token-file var/secrets/node_api_token \
        --orthanc http://127.0.0.1:8042 --orthanc-user ainode \
        --orthanc-password-file var/secrets/orthanc_password \
        --out runs/default-cxr-site --version 0.5.0-site1

1. The node's ``GET /feedback?confirmed=normal`` (and ``=abnormal``) lists the studies whose
   latest judgement says the reader found them normal (Agree on a study not flagged, or
   "false alarm" on a flagged one) or abnormal (Agree on a flagged one, "missed finding" on
   one not flagged), for the card's model name (any version: the reader judged the study,
   not the model).
2. For each study the node's SR that was judged is read from the PACS by DICOMweb (WADO-RS),
   and the images it analysed (those with a score) are retrieved into a work folder (deleted
   afterwards unless ``--keep-images``): only images the model is for, as the node saw them.
3. A manifest (split ``val``: the normals label 0, the abnormals label 1) goes to
   `training.calibrate.recalibrate`: the same weights, the threshold fitted on the normals'
   scores, the score rule chosen again on the val AUROC among the rules the card's training
   compared (kept with fewer than ``--min-abnormals`` confirmed abnormal studies).
4. The new checkpoint folder gets ``feedback_studies.csv`` (StudyInstanceUID, SOP Instance
   UIDs, label, judgement, judgement time, model version judged; no reader names) and a
   card whose ``training.recalibrated`` says it came from reader feedback: the node, the
   PACS, the time span of the judgements, how many studies and images of each class.

The node keeps running its configured checkpoint: it switches only when an administrator
points ``DICOM_NODE_CHECKPOINTS`` (or a routing rule) at the new folder.
"""

from __future__ import annotations

import csv
import logging
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset

from ai_engine import checkpoints
from ai_engine.dicom_io.sr_writer import read_sr_scores
from ai_engine.types import ModelCard

logger = logging.getLogger(__name__)

STUDIES_FILE = "feedback_studies.csv"


class FeedbackCalibrationError(Exception):
    """The feedback cannot make a calibration (too few normals, node or PACS unreachable)."""


def _get_json(session: requests.Session, url: str, **params: str) -> Any:
    try:
        response = session.get(url, params=params, timeout=60)
    except requests.RequestException as exc:
        raise FeedbackCalibrationError(f"cannot reach the node at {url}: {exc}") from exc
    if response.status_code != 200:
        raise FeedbackCalibrationError(
            f"the node answered {response.status_code} for {url}: {response.text[:300]}"
        )
    return response.json()


def fetch_judgements(
    node_url: str, token: str | None, model: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The reader-confirmed normal and abnormal studies of ``model`` (latest judgements).

    Args:
        node_url: the node's HTTP API root.
        token: its bearer token (read token suffices).
        model: the model (card) name.

    Returns:
        (normals, abnormals), each a list of the node's judgement records.
    """
    session = requests.Session()
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    url = f"{node_url.rstrip('/')}/feedback"
    normals = _get_json(session, url, model=model, confirmed="normal")
    abnormals = _get_json(session, url, model=model, confirmed="abnormal")
    return list(normals), list(abnormals)


def _analysed_images(client: DICOMwebClient, record: dict[str, Any]) -> list[str]:
    """SOP Instance UIDs the judged SR scored."""
    study = record["study_instance_uid"]
    for series in client.search_for_series(study, search_filters={"Modality": "SR"}):
        series_uid = series["0020000E"]["Value"][0]
        for inst in client.search_for_instances(study, series_uid):
            if inst["00080018"]["Value"][0] != record["judged_sr_uid"]:
                continue
            sr = client.retrieve_instance(study, series_uid, record["judged_sr_uid"])
            images = read_sr_scores(sr)["images"]
            return sorted(uid for uid, v in images.items() if v.get("score") is not None)
    raise FeedbackCalibrationError(
        f"the PACS has no SR {record['judged_sr_uid']} of study {study} (the judged result)"
    )


def _series_of(client: DICOMwebClient, study: str) -> dict[str, str]:
    """SOP Instance UID -> Series Instance UID of every instance of a study."""
    return {
        inst["00080018"]["Value"][0]: inst["0020000E"]["Value"][0]
        for inst in client.search_for_instances(study)
    }


def download(
    client: DICOMwebClient, records: Iterable[dict[str, Any]], label: int, folder: Path
) -> list[dict[str, Any]]:
    """Retrieve the analysed images of each judged study into ``folder``.

    Returns:
        Manifest rows (``path`` relative to ``folder``, ``split`` val, ``label``) with the
        study, instance and judgement for `STUDIES_FILE`.
    """
    rows = []
    for record in records:
        study = record["study_instance_uid"]
        wanted = _analysed_images(client, record)
        series = _series_of(client, study)
        for sop in wanted:
            if sop not in series:
                raise FeedbackCalibrationError(f"image {sop} of study {study} is not in the PACS")
            ds: Dataset = client.retrieve_instance(study, series[sop], sop)
            target = folder / study / f"{sop}.dcm"
            target.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(target, enforce_file_format=True)
            rows.append(
                {
                    "path": str(target.relative_to(folder)),
                    "split": "val",
                    "label": label,
                    "study_instance_uid": study,
                    "sop_instance_uid": sop,
                    "judgement": record["judgement"],
                    "judged_at": record["created_at"],
                    "model_version_judged": record["model_version"],
                }
            )
    return rows


def recalibrate_from_feedback(
    checkpoint: str,
    out: Path,
    *,
    node_url: str,
    node_token: str | None,
    pacs_url: str,
    pacs_auth: tuple[str, str] | None = None,
    name: str | None = None,
    version: str | None = None,
    min_normals: int = 20,
    min_abnormals: int = 10,
    keep_images: Path | None = None,
    assignments: list[str] | None = None,
) -> ModelCard:
    """Write a new checkpoint calibrated on the studies readers judged (module docstring).

    Args:
        checkpoint: shipped name or folder (its card's name selects the judgements).
        out: the new checkpoint folder.
        node_url: the node's HTTP API.
        node_token: its bearer token.
        pacs_url: the PACS's HTTP root (Orthanc: ``http://host:8042``; DICOMweb under
            ``/dicom-web``), or a DICOMweb root ending in ``/dicom-web``.
        pacs_auth: HTTP basic credentials of the PACS.
        name: the new checkpoint's name (default: the old one).
        version: the new version (default: the old one + ``-feedback``).
        min_normals: refuse with fewer reader-confirmed normal studies.
        min_abnormals: choose the score rule again only with at least this many
            reader-confirmed abnormal studies (else the card's rule is kept and the
            abnormals are not used).
        keep_images: keep the retrieved images (and the manifest) here (default: a
            temporary folder, deleted).
        assignments: ``scoring.X=...`` / ``calibration.X=...`` overrides.

    Returns:
        The written card.

    Raises:
        FeedbackCalibrationError: too few normals, or the node or the PACS fails.
    """
    from training.calibrate import recalibrate

    card = checkpoints.read_card(checkpoint)
    normals, abnormals = fetch_judgements(node_url, node_token, card.name)
    if len(normals) < min_normals:
        raise FeedbackCalibrationError(
            f"the node has {len(normals)} reader-confirmed normal studies of {card.name}; "
            f"at least {min_normals} are needed (--min-normals)"
        )
    if len(abnormals) < min_abnormals:
        logger.info(
            "%d reader-confirmed abnormal studies (< %d): the score rule is kept",
            len(abnormals),
            min_abnormals,
        )
        abnormals = []
    session = requests.Session()
    if pacs_auth is not None:
        session.auth = pacs_auth
    root = pacs_url.rstrip("/")
    web = root if root.endswith("/dicom-web") else f"{root}/dicom-web"
    client = DICOMwebClient(url=web, session=session)
    work = keep_images or Path(tempfile.mkdtemp(prefix="calibrate-feedback-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        try:
            rows = download(client, normals, 0, work) + download(client, abnormals, 1, work)
        except requests.RequestException as exc:
            raise FeedbackCalibrationError(f"cannot retrieve from the PACS {web}: {exc}") from exc
        manifest = work / "manifest.csv"
        _write_csv(manifest, rows, ["path", "split", "label"])
        times = sorted(str(r["created_at"]) for r in [*normals, *abnormals])
        source = {
            "source": "reader feedback",
            "node": node_url,
            "pacs": web,
            "judgements_from": times[0],
            "judgements_until": times[-1],
            "n_normal_studies": len(normals),
            "n_abnormal_studies": len(abnormals),
            "model_versions_judged": sorted({r["model_version"] for r in [*normals, *abnormals]}),
            "studies_file": STUDIES_FILE,
            "manifest": f"{STUDIES_FILE} (images retrieved from the PACS, then deleted)"
            if keep_images is None
            else str(manifest),
        }
        compared = list(card.metrics.get("val_auroc_by_score_rule", {})) or None
        written = recalibrate(
            checkpoint,
            out,
            manifest,
            assignments,
            name,
            version or f"{card.version}-feedback",
            score_rules=compared if abnormals else None,  # else the card's rule stays
            provenance=source,
        )
        # the card names the manifest of a temporary folder: the study list is what stays
        _write_csv(
            out / STUDIES_FILE,
            rows,
            [
                "study_instance_uid",
                "sop_instance_uid",
                "label",
                "judgement",
                "judged_at",
                "model_version_judged",
            ],
        )
    finally:
        if keep_images is None:
            shutil.rmtree(work, ignore_errors=True)
    logger.info(
        "calibrated on %d normal and %d abnormal judged studies", len(normals), len(abnormals)
    )
    return written


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
