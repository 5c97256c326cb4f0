"""Output retention (carnet/scheduler/retention.py): a finished run's files go once older than its
organization's ``job_output_retention_days``; the run's row stays and says so; files of a run with unsent mail
and of a chain still running are kept; nothing outside the runs folder is ever removed."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from carnet.db import session_scope
from carnet.db.models import JobRun, MailStatus, Organization, OutboxMail, RunStatus, utcnow
from carnet.scheduler.retention import sweep_outputs
from tests.test_units import add_job, queue_run, settings, world  # noqa: F401 - fixtures


def finished_run(settings, job, days_ago: float, status=RunStatus.succeeded, parent=None) -> tuple[int, Path]:  # noqa: F811
    run_id = queue_run(settings, job, status)
    folder = Path(settings.runs_dir) / "1" / str(job) / str(run_id)
    folder.mkdir(parents=True)
    (folder / "report.pdf").write_bytes(b"%PDF-1.7 kept until retention")
    with session_scope(settings.db_url) as session:
        run = session.get(JobRun, run_id)
        run.output_dir, run.finished_at = str(folder), utcnow() - timedelta(days=days_ago)
        run.parent_run_id = parent
    return run_id, folder


def removed_at(settings, run_id):  # noqa: F811
    with session_scope(settings.db_url) as session:
        return session.get(JobRun, run_id).outputs_removed_at


def test_outputs_past_the_orgs_retention_go_and_the_history_stays(settings, world):  # noqa: F811
    job = add_job(settings, world)
    old, old_folder = finished_run(settings, job, days_ago=91)
    failed, failed_folder = finished_run(settings, job, days_ago=100, status=RunStatus.failed)
    recent, recent_folder = finished_run(settings, job, days_ago=89)
    assert sweep_outputs(settings) == 2
    assert not old_folder.exists() and not failed_folder.exists()
    assert recent_folder.exists() and (recent_folder / "report.pdf").exists()
    assert removed_at(settings, old) is not None and removed_at(settings, recent) is None
    with session_scope(settings.db_url) as session:  # the history stays
        assert session.get(JobRun, old).status == RunStatus.succeeded
    assert sweep_outputs(settings) == 0

    # The organization's own setting: 30 days.
    with session_scope(settings.db_url) as session:
        org = session.get(Organization, world["acme"])
        org.settings = {**(org.settings or {}), "job_output_retention_days": 30}
    assert sweep_outputs(settings) == 1
    assert not recent_folder.exists() and removed_at(settings, recent) is not None


def test_files_still_needed_are_kept(settings, world):  # noqa: F811
    job = add_job(settings, world)
    unsent, unsent_folder = finished_run(settings, job, days_ago=200)
    with session_scope(settings.db_url) as session:
        session.add(
            OutboxMail(
                run_id=unsent,
                org_id=world["acme"],
                purpose="report",
                recipient="late@client.example",
                subject="s",
                body="b",
                attachments=[str(unsent_folder / "report.pdf")],
                status=MailStatus.pending,
                attempts=3,
            )
        )
    chain = queue_run(settings, job, RunStatus.running)
    step, step_folder = finished_run(settings, job, days_ago=200, parent=chain)
    assert sweep_outputs(settings) == 0
    assert unsent_folder.exists() and step_folder.exists()
    with session_scope(settings.db_url) as session:
        session.get(JobRun, chain).status = RunStatus.succeeded
        session.get(JobRun, chain).finished_at = utcnow()
    assert sweep_outputs(settings) == 1 and not step_folder.exists()


def test_a_folder_outside_the_runs_folder_is_never_removed(settings, world, tmp_path):  # noqa: F811
    job = add_job(settings, world)
    run_id, _ = finished_run(settings, job, days_ago=365)
    outside = tmp_path / "not-a-run"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep")
    with session_scope(settings.db_url) as session:
        session.get(JobRun, run_id).output_dir = str(outside)
    assert sweep_outputs(settings) == 1
    assert (outside / "precious.txt").read_text() == "keep"
