"""Review to re-fit: a new version of a recipe fitted in the background on the box itself, landed as its shadow.

One job per recipe at a time, each in a thread of its own that:

1. assembles the data set, an MVTec-style category `<store>/refits/<job>/<recipe>/` kept as the new version's
   training data (its manifest points there, so the next re-fit starts from it): the model's own training
   images (hard links, else copies) plus the images operators reviewed as good for this recipe in `train/good`,
   every other reviewed good one (half) in `test/good` and the reviewed defects in `test/defect` to calibrate
   on (written by `service.export.export_reviewed`, the code behind `inspector dataset export --reviewed`);
2. fits with the model's own method and parameters (`inspector fit` in a child process: niceness 19, SCHED_IDLE
   where the kernel allows it, one thread, so the line's inspections keep the cores) and reads its progress
   from the plain lines the fit prints when not on a terminal;
3. calibrates the new version on the held-out reviewed images (`inspector calibrate` in a child the same way):
   the active calibration's rule, targets and review band where the images allow it; with no reviewed defect,
   the good-only `normal` rule, and the job says so;
4. moves the finished version, whole, to `<recipe>-v<N>` in the recipe's versions folder (`<recipe>.versions/`,
   see service.recipes; one rename) and lands it as the recipe's shadow through `ModelRegistry.load_shadow`.

Everything before the rename happens in `.refit-<job>` in that folder (and the data set folder), so a failed
or cancelled job removes those and leaves the models folder and the active model as they were. The fitting
half needs torch: on a line box without the training stack a re-fit is refused with the extra to install.
Every start and end is in the audit log (`refit`, the job's id as subject), and the landing as a `model_shadow`
entry like a shadow an operator loads.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from inspector.calibration.calibration import DEFAULT_CONFIDENCE
from inspector.data.mvtec import GOOD, list_images
from inspector.models.persistence import read_manifest
from inspector.service.audit import AuditLog
from inspector.service.errors import Conflict, NotFound, ServiceError
from inspector.service.export import export_reviewed
from inspector.service.recipes import versions_dir
from inspector.service.registry import LoadedModel, ModelRegistry
from inspector.service.store import StoreReader

log = logging.getLogger(__name__)

RefitState = Literal["running", "succeeded", "failed", "cancelled"]
RefitStage = Literal["dataset", "fit", "calibrate", "load", "done"]

FIT_EXTRA = 'pip install "inspector[fit]"'
REFITS_DIR = "refits"  # below the store folder: one data set per job
STAGING_PREFIX = ".refit-"  # beside the recipe's directory while a job runs
INCOMPLETE = "INCOMPLETE"  # in a data set folder until its job has landed; such folders are removed at start-up
DEFAULT_TARGET_FPR = 0.01  # the false-reject target when the active calibration names none
KEEP_JOBS = 50  # finished jobs listed by GET /v1/refits
STOP_WAIT_S = 10.0  # after SIGTERM, before SIGKILL
_PROGRESS = re.compile(r"^(?P<step>[A-Za-z][\w -]*?):\s+(?P<percent>\d{1,3})%\|")

# The child sets its own priority before anything else runs in it (no preexec_fn: unsafe in a threaded
# service), so every thread the fit starts inherits it; then it is the `inspector` command.
_LAUNCH = """
import os, sys
try:
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
except (AttributeError, OSError):
    pass
os.nice(19)
from inspector.cli import main
sys.exit(main(sys.argv[1:]))
"""
_ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


class TrainingStackMissing(ServiceError):
    """A re-fit asked of a box without torch and timm (the line-box install): they fit, the service only scores."""

    status = 501
    reason = "no_training_stack"


class RefitCancelled(Exception):
    """Raised inside a job's thread when an operator cancelled it."""


class RefitFailed(Exception):
    """A job that cannot go on; the message says why, for the page and the audit log."""


