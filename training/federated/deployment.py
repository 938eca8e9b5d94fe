"""Run the federation with Flower's deployment engine on one machine, one process per party.

Starts ``flower-superlink`` and one ``flower-supernode`` per site (each with its own
``--node-config``: ``partition-id``, ``num-partitions`` and optionally its own ``manifest``),
submits the Flower app in this folder with ``flwr run`` and waits for the ServerApp's
``card.json``. Everything listens on 127.0.0.1. Without certificates all links are
``--insecure``; with ``tls=(ca, cert, key)`` the SuperLink serves TLS and the SuperNodes and
``flwr`` verify it against ``ca``.

Flower >= 1.4x carries the Fleet and Control APIs over HTTP(S) (one ``--port`` per
SuperLink) rather than the gRPC of older releases; the SuperNode's ClientApp I/O is local.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from training.federated import task

logger = logging.getLogger(__name__)
APP_DIR = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _bin(name: str) -> str:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def _wait_port(port: int, timeout: float, procs: Sequence[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@contextlib.contextmanager
def federation(
    work_dir: Path,
    num_sites: int,
    manifests: Sequence[str] | None = None,
    tls: tuple[Path, Path, Path] | None = None,
) -> Iterator[dict[str, Any]]:
    """Start a SuperLink and ``num_sites`` SuperNodes; yield their addresses; stop them.

    Args:
        work_dir: logs, the SuperLink database and the ``flwr`` config (FLWR_HOME) go here.
        num_sites: SuperNodes to start (``partition-id`` 0..N-1, ``num-partitions`` N).
        manifests: per site, its own manifest (optional).
        tls: (CA certificate, server certificate, server key) for TLS; None: insecure.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    link_port = free_port()
    env = {
        **os.environ,
        "FLWR_HOME": str(work_dir / "flwr_home"),
        "PYTHONUNBUFFERED": "1",
        # the SuperLink/SuperNode spawn flower-superexec, flwr-serverapp, flwr-clientapp
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    security = (
        [
            "--ssl-ca-certfile",
            str(tls[0]),
            "--ssl-certfile",
            str(tls[1]),
            "--ssl-keyfile",
            str(tls[2]),
        ]
        if tls
        else ["--insecure"]
    )
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        log = (work_dir / "superlink.log").open("wb")
        logs.append(log)
        link = subprocess.Popen(  # noqa: S603
            [
                _bin("flower-superlink"),
                *security,
                "--host",
                "127.0.0.1",
                "--port",
                str(link_port),
                # in-memory state: a SQLite file hits "database is locked" on a busy machine
                "--disable-runtime-dependency-installation",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=work_dir,
        )
        procs.append(link)
        _wait_port(link_port, 60, procs)
        for site in range(num_sites):
            node_config = f"partition-id={site} num-partitions={num_sites}"
            if manifests:
                node_config += f' manifest="{manifests[site]}"'
            client_security = ["--root-certificates", str(tls[0])] if tls else ["--insecure"]
            log = (work_dir / f"supernode{site}.log").open("wb")
            logs.append(log)
            procs.append(
                subprocess.Popen(  # noqa: S603
                    [
                        _bin("flower-supernode"),
                        *client_security,
                        "--superlink",
                        f"127.0.0.1:{link_port}",
                        "--port",
                        str(free_port()),
                        "--node-config",
                        node_config,
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=work_dir,
                )
            )
        home = work_dir / "flwr_home"
        home.mkdir(exist_ok=True)
        connection = [f'address = "127.0.0.1:{link_port}"']
        connection.append(f'root-certificates = "{tls[0]}"' if tls else "insecure = true")
        (home / "config.toml").write_text(
            '[superlink]\ndefault = "local-deployment"\n\n[superlink.local-deployment]\n'
            + "\n".join(connection)
            + "\n"
        )
        yield {
            "env": env,
            "procs": procs,
            "superlink_port": link_port,
            "connection": "local-deployment",
        }
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()


def run_deployment(
    s: task.FedSettings,
    work_dir: Path,
    manifests: Sequence[str] | None = None,
    tls: tuple[Path, Path, Path] | None = None,
    timeout: float = 1800,
) -> dict[str, Any]:
    """Run ``s`` on a local deployment (see `federation`); return the ServerApp's card.

    Raises:
        TimeoutError: no ``card.json`` after ``timeout`` seconds.
        RuntimeError: ``flwr run`` or a Flower process failed.
    """
    out_dir = Path(s.out_dir).resolve()
    card_path = out_dir / "card.json"
    if card_path.exists():
        card_path.unlink()
    s = task.settings_from(s.to_flower(), out_dir=str(out_dir))
    run_config = " ".join(
        f"{k}={json.dumps(v)}" for k, v in s.to_flower().items() if isinstance(v, str | int | float)
    )
    app_copy = work_dir / "app"
    shutil.rmtree(app_copy, ignore_errors=True)
    app_copy.mkdir(parents=True)
    for name in ("pyproject.toml", "__init__.py", "task.py", "client_app.py", "server_app.py"):
        shutil.copy(APP_DIR / name, app_copy / name)
    with federation(work_dir, s.num_sites, manifests, tls) as fed:
        submitted = subprocess.run(  # noqa: S603
            [_bin("flwr"), "run", str(app_copy), fed["connection"], "--run-config", run_config],
            env=fed["env"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if submitted.returncode != 0:
            raise RuntimeError(f"flwr run failed: {submitted.stdout}\n{submitted.stderr}")
        logger.info("flwr run: %s", submitted.stdout.strip())
        deadline = time.monotonic() + timeout
        while not card_path.exists():
            for proc in fed["procs"]:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {card_path} after {timeout} s")
            time.sleep(1.0)
        time.sleep(0.5)  # the card is written last; let the write finish
    card: dict[str, Any] = json.loads(card_path.read_text())
    return card
