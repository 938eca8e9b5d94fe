"""The engine as the node sees it: one factory, one interface, one typed result.

`make_engine` is the only way the node gets an engine; `NodeService` (each worker thread) and
the Celery `dicom_node.distributed.JobRunner` both call it, so process isolation is a property
of the settings, not of the caller:

- by default (``engine_isolation = "process"``) an `dicom_node.engine_process.EngineProcess`:
  the engine in a persistent child process that keeps its models loaded, so it neither
  shares the node's GIL nor takes the node down when it crashes or hangs;
- with ``engine_isolation = "thread"``, or with an engine function handed in by a test or a
  benchmark, an `InlineEngine` that runs it in the calling thread.

Both implement `Engine`: ``submit`` a job folder, ``collect`` its results in submit order.
An engine whose ``concurrent`` is true works on a submitted job while its caller files the
previous one, which `dicom_node.worker.Worker` uses to keep it busy.

Results are `EngineResult`, a frozen dataclass without torch: the engine's
``ai_engine.types.StudyResult`` is read once, where the engine ran (in the child process for
`EngineProcess`), by `EngineResult.from_engine`, and only the node's record crosses the
process boundary. So the node process never unpickles engine types (and never imports torch).
"""

from __future__ import annotations

import collections
import functools
import importlib
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from dicom_node.config import NodeSettings
from dicom_node.errors import ConfigError, JobError
from dicom_node.queue import PRIOR_DIR, StudyOutcome

#: ``(input_dir, output_dir, checkpoints) -> results``: ``ai_engine.pipeline.run``'s signature.
#: Results are ``ai_engine.types.StudyResult`` objects, or mappings with the same field names
#: (stand-in engines); `EngineResult.from_engine` reads either.
EngineFn = Callable[[Path, Path, Sequence[str]], Sequence[Any]]

#: The engine every node runs unless ``worker_engine`` names another.
DEFAULT_TARGET = "ai_engine.pipeline:run"


@dataclass(frozen=True)
class EngineResult:
    """The engine's result for one study and one checkpoint, as the node records it.

    Attributes:
        study_instance_uid: the study.
        model: checkpoint (model) name.
        model_version: its version.
        score: study score (None when no image was analysed).
        is_abnormal: the study is flagged.
        threshold: the calibrated threshold of the analysed images.
        images: source images the engine saw.
        images_analysed: of those, analysed.
        files: result files, relative to the job's ``output/``, in delivery order.
        seconds: engine seconds per stage (``read``, ``preprocess``, ``infer``, ``write``);
            empty when the engine does not measure them.
        engine_pid: the process the engine ran in.
    """

    study_instance_uid: str
    model: str
    model_version: str
    score: float | None
    is_abnormal: bool | None
    threshold: float | None
    images: int
    images_analysed: int
    files: tuple[str, ...]
    seconds: Mapping[str, float] = field(default_factory=dict)
    engine_pid: int = 0

    @classmethod
    def from_engine(cls, result: Any, output_dir: Path) -> EngineResult:
        """Read one engine result: a ``StudyResult`` or a mapping with its field names.

        Result files listed outside ``output_dir`` are copied into it (the sender delivers
        everything in ``output/``).

        Args:
            result: one item of the engine function's return value.
            output_dir: the job's ``output/``.

        Returns:
            The node's record of it.
        """
        algorithm = _field(result, "algorithm")
        images = list(_field(result, "images", ()) or ())
        analysed = [i for i in images if _field(i, "score") is not None]
        threshold = next(
            (_field(i, "threshold") for i in analysed if _field(i, "threshold") is not None), None
        )
        files: list[str] = []
        for item in _field(result, "files", ()) or ():
            path = Path(item)
            if not path.is_absolute():
                path = output_dir / path
            try:
                files.append(str(path.resolve().relative_to(output_dir.resolve())))
            except ValueError:
                target = output_dir / path.name
                shutil.copy2(path, target)
                files.append(target.name)
        score = _field(result, "study_score")
        is_abnormal = _field(result, "is_abnormal")
        seconds = _field(result, "seconds") or {}
        return cls(
            study_instance_uid=str(_field(result, "study_instance_uid", "")),
            model=str(_field(algorithm, "name") or _field(algorithm, "model_id") or ""),
            model_version=str(_field(algorithm, "version") or ""),
            score=None if score is None else float(score),
            is_abnormal=None if is_abnormal is None else bool(is_abnormal),
            threshold=None if threshold is None else float(threshold),
            images=len(images),
            images_analysed=len(analysed),
            files=tuple(files),
            seconds={str(k): float(v) for k, v in dict(seconds).items()},
            engine_pid=os.getpid(),
        )

    def outcome(self) -> StudyOutcome:
        """The record kept in ``job.json``."""
        return StudyOutcome(
            study_instance_uid=self.study_instance_uid,
            model=self.model,
            model_version=self.model_version,
            score=self.score,
            is_abnormal=self.is_abnormal,
            threshold=self.threshold,
            images=self.images,
            images_analysed=self.images_analysed,
            files=list(self.files),
        )


def _field(obj: Any, name: str, default: Any = None) -> Any:
    """A field of a ``StudyResult``-like object or of a mapping with the same names."""
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