@dataclass
class RefitJob:
    """One re-fit as the API shows it; fields change while it runs (read them, never write them outside the
    manager)."""

    id: str
    model: str
    user: str
    operator: str | None
    reason: str
    started: float
    state: RefitState = "running"
    stage: RefitStage = "dataset"
    step: str | None = None
    percent: float = 0.0
    message: str = ""
    finished: float | None = None
    version: str | None = None
    dir: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    stages_s: dict[str, float] = field(default_factory=dict)  # seconds after the start at which each stage began
    cancelled_by: tuple[str, str | None] | None = None  # the key's role and the person, for the audit log
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _process: subprocess.Popen[str] | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def elapsed_s(self) -> float:
        return (self.finished or time.time()) - self.started

    @property
    def pid(self) -> int | None:
        """The child process running now (fit or calibrate), if any."""
        process = self._process
        return process.pid if process is not None else None


def missing_training_package() -> str | None:
    """The first of torch and timm this interpreter cannot import, found without importing either."""
    for name in ("torch", "timm"):
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except (ImportError, ValueError):  # a finder that refuses it counts as missing
            return name
    return None


def next_version_dir(home: Path) -> Path:
    """`<home>.versions/<home>-v<N>`, N one above every version there (the recipe's own folder is v1)."""
    folder = versions_dir(home)
    pattern = re.compile(rf"^{re.escape(home.name)}-v(\d+)$")
    taken = [1] + [int(m[1]) for p in (folder.iterdir() if folder.is_dir() else []) if (m := pattern.match(p.name))]
    return folder / f"{home.name}-v{max(taken) + 1}"


