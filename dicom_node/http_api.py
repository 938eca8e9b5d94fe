"""The node's small HTTP API (Flask), served by werkzeug in a thread.

Routes (JSON unless noted):

* ``GET /health``: liveness, never authenticated: ``{"status": "ok"}``.
* ``GET /ready``: 200 when the SCP listens, the data folder is writable and free disk is
  above the floor; 503 otherwise, with the failing checks.
* ``GET /metrics``: Prometheus text format.
* ``GET /jobs``: job summaries, newest first; ``?state=queued|running|sending|done|failed``,
  ``?limit=N`` (default 100).
* ``GET /jobs/<job_id>``: the full ``job.json`` plus ``error`` (``error.json``) if failed.
* ``POST /studies/<study_uid>/process-now``: 202 when the study has instances waiting in
  the spool (they become a job at the next router pass), 404 otherwise.
* ``GET /studies/scores``: ``[{study_instance_uid, score, is_abnormal, threshold, model,
  model_version, finished_at, job_id}]`` newest first; filters ``?study_instance_uid=``
  (repeatable or comma-separated) and ``?model=``. The viewer's study list uses it.

When ``api_token`` is set every route except ``/health`` needs ``Authorization: Bearer
<token>`` (401 otherwise).
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.serving import BaseWSGIServer, make_server

from dicom_node.index import StateIndex
from dicom_node.metrics import Metrics, render_prometheus
from dicom_node.queue import STATE_FOLDERS, Job, JobQueue, JobStateValues
from dicom_node.spool import Spool

logger = logging.getLogger(__name__)

ReadinessFn = Callable[[], dict[str, bool]]

_PUBLIC_PATHS = frozenset({"/health"})
_MAX_LIMIT = 10_000


def _job_summary(job: Job) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "state": job.state.value,
        "study_instance_uid": job.study_instance_uid,
        "checkpoints": job.checkpoints,
        "instances": len(job.sop_instance_uids),
        "created_at": job.created_at.isoformat(),
        "updated_at": job.updated_at.isoformat(),
        "attempts": {k.value: v for k, v in job.attempts.items()},
        "next_retry_at": job.next_retry_at.isoformat() if job.next_retry_at else None,
        "failed_stage": job.failed_stage.value if job.failed_stage else None,
        "processing_seconds": job.processing_seconds,
        "results": [r.model_dump(mode="json") for r in job.results],
    }


def create_app(
    *,
    api_token: str | None,
    queue: JobQueue,
    spool: Spool,
    index: StateIndex,
    metrics: Metrics,
    readiness: ReadinessFn,
) -> Flask:
    """Build the Flask app.

    Args:
        api_token: bearer token required on every route but ``/health`` (None: open).
        queue: job queue (``/jobs``).
        spool: spool (process-now, metrics).
        index: index (``/studies/scores``).
        metrics: counters (``/metrics``).
        readiness: returns named checks, all True when ready.

    Returns:
        The app.
    """
    app = Flask("dicom_node")
    app.json.sort_keys = False  # type: ignore[attr-defined]
    token = api_token.encode() if api_token else None

    @app.before_request
    def _authenticate() -> Response | None:
        if token is None or request.path in _PUBLIC_PATHS:
            return None
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token):
            return None
        response = jsonify(error="missing or invalid bearer token")
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Bearer realm="dicom_node"'
        return response

    @app.get("/health")
    def health() -> Response:
        return jsonify(status="ok")

    @app.get("/ready")
    def ready() -> Response:
        checks = readiness()
        response = jsonify(ready=all(checks.values()), checks=checks)
        response.status_code = 200 if all(checks.values()) else 503
        return response

    @app.get("/metrics")
    def prometheus() -> Response:
        text = render_prometheus(metrics.snapshot(), queue.counts(), spool.pending_count())
        return Response(text, mimetype="text/plain", content_type="text/plain; version=0.0.4")

    @app.get("/jobs")
    def jobs() -> Response | tuple[Response, int]:
        wanted = request.args.get("state")
        try:
            limit = min(int(request.args.get("limit", "100")), _MAX_LIMIT)
        except ValueError:
            return jsonify(error="limit must be an integer"), 400
        if wanted is None:
            states = list(STATE_FOLDERS)
        else:
            try:
                states = [JobStateValues(wanted)]
            except ValueError:
                valid = [s.value for s in STATE_FOLDERS]
                return jsonify(error=f"unknown state {wanted!r}; valid: {valid}"), 400
            if states[0] not in STATE_FOLDERS:
                return jsonify(error=f"no jobs are kept in state {wanted!r}"), 400
        found = [job for state in states for job in queue.iter_jobs(state)]
        found.sort(key=lambda j: j.job_id, reverse=True)
        return jsonify([_job_summary(j) for j in found[: max(0, limit)]])

    @app.get("/jobs/<job_id>")
    def job_detail(job_id: str) -> Response | tuple[Response, int]:
        job = queue.find(job_id)
        if job is None:
            return jsonify(error="no such job"), 404
        body = job.model_dump(mode="json")
        body["error"] = queue.read_error(job)
        return jsonify(body)

    @app.post("/studies/<study_uid>/process-now")
    def process_now(study_uid: str) -> tuple[Response, int]:
        if spool.request_process_now(study_uid):
            logger.info("process-now requested", extra={"study_uid": study_uid})
            return jsonify(accepted=True, study_instance_uid=study_uid), 202
        return jsonify(error="no instances of this study are waiting in the spool"), 404

    @app.get("/studies/scores")
    def scores() -> Response:
        uids = [
            uid.strip()
            for value in request.args.getlist("study_instance_uid")
            for uid in value.split(",")
            if uid.strip()
        ]
        rows = index.scores(uids or None, model=request.args.get("model"))
        return jsonify([r.as_json() for r in rows])

    return app


class ApiServer:
    """Serves the app with werkzeug's threaded WSGI server in a daemon thread.

    Args:
        app: the Flask app.
        host: bind address.
        port: bind port (0: ephemeral).
    """

    def __init__(self, app: Flask, host: str, port: int) -> None:
        self._server: BaseWSGIServer = make_server(host, port, app, threaded=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="dicom-node-http", daemon=True
        )

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._server.server_port)

    def start(self) -> None:
        """Start serving."""
        self._thread.start()
        logger.info("HTTP API listening", extra={"port": self.port})

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
