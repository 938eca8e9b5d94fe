import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom

DATA = Path(__file__).resolve().parents[2] / "data" / "dicom"


def test_manifest_from_a_dicom_folder_takes_demographics_from_headers_and_labels_from_csv(tmp_path):
    src = tmp_path / "hospital"
    for study in ("nih_pneumonia_1", "kermany_normal_mono2"):
        shutil.copytree(DATA / study, src / study)
    (src / "README.txt").write_text("not DICOM: skipped")
    nih = next((src / "nih_pneumonia_1").glob("*.dcm"))
    labels = tmp_path / "labels.csv"
    labels.write_text(f"path,label,split\n{nih.relative_to(src).as_posix()},1,test\n")
    out = tmp_path / "out" / "manifest.csv"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "manifest",
            "--dicom-dir",
            str(src),
            "--out",
            str(out),
            "--labels",
            str(labels),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["rows"] == 2
    rows = {Path(r["path"]).name: r for r in csv.DictReader(out.open())}
    row = rows[nih.name]
    ds = pydicom.dcmread(nih)
    assert (out.parent / row["path"]).resolve() == nih.resolve()  # relative to the manifest
    assert (row["label"], row["split"]) == ("1", "test")
    assert row["sex"] == ds.PatientSex
    assert row["age"] == str(int(ds.PatientAge.rstrip("Y")))
    assert row["patient_id"]
    assert row["patient_id"] != ds.PatientID  # pseudonymised
    other = next(r for name, r in rows.items() if name != nih.name)
    assert (other["label"], other["split"]) == ("", "")  # unlabelled rows go in no split
