"""``python -m training federated simulate|deploy|report``.

- ``simulate``: Flower simulation engine, ``--sites`` virtual SuperNodes on this machine.
- ``deploy``: Flower deployment engine, a SuperLink and one SuperNode process per site on
  127.0.0.1 (``--insecure`` unless ``--tls-ca/--tls-cert/--tls-key`` are given).
- ``report``: Fed-GAN, F-AD and the baselines; prints the table and, as the last line, one
  JSON object.

Every other setting: ``--set key=value`` with the hyphenated names of
`training.federated.task.FedSettings` (e.g. ``--set noise-multiplier=1.5 --set non-iid=age``).
One progress line per round goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _settings(args: argparse.Namespace) -> Any:
    from training.federated import task

    values: dict[str, Any] = {}
    for pair in args.set or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        values[key.strip()] = value.strip()
    for key in ("rounds", "sites", "out"):
        if getattr(args, key, None) is not None:
            values[{"rounds": "num-rounds", "sites": "num-sites", "out": "out-dir"}[key]] = str(
                getattr(args, key)
            )
    return task.settings_from(values)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training federated",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="action", required=True)
    for name in ("simulate", "deploy", "report"):
        p = sub.add_parser(name)
        p.add_argument("--rounds", type=int, default=None)
        p.add_argument("--sites", type=int, default=None)
        p.add_argument("--out", type=Path, default=None, help="output folder")
        p.add_argument("--set", action="append", metavar="KEY=VALUE")
        if name == "deploy":
            p.add_argument("--work-dir", type=Path, default=Path("runs/federated/deployment"))
            p.add_argument("--site-manifest", action="append", help="per site, in order")
            p.add_argument("--tls-ca", type=Path)
            p.add_argument("--tls-cert", type=Path)
            p.add_argument("--tls-key", type=Path)
        if name == "report":
            p.add_argument("--n-synthetic", type=int, default=1000)
            p.add_argument("--ae-epochs", type=int, default=20)
            p.add_argument("--classifier-rounds", type=int, default=10)
            p.add_argument(
                "--no-baselines",
                action="store_true",
                help="Fed-GAN and its F-AD only (a selection run: read its val figures)",
            )
            p.add_argument(
                "--ablation-lambda0",
                action="store_true",
                help="also the same federation with lambda-cond=0 (unconditional ablation)",
            )
    args = parser.parse_args(argv)
    s = _settings(args)
    if args.action == "simulate":
        from training.federated.simulation import simulate

        card = simulate(s)
        print(
            json.dumps(
                {
                    "out": s.out_dir,
                    "epsilon": card["privacy"]["epsilon"],
                    "sites": card["sites"],
                    "rounds": len(card["rounds"]),
                    "wall_s": card["wall_s"],
                }
            )
        )
    elif args.action == "deploy":
        from training.federated.deployment import run_deployment

        tls = None
        if args.tls_ca or args.tls_cert or args.tls_key:
            if not (args.tls_ca and args.tls_cert and args.tls_key):
                raise SystemExit("TLS needs --tls-ca, --tls-cert and --tls-key")
            tls = (args.tls_ca, args.tls_cert, args.tls_key)
        card = run_deployment(s, args.work_dir, args.site_manifest, tls)
        print(
            json.dumps(
                {
                    "out": s.out_dir,
                    "epsilon": card["privacy"]["epsilon"],
                    "sites": card["sites"],
                    "rounds": len(card["rounds"]),
                    "wall_s": card["wall_s"],
                }
            )
        )
    else:
        from training.federated.report import run_report, table

        out = Path(args.out or "runs/federated/report")
        summary = run_report(
            s,
            out,
            n_synthetic=args.n_synthetic,
            ae_epochs=args.ae_epochs,
            classifier_rounds=args.classifier_rounds,
            baselines=not args.no_baselines,
            ablation_lambda0=args.ablation_lambda0,
        )
        print(table(summary))
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