class RefitManager:
    """Starts, tracks and cancels re-fit jobs (kept in memory: the audit log has each one's start and end).

    `command` is the interpreter prefix that runs `inspector` at low priority in a child process."""

    def __init__(
        self,
        registry: ModelRegistry,
        store_root: Path,
        audit: AuditLog,
        command: tuple[str, ...] = (sys.executable, "-c", _LAUNCH),
    ) -> None:
        self.registry = registry
        self.store_root = Path(store_root)
        self.reader = StoreReader(self.store_root)
        self.audit = audit
        self.command = command
        self.jobs: dict[str, RefitJob] = {}
        self._lock = threading.Lock()

    # ---- the API ----------------------------------------------------------------------------------------------

    def start(self, model: str, *, user: str, operator: str | None = None, reason: str = "") -> RefitJob:
        """Check what can be checked at once (training stack, model, its training images, reviews), then run the
        job in the background; the start is in the audit log before this returns."""
        missing = missing_training_package()
        if missing:
            raise TrainingStackMissing(
                f"re-fitting needs the training stack, and {missing} is not installed on this box: {FIT_EXTRA} "
                "(or re-fit on an engineering PC and load the new version)"
            )
        entry = self.registry.get(model)
        train_dir = self._train_dir(entry)
        reviewed = self.reader.review_counts(model)
        if not reviewed["good"]:
            raise Conflict(
                f"no inspection of '{model}' is reviewed as good yet: a re-fit fits on reviewed good parts and "
                "calibrates on reviewed ones; review some in the review queue first"
            )
        with self._lock:
            running = [j for j in self.jobs.values() if j.model == model and j.state == "running"]
            if running:
                raise Conflict(f"a re-fit of '{model}' is already running (job {running[0].id}); cancel it first")
            job = RefitJob(uuid.uuid4().hex[:12], model, user, operator, reason, time.time())
            self.audit.append(
                "refit",
                user=user,
                operator=operator,
                model=model,
                subject=job.id,
                old=entry.version,
                new="started",
                reason=reason
                or f"re-fit on {train_dir} plus {reviewed['good']} reviewed good and {reviewed['defect']} reviewed "
                "defective images",
            )
            self.jobs[job.id] = job
            self._forget_old()
        job._thread = threading.Thread(target=self._run, args=(job, entry), name=f"refit-{model}", daemon=True)
        job._thread.start()
        return job

    def get(self, job_id: str) -> RefitJob:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no re-fit job {job_id}")
        return job

    def recent(self) -> list[RefitJob]:
        """Newest first."""
        return sorted(self.jobs.values(), key=lambda j: j.started, reverse=True)

    def cancel(self, job_id: str, *, user: str, operator: str | None = None) -> RefitJob:
        """Stop a running job; it removes what it wrote and ends `cancelled` (its thread logs who cancelled)."""
        job = self.get(job_id)
        if job.state != "running":
            raise Conflict(f"re-fit job {job_id} has already ended ({job.state})")
        if job.stage in ("load", "done"):
            raise Conflict(f"re-fit job {job_id} is landing its version as the shadow; it can no longer be cancelled")
        job.cancelled_by = (user, operator)
        job._cancel.set()
        _stop(job._process)
        return job

    def close(self) -> None:
        """Cancel every running job and wait for each to clean up (the service is stopping)."""
        for job in list(self.jobs.values()):
            if job.state == "running" and job.stage not in ("load", "done"):
                job.cancelled_by = ("service", None)
                job._cancel.set()
                _stop(job._process)
        for job in list(self.jobs.values()):
            if job._thread is not None:
                job._thread.join(timeout=STOP_WAIT_S * 2)

    def remove_leftovers(self) -> None:
        """After a crash: the staging folders beside the served models and data sets of jobs that never landed."""
        for home in self.registry.homes.values():
            versions = versions_dir(home)
            for staging in versions.glob(f"{STAGING_PREFIX}*"):
                log.warning("removing %s, left by a re-fit that did not finish", staging)
                shutil.rmtree(staging, ignore_errors=True)
                with contextlib.suppress(OSError):  # only when that leaves it empty
                    versions.rmdir()
        for marker in (self.store_root / REFITS_DIR).glob(f"*/{INCOMPLETE}"):
            log.warning("removing %s, the data set of a re-fit that did not finish", marker.parent)
            shutil.rmtree(marker.parent, ignore_errors=True)

    # ---- one job ----------------------------------------------------------------------------------------------

    def _run(self, job: RefitJob, entry: LoadedModel) -> None:
        data_root = self.store_root / REFITS_DIR / job.id
        home = self.registry.homes[job.model]
        versions = self.registry.versions_dir(job.model)
        created_versions = not versions.exists()
        staging = versions / f"{STAGING_PREFIX}{job.id}"
        unchanged = "nothing was written and the active model is unchanged"
        state: RefitState = "failed"
        try:
            self._assemble(job, entry, data_root)
            staging.mkdir(parents=True)
            self._fit(job, entry, data_root, staging / "model")
            self._calibrate(job, entry, data_root, staging / "model")
            target = self._move_into_place(job, home, staging / "model", data_root)
            message = self._land(job, entry, target)
            state = "succeeded"
        except RefitCancelled:
            state, message = "cancelled", f"cancelled; {unchanged}"
        except RefitFailed as exc:
            message = f"{exc}; {unchanged}"
        except Exception as exc:
            log.exception("re-fit %s of %s failed", job.id, job.model)
            message = f"{type(exc).__name__}: {exc}; {unchanged}"
        finally:  # cleaned up before the job is seen to end
            shutil.rmtree(staging, ignore_errors=True)
            if state != "succeeded":
                shutil.rmtree(data_root, ignore_errors=True)
                if created_versions:
                    with contextlib.suppress(OSError):  # only when empty: a shadow may have been loaded meanwhile
                        versions.rmdir()
        self._end(job, state, message)

    def _assemble(self, job: RefitJob, entry: LoadedModel, data_root: Path) -> None:
        """The data set: training images, reviewed good ones to fit and to calibrate, reviewed defects."""
        self._update(job, stage="dataset", percent=0.0)
        data_root.mkdir(parents=True)
        (data_root / INCOMPLETE).touch()
        train_dir = self._train_dir(entry)
        export_reviewed(self.store_root, data_root, model=job.model)  # <recipe>/train/good, test/defect
        category = data_root / job.model
        train, held_good = category / "train" / GOOD, category / "test" / GOOD
        train.mkdir(parents=True, exist_ok=True)
        held_good.mkdir(parents=True, exist_ok=True)
        self._check_cancel(job)

        defect_dir = category / "test" / "defect"
        defects = {p.name for p in list_images(defect_dir)} if defect_dir.is_dir() else set()
        base = [p for p in list_images(train_dir) if p.name not in defects]  # fitted on before, reviewed defect since
        base_names = {p.name for p in base}
        fresh = [p for p in list_images(train) if p.name not in base_names]  # earlier re-fits fitted on the rest
        for image in list_images(train):
            if image.name in base_names:
                image.unlink()
        held = fresh[1::2] or fresh[:1]  # every other one (half, spread over time; one alone calibrates)
        if not held:
            raise RefitFailed(
                f"every image of '{job.model}' reviewed as good was already fitted on; review newer parts to "
                "calibrate the new version on"
            )
        for image in held:
            image.rename(held_good / image.name)
        for i, image in enumerate(base):
            _link_or_copy(image, train / image.name)
            if i % 50 == 0:
                self._check_cancel(job)
                self._update(job, percent=100.0 * i / len(base))
        job.counts = {
            "train_images": len(list_images(train)),
            "train_reviewed_good": len(fresh) - len(held),
            "calibration_good": len(held),
            "calibration_defect": len(defects),
        }
        self._update(job, percent=100.0)

    def _fit(self, job: RefitJob, entry: LoadedModel, data_root: Path, out: Path) -> None:
        """`inspector fit` with the model's own method and parameters, at low priority on one thread."""
        manifest = read_manifest(entry.dir, verify=False)
        kind = manifest["model"]
        config = data_root / "fit.yaml"
        config.write_text(yaml.safe_dump({"model": kind, kind: manifest.get("params", {})}, sort_keys=True))
        args = ["fit", "--data-root", str(data_root), "--category", job.model, "--model", kind]
        self._child(job, "fit", [*args, "--config", str(config), "--out", str(out), "--threads", "1"])

    def _calibrate(self, job: RefitJob, entry: LoadedModel, data_root: Path, model_dir: Path) -> None:
        """The active calibration's rule, targets and review band on the held-out reviewed images; with no
        reviewed defect the good-only `normal` rule."""
        active = entry.calibration
        targets = active.targets if active else {}
        fpr = targets.get("false_reject_rate")
        recall = targets.get("recall")
        has_defects = job.counts.get("calibration_defect", 0) > 0
        if not has_defects:
            rule = "normal"
            fpr = fpr or DEFAULT_TARGET_FPR
            job.notes.append(
                f"no reviewed defect: calibrated with the good-only normal rule (false-reject target {fpr:g}) on "
                f"{job.counts.get('calibration_good', 0)} reviewed good images"
            )
        elif active is not None and (active.rule in ("f1", "youden") or (active.rule == "recall" and recall)):
            rule = active.rule
        elif active is not None and active.rule in ("fpr", "normal") and fpr:
            rule = "fpr"  # the same false-reject target; with defects it is traded against the escapes
        else:
            rule = "f1"
        if has_defects:
            job.notes.append(
                f"calibrated with the {rule} rule on {job.counts.get('calibration_good', 0)} reviewed good and "
                f"{job.counts['calibration_defect']} reviewed defective images"
            )
        args = ["calibrate", "--model-dir", str(model_dir), "--data-root", str(data_root), "--category", job.model]
        args += ["--method", rule, "--name", f"refit-{job.id}", "--threads", "1"]
        args += ["--confidence", str(targets.get("confidence", DEFAULT_CONFIDENCE))]
        if rule in ("fpr", "normal"):
            args += ["--target-fpr", str(fpr or DEFAULT_TARGET_FPR)]
        if rule == "recall" and recall is not None:
            args += ["--target-recall", str(recall)]
        if active is not None and active.review_band is not None:
            args += ["--review-band", f"{active.review_band[0]}:{active.review_band[1]}"]
        self._child(job, "calibrate", args)

    def _move_into_place(self, job: RefitJob, home: Path, model_dir: Path, data_root: Path) -> Path:
        """The finished version, calibrated, renamed whole to the next free `<recipe>-v<N>` in the recipe's
        versions folder (where its pointer lives); from then on its data set is kept."""
        self._check_cancel(job)
        self._update(job, stage="load", step=None, percent=0.0)
        for _ in range(100):
            target = next_version_dir(home)
            try:
                target.mkdir()  # claims the name: a rename onto an empty folder would replace it silently
            except FileExistsError:
                continue
            os.rename(model_dir, target)
            (data_root / INCOMPLETE).unlink()
            return target
        raise RefitFailed(f"no free version name in {versions_dir(home)}")

    def _land(self, job: RefitJob, entry: LoadedModel, target: Path) -> str:
        """Load and warm the new version as the recipe's shadow (a version that cannot be loaded is removed);
        returns what to tell the operator."""
        before = self.registry.shadow(job.model)
        try:
            shadow = self.registry.load_shadow(job.model, target)
        except Exception as exc:
            shutil.rmtree(target, ignore_errors=True)
            detail = getattr(exc, "detail", None) or str(exc)
            raise RefitFailed(f"the new version could not be loaded as the shadow of '{job.model}': {detail}") from exc
        job.version, job.dir = target.name, str(target)
        self.audit.append(
            "model_shadow",
            user=job.user,
            operator=job.operator,
            model=job.model,
            subject=job.id,
            old=before.version if before else None,
            new=shadow.version,
            reason=f"re-fit {job.id} landed {target} as the shadow",
        )
        return f"{target.name} ({shadow.version}) is the shadow of '{job.model}'"

    def _child(self, job: RefitJob, stage: RefitStage, args: list[str]) -> None:
        """Run one `inspector` command at low priority; its progress lines move the job's percent."""
        self._check_cancel(job)
        self._update(job, stage=stage, step=None, percent=0.0)
        env = {**os.environ, **_ONE_THREAD, "PYTHONUNBUFFERED": "1"}
        tail: deque[str] = deque(maxlen=20)
        process = subprocess.Popen(
            [*self.command, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
            start_new_session=True,  # its own process group: a cancel stops every process it started
        )
        job._process = process
        if job._cancel.is_set():  # cancelled while it was being started
            _stop(process)
        assert process.stdout is not None
        for line in process.stdout:
            line = line.strip()
            if not line:
                continue
            tail.append(line)
            match = _PROGRESS.match(line)
            if match:
                self._update(job, step=match["step"], percent=float(min(100, int(match["percent"]))))
        status = process.wait()
        job._process = None
        self._check_cancel(job)
        if status != 0:
            errors = [t for t in tail if t.startswith("error:")]
            raise RefitFailed(f"{stage} failed (exit {status}): {(errors or list(tail) or ['no output'])[-1]}")
        self._update(job, percent=100.0)

    # ---- bookkeeping ------------------------------------------------------------------------------------------

    def _train_dir(self, entry: LoadedModel) -> Path:
        data = entry.scorer.data_info
        train_dir = data.get("train_dir")
        if not train_dir or not Path(train_dir).is_dir():
            where = f" ({train_dir})" if train_dir else ""
            raise Conflict(
                f"the images '{entry.name}' was fitted on{where} are not on this box, so it cannot be re-fitted "
                "here; re-fit where they are"
            )
        return Path(train_dir)

    def _check_cancel(self, job: RefitJob) -> None:
        if job._cancel.is_set():
            raise RefitCancelled

    def _update(self, job: RefitJob, **changes: object) -> None:
        stage = changes.get("stage")
        if isinstance(stage, str) and stage not in job.stages_s:
            job.stages_s[stage] = round(job.elapsed_s, 2)
        for name, value in changes.items():
            setattr(job, name, value)

    def _end(self, job: RefitJob, state: RefitState, message: str) -> None:
        """Log the end, then show it: whoever sees the job ended finds its entry in the audit log."""
        user, operator = job.cancelled_by or (job.user, job.operator)
        try:
            self.audit.append(
                "refit",
                user=user,
                operator=operator,
                model=job.model,
                subject=job.id,
                old="running",
                new=state,
                reason=message,
            )
        except Exception:  # the log is closing (the service stops): the job's end must still be known
            log.exception("could not log the end of re-fit %s", job.id)
        log.info("re-fit %s of %s %s: %s", job.id, job.model, state, message)
        if state == "succeeded":
            self._update(job, stage="done", percent=100.0)
        job.message, job.finished = message, time.time()
        job.state = state

    def _forget_old(self) -> None:
        ended = sorted((j for j in self.jobs.values() if j.state != "running"), key=lambda j: j.started)
        for job in ended[: max(0, len(ended) - KEEP_JOBS)]:
            del self.jobs[job.id]


def _stop(process: subprocess.Popen[str] | None) -> None:
    """SIGTERM to the child's process group, SIGKILL if it is still there after STOP_WAIT_S (in a thread, so a
    cancel request is answered at once)."""
    if process is None or process.poll() is not None:
        return

    def stop() -> None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    threading.Thread(target=stop, name="refit-stop", daemon=True).start()


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link where the file system allows one (no space taken), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
