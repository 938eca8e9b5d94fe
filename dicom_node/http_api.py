"""The node's small HTTP API (Flask), served by werkzeug in a thread.

Routes (JSON unless noted):

* ``GET /health``: liveness, never authenticated: ``{"status": "ok"}``. The process is up
  and serving HTTP; restart it only when this fails.
* ``GET /ready``: readiness: 200 when the node can take studies now (the SCP listens, every
  stage thread is alive, the data folder is writable and free disk is above the floor, so
  new associations are not refused); 503 otherwise, with the checks that failed. A load
  balancer should stop sending studies while it is 503; it becomes 200 again by itself
  (e.g. once disk is freed).
* ``GET /metrics``: Prometheus text format: counters, job gauges and the per-stage latency
  histograms (`dicom_node.metrics.HISTOGRAMS`).
* ``GET /jobs``: job summaries (``kind`` ``analysis``, or ``feedback`` for the delivery of
  a reader's review SR), newest first; ``?state=queued|running|sending|done|failed``,
  ``?limit=N`` (default 100).
* ``GET /jobs/<job_id>``: the full ``job.json`` plus ``error`` (``error.json``) if failed.
* ``POST /studies/<study_uid>/process-now``: 202 when the study has instances waiting in
  the spool (they become a job at the next router pass), 404 otherwise. Admin role.
* ``POST /jobs/<job_id>/rerun``: queue a ``done`` or ``failed`` job again with its kept
  input instances (attempts reset; its results are produced and delivered again, with new
  SOP instance UIDs). 202 with the job summary; 404 unknown job; 409 when the job is still
  active or its input is no longer kept. Admin role.
* ``GET /studies/scores``: ``[{study_instance_uid, score, is_abnormal, threshold, model,
  model_version, finished_at, job_id}]`` newest first; filters ``?study_instance_uid=``
  (repeatable or comma-separated) and ``?model=``. The viewer's study list uses it.

* ``POST /studies/<study_uid>/feedback``: a reader's judgement of the study's result
  (`dicom_node.feedback`): JSON ``{"judgement": "agree"|"false_alarm"|"missed_finding",
  "reader": "...", "comment": "..." (optional), "model": "..." (when the study has results
  of several models)}``. 201 with the stored version once it is on disk (fsynced); its
  review SR is then delivered to the PACS by the outbox (``delivered_at`` in the listing).
  400 bad UID or body, 404 no result for the study, 409 the judgement contradicts the
  result (a false alarm on a study not flagged, a missed finding on a flagged one) or the
  study was not analysed, 413 comment or body too long, 415 not JSON. Read or admin token.
* ``GET /studies/<study_uid>/feedback``: ``{"current": [...], "versions": [...]}``: the
  version that counts per model, and every version (audit), oldest first.
* ``GET /feedback``: the judgements that count, newest first; ``?model=``,
  ``?since=`` / ``?until=`` (ISO 8601), ``?confirmed=normal|abnormal``, ``?limit=N``.
  ``python -m training calibrate --from-feedback`` reads the confirmed normals here.
* ``GET /feedback/summary``: per model version: judgement counts, agreement rate,
  false-alarm rate among flagged studies, missed findings, and the drift of the confirmed
  normals' scores from the calibration set (``?model=``, ``?since=``, ``?until=``). The
  same figures are Prometheus gauges in ``/metrics`` (``dicom_node_feedback_*``).

Roles: when ``api_token`` or ``api_admin_token`` is set, every route except ``/health``
needs ``Authorization: Bearer <token>`` (401 otherwise). Read routes accept either token;
routes that change state (POST) accept only ``api_admin_token`` (403 for the read token, and
for everyone when no admin token is configured), except a reader's judgement
(``POST /studies/<uid>/feedback``), which the read token, the viewer's, may post too: the
viewer server (``ohif-extension/server/serve.mjs``) forwards it from the viewer's own login.
With no token at all the API is open: the settings allow that only on a loopback address,
and ``python -m dicom_node serve`` never runs so (it generates a token on first run,
`dicom_node.__main__.with_api_token`).

State-changing requests must name this node in ``Host`` (a loopback name, ``http_host`` or
one of ``api_allowed_hosts``), and an ``Origin`` header, when sent, must be that same host:
403 otherwise, so a web page cannot POST to the API across origins or by DNS rebinding.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, jsonify, request
from werkzeug.serving import BaseWSGIServer, make_server

from dicom_node.feedback import MAX_BODY_BYTES as FEEDBACK_MAX_BODY
from dicom_node.feedback import Feedback, FeedbackError, check_uid
from dicom_node.index import StateIndex, not_routed_reason
from dicom_node.jobs import JobLifecycle, RerunConflictError
from dicom_node.metrics import Metrics, render_prometheus
from dicom_node.queue import STATE_FOLDERS, Job, JobQueue, JobStateValues
from dicom_node.spool import Spool

logger = logging.getLogger(__name__)

ReadinessFn = Callable[[], dict[str, bool]]

_PUBLIC_PATHS = frozenset({"/health"})
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_ADMIN_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_MAX_LIMIT = 10_000
#: State-changing endpoints the read (viewer) token may call.
_READER_ENDPOINTS = frozenset({"post_feedback"})


def _job_summary(job: Job) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "kind": job.kind,
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
    api_admin_token: str | None = None,
    on_change: Callable[[], None] | None = None,
    allowed_hosts: Collection[str] = (),
    feedback: Feedback | None = None,
) -> Flask:
    """Build the Flask app.

    Args:
        api_token: bearer token of the read role (None: no read-only token).
        queue: job queue (``/jobs``).
        spool: spool (process-now, metrics).
        index: index (``/studies/scores``).
        metrics: counters (``/metrics``).
        readiness: returns named checks, all True when ready.
        api_admin_token: bearer token of the admin role (state-changing routes; may read).
        on_change: called after a state-changing request was accepted (wakes the stages).
        allowed_hosts: host names (besides the loopback ones) a state-changing request's
            ``Host`` may name; its ``Origin``, when sent, must be that same host and port.
        feedback: readers' judgements (``/studies/<uid>/feedback``, ``/feedback``); None:
            those routes answer 404.

    Returns:
        The app.
    """
    app = Flask("dicom_node")
    app.json.sort_keys = False  # type: ignore[attr-defined]
    read_token = api_token.encode() if api_token else None
    admin_token = api_admin_token.encode() if api_admin_token else None
    woken = on_change or (lambda: None)
    lifecycle = JobLifecycle(queue, index, metrics)

    def _matches(given: bytes, expected: bytes | None) -> bool:
        return expected is not None and hmac.compare_digest(given, expected)

    hosts = frozenset(h.strip("[]").lower() for h in (*_LOOPBACK_HOSTS, *allowed_hosts))

    @app.before_request
    def _check_host_and_origin() -> Response | None:
        """State changes only from our own origin (no cross-origin form POST, no DNS rebinding)."""
        if request.method not in _ADMIN_METHODS:
            return None
        host = urlsplit(f"//{request.host}").hostname or ""
        origin = request.headers.get("Origin")
        why = None
        if host.lower() not in hosts:
            why = "Host is not an address of this node (api_allowed_hosts)"
        elif origin is not None and urlsplit(origin).netloc.lower() != request.host.lower():
            why = "cross-origin request"
        if why is None:
            return None
        logger.warning("state-changing request refused", extra={"reason": why})
        response = jsonify(error=why)
        response.status_code = 403
        return response

    @app.before_request
    def _authenticate() -> Response | None:
        if request.path in _PUBLIC_PATHS:
            return None
        if read_token is None and admin_token is None:
            return None  # open API (loopback only, see NodeSettings)
        scheme, _, raw = request.headers.get("Authorization", "").partition(" ")
        given = raw.strip().encode() if scheme.lower() == "bearer" else b""
        is_admin = _matches(given, admin_token)
        if not is_admin and not _matches(given, read_token):
            response = jsonify(error="missing or invalid bearer token")
            response.status_code = 401
            response.headers["WWW-Authenticate"] = 'Bearer realm="dicom_node"'
            return response
        reader_write = request.endpoint in _READER_ENDPOINTS
        if request.method in _ADMIN_METHODS and not is_admin and not reader_write:
            logger.warning(
                "state-changing request with the read-only token refused",
                extra={"path": request.path},
            )
            response = jsonify(error="this route needs the admin token (api_admin_token)")
            response.status_code = 403
            return response
        return None

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
        text = render_prometheus(
            metrics.snapshot(),
            queue.counts(),
            spool.pending_count(),
            metrics.histograms(),
            feedback.summary() if feedback is not None else None,
        )
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

    @app.post("/jobs/<job_id>/rerun")
    def rerun(job_id: str) -> tuple[Response, int]:
        try:
            job = lifecycle.rerun(job_id)
        except RerunConflictError as exc:
            return jsonify(error=str(exc)), 409
        if job is None:
            return jsonify(error="no such job"), 404
        logger.info(
            "job re-run requested",
            extra={"job_id": job.job_id, "study_uid": job.study_instance_uid},
        )
        woken()
        return jsonify(_job_summary(job)), 202

    @app.post("/studies/<study_uid>/process-now")
    def process_now(study_uid: str) -> tuple[Response, int]:
        if spool.request_process_now(study_uid):
            logger.info("process-now requested", extra={"study_uid": study_uid})
            woken()
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

    @app.get("/studies/<study_uid>/not-routed")
    def not_routed(study_uid: str) -> Response:
        """Instances of the study the node acknowledged but sent to no model, and why."""
        check_uid(study_uid)
        instances = [
            {"sop_instance_uid": sop, "rule": rule, "reason": not_routed_reason(rule)}
            for sop, rule in sorted(index.not_routed(study_uid).items())
        ]
        return jsonify(study_instance_uid=study_uid, instances=instances)

    def _feedback() -> Feedback:
        if feedback is None:
            raise FeedbackError("reader feedback is not enabled on this node", 404)
        return feedback

    @app.errorhandler(FeedbackError)
    def _feedback_error(exc: FeedbackError) -> tuple[Response, int]:
        return jsonify(error=str(exc)), exc.status

    @app.post("/studies/<study_uid>/feedback")
    def post_feedback(study_uid: str) -> tuple[Response, int]:
        service = _feedback()
        check_uid(study_uid)
        if (request.content_length or 0) > FEEDBACK_MAX_BODY:
            raise FeedbackError(f"request body larger than {FEEDBACK_MAX_BODY} bytes", 413)
        if not request.is_json:
            raise FeedbackError("send the judgement as application/json", 415)
        body = request.get_json(silent=True)
        if body is None:
            raise FeedbackError("the body is not valid JSON")
        record = service.submit(study_uid, body)
        woken()
        return jsonify(record.as_json()), 201

    @app.get("/studies/<study_uid>/feedback")
    def study_feedback(study_uid: str) -> Response:
        service = _feedback()
        check_uid(study_uid)
        versions = service.store.versions(study_uid)
        latest: dict[str, dict[str, Any]] = {}
        for record in versions:
            latest[record.model] = record.as_json()
        return jsonify(current=list(latest.values()), versions=[r.as_json() for r in versions])

    def _time_arg(name: str) -> datetime | None:
        raw = request.args.get(name)
        if not raw:
            return None
        try:
            value = datetime.fromisoformat(raw)
        except ValueError as exc:
            raise FeedbackError(f"{name} must be an ISO 8601 date or time") from exc
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    @app.get("/feedback")
    def list_feedback() -> Response:
        service = _feedback()
        confirmed = request.args.get("confirmed")
        if confirmed not in (None, "normal", "abnormal"):
            raise FeedbackError("confirmed must be normal or abnormal")
        try:
            limit = min(int(request.args.get("limit", str(_MAX_LIMIT))), _MAX_LIMIT)
        except ValueError as exc:
            raise FeedbackError("limit must be an integer") from exc
        rows = service.store.current(
            request.args.get("model"), _time_arg("since"), _time_arg("until")
        )
        if confirmed == "normal":
            rows = [r for r in rows if r.confirmed_normal]
        elif confirmed == "abnormal":
            rows = [r for r in rows if r.confirmed_abnormal]
        return jsonify([r.as_json() for r in rows[: max(0, limit)]])

    @app.get("/feedback/summary")
    def feedback_summary() -> Response:
        service = _feedback()
        return jsonify(
            service.summary(request.args.get("model"), _time_arg("since"), _time_arg("until"))
        )

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
