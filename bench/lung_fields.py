"""Does the lung-field segmenter find two lungs on the chest sets the node sees?

    .venv/bin/python bench/lung_fields.py [--splits val,test] [--grid docs/results/lung_fields.png]

For each chest manifest under ../shared/data (Kermany pediatric, NIH pneumonia, NIH any
finding, Montgomery) and the committed DICOM samples (tests/data/dicom), this runs
`ai_engine.anatomy.lungs.lung_fields` as the node does and prints, per set: images, the share
where two lungs were kept, the share *not analysed* (no plausible lung field), and the lung
area (median share of the image). ``--grid`` writes a picture of a few images per set with the
lung field's outline, for the check by eye. The last line is one JSON object. It chooses
nothing (the segmenter was selected on Montgomery val), so reading ``test`` selects nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from ai_engine.anatomy.lungs import lung_fields
from training.data import load_image, read_manifest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
SETS = ("cxr_kermany_pediatric", "cxr_nih14_pneumonia", "cxr_nih14_anyfinding64", "cxr_lung_masks")


def _dicom_images() -> list[npt.NDArray[np.float32]]:
    from ai_engine.dicom_io.reader import read_image

    return [read_image(p).pixels for p in sorted((ROOT / "tests/data/dicom").rglob("*.dcm"))]


def _outlined(image: npt.NDArray[np.float32], mask: npt.NDArray[np.bool_]) -> Image.Image:
    from scipy import ndimage

    grey = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    rgb = np.stack([grey] * 3, axis=-1)
    edge = mask & ~ndimage.binary_erosion(mask, iterations=max(1, mask.shape[0] // 128))
    rgb[edge] = (255, 40, 40)
    return Image.fromarray(rgb).resize((192, 192), Image.Resampling.BILINEAR)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--splits", default="val,test")
    parser.add_argument("--grid", type=Path, default=None, help="PNG with outlined examples")
    parser.add_argument("--per-set", type=int, default=6, help="examples per set in the grid")
    args = parser.parse_args()
    splits = args.splits.split(",")
    rows, tiles = [], []
    sources: list[tuple[str, list[npt.NDArray[np.float32]]]] = []
    for name in SETS:
        manifest = DATA / name / "manifest.csv"
        if manifest.is_file():
            items = [i for s in splits for i in read_manifest(manifest, s)]
            sources.append((name, [load_image(i.path) for i in items]))
    sources.append(("committed DICOM samples", _dicom_images()))
    for name, images in sources:
        regions = lung_fields(images)
        two = [r.parts == 2 for r in regions]
        refused = [r.reason is not None for r in regions]
        areas = [float(r.mask.mean()) for r in regions if r.reason is None]
        rows.append(
            {
                "set": name,
                "n": len(images),
                "two_lungs": float(np.mean(two)) if images else float("nan"),
                "not_analysed": float(np.mean(refused)) if images else float("nan"),
                "median_lung_area": float(np.median(areas)) if areas else float("nan"),
            }
        )
        picks = np.linspace(0, len(images) - 1, min(args.per_set, len(images))).astype(int)
        tiles.append([_outlined(images[k], regions[k].mask) for k in picks])
    print(f"{'set':<26} {'n':>5} {'two lungs':>10} {'not analysed':>13} {'lung area':>10}")
    for r in rows:
        print(
            f"{r['set']:<26} {r['n']:>5} {r['two_lungs']:>10.3f} {r['not_analysed']:>13.3f} "
            f"{r['median_lung_area']:>10.3f}"
        )
    if args.grid is not None and tiles:
        width = max(len(t) for t in tiles)
        grid = Image.new("RGB", (192 * width, 192 * len(tiles)))
        for y, row in enumerate(tiles):
            for x, tile in enumerate(row):
                grid.paste(tile, (192 * x, 192 * y))
        args.grid.parent.mkdir(parents=True, exist_ok=True)
        grid.save(args.grid)
    print(json.dumps({"splits": splits, "sets": rows}))


if __name__ == "__main__":
    main()
