"""Take the README's viewer screenshots from the real system.

    unshare -n bash -c 'ip link set lo up; .venv/bin/python scripts/screenshots.py'
        [--out docs/screenshots]

Starts the embedded stack (Orthanc, node with `default-cxr`, viewer server) on loopback ports
in a fresh temporary folder, sends the committed sample studies through Orthanc as a scanner
would, waits for every study's results, then drives Debian's Chromium with the extension's
end-to-end script (`ohif-extension/tests/e2e.mjs`) on the highest-scoring radiograph (DX/CR:
the README's picture is of a chest film; scores of other models are on other scales). The
study list and the viewer screenshots are copied to ``--out``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from devstack.demo import discover_samples, send_files  # noqa: E402
from devstack.processes import free_port  # noqa: E402
from devstack.stack import EmbeddedStack, StackOptions  # noqa: E402


def main() -> int:
    """Run the stack, send the samples, screenshot the top-scoring study; exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="screenshots-") as tmp:
        options = StackOptions(
            data_dir=Path(tmp),
            http_port=free_port(),
            dicom_port=free_port(),
            node_port=free_port(),
            node_http_port=free_port(),
            viewer_port=free_port(),
            stable_age=2,
            quiet_seconds=1.0,
            fresh=True,
        )
        with EmbeddedStack(options) as stack:
            samples = discover_samples()
            for sample in samples:
                send_files(sample.files, "127.0.0.1", options.dicom_port)
            scores: dict[str, float] = {}
            deadline = time.monotonic() + 300
            while len(scores) < len(samples) and time.monotonic() < deadline:
                for sample in samples:
                    if sample.study_uid in scores:
                        continue
                    row = stack.study_score(sample.study_uid)  # delivered results only
                    if row is not None:
                        scores[sample.study_uid] = (
                            float("-inf") if row.score is None else float(row.score)
                        )
                time.sleep(1)
            radiographs = {s.study_uid for s in samples if s.modality in ("DX", "CR")}
            flagged = max(radiographs & set(scores), key=lambda uid: scores[uid])
            shots = Path(tmp) / "shots"
            proc = subprocess.run(  # noqa: S603 - fixed command line
                [  # noqa: S607 - node from PATH, as scripts/test.sh runs it
                    "node",
                    str(REPO / "ohif-extension" / "tests" / "e2e.mjs"),
                    "--url",
                    str(stack.viewer_url),
                    "--study",
                    flagged,
                    "--screenshots",
                    str(shots),
                    "--timeout",
                    "120",
                ],
                cwd=REPO / "ohif-extension",
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            print(proc.stdout[-2000:], proc.stderr[-2000:])
            if proc.returncode != 0:
                return proc.returncode
            args.out.mkdir(parents=True, exist_ok=True)
            shutil.copy(shots / "01_study_list.png", args.out / "study_list.png")
            shutil.copy(shots / "02_viewer_panel_overlay.png", args.out / "viewer_flagged.png")
            print(f"study {flagged} (score {scores[flagged]:.3f}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
