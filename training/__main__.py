"""Command line: ``python -m training fit|evaluate|manifest|export``.

- ``fit --config training/configs/<model_id>.yaml --out DIR [--device auto|cpu|cuda]``: train on
  the manifest's train split (normal images), calibrate on val, write a checkpoint folder with
  its model card. ``--device auto`` (the default) trains on CUDA when torch sees a GPU.
- ``fit-supervised --config training/configs/cnn_supervised.yaml --out DIR``: train a labelled
  classifier on the val split (k-fold CV inside val picks the epochs, then a refit on all of
  val), calibrate on its out-of-fold scores, write a checkpoint (training/fit_supervised.py).
- ``fit-lungs --config training/configs/lung_field.yaml --out DIR``: train the lung-field
  segmenter on a manifest with masks (training/fit_lungs.py); prints its val and test Dice.
- ``evaluate --checkpoint NAME_OR_PATH --manifest CSV --split SPLIT``: score a split and
  print, as the last line, one JSON object (auroc, auprc, sensitivity, specificity, threshold,
  n_normal, n_abnormal, pixel_auroc/dice when the manifest has masks, ...).
- ``calibrate --checkpoint NAME_OR_PATH --out DIR [--manifest CSV] [--set scoring.K=V]``:
  same weights, score rule and thresholds fitted again on a val split (training/calibrate.py).
- ``manifest --dicom-dir DIR --out CSV [--labels CSV]``: a manifest from a folder of DICOM.
- ``export --checkpoint NAME_OR_PATH --out FILE.onnx``: ONNX export of the network; prints
  one JSON line with the path and the max torch vs ONNX Runtime score difference.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from ai_engine.memory import keep_freed_memory

DEVICE_HELP = "auto (CUDA when torch sees one, else CPU), cpu, cuda or cuda:N"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_fit = sub.add_parser("fit", help="train + calibrate a model, write a checkpoint")
    p_fit.add_argument("--config", type=Path, required=True)
    p_fit.add_argument("--out", type=Path, required=True)
    p_fit.add_argument("--epochs", type=int, default=None, help="override the config (smoke runs)")
    p_fit.add_argument(
        "--limit", type=int, default=None, help="at most N images per set (smoke runs)"
    )
    p_fit.add_argument("--device", default="auto", help=DEVICE_HELP)
    p_fit.add_argument("--seed", type=int, default=None, help="override the config's seed")
    p_sup = sub.add_parser("fit-supervised", help="train a labelled classifier (cnn_supervised)")
    p_sup.add_argument("--config", type=Path, required=True)
    p_sup.add_argument("--out", type=Path, required=True)
    p_sup.add_argument("--epochs", type=int, default=None, help="override the config")
    p_sup.add_argument("--limit", type=int, default=None, help="at most N images per class")
    p_sup.add_argument("--device", default="auto", help=DEVICE_HELP)
    p_lung = sub.add_parser("fit-lungs", help="train the lung-field segmenter")
    p_lung.add_argument("--config", type=Path, required=True)
    p_lung.add_argument("--out", type=Path, required=True)
    p_lung.add_argument("--epochs", type=int, default=None, help="override the config")
    p_ev = sub.add_parser("evaluate", help="score a manifest split, print JSON metrics")
    p_ev.add_argument("--checkpoint", required=True, help="shipped name (default-cxr) or folder")
    p_ev.add_argument("--manifest", type=Path, required=True)
    p_ev.add_argument("--split", required=True)
    p_ev.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap resamples for 95%% CIs"
    )
    p_ev.add_argument("--scores-csv", type=Path, default=None, help="also write per-image scores")
    p_man = sub.add_parser("manifest", help="build a manifest from a folder of DICOM files")
    p_man.add_argument("--dicom-dir", type=Path, required=True)
    p_man.add_argument("--out", type=Path, required=True)
    p_man.add_argument(
        "--labels", type=Path, default=None, help="CSV with SOPInstanceUID or path, label[, split]"
    )
    p_exp = sub.add_parser("export", help="export to ONNX, print the torch vs ORT score difference")
    p_exp.add_argument("--checkpoint", required=True, help="shipped name (default-cxr) or folder")
    p_exp.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    p_exp.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 18)")
    p_cal = sub.add_parser("calibrate", help="re-calibrate a checkpoint on val (same weights)")
    p_cal.add_argument("--checkpoint", required=True, help="shipped name or folder")
    p_cal.add_argument("--out", type=Path, required=True, help="the new checkpoint folder")
    p_cal.add_argument("--manifest", type=Path, default=None, help="default: the training one")
    p_cal.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="scoring/calibration override, e.g. scoring.residual=positive",
    )  # fmt: skip
    p_cal.add_argument("--name", default=None)
    p_cal.add_argument("--version", default=None)
    p_cal.add_argument(
        "--anatomy", default=None, help="the new card's anatomy region, e.g. lungs (default: kept)"
    )
    p_cal.add_argument(
        "--from-feedback", nargs="?", const="http://127.0.0.1:8099", default=None,
        metavar="NODE_URL",
        help="calibrate on the studies readers judged on this node (its HTTP API; default "
        "http://127.0.0.1:8099), images pulled from the PACS by DICOMweb (training/feedback.py)",
    )  # fmt: skip
    p_cal.add_argument("--node-token-file", type=Path, default=None, help="the node API token")
    p_cal.add_argument(
        "--orthanc", default="http://127.0.0.1:8042", help="the PACS (Orthanc or DICOMweb root)"
    )
    p_cal.add_argument("--orthanc-user", default=None)
    p_cal.add_argument("--orthanc-password-file", type=Path, default=None)
    p_cal.add_argument(
        "--min-normals", type=int, default=20, help="refuse with fewer confirmed normal studies"
    )
    p_cal.add_argument(
        "--min-abnormals", type=int, default=10,
        help="choose the score rule again only with this many confirmed abnormal studies",
    )  # fmt: skip
    p_cal.add_argument(
        "--keep-images", type=Path, default=None, help="keep the retrieved images here"
    )
    sub.add_parser("federated", add_help=False, help="Fed-GAN (Flower): simulate|deploy|report")
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["federated"]:
        from training.federated.cli import main as federated_main

        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        return federated_main(argv[1:])
    args = parser.parse_args(argv)
    keep_freed_memory()  # large tensors reuse freed memory: faster on the CPU, same results
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )

    from ai_engine.errors import AiEngineError
    from training.data import ManifestError

    try:
        if args.command == "fit":
            from training.fit import fit, load_config

            config = load_config(args.config)
            if args.seed is not None:
                config["seed"] = args.seed
            card = fit(
                config,
                args.out,
                epochs=args.epochs,
                limit=args.limit,
                device=args.device,
            )
            print(
                json.dumps(
                    {
                        "checkpoint": str(args.out),
                        "val_auroc": card.metrics["val_auroc"],
                        "threshold": card.calibration.threshold,
                        "weights_sha256": card.weights_sha256,
                    }
                )
            )
        elif args.command == "fit-supervised":
            from training.fit import load_config
            from training.fit_supervised import fit_supervised

            card = fit_supervised(
                load_config(args.config),
                args.out,
                epochs=args.epochs,
                limit=args.limit,
                device=args.device,
            )
            print(
                json.dumps(
                    {
                        "checkpoint": str(args.out),
                        "cv_fold_mean_auroc": card.metrics["cv_fold_mean_auroc"],
                        "cv_pooled_oof_auroc": card.metrics["cv_pooled_oof_auroc"],
                        "epochs": card.training["epochs_run"],
                        "threshold": card.calibration.threshold,
                        "weights_sha256": card.weights_sha256,
                    }
                )
            )
        elif args.command == "fit-lungs":
            from training.fit_lungs import fit_lungs

            lung_card = fit_lungs(args.config, args.out, epochs=args.epochs)
            print(json.dumps({"checkpoint": str(args.out), **lung_card["metrics"]}))
        elif args.command == "evaluate":
            from training.evaluate import evaluate

            result = evaluate(
                args.checkpoint,
                args.manifest,
                args.split,
                n_boot=args.bootstrap,
                scores_csv=args.scores_csv,
            )
            print(json.dumps(result))
        elif args.command == "calibrate":
            from training.calibrate import recalibrate

            if args.from_feedback is not None:
                card = _calibrate_from_feedback(args, parser)
            else:
                card = recalibrate(
                    args.checkpoint, args.out, args.manifest, args.set, args.name, args.version,
                    args.anatomy,
                )  # fmt: skip
            print(
                json.dumps(
                    {
                        "checkpoint": str(args.out),
                        "rule": card.training["scoring"]["rule"],
                        "val_auroc": card.metrics["val_auroc"],
                        "threshold": card.calibration.threshold,
                        "weights_sha256": card.weights_sha256,
                    }
                )
            )
        elif args.command == "export":
            from ai_engine.export import DEFAULT_OPSET, export_onnx, parity_images, score_difference

            opset = args.opset or DEFAULT_OPSET
            path = export_onnx(args.checkpoint, args.out, opset=opset)
            images = parity_images()
            diff = score_difference(path, args.checkpoint, images)
            print(json.dumps({"onnx": str(path), "opset": opset, "n_images": len(images), **diff}))
        else:
            from training.manifest import build_manifest

            n = build_manifest(args.dicom_dir, args.out, args.labels)
            print(json.dumps({"manifest": str(args.out), "rows": n}))
    except (ManifestError, AiEngineError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _secret(path: Path | None) -> str | None:
    return None if path is None else path.read_text(encoding="utf-8").strip()


def _calibrate_from_feedback(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Any:
    from training.feedback import FeedbackCalibrationError, recalibrate_from_feedback

    if args.manifest is not None:
        parser.error("--from-feedback and --manifest exclude each other")
    if (args.orthanc_user is None) != (args.orthanc_password_file is None):
        parser.error("--orthanc-user and --orthanc-password-file go together")
    password = _secret(args.orthanc_password_file)
    try:
        return recalibrate_from_feedback(
            args.checkpoint,
            args.out,
            node_url=args.from_feedback,
            node_token=_secret(args.node_token_file),
            pacs_url=args.orthanc,
            pacs_auth=(args.orthanc_user, password) if password is not None else None,
            name=args.name,
            version=args.version,
            min_normals=args.min_normals,
            min_abnormals=args.min_abnormals,
            keep_images=args.keep_images,
            assignments=args.set,
        )
    except FeedbackCalibrationError as exc:
        parser.exit(1, f"calibrate --from-feedback: {exc}\n")


if __name__ == "__main__":
    sys.exit(main())
