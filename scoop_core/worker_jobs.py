"""Workers in batch jobs submitted from a login node: ``scoop run --jobs N --scheduler NAME``.

The scheduler launchers (:mod:`scoop_core.scheduler_launcher`) start workers
*inside* an allocation the user already has. This module does the other
thing, the way dask-jobqueue does: from outside any job, the launcher runs
the root program here at once and submits ``N`` jobs (``sbatch``, ``qsub``)
of ``cores-per-job`` workers each; each job's workers join the run when the
scheduler starts it, so the program speeds up as jobs start. Every job
submitted is tracked and cancelled when the run ends, fails or is
interrupted. What differs between schedulers (a job script's directives,
and the command lines that submit, list and cancel jobs) comes from the
scheduler plugin's :class:`~scoop_core.interfaces.JobQueue` (the
``job_queue`` field of its :class:`~scoop_core.plugins.types.LauncherPlugin`);
everything else is here, once.

**The job script** is a template plus options: ``#!/bin/sh``, the queue's
header (name, output and error files, one node with ``cores`` cores,
memory, walltime, queue, the user's ``--job-extra`` directives), a ``cd``
to the launcher's working directory, and ``exec python -m
scoop_core.worker_jobs PLAN REPORT``. ``--dry-run`` prints it with the
submit command and submits nothing.

**The run's key** is in no job script, on no command line, in no file
others can read, and not in the submission's environment: Grid Engine shows
a job's exported environment to every user (``qstat -j``), and an
environment travels through the scheduler's spool. Each job's *plan* (its
workers' command lines and environments, the key among them) is written to
``~/.scoop/jobs/RUN/job-I.plan``: created 0600 with ``O_EXCL``, in
directories only the user can use (:func:`scoop_core.run_keys.private_dir`),
which the nodes see since clusters share home directories. The job reads it
only if it is still a private regular file of the user's
(:func:`~scoop_core.run_keys.read_private_file`, no symbolic link), and
deletes it: each plan is used once. The launcher removes the directory when
the run ends, so a job that starts after that finds no plan and exits. The
submit command runs without the ``SCOOP_*`` and ``_SCOOP_*`` variables
in its environment (``$SCOOP_RUN_KEY``, a Redis URL's password), since
``sbatch`` exports it into the job: the workers' settings travel in the
plan, as they do to hosts reached over ssh.

**Files the user reads** go to ``scoop-jobs/RUN/`` in the working
directory (the setting ``job_directory`` moves it): each job's script
(``job-I.sh``), output and error files (``job-I.out``, ``job-I.err``), and
its report (``job-I.report``), where the job writes the node it runs on,
each worker's exit status as it exits, and its own status at its end. They
are kept after the run.

**Tracking**: a thread lists the user's jobs every ``poll_interval``
seconds and reads the reports. A worker is running (``None``) while its job
is queued or running; its status is the one it reported, or 255 once its
job has left the queue without a report, failed, or was stuck in an error
state (cancelled at once). A job still queued after ``pending_timeout``
seconds, a job that failed, or ended otherwise than by its workers all
leaving (it was cancelled from outside, killed, or never got going), and a
worker that died are logged with the job's id, the scheduler's state and
where its output is; the run goes on with the workers it has.

**Cancelling**: :meth:`JobGroup.stop` (the run ending, an error, Ctrl-C)
cancels every job still listed with one ``scancel``/``qdel`` and waits
until the scheduler lists none of them as queued or running.

A job runs no host supervisor: it *is* the one process of the run on its
node that owns the workers (:func:`job_main`). It starts them with the
``local`` launcher, passes SIGTERM on to them (they hand back the futures
they hold), and ends when they all have.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from scoop_core.errors import LaunchError, UsageError
from scoop_core.interfaces import JobQueue, JobRequest, Launcher, WorkerGroup, WorkerSpec
from scoop_core.plugins.types import Setting
from scoop_core.run_keys import private_dir, read_private_file, scoop_home

log = logging.getLogger("scoop.launcher")

MODULE = "scoop_core.worker_jobs"

JOB_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "pending_timeout",
        float,
        300.0,
        "seconds a job may wait in the queue before the launcher says so (it stays queued)",
    ),
    Setting(
        "poll_interval", float, 2.0, "seconds between two looks at the scheduler's list of jobs"
    ),
    Setting(
        "job_directory",
        str,
        "",
        "where each run's job scripts and output files go, in a directory named after the "
        "run; empty: scoop-jobs in the working directory",
    ),
)
"""Settings of every scheduler plugin that submits jobs, in its own section (``launcher.slurm``)."""

LOST = 255
"""The status of a worker whose job ended without its report, failed or was cancelled."""

_COMMAND_TIMEOUT = 60.0
_CANCEL_WAIT = 60.0
_UNSEEN = 10.0
"""Seconds a job just submitted may be missing from the scheduler's list before it counts as gone."""

