"""Copy a few real PNGs and their manifest rows from ../shared/data into tests/data/mini/.

The mini sets let the training and evaluation tests run from a clone without ../shared/data.
Re-run: .venv/bin/python tests/data/make_mini_sets.py  (deterministic: first N rows by path)
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1].parent / "shared" / "data"
PLAN = {
    # set: {(split, label): n}
    "cxr_kermany_pediatric": {
        ("train", 0): 16,
        ("val", 0): 6,
        ("val", 1): 6,
        ("test", 0): 6,
        ("test", 1): 6,
    },
    # the lung-field segmenter's held-out images (Montgomery test split) with their masks
    "cxr_lung_masks": {
        ("test", 0): 3,
        ("test", 1): 2,
    },
    "brain_lgg_flair": {
        ("train", 0): 8,
        ("val", 0): 4,
        ("val", 1): 4,
        ("test", 0): 4,
        ("test", 1): 4,
    },
}


def main() -> None:
    for name, plan in PLAN.items():
        src_root = SHARED / name
        dst_root = HERE / "mini" / name
        if dst_root.exists():
            shutil.rmtree(dst_root)
        with (src_root / "manifest.csv").open(newline="") as fh:
            reader = csv.DictReader(fh)
            fields = reader.fieldnames or []
            rows = sorted(reader, key=lambda r: r["path"])
        taken = []
        for (split, label), n in plan.items():
            chosen = [r for r in rows if r["split"] == split and int(r["label"]) == label][:n]
            taken.extend(chosen)
        for row in taken:
            for key in ("path", "mask_path"):
                if row.get(key):
                    dst = dst_root / row[key]
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src_root / row[key], dst)
        with (dst_root / "manifest.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(taken)
        shutil.copyfile(src_root / "README.md", dst_root / "SOURCE_README.md")
        print(name, len(taken), "images")


if __name__ == "__main__":
    main()
