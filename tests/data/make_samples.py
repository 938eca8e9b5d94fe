"""Make the committed sample studies under tests/data/ from the public sets in ../shared/data/.

Re-runnable: UIDs are derived from fixed names (``pydicom.uid.generate_uid(entropy_srcs=...)``),
so running it again writes the same files. Run from the repository root:

    .venv/bin/python tests/data/make_samples.py [--shared-data ../shared/data]

Writes
- ``tests/data/dicom/<study>/*.dcm``: one study per source image (DX, 8-bit), plus the four
  original DICOMs of ``dicom_samples/`` copied byte for byte (the two RG1 files are one study),
  plus one MR FLAIR series made from one LGG test patient's PNG slices (`MR_SAMPLES`);
- ``tests/data/png/*.png``: the source PNGs of the Kermany images (for the parity test);
- ``tests/data/samples.json``: what each study is (source, label, variant) for tests and demo.

Identifiers: a synthetic PatientID (``SAMPLE-…``), the manifest's age and sex where it has
them, new UIDs; nothing else from the source.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from ai_engine.anatomy.brain import assumed_spacing
from ai_engine.dicom_io.convert import png_to_dicom, pngs_to_mr_series, save

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
UID_PREFIX_SEED = "ai-anomaly-node/tests/data/v1"


@dataclass(frozen=True)
class PngSample:
    study: str  # folder name under tests/data/dicom/
    dataset: str  # folder under ../shared/data/
    path: str  # path in that dataset's manifest
    photometric: str = "MONOCHROME2"
    transfer_syntax: str = ExplicitVRLittleEndian
    keep_png: bool = False


PNG_SAMPLES = (
    PngSample(
        "kermany_normal_mono2",
        "cxr_kermany_pediatric",
        "test/normal/IM-0122-0001.png",
        keep_png=True,
    ),
    PngSample(
        "kermany_normal_mono1",
        "cxr_kermany_pediatric",
        "test/normal/IM-0140-0001.png",
        photometric="MONOCHROME1",
    ),
    PngSample(
        "kermany_pneumonia_mono2",
        "cxr_kermany_pediatric",
        "test/abnormal/person1006_bacteria_2937.png",
        keep_png=True,
    ),
    PngSample(
        "kermany_pneumonia_jpeg",
        "cxr_kermany_pediatric",
        "test/abnormal/person1010_virus_1695.png",
        transfer_syntax=JPEGBaseline8Bit,
        keep_png=True,
    ),
    PngSample("nih_pneumonia_1", "cxr_nih14_pneumonia", "test/abnormal/00000218_001.png"),
    PngSample("nih_pneumonia_2", "cxr_nih14_pneumonia", "test/abnormal/00000583_045.png"),
)


@dataclass(frozen=True)
class MrSample:
    study: str  # folder name under tests/data/dicom/
    dataset: str  # folder under ../shared/data/ (PNG slices with a manifest `slice` column)
    patient_id: str  # the source patient (test split), all of whose slices are used


#: One LGG test-split patient with a tumour: 20 contiguous slices (1-20), tumour on 10-17.
MR_SAMPLES = (MrSample("lgg_flair_mr", "brain_lgg_flair", "TCGA_CS_6667"),)

LGG_LICENSE = (
    "CC BY-NC-SA 4.0 (TCGA-LGG via Buda et al. 2019, doi:10.1016/j.compbiomed.2019.05.002; "
    "TCIA data usage policy)"
)

#: The originals, copied byte for byte: study folder -> files of dicom_samples/dicom/.
ORIGINALS = {
    "original_rg1_cr": ("RG1_UNCR.dcm", "RG1_J2KI.dcm"),
    "original_nih_sc_dx": ("nih_cxr14_nofinding_sc_dx.dcm",),
    "original_siim_cr_jpeg": ("siim_acr_ptx_negative_cr_jpeg.dcm",),
}

ORIGINAL_NOTES = {
    "original_rg1_cr": (
        "unknown (no label; visually rounded lung opacities, not a radiologist read)",
        "CR MONOCHROME1 15-bit: uncompressed and JPEG 2000 (lossy) copies of one image",
    ),
    "original_nih_sc_dx": ("normal (NIH No Finding)", "SC (DX) MONOCHROME2 8-bit, implicit VR"),
    "original_siim_cr_jpeg": (
        "normal (no pneumothorax, SIIM-ACR)",
        "SC (CR) MONOCHROME2, JPEG baseline",
    ),
}


@dataclass(frozen=True)
class StudyEntry:
    study: str
    files: list[str]
    source: str
    label: str  # "normal", "abnormal" or "unknown", from the source's label
    finding: str
    variant: str
    study_instance_uid: str
    license: str


def _uid(*parts: str) -> str:
    return str(generate_uid(entropy_srcs=[UID_PREFIX_SEED, *parts]))


def _manifest(shared: Path, dataset: str) -> dict[str, dict[str, str]]:
    with (shared / dataset / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        return {row["path"]: row for row in csv.DictReader(fh)}


def _age(value: str) -> str | None:
    return f"{int(value):03d}Y" if value.strip() else None


def make_png_study(sample: PngSample, shared: Path, out_dir: Path) -> StudyEntry:
    row = _manifest(shared, sample.dataset)[sample.path]
    png = shared / sample.dataset / sample.path
    label = "abnormal" if row["label"] == "1" else "normal"
    kermany = sample.dataset.startswith("cxr_kermany")
    tsyntax_name = "JPEG baseline" if sample.transfer_syntax == JPEGBaseline8Bit else "uncompressed"
    description = f"Sample {'Kermany pediatric' if kermany else 'NIH ChestX-ray14'} {label}"
    ds = png_to_dicom(
        png,
        modality="DX",
        patient_id=f"SAMPLE-{sample.study.upper().replace('_', '-')}"[:64],
        patient_age=_age(row.get("age", "")),
        patient_sex=row.get("sex") or None,
        photometric=sample.photometric,
        transfer_syntax=sample.transfer_syntax,
        view_position=row["view"] if row.get("view") in ("AP", "PA") else "AP",
        study_instance_uid=_uid(sample.study, "study"),
        series_instance_uid=_uid(sample.study, "series"),
        study_description=description,
    )
    sop_uid = _uid(sample.study, "instance", "1")
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    study_dir = out_dir / "dicom" / sample.study
    study_dir.mkdir(parents=True, exist_ok=True)
    name = f"{sample.study}.dcm"
    save(ds, study_dir / name)
    if sample.keep_png:
        (out_dir / "png").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, out_dir / "png" / f"{sample.study}.png")
    return StudyEntry(
        study=sample.study,
        files=[f"dicom/{sample.study}/{name}"],
        source=f"{sample.dataset}/{sample.path}",
        label=label,
        finding=row["finding"],
        variant=f"DX {sample.photometric} 8-bit {tsyntax_name}",
        study_instance_uid=str(ds.StudyInstanceUID),
        license=(
            "CC BY 4.0 (Kermany et al. 2018, doi:10.17632/rscbjbr9sj.2)"
            if kermany
            else "NIH ChestX-ray14: no restrictions, attribution to the NIH Clinical Center"
        ),
    )


def make_mr_study(sample: MrSample, shared: Path, out_dir: Path) -> StudyEntry:
    rows = sorted(
        (r for r in _manifest(shared, sample.dataset).values()
         if r["patient_id"] == sample.patient_id),
        key=lambda r: int(r["slice"]),
    )  # fmt: skip
    numbers = [int(r["slice"]) for r in rows]
    if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        raise SystemExit(f"{sample.patient_id}: slices {numbers} are not contiguous")
    spacing = assumed_spacing(len(rows))
    datasets = pngs_to_mr_series(
        [shared / sample.dataset / r["path"] for r in rows],
        spacing,
        patient_id=f"SAMPLE-{sample.study.upper().replace('_', '-')}"[:64],
        patient_age=_age(rows[0].get("age", "")),
        study_instance_uid=_uid(sample.study, "study"),
        series_instance_uid=_uid(sample.study, "series"),
        frame_of_reference_uid=_uid(sample.study, "frame-of-reference"),
        sop_instance_uids=[_uid(sample.study, "instance", r["slice"]) for r in rows],
        study_description="Sample LGG brain MR FLAIR",
    )
    study_dir = out_dir / "dicom" / sample.study
    study_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for ds, row in zip(datasets, rows, strict=True):
        name = f"slice{int(row['slice']):03d}.dcm"
        save(ds, study_dir / name)
        files.append(f"dicom/{sample.study}/{name}")
    tumour = [int(r["slice"]) for r in rows if r["label"] == "1"]
    return StudyEntry(
        study=sample.study,
        files=files,
        source=f"{sample.dataset}/ patient {sample.patient_id}, slices {numbers[0]}-{numbers[-1]}",
        label="abnormal" if tumour else "normal",
        finding=f"lower-grade glioma, annotated on slices {tumour[0]}-{tumour[-1]}"
        if tumour
        else "no annotated abnormality",
        variant=(
            f"MR FLAIR series, {len(rows)} slices, 16-bit (8 stored), uncompressed; assumed "
            f"spacing {spacing[0]:.2f} x {spacing[1]:.4f} x {spacing[2]:.4f} mm"
        ),
        study_instance_uid=str(datasets[0].StudyInstanceUID),
        license=LGG_LICENSE,
    )


def copy_originals(shared: Path, out_dir: Path) -> list[StudyEntry]:
    import pydicom

    src_dir = shared / "dicom_samples" / "dicom"
    entries = []
    for study, names in ORIGINALS.items():
        study_dir = out_dir / "dicom" / study
        study_dir.mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copyfile(src_dir / name, study_dir / name)
        first = pydicom.dcmread(study_dir / names[0], stop_before_pixels=True)
        label, variant = ORIGINAL_NOTES[study]
        entries.append(
            StudyEntry(
                study=study,
                files=[f"dicom/{study}/{n}" for n in names],
                source=", ".join(f"dicom_samples/dicom/{n}" for n in names),
                label=label.split(" ")[0],
                finding=label,
                variant=variant,
                study_instance_uid=str(first.StudyInstanceUID),
                license="see tests/data/README.md (MIT / Apache-2.0 packages; NIH images)",
            )
        )
    return entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared-data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    shutil.rmtree(args.out / "dicom", ignore_errors=True)
    shutil.rmtree(args.out / "png", ignore_errors=True)
    entries = [make_png_study(s, args.shared_data, args.out) for s in PNG_SAMPLES]
    entries += copy_originals(args.shared_data, args.out)
    entries += [make_mr_study(s, args.shared_data, args.out) for s in MR_SAMPLES]
    (args.out / "samples.json").write_text(
        json.dumps([asdict(e) for e in entries], indent=2) + "\n", encoding="utf-8"
    )
    total = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"{len(entries)} studies written; tests/data is {total / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