class Engine(Protocol):
    """What a worker needs from an engine (`InlineEngine`, `EngineProcess`).

    Attributes:
        concurrent: ``submit`` returns before the job has run, so the caller can file the
            previous job's results meanwhile.
        pending: jobs submitted and not collected yet.
    """

    @property
    def concurrent(self) -> bool:
        """Whether ``submit`` returns before the job has run."""
        ...

    @property
    def pending(self) -> int:
        """Jobs submitted and not collected yet."""
        ...

    @property
    def pid(self) -> int | None:
        """The engine's own process id; None when it runs in the caller's process."""
        ...

    def start(self) -> None:
        """Get ready for the first job (load the models while the node waits)."""
        ...

    def submit(self, input_dir: Path, output_dir: Path, checkpoints: Sequence[str]) -> None:
        """Hand over one job folder; `collect` returns the results in submit order."""
        ...

    def collect(self) -> list[EngineResult]:
        """The results of the oldest submitted job.

        Raises:
            AiEngineError: the engine rejected the input or the model (deterministic).
            Exception: any other failure (retryable).
        """
        ...

    def close(self, timeout: float = 10.0) -> None:
        """Release the engine (stop its process, if it has one)."""
        ...


class InlineEngine:
    """An engine function run in the calling thread (`Engine`; not ``concurrent``).

    Args:
        fn: the engine function.
    """

    #: `collect` runs the job: nothing runs while the caller does other work
    concurrent = False

    def __init__(self, fn: EngineFn) -> None:
        self.fn = fn
        self._submitted: collections.deque[tuple[Path, Path, tuple[str, ...]]] = collections.deque()

    @property
    def pending(self) -> int:
        """Jobs submitted and not collected yet."""
        return len(self._submitted)

    @property
    def pid(self) -> int | None:
        """None: the engine runs in the caller's process."""
        return None

    def start(self) -> None:
        """Nothing to start: the function runs in `collect`."""

    def submit(self, input_dir: Path, output_dir: Path, checkpoints: Sequence[str]) -> None:
        """Remember a job folder; `collect` runs the engine on it."""
        self._submitted.append((input_dir, output_dir, tuple(checkpoints)))

    def collect(self) -> list[EngineResult]:
        """Run the engine on the oldest submitted job folder.

        Returns:
            Its results.

        Raises:
            JobError: nothing was submitted.
        """
        if not self._submitted:
            raise JobError("no job submitted to the engine")
        input_dir, output_dir, checkpoints = self._submitted.popleft()
        results = self.fn(input_dir, output_dir, checkpoints)
        return [EngineResult.from_engine(r, output_dir) for r in results]

    def close(self, timeout: float = 10.0) -> None:
        """Forget submitted jobs."""
        self._submitted.clear()


def default_engine(
    input_dir: Path,
    output_dir: Path,
    checkpoints: Sequence[str],
    *,
    overlay_sc: str = "off",
) -> Sequence[Any]:
    """Call ``ai_engine.pipeline.run``, importing it (and torch) on first use.

    Args:
        input_dir: folder with the study's DICOM files.
        output_dir: empty folder for the result DICOM files.
        checkpoints: checkpoint names.
        overlay_sc: the pipeline's ``overlay_sc`` (settings ``overlay_sc``, via
            `resolve_engine_fn`).

    Returns:
        The engine's ``StudyResult`` list.
    """
    pipeline = importlib.import_module("ai_engine.pipeline")
    prior = input_dir.parent / PRIOR_DIR  # the study's earlier SRs, when the router found any
    results: Sequence[Any] = pipeline.run(
        input_dir,
        output_dir,
        tuple(checkpoints),
        overlay_sc=overlay_sc,
        prior_dir=prior if prior.is_dir() else None,
    )
    return results


def read_node_sr(path: Path) -> Any | None:
    """The engine's own anomaly SR at ``path`` (a pydicom Dataset), or None for anything else.

    `ai_engine.dicom_io.sr_writer.read_own_sr`, imported on first use (the node process
    loads the engine's DICOM modules only when it needs them).
    """
    from ai_engine.dicom_io.sr_writer import read_own_sr

    return read_own_sr(path)


def resolve_engine_fn(spec: str | None, overlay_sc: str = "off") -> EngineFn:
    """The engine function named by ``worker_engine`` (``module:function``).

    Args:
        spec: ``module:function``; None or `DEFAULT_TARGET` for ``ai_engine.pipeline.run``
            (imported on its first call, not here).
        overlay_sc: the default engine's overlay Secondary Captures (`default_engine`); an
            engine named by ``spec`` writes what it writes.

    Returns:
        The engine function.

    Raises:
        ConfigError: the module or function cannot be imported.
    """
    if spec is None or spec == DEFAULT_TARGET:
        return functools.partial(default_engine, overlay_sc=overlay_sc)
    module_name, _, name = spec.partition(":")
    try:
        engine: EngineFn = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"worker_engine {spec!r} cannot be imported: {exc}") from exc
    return engine


def make_engine(settings: NodeSettings, fn: EngineFn | None = None) -> Engine:
    """The engine the settings ask for (not started: call `Engine.start`).

    Args:
        settings: ``engine_isolation``, ``worker_engine``, ``engine_timeout_seconds``,
            ``checkpoints`` (preloaded), ``engine_threads``.
        fn: an engine function to run inline instead (tests and benchmarks with stand-in
            engines).

    Returns:
        An `InlineEngine` (``fn`` given, or ``engine_isolation = "thread"``), else an
        `EngineProcess`.

    Raises:
        ConfigError: ``worker_engine`` cannot be imported (checked here, at start, rather
            than at the first job).
    """
    if fn is not None:
        return InlineEngine(fn)
    resolved = resolve_engine_fn(settings.worker_engine, settings.overlay_sc)
    if settings.engine_isolation == "thread":
        return InlineEngine(resolved)
    from dicom_node.engine_process import EngineProcess

    return EngineProcess(
        settings.worker_engine or DEFAULT_TARGET,
        timeout_seconds=settings.engine_timeout_seconds,
        preload=settings.checkpoints,
        threads=settings.engine_thread_count(),
        overlay_sc=settings.overlay_sc,
    )
