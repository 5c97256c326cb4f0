"""``chain``: other jobs of the organization run one after the other, in order; the first that fails stops
the chain, which fails naming it. Chains may nest (a step may be a chain), at most ``MAX_DEPTH`` deep, never
in a loop.

Each step runs inline, in the chain's run, on a run of its own (``trigger`` 'chain', ``parent_run_id`` the
chain's run) with a JobExecutor like the chain's (same settings, cell timeout and browser). The claim loop
never takes such runs (scheduler/run_queue.py), a step's failure sends no notice and queues no followers: the
chain decides (scheduler/executor.py). A step that failed on a transient error (a server that did not answer)
makes the chain's failure transient: the chain is retried with its job's backoff.

A retried chain (a transient failure, or a scheduler stopped mid-chain: run_queue.recover_interrupted_runs)
does not run again the steps that succeeded in this chain run. A step that had not succeeded is tried again
ON THE SAME step run (its attempt goes up): the mail it recorded is then delivered once (the outbox is keyed
by run), a nested chain skips its own succeeded steps the same way, and an earlier failure of it stays in its
run's history as that run's previous try.
"""

from __future__ import annotations

import logging

from sqlalchemy import select, update

from carnet.db import session_scope
from carnet.db.models import Job, JobRun, MailStatus, OutboxMail, RunStatus, utcnow
from carnet.errors import NotFound, ValidationError
from carnet.scheduler.executor import TRANSIENT_ERRORS, JobExecutor, JobRunError, TransientRunError
from carnet.scheduler.kinds import JobKind, PlannedMail, register

log = logging.getLogger("carnet.scheduler")

MAX_STEPS = 20
MAX_DEPTH = 5  # a chain of plain jobs is 1 deep; a chain with a chain among its steps is 2 deep...
FIELD = "config.steps"


def loop_error() -> ValidationError:
    return ValidationError(f"{FIELD} would make chains run each other in a loop", field=FIELD)


def chain_depth(session, org_id: int, steps: list[int], own_id: int | None) -> int:
    """How deep a chain over ``steps`` nests (1: no chain among them). Raises the loop error when a step
    leads back to ``own_id`` (the chain being changed) or around any circle of chains. A nested chain's step
    that no longer exists is left to its run (it fails there)."""
    depth_of: dict[int, int] = {}  # chains already walked: their depth (a walked chain holds no loop)

    def depth(step_ids, path: frozenset) -> int:
        deepest = 1
        for step_id in step_ids:
            if step_id == own_id or step_id in path:
                raise loop_error()
            if step_id not in depth_of:
                step = session.get(Job, step_id) if isinstance(step_id, int) else None
                if step is None or step.org_id != org_id or step.kind != ChainKind.name:
                    continue
                depth_of[step_id] = depth((step.config or {}).get("steps") or [], path | {step_id})
            deepest = max(deepest, 1 + depth_of[step_id])
        return deepest

    return depth(steps, frozenset())


def check_steps(session, org_id: int, steps, own_id: int | None = None) -> list[int]:
    """``steps``: 1-``MAX_STEPS`` distinct ids of jobs of ``org_id`` (another org's id is the same 404 as a
    missing one), nesting at most ``MAX_DEPTH`` deep and never leading back to ``own_id``."""
    if (
        not isinstance(steps, list)
        or not 1 <= len(steps) <= MAX_STEPS
        or not all(isinstance(step, int) and not isinstance(step, bool) for step in steps)
    ):
        raise ValidationError(f"{FIELD} must be a list of 1 to {MAX_STEPS} job ids", field=FIELD)
    if len(set(steps)) != len(steps):
        raise ValidationError(f"{FIELD} names a job twice", field=FIELD)
    for step_id in steps:
        if step_id == own_id:
            raise loop_error()
        if session.scalar(select(Job.id).where(Job.id == step_id, Job.org_id == org_id)) is None:
            raise NotFound("No such job")
    if chain_depth(session, org_id, steps, own_id) > MAX_DEPTH:
        raise ValidationError(f"{FIELD}: chains may nest at most {MAX_DEPTH} deep", field=FIELD)
    return steps


def run_ancestry(session, run: JobRun) -> list[JobRun]:
    """The chain runs ``run`` is a step of, nearest first."""
    ancestors, parent_id = [], run.parent_run_id
    while parent_id is not None and len(ancestors) <= MAX_DEPTH:
        parent = session.get(JobRun, parent_id)
        if parent is None:
            break
        ancestors.append(parent)
        parent_id = parent.parent_run_id
    return ancestors