# -- sizes and durations -------------------------------------------------------------

_MEMORY = re.compile(r"(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[kmgtp])(?:i?b)?\Z", re.I)
_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_memory(text: str) -> int:
    """Bytes in ``16G``, ``512M``, ``1.5GB``, ``2GiB``: K, M, G, T and P
    count in powers of 1024, as the schedulers count them, with or without
    a trailing ``B``/``iB``. A number without a unit is refused: SLURM
    would read megabytes, PBS bytes."""
    match = _MEMORY.match(text.strip())
    if not match:
        raise ValueError(
            f"memory {text!r} is not a size with a unit: write it like 16G, 512M or 1.5G "
            "(K, M, G, T count in powers of 1024)"
        )
    value = float(match["number"]) * 1024 ** _POWERS[match["unit"].lower()]
    if value < 1:
        raise ValueError(f"memory {text!r} is less than one byte")
    return math.ceil(value)


def megabytes(size: int) -> int:
    """``size`` bytes in MiB, rounded up (a job never gets less than asked)."""
    return max(1, -(-size // (1 << 20)))


_CLOCK = re.compile(r"(?:(?P<days>\d+)-)?(?P<h>\d+):(?P<m>\d{1,2}):(?P<s>\d{1,2})\Z")
_DAYS_HOURS = re.compile(r"(?P<days>\d+)-(?P<h>\d+)(?::(?P<m>\d{1,2}))?\Z")
_UNIT_PARTS = re.compile(r"(\d+)([dhms])")


def parse_walltime(text: str) -> int:
    """Seconds in a walltime: ``H:MM:SS``, ``D-H:MM:SS``, ``D-H[:MM]`` (as SLURM
    writes them), or units: ``90m``, ``1h30m``, ``2d``, ``45s``.

    A bare number and ``A:B`` are refused: schedulers disagree on what they
    mean (minutes or seconds; hours:minutes or minutes:seconds)."""
    given = text.strip()
    match = _CLOCK.match(given) or _DAYS_HOURS.match(given)
    if match:
        parts = match.groupdict()
        minutes, seconds = int(parts.get("m") or 0), int(parts.get("s") or 0)
        if minutes >= 60 or seconds >= 60:
            raise ValueError(f"walltime {text!r}: minutes and seconds go up to 59")
        total = int(parts["days"] or 0) * 86400 + int(parts["h"]) * 3600 + minutes * 60 + seconds
    elif given and _UNIT_PARTS.sub("", given.lower()) == "":
        units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
        pieces = _UNIT_PARTS.findall(given.lower())
        if len({unit for _, unit in pieces}) != len(pieces):
            raise ValueError(f"walltime {text!r} names a unit twice")
        total = sum(int(number) * units[unit] for number, unit in pieces)
    else:
        raise ValueError(
            f"walltime {text!r} is not H:MM:SS, D-H:MM:SS or a duration with units such as "
            "90m or 1h30m (a bare number or A:B means minutes to one scheduler and seconds "
            "to another: write 1:30:00 for an hour and a half)"
        )
    if total < 1:
        raise ValueError(f"walltime {text!r} is no time at all")
    return total


def format_walltime(seconds: int, *, days: bool = False) -> str:
    """``H:MM:SS`` (hours past 24 as they are), or ``D-HH:MM:SS`` from a day on with ``days``."""
    minutes, secs = divmod(seconds, 60)
    hours, mins = divmod(minutes, 60)
    if days and hours >= 24:
        return f"{hours // 24}-{hours % 24:02d}:{mins:02d}:{secs:02d}"
    return f"{hours}:{mins:02d}:{secs:02d}"


# -- what the user asked for ------------------------------------------------------------


@dataclass(frozen=True)
class JobOptions:
    """The jobs of a run: how many, and what each asks the scheduler for."""

    jobs: int
    cores: int = 1
    memory: int | None = None
    walltime: int | None = None
    queue: str | None = None
    extra: tuple[str, ...] = ()

    @property
    def workers(self) -> int:
        """One worker per core of every job."""
        return self.jobs * self.cores


@dataclass
class _Job:
    """One job of the run: its files, its workers, and what is known of it."""

    index: int
    request: JobRequest
    script: Path
    report: Path
    plan: Path
    workers: list[str]
    id: str = ""
    phase: str = JobQueue.PENDING
    state: str = ""
    submitted: float = 0.0
    host: str = ""
    end: int | None = None  # the status its job process reported at its end
    finished: bool = False
    seen: bool = False
    said_pending: bool = False
    statuses: dict[str, int | None] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"job {self.id} (job-{self.index}: {', '.join(self.workers)})"


def job_script(queue: JobQueue, request: JobRequest, command: Sequence[str], cwd: str) -> str:
    """The text of a job script: the queue's header, then the job's command,
    run in ``cwd``. ``ValueError`` if the queue cannot write the request."""
    lines = [
        "#!/bin/sh",
        *queue.header(request),
        "# The run's key is not here: the job reads it from its plan, a file only you",
        "# can read, and deletes it (see scoop_core.worker_jobs).",
        f"cd {shlex.quote(cwd)} || exit 1",
        f"exec {shlex.join(command)}",
    ]
    return "\n".join(lines) + "\n"


class WorkerJobs(Launcher):
    """A launcher that submits jobs of workers to a batch scheduler (see the module docstring).

    ``settings`` are the scheduler plugin's (:data:`JOB_SETTINGS` among
    them); ``python`` runs each job's :func:`job_main`; ``environ``
    (default: this process's) is where the scheduler's commands are looked
    up and what they run with, minus the run's secrets."""

    def __init__(
        self,
        queue: JobQueue,
        options: JobOptions,
        *,
        settings: Mapping[str, Any] | None = None,
        python: str = sys.executable,
        cwd: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.queue = queue
        self.options = options
        settings = dict(settings or {})
        self.pending_timeout = float(settings.get("pending_timeout") or 300.0)
        self.poll_interval = float(settings.get("poll_interval") or 2.0)
        self.directory = Path(settings.get("job_directory") or "scoop-jobs").absolute()
        self.python = python
        self.cwd = os.path.abspath(cwd or os.getcwd())
        base = os.environ if environ is None else environ
        # What sbatch exports into the job: never the run's secrets nor its settings.
        self.environ = {k: v for k, v in base.items() if not k.startswith(("SCOOP_", "_SCOOP_"))}

    # -- the jobs' files ---------------------------------------------------------------

    def run_directory(self, run_id: str) -> Path:
        """Where the run's job scripts and output files go."""
        return self.directory / run_id

    def plan_directory(self, run_id: str) -> Path:
        """Where the run's job plans (with its key) go: the user's alone."""
        return scoop_home() / "jobs" / run_id

    def jobs(self, run_id: str, workers: Sequence[str]) -> list[_Job]:
        """The run's jobs, each with its share of ``workers`` (in order)."""
        opts = self.options
        if len(workers) != opts.workers:
            raise LaunchError(
                f"{len(workers)} workers for {opts.jobs} jobs of {opts.cores} cores: the run "
                "and its jobs disagree"
            )
        files = self.run_directory(run_id)
        jobs = []
        for index in range(1, opts.jobs + 1):
            stem = files / f"job-{index}"
            request = JobRequest(
                name=f"scoop-{run_id}-{index}",
                cores=opts.cores,
                output=f"{stem}.out",
                error=f"{stem}.err",
                memory=opts.memory,
                walltime=opts.walltime,
                queue=opts.queue,
                extra=opts.extra,
            )
            names = list(workers[(index - 1) * opts.cores : index * opts.cores])
            jobs.append(
                _Job(
                    index=index,
                    request=request,
                    script=Path(f"{stem}.sh"),
                    report=Path(f"{stem}.report"),
                    plan=self.plan_directory(run_id) / f"job-{index}.plan",
                    workers=names,
                    statuses=dict.fromkeys(names),
                )
            )
        return jobs

    def script(self, job: _Job) -> str:
        """``job``'s script; :class:`UsageError` if the scheduler cannot take what it asks."""
        command = [self.python, "-m", MODULE, str(job.plan), str(job.report)]
        try:
            return job_script(self.queue, job.request, command, self.cwd)
        except ValueError as exc:
            raise UsageError(f"{self.queue.scheduler} job: {exc}") from None

    def dry_run(self, run_id: str) -> str:
        """What ``--dry-run`` prints: the first job's script and every submit
        command; nothing is written or submitted."""
        names = [f"worker-{i}" for i in range(1, self.options.workers + 1)]
        jobs = self.jobs(run_id, names)
        first = jobs[0]
        same = " (the others differ only in their number)" if len(jobs) > 1 else ""
        lines = [
            f"# run {run_id}: {len(jobs)} {self.queue.scheduler} job(s) of "
            f"{self.options.cores} worker(s); the script of job 1, {first.script}{same}:",
            self.script(first).rstrip("\n"),
            "# submitted with:",
            *(shlex.join(self.queue.submit_command(str(job.script))) for job in jobs),
        ]
        return "\n".join(lines) + "\n"

    # -- the Launcher interface -----------------------------------------------------------

    def start(self, workers: Sequence[WorkerSpec]) -> JobGroup:
        """Write each job's plan and script and submit it; return at once (the
        jobs start when the scheduler starts them). A submission that fails
        cancels the jobs submitted before it and raises :class:`LaunchError`
        with the submit command's error output. Ctrl-C (or SIGTERM) cancels
        them too, once the submission in flight has returned its job's id; a
        second Ctrl-C does not wait for it."""
        if not workers:
            raise LaunchError("no workers to submit jobs for")
        run_id = workers[0].env.get("_SCOOP_RUN_ID") or "run"
        jobs = self.jobs(run_id, [spec.name for spec in workers])
        specs = {spec.name: spec for spec in workers}
        texts = [self.script(job) for job in jobs]
        group = JobGroup(self, jobs, self.plan_directory(run_id))
        submitting: _Job | None = None
        try:
            self.run_directory(run_id).mkdir(parents=True, exist_ok=True)
            private_dir(self.plan_directory(run_id), scoop_home())
            for job, text in zip(jobs, texts, strict=True):
                _write_plan(job.plan, [specs[name] for name in job.workers])
                job.script.write_text(text)
                # A job the scheduler has queued is cancelled only if its id is known.
                submitting = job
                with _signals_held():
                    job.id = self._submit(job)
                    job.submitted = time.monotonic()
                log.debug("%s job %s: %s", self.queue.scheduler, job.id, job.script)
        except BaseException as exc:
            if submitting is not None and not submitting.id and not isinstance(exc, LaunchError):
                log.warning(
                    "interrupted while submitting %s: if %s queued it, cancel the job named "
                    "%s by hand",
                    submitting.script,
                    self.queue.scheduler,
                    submitting.request.name,
                )
            group.stop(0.0)
            raise
        log.warning(
            "submitted %d %s job(s) of %d worker(s) (%s); their scripts and output are in "
            "%s; the program starts now and its workers join as the jobs start",
            len(jobs),
            self.queue.scheduler,
            self.options.cores,
            ", ".join(job.id for job in jobs),
            self.run_directory(run_id),
        )
        group.start_watching()
        return group

    def _submit(self, job: _Job) -> str:
        argv = self.queue.submit_command(str(job.script))
        done = self.run_command(argv)
        if done.returncode != 0:
            raise LaunchError(
                f"{self.queue.scheduler}: {shlex.join(argv)} failed (exit {done.returncode}): "
                f"{_one_line(done.stderr or done.stdout) or 'it printed nothing'}"
            )
        try:
            return self.queue.job_id(done.stdout)
        except ValueError as exc:
            raise LaunchError(
                f"{self.queue.scheduler}: cannot read the job id {shlex.join(argv)} printed "
                f"({exc}); is the job queued? check with the scheduler"
            ) from None

    def run_command(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        """Run one of the scheduler's commands; :class:`LaunchError` if it cannot run."""
        try:
            return subprocess.run(
                list(argv),
                env=self.environ,
                cwd=self.cwd,
                capture_output=True,
                text=True,
                timeout=_COMMAND_TIMEOUT,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LaunchError(
                f"{self.queue.scheduler}: cannot run {shlex.join(argv)}: {exc} (is the "
                "scheduler's client installed and on PATH?)"
            ) from None


class JobGroup(WorkerGroup):
    """The workers of a run's jobs: each is running (``None``) until it, or its job, ends."""

    def __init__(self, launcher: WorkerJobs, jobs: list[_Job], plans: Path) -> None:
        self.launcher = launcher
        self.queue = launcher.queue
        self.jobs = jobs
        self.plans = plans
        self.lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start_watching(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="scoop-jobs", daemon=True)
        self._thread.start()

    def poll(self) -> dict[str, int | None]:
        with self.lock:
            return {name: s for job in self.jobs for name, s in job.statuses.items()}

    def stop(self, grace: float) -> None:
        """Cancel every job still queued or running, and wait until the
        scheduler lists none of them as such (:data:`_CANCEL_WAIT` s at most)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(_COMMAND_TIMEOUT + 5)
        try:
            self._cancel_all()
        finally:
            shutil.rmtree(self.plans, ignore_errors=True)
            with self.lock:
                for job in self.jobs:
                    self._read_report(job, quiet=True)
                    for name, status in job.statuses.items():
                        if status is None:
                            job.statuses[name] = -signal.SIGTERM

    # -- watching ---------------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stopping.wait(self.launcher.poll_interval):
            try:
                self.refresh()
            except Exception:  # the watch goes on: a bad listing must not end it
                log.exception("%s: could not look at the run's jobs", self.queue.scheduler)

    def listed(self) -> dict[str, str] | None:
        """Each submitted job the scheduler lists, with its state; None if it cannot be listed."""
        ids = [job.id for job in self.jobs if job.id]
        if not ids:
            return {}
        argv = self.queue.list_command()
        try:
            done = self.launcher.run_command(argv)
        except LaunchError as exc:
            log.debug("%s", exc)
            return None
        if done.returncode != 0:
            log.debug("%s failed: %s", shlex.join(argv), _one_line(done.stderr))
            return None
        try:
            return self.queue.states(done.stdout, ids)
        except ValueError as exc:
            log.debug("%s: %s", shlex.join(argv), exc)
            return None

    def refresh(self) -> None:
        """Look at the jobs once: read their reports and states, say what changed."""
        listed = self.listed()
        if listed is None:
            return
        stuck = []
        with self.lock:
            for job in self.jobs:
                if job.finished or not job.id:
                    continue
                self._read_report(job)
                state = listed.get(job.id)
                if state is None and not job.seen and time.monotonic() - job.submitted < _UNSEEN:
                    continue  # not in the scheduler's list yet
                job.seen = job.seen or state is not None
                job.state = state or job.state
                phase = self.queue.phase(state) if state is not None else JobQueue.ENDED
                self._moved(job, phase)
                if phase == JobQueue.FAILED and state is not None:
                    stuck.append(job.id)
        if stuck:
            self._cancel(stuck)

    def _moved(self, job: _Job, phase: str) -> None:
        """Say what ``job`` now in ``phase`` means for the run, once."""
        scheduler = self.queue.scheduler
        previous, job.phase = job.phase, phase
        if phase == JobQueue.PENDING:
            waited = time.monotonic() - job.submitted
            if waited > self.launcher.pending_timeout and not job.said_pending:
                job.said_pending = True
                started = any(j.phase != JobQueue.PENDING for j in self.jobs)
                log.warning(
                    "%s %s is still queued (%s) after %.0f s; the run goes on without its "
                    "workers until it starts; its output will be in %s%s",
                    scheduler,
                    job.label,
                    job.state,
                    waited,
                    job.request.output,
                    "" if started else " (no job has started yet: futures wait for workers)",
                )
        elif phase == JobQueue.RUNNING:
            if previous == JobQueue.PENDING:
                log.info(
                    "%s %s started%s: its workers join the run",
                    scheduler,
                    job.label,
                    f" on {job.host}" if job.host else "",
                )
        else:
            job.finished = True
            missing = [name for name, status in job.statuses.items() if status is None]
            for name in missing:
                job.statuses[name] = LOST
            if phase == JobQueue.FAILED or missing or job.end != 0:
                how = "failed" if phase == JobQueue.FAILED else "ended"
                if missing:
                    why = f"before {', '.join(missing)} reported"
                elif job.end is None:
                    why = "before its job process reported its end (killed, or never started)"
                else:
                    why = f"after its job process was stopped (status {job.end})"
                log.warning(
                    "%s %s %s (%s) %s; the run goes on with the workers it has; see %s and %s",
                    scheduler,
                    job.label,
                    how,
                    job.state or "no longer listed",
                    why,
                    job.request.error,
                    job.request.output,
                )

    def _read_report(self, job: _Job, *, quiet: bool = False) -> None:
        """Take what ``job`` reported: lines ``host NAME``, ``exit WORKER STATUS`` and ``end STATUS``."""
        try:
            text = job.report.read_text(errors="replace")
        except OSError:
            return
        for line in text.splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "host":
                job.host = rest.strip()
            elif kind == "end" and rest.strip().lstrip("-").isdigit():
                job.end = int(rest)
            elif kind == "exit":
                name, _, status = rest.rpartition(" ")
                if job.statuses.get(name, 0) is None and status.lstrip("-").isdigit():
                    job.statuses[name] = int(status)
                    if int(status) != 0 and not quiet and not self._stopping.is_set():
                        log.warning(
                            "%s in %s job %s exited with status %s; its output is in %s",
                            name,
                            self.queue.scheduler,
                            job.id,
                            status,
                            job.request.error,
                        )

    # -- cancelling -------------------------------------------------------------------------

    def _cancel(self, ids: Sequence[str]) -> None:
        argv = self.queue.cancel_command(ids)
        try:
            done = self.launcher.run_command(argv)
        except LaunchError as exc:
            log.error("%s", exc)
            return
        if done.returncode != 0:
            # A job that ended meanwhile cannot be cancelled: not an error.
            log.debug("%s: %s", shlex.join(argv), _one_line(done.stderr or done.stdout))

    def _cancel_all(self) -> None:
        submitted = [job.id for job in self.jobs if job.id]
        if not submitted:
            return
        self._cancel(submitted)
        deadline = time.monotonic() + _CANCEL_WAIT
        left = submitted
        while True:
            listed = self.listed()
            if listed is not None:
                left = [
                    i
                    for i in submitted
                    if i in listed
                    and self.queue.phase(listed[i]) in (JobQueue.PENDING, JobQueue.RUNNING)
                ]
                if not left:
                    log.info("%s: the run's jobs are gone", self.queue.scheduler)
                    return
            if time.monotonic() > deadline:
                break
            time.sleep(0.25)  # polling the scheduler's list, with a deadline
        log.error(
            "%s still lists job(s) %s %.0f s after they were cancelled; cancel them with: %s",
            self.queue.scheduler,
            ", ".join(left),
            _CANCEL_WAIT,
            shlex.join(self.queue.cancel_command(left)),
        )


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """A first SIGINT or SIGTERM waits until the block is over, then takes
    effect; a second one takes effect at once.

    Around a submission: interrupted between the scheduler queueing the job
    and its id being read, the launcher could not cancel it. Only the main
    thread can hold signals (elsewhere the block runs as it is)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        held.append(signum)
        if len(held) == 1:
            log.warning(
                "stopping once the job being submitted is queued, to cancel it with the "
                "others (signal again to stop now)"
            )
        handler = previous[signal.Signals(signum)]
        # Checked after the warning: a second signal that came while it was being
        # written had its exception swallowed by logging.
        if len(held) > 1 and callable(handler):
            handler(signum, frame)

    previous = {s: signal.signal(s, hold) for s in _HELD}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if len(held) == 1:  # a second one took effect already
            signal.raise_signal(held[0])


_HELD = (signal.SIGINT, signal.SIGTERM)


def _write_plan(path: Path, specs: Sequence[WorkerSpec]) -> None:
    """Write a job's plan, secrets included, to a new file only this user can read."""
    plan = {
        "workers": [
            {"name": s.name, "argv": list(s.argv), "env": dict(s.env), "cwd": s.cwd} for s in specs
        ]
    }
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise LaunchError(f"cannot write the job plan {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(plan, fh)


def _one_line(text: str) -> str:
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())


# -- in the job ---------------------------------------------------------------------------


class _Stop(Exception):
    def __init__(self, signum: int) -> None:
        self.signum = signum


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signum)


def job_main(argv: Sequence[str] | None = None) -> int:
    """``python -m scoop_core.worker_jobs PLAN REPORT``: a job's one process of the run.

    Reads and deletes the plan, starts its workers here, writes ``host
    NAME``, then ``exit WORKER STATUS`` for each worker to REPORT as it
    exits, and ``end STATUS`` (its own) once they all have. On SIGTERM, SIGINT or SIGHUP (the
    job cancelled) it stops them: they hand back what they hold."""
    from scoop_core.local_launcher import LocalLauncher

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print(
            f"usage: python -m {MODULE} PLAN REPORT (run by scoop's job scripts)", file=sys.stderr
        )
        return 2
    plan, report = args
    try:
        text = read_private_file(plan, "the run's job plan", follow=False)
    except ValueError as exc:
        print(
            f"scoop job on {socket.gethostname()}: {exc}; the run may be over already",
            file=sys.stderr,
        )
        return 2
    finally:
        with contextlib.suppress(OSError):  # one use only, whatever happens
            os.unlink(plan)
    try:
        specs = [
            WorkerSpec(
                name=str(w["name"]),
                host=socket.gethostname(),
                argv=tuple(w["argv"]),
                env={**w["env"], "_SCOOP_PARENT_PID": str(os.getpid())},
                cwd=w.get("cwd"),
            )
            for w in json.loads(text)["workers"]
        ]
    except (ValueError, KeyError, TypeError) as exc:
        print(f"scoop job: cannot read the plan {plan}: {exc}", file=sys.stderr)
        return 2
    previous = {
        s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    }
    with open(report, "a", encoding="utf-8", buffering=1) as out:
        out.write(f"host {socket.gethostname()}\n")
        group = None
        written: set[str] = set()

        def write_exits() -> dict[str, int | None]:
            statuses: dict[str, int | None] = group.poll() if group is not None else {}
            for name, status in statuses.items():
                if status is not None and name not in written:
                    written.add(name)
                    out.write(f"exit {name} {status}\n")
            return statuses

        status = 1
        try:
            group = LocalLauncher().start(specs)
            while any(s is None for s in write_exits().values()):
                time.sleep(0.2)  # polling our own children
            status = 0 if not any(write_exits().values()) else 1
        except _Stop as stop:
            status = 128 + stop.signum
        finally:
            for s in previous:
                signal.signal(s, signal.SIG_IGN)
            if group is not None:
                group.stop(5.0)
                write_exits()
            out.write(f"end {status}\n")
        return status


if __name__ == "__main__":
    sys.exit(job_main())