def step_run_for(settings, context, step_id: int) -> tuple[int | None, str, bool]:
    """This chain run's run of step ``step_id``: (run id, job name, already succeeded). Made (running) on the
    step's first try; on a later try of the chain the same run is taken up again, its given-up mail pending
    again. (None, "", False) if the step's job no longer exists."""
    with session_scope(settings.db_url) as session:
        job = session.scalar(select(Job).where(Job.id == step_id, Job.org_id == context.org_id))
        if job is None:
            return None, "", False
        run = session.scalar(
            select(JobRun)
            .where(JobRun.parent_run_id == context.run_id, JobRun.job_id == step_id)
            .order_by(JobRun.id.desc())
            .limit(1)
        )
        if run is not None and run.status == RunStatus.succeeded:
            return run.id, job.name, True
        if run is None:
            run = JobRun(
                job_id=step_id,
                trigger="chain",
                triggered_by=f"chain run {context.run_id}",
                parent_run_id=context.run_id,
                scheduled_for=context.scheduled_for,
            )
            session.add(run)
        else:
            run.attempt += 1
            run.error = run.finished_at = None
            session.execute(
                update(OutboxMail)
                .where(OutboxMail.run_id == run.id, OutboxMail.status == MailStatus.failed)
                .values(status=MailStatus.pending)
            )
        run.status, run.started_at = RunStatus.running, utcnow()
        session.flush()
        return run.id, job.name, False


def step_error(settings, run_id: int) -> str:
    with session_scope(settings.db_url) as session:
        run = session.get(JobRun, run_id)
        return (run.error if run is not None else None) or "no error was recorded"


@register
class ChainKind(JobKind):
    name = "chain"
    description = "Run other jobs one after the other; the first that fails stops the chain."

    def validate(self, session, settings, principal, body: dict) -> dict:
        config = body.get("config")
        if not isinstance(config, dict):
            raise ValidationError("config must be an object with steps: [job ids]", field="config")
        unknown = sorted(set(config) - {"steps"})
        if unknown:
            raise ValidationError(f"Unknown field 'config.{unknown[0]}'", field=f"config.{unknown[0]}")
        # A changed job (PATCH) passes its id: its new steps must not lead back to it.
        own_id = body.get("id")
        own_id = own_id if isinstance(own_id, int) and not isinstance(own_id, bool) else None
        return {"steps": check_steps(session, principal.org_id, config.get("steps"), own_id)}

    def prepare(self, executor, session, job, run, context) -> None:
        # Checked again at run time: the steps may have changed since the chain was made.
        ancestry = run_ancestry(session, run)
        if job.id in {parent.job_id for parent in ancestry}:
            raise JobRunError("The chain runs itself through its steps (a loop)", "before_start")
        if len(ancestry) >= MAX_DEPTH:
            raise JobRunError(f"Chains nest deeper than {MAX_DEPTH}", "before_start")
        try:
            check_steps(session, job.org_id, (job.config or {}).get("steps"), job.id)
        except NotFound:
            pass  # a step deleted since: the chain runs up to it and fails there, naming it
        except ValidationError as exc:
            raise JobRunError(exc.message, "before_start") from None

    def execute(self, executor, context) -> list[PlannedMail]:
        steps = context.config.get("steps") or []
        for number, step_id in enumerate(steps, 1):
            where = f"step {number}"
            run_id, name, done = step_run_for(executor.settings, context, step_id)
            if run_id is None:
                raise JobRunError(f"Step {number} of {len(steps)} (job {step_id}) no longer exists", where)
            if done:
                log.info(
                    "Chain run %s: step %s (%r) succeeded before, not run again", context.run_id, number, name
                )
                continue
            log.info(
                "Chain run %s: step %s of %s, job %r (run %s)",
                context.run_id,
                number,
                len(steps),
                name,
                run_id,
            )
            step = StepExecutor(
                executor.settings, run_id, cell_timeout=executor.cell_timeout, printer=executor.printer_of()
            )
            if step.run() == RunStatus.succeeded:
                continue
            message = (
                f"Step {number} of {len(steps)} ({name!r}, job {step_id}) failed: "
                f"{step_error(executor.settings, run_id)}"
            )
            if isinstance(step.failure, TRANSIENT_ERRORS):
                raise TransientRunError(message, where)
            raise JobRunError(message, where)
        return []


class StepExecutor(JobExecutor):
    """A chain's step: remembers why it failed (a transient failure makes the chain's failure transient)."""

    failure: Exception | None = None

    def on_failure(self, context, exc):
        self.failure = exc
        return super().on_failure(context, exc)
