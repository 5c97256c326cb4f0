"""In-process unit tests (no server): cron, tokens, the scheduler's queue, mail, publishing, passwords and
warehouse identifiers, each on a fresh SQLite database and data directory."""

from __future__ import annotations

import email
import email.policy
import io
import json
import logging
import stat
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pyarrow as pa
import pytest
from pypdf import PdfReader, PdfWriter
from sqlalchemy import delete, select

from carnet.db import session_scope, upgrade
from carnet.db.models import (
    App,
    AppVersion,
    Job,
    JobRun,
    Membership,
    Organization,
    Role,
    RunStatus,
    Token,
    TokenKind,
    User,
    utcnow,
)
from carnet.errors import ValidationError
from carnet.isolation import accounts_enabled, ensure_account
from carnet.passwords import (
    MAX_PASSWORD_BYTES,
    ROUNDS_VARIABLE,
    dummy_hash,
    generate_password,
    hash_password,
    hash_rounds,
    verify_password,
)
from carnet.publishing import publish
from carnet.scheduler.cron import next_fire_time, validate_cron, validate_timezone
from carnet.scheduler.mail import send_mail
from carnet.scheduler.run_queue import claim_next_run, enqueue_due_runs, recover_interrupted_runs
from carnet.settings import CarnetSettings
from carnet.tokens import mint_token, resolve_token, revoke_tokens
from carnet.warehouse import Warehouse, check_identifier, quote


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def as_utc(moment: datetime | None) -> datetime | None:
    # SQLite hands datetimes back naive; they were stored in UTC.
    return moment if moment is None or moment.tzinfo else moment.replace(tzinfo=UTC)


# -- cron --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "expression",
    ["0 6 * * *", "*/15 * * * 1-5", "0 0 1 1 *", "0 9 * * mon-fri", "* * * * * */3", "0 6 * * * 30"],
)
def test_validate_cron_accepts_five_and_six_fields(expression):
    assert validate_cron(expression) == expression


@pytest.mark.parametrize(
    "raw,normalised",
    [("  0   6 *\t* *  ", "0 6 * * *"), ("*/5\n* * * *", "*/5 * * * *"), ("0 6 * * *   15", "0 6 * * * 15")],
)
def test_validate_cron_normalises_spaces(raw, normalised):
    assert validate_cron(raw) == normalised


@pytest.mark.parametrize(
    "expression",
    [
        None,
        5,
        ["0", "6", "*", "*", "*"],
        "",
        "   ",
        "hello",
        "* * *",
        "* * * *",
        "* * * * * * *",
        "61 * * * *",
        "0 25 * * *",
        "0 6 32 * *",
        "0 6 * 13 *",
        "0 6 * * 8",
        "*/0 * * * *",
        "0 6 * * mon-fry",
        "0 6 * * * 70",
        "@daily",
    ],
)
def test_validate_cron_refuses_bad_expressions(expression):
    with pytest.raises(ValidationError) as caught:
        validate_cron(expression)
    assert caught.value.fields["field"] == "cron"
    assert caught.value.status == 400
    assert caught.value.message


def test_validate_cron_refuses_an_expression_that_never_fires():
    # February 31st parses, but asking for its next fire time raises CroniterBadDateError: a job created
    # with it answers 500 and could never run. It must be refused like any other invalid cron.
    with pytest.raises(ValidationError) as caught:
        validate_cron("0 0 31 2 *")
    assert caught.value.fields["field"] == "cron"


@pytest.mark.parametrize("name", ["Mars/Olympus_Mons", "", "../../etc/passwd", "Europe/Paris "])
def test_validate_timezone_refuses_unknown_zones(name):
    with pytest.raises(ValidationError) as caught:
        validate_timezone(name)
    assert caught.value.fields["field"] == "timezone"


@pytest.mark.parametrize(
    "cron,zone,after,expected",
    [
        ("0 6 * * *", "UTC", utc(2024, 3, 1, 7, 0), utc(2024, 3, 2, 6, 0)),
        ("0 6 * * *", "UTC", utc(2024, 3, 1, 5, 59), utc(2024, 3, 1, 6, 0)),
        # strictly after: a fire time equal to ``after`` is not the next one
        ("0 6 * * *", "UTC", utc(2024, 3, 1, 6, 0), utc(2024, 3, 2, 6, 0)),
        # 06:00 in Paris is 05:00 UTC in winter (CET)...
        ("0 6 * * *", "Europe/Paris", utc(2024, 3, 29, 12, 0), utc(2024, 3, 30, 5, 0)),
        # ...and 04:00 UTC from the night clocks go forward (Sunday 31 March 2024, CEST)...
        ("0 6 * * *", "Europe/Paris", utc(2024, 3, 30, 12, 0), utc(2024, 3, 31, 4, 0)),
        # ...and 05:00 UTC again from the night they go back (Sunday 27 October 2024).
        ("0 6 * * *", "Europe/Paris", utc(2024, 10, 26, 12, 0), utc(2024, 10, 27, 5, 0)),
        # 02:30 does not exist in Paris on 31 March 2024: the job still runs that day, once.
        ("30 2 * * *", "Europe/Paris", utc(2024, 3, 30, 12, 0), utc(2024, 3, 31, 1, 0)),
        # weekdays are the zone's weekdays: Friday 23:30 UTC is already Saturday in Tokyo
        ("0 9 * * 1-5", "Asia/Tokyo", utc(2024, 3, 1, 0, 30), utc(2024, 3, 4, 0, 0)),
        ("0 9 * * 1-5", "America/New_York", utc(2024, 3, 8, 15, 0), utc(2024, 3, 11, 13, 0)),
        # six fields: seconds
        ("* * * * * */3", "UTC", utc(2024, 3, 1, 7, 0, 1), utc(2024, 3, 1, 7, 0, 3)),
    ],
)
def test_next_fire_time_honours_the_time_zone(cron, zone, after, expected):
    fire = next_fire_time(cron, zone, after)
    assert fire == expected
    assert fire.utcoffset() == timedelta(0)


def test_an_hourly_job_fires_every_real_hour_across_both_dst_changes():
    for start in (utc(2024, 3, 30, 22, 30), utc(2024, 10, 26, 22, 30)):
        fires, moment = [], start
        for _ in range(6):
            moment = next_fire_time("0 * * * *", "Europe/Paris", moment)
            fires.append(moment)
        assert fires == [start + timedelta(minutes=30) + timedelta(hours=h) for h in range(6)]


def test_a_daily_job_fires_once_on_the_night_clocks_go_back():
    # 02:30 happens twice in Paris on 27 October 2024 (CEST, then CET): a daily report goes out once.
    first = next_fire_time("30 2 * * *", "Europe/Paris", utc(2024, 10, 26, 12, 0))
    second = next_fire_time("30 2 * * *", "Europe/Paris", first)
    assert first == utc(2024, 10, 27, 0, 30)
    assert second == utc(2024, 10, 28, 1, 30)


# -- a fresh platform database -----------------------------------------------------------------------------
@pytest.fixture
def settings(settings_env):
    settings = CarnetSettings()
    assert settings.data_dir == str(settings_env.resolve())
    upgrade(settings.db_url)
    return settings


@pytest.fixture
def world(settings):
    """Two orgs; ana is analyst of acme and viewer of globex; vic is viewer of acme."""
    with session_scope(settings.db_url) as session:
        acme, globex = Organization(slug="acme", name="Acme"), Organization(slug="globex", name="Globex")
        ana, vic = User(email="ana@acme.example"), User(email="vic@acme.example")
        session.add_all([acme, globex, ana, vic])
        session.flush()
        session.add_all(
            [
                Membership(user_id=ana.id, org_id=acme.id, role=Role.analyst),
                Membership(user_id=ana.id, org_id=globex.id, role=Role.viewer),
                Membership(user_id=vic.id, org_id=acme.id, role=Role.viewer),
            ]
        )
        app = App(org_id=acme.id, slug="report", title="Report", current_version=1)
        session.add(app)
        session.flush()
        return {"acme": acme.id, "globex": globex.id, "ana": ana.id, "vic": vic.id, "app": app.id}


def mint(settings, world, user="ana", org="acme", kind=TokenKind.studio_kernel, ttl=3600, note="") -> str:
    with session_scope(settings.db_url) as session:
        return mint_token(
            session, kind=kind, user_id=world[user], org_id=world[org], ttl_seconds=ttl, note=note
        )


def resolve(settings, text):
    with session_scope(settings.db_url) as session:
        resolved = resolve_token(session, text)
        if resolved is None:
            return None
        token, membership = resolved
        return token.kind, membership.user_id, membership.org_id, membership.role


# -- tokens ------------------------------------------------------------------------------------------------
def test_minted_token_resolves_to_its_membership(settings, world):
    text = mint(settings, world)
    assert text.startswith("ck_")
    assert resolve(settings, text) == (TokenKind.studio_kernel, world["ana"], world["acme"], Role.analyst)
    # The same person in another org: the token is bound to the org it was minted for.
    other = mint(settings, world, org="globex", kind=TokenKind.viewer_kernel)
    assert resolve(settings, other) == (TokenKind.viewer_kernel, world["ana"], world["globex"], Role.viewer)


def test_only_a_hash_of_the_secret_is_stored(settings, world):
    text = mint(settings, world)
    prefix, secret = text[3:].split("_", 1)
    with session_scope(settings.db_url) as session:
        row = session.scalar(select(Token).where(Token.prefix == prefix))
        assert secret not in row.secret_hash and row.secret_hash != secret


def test_wrong_secret_resolves_to_none(settings, world):
    text = mint(settings, world)
    prefix, secret = text[3:].split("_", 1)
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    for wrong in (f"ck_{prefix}_{flipped}", f"ck_{prefix}_", f"ck_{prefix}", "ck_", "", text[3:], text + "x"):
        assert resolve(settings, wrong) is None, wrong
    other_prefix = mint(settings, world)[3:].split("_", 1)[0]
    assert resolve(settings, f"ck_{other_prefix}_{secret}") is None
    assert resolve(settings, text) is not None


def test_revoked_token_resolves_to_none(settings, world):
    keep = mint(settings, world, kind=TokenKind.studio_kernel, note="keep")
    text = mint(settings, world, kind=TokenKind.studio_kernel, note="drop")
    with session_scope(settings.db_url) as session:
        assert revoke_tokens(session, user_id=world["ana"], kind=TokenKind.studio_kernel, note="drop") == 1
    assert resolve(settings, text) is None
    assert resolve(settings, keep) is not None


def test_expired_token_resolves_to_none(settings, world):
    text = mint(settings, world, ttl=3600)
    forever = mint(settings, world, ttl=None)
    assert resolve(settings, text) is not None
    with session_scope(settings.db_url) as session:
        row = session.scalar(select(Token).where(Token.prefix == text[3:].split("_", 1)[0]))
        assert row.expires_at is not None
        row.expires_at = utcnow() - timedelta(seconds=1)
    assert resolve(settings, text) is None
    assert resolve(settings, forever) is not None


def test_token_of_an_inactive_user_resolves_to_none(settings, world):
    text = mint(settings, world)
    with session_scope(settings.db_url) as session:
        session.get(User, world["ana"]).is_active = False
    assert resolve(settings, text) is None


def test_token_of_a_user_who_left_the_org_resolves_to_none(settings, world):
    text = mint(settings, world, org="globex")
    with session_scope(settings.db_url) as session:
        membership = session.scalar(
            select(Membership).where(Membership.user_id == world["ana"], Membership.org_id == world["globex"])
        )
        session.delete(membership)
    assert resolve(settings, text) is None
    assert resolve(settings, mint(settings, world, org="acme")) is not None


# -- the scheduler's queue ---------------------------------------------------------------------------------
def add_job(
    settings, world, *, cron="0 6 * * *", next_run_at=None, enabled=True, name=None, timezone="UTC"
) -> int:
    with session_scope(settings.db_url) as session:
        job = Job(
            org_id=world["acme"],
            name=name or f"job {uuid.uuid4().hex[:6]}",
            app_id=world["app"],
            cron=cron,
            timezone=timezone,
            recipients=["x@acme.example"],
            owner_id=world["ana"],
            enabled=enabled,
            next_run_at=next_run_at,
        )
        session.add(job)
        session.flush()
        return job.id


def runs_of(settings, job_id) -> list[JobRun]:
    with session_scope(settings.db_url) as session:
        return list(session.scalars(select(JobRun).where(JobRun.job_id == job_id).order_by(JobRun.id)).all())


def job_next_run(settings, job_id) -> datetime | None:
    with session_scope(settings.db_url) as session:
        return as_utc(session.get(Job, job_id).next_run_at)


def test_a_due_job_is_queued_once_for_one_instant(settings, world):
    fire = utc(2024, 3, 1, 6, 0)
    job = add_job(settings, world, next_run_at=fire)
    first = enqueue_due_runs(settings.db_url, now=fire)
    second = enqueue_due_runs(settings.db_url, now=fire)
    later = enqueue_due_runs(settings.db_url, now=fire + timedelta(seconds=30))
    assert len(first) == 1 and second == [] and later == []
    runs = runs_of(settings, job)
    assert [r.id for r in runs] == first
    assert runs[0].status == RunStatus.queued and runs[0].trigger == "schedule"
    assert as_utc(runs[0].scheduled_for) == fire
    assert job_next_run(settings, job) == utc(2024, 3, 2, 6, 0)


def test_missed_fires_collapse_into_one_run_of_the_latest_and_one_missed_record(settings, world):
    # The scheduler was down for a day and a half: 37 hourly fires passed; the latest (10 min ago, within
    # the default grace of an hour) runs once, the 36 before it are one 'missed' record that counts them.
    missed = utc(2024, 3, 1, 0, 0)
    now = utc(2024, 3, 2, 12, 10)
    job = add_job(settings, world, cron="0 * * * *", next_run_at=missed)
    queued = enqueue_due_runs(settings.db_url, now=now)
    assert len(queued) == 1
    assert enqueue_due_runs(settings.db_url, now=now) == []
    older, latest = runs_of(settings, job)
    assert latest.id == queued[0] and latest.status == RunStatus.queued
    assert as_utc(latest.scheduled_for) == utc(2024, 3, 2, 12, 0)
    assert older.status == RunStatus.missed and as_utc(older.scheduled_for) == utc(2024, 3, 2, 11, 0)
    assert older.error.startswith("36 scheduled time(s) from 2024-03-01T00:00:00+00:00")
    assert job_next_run(settings, job) == utc(2024, 3, 2, 13, 0)


def test_a_week_long_outage_of_a_minutely_job_is_one_missed_record_and_one_run(settings, world):
    # 10,080 missed fire times: listed up to a cap, so the record gives a floor and ends before the latest.
    down = utc(2024, 3, 1, 0, 0)
    now = utc(2024, 3, 8, 0, 0, 30)
    job = add_job(settings, world, cron="* * * * *", next_run_at=down)
    queued = enqueue_due_runs(settings.db_url, now=now)
    older, latest = runs_of(settings, job)
    assert [latest.id] == queued and as_utc(latest.scheduled_for) == utc(2024, 3, 8, 0, 0)
    assert older.status == RunStatus.missed
    assert older.error == (
        "at least 1000 scheduled time(s) from 2024-03-01T00:00:00+00:00 to before "
        "2024-03-08T00:00:00+00:00 passed while no scheduler ran"
    )
    assert job_next_run(settings, job) == utc(2024, 3, 8, 0, 1)


@pytest.mark.parametrize(
    "late_minutes, grace_seconds, status",
    [
        (10, 3600, RunStatus.queued),
        (61, 3600, RunStatus.missed),
        (5, 60, RunStatus.missed),
        (0, 0, RunStatus.queued),
    ],
    ids=["within-grace", "past-grace", "past-a-short-grace", "on-time-no-grace"],
)
def test_a_fire_missed_while_down_runs_within_the_jobs_grace_else_is_recorded_missed(
    settings, world, late_minutes, grace_seconds, status
):
    fire = utc(2024, 3, 1, 6, 0)
    job = add_job(settings, world, next_run_at=fire)
    with session_scope(settings.db_url) as session:
        session.get(Job, job).misfire_grace_seconds = grace_seconds
    queued = enqueue_due_runs(settings.db_url, now=fire + timedelta(minutes=late_minutes))
    (run,) = runs_of(settings, job)
    assert run.status == status and as_utc(run.scheduled_for) == fire
    assert queued == ([run.id] if status == RunStatus.queued else [])
    if status == RunStatus.missed:
        assert "grace" in run.error and run.finished_at is not None
    assert job_next_run(settings, job) == utc(2024, 3, 2, 6, 0)


@pytest.mark.parametrize("previous", [RunStatus.queued, RunStatus.running])
def test_a_fire_while_the_previous_run_is_unfinished_is_recorded_skipped(settings, world, previous):
    fire = utc(2024, 3, 1, 6, 0)
    job = add_job(settings, world, next_run_at=fire)
    earlier = queue_run(settings, job, previous)
    assert enqueue_due_runs(settings.db_url, now=fire) == []
    first, skipped = runs_of(settings, job)
    assert first.id == earlier and first.status == previous
    assert skipped.status == RunStatus.skipped and as_utc(skipped.scheduled_for) == fire
    assert "never overlap" in skipped.error
    # Once the previous run is over, the next fire runs.
    with session_scope(settings.db_url) as session:
        session.get(JobRun, earlier).status = RunStatus.succeeded
    assert len(enqueue_due_runs(settings.db_url, now=utc(2024, 3, 2, 6, 0))) == 1


def test_a_nightly_0230_job_in_paris_runs_once_a_day_across_both_clock_changes(settings, world):
    """The scheduler's loop, simulated minute by minute over the nights clocks change (2024-03-31 and
    2024-10-27 in Europe/Paris): exactly one run per day, each at 02:30 local time or, the night 02:30 does
    not exist, at 03:00."""
    paris = ZoneInfo("Europe/Paris")
    for first_day in (datetime(2024, 3, 29, 12, tzinfo=paris), datetime(2024, 10, 25, 12, tzinfo=paris)):
        job = add_job(
            settings,
            world,
            cron="30 2 * * *",
            timezone="Europe/Paris",
            next_run_at=next_fire_time("30 2 * * *", "Europe/Paris", first_day),
        )
        moment = first_day.astimezone(UTC)
        while moment < first_day.astimezone(UTC) + timedelta(days=4):
            enqueue_due_runs(settings.db_url, now=moment)
            with session_scope(settings.db_url) as session:  # the worker finishes each run at once
                for run in session.scalars(select(JobRun).where(JobRun.status == RunStatus.queued)):
                    run.status = RunStatus.succeeded
            moment += timedelta(minutes=1)
        runs = runs_of(settings, job)
        local = [as_utc(run.scheduled_for).astimezone(paris) for run in runs]
        assert [run.status for run in runs] == [RunStatus.succeeded] * 4
        assert len({moment.date() for moment in local}) == 4
        assert {(moment.hour, moment.minute) for moment in local} <= {(2, 30), (3, 0)}


def test_disabled_future_and_unscheduled_jobs_are_not_queued(settings, world):
    now = utc(2024, 3, 1, 6, 0)
    disabled = add_job(settings, world, next_run_at=now - timedelta(hours=1), enabled=False)
    future = add_job(settings, world, next_run_at=now + timedelta(seconds=1))
    unscheduled = add_job(settings, world, next_run_at=None)
    due = add_job(settings, world, next_run_at=now)
    queued = enqueue_due_runs(settings.db_url, now=now)
    assert [run.id for run in runs_of(settings, due)] == queued
    for job in (disabled, future, unscheduled):
        assert runs_of(settings, job) == []
    assert job_next_run(settings, disabled) == now - timedelta(hours=1)
    assert job_next_run(settings, future) == now + timedelta(seconds=1)
    assert job_next_run(settings, unscheduled) is None


def test_several_due_jobs_get_one_run_each(settings, world):
    now = utc(2024, 3, 1, 6, 0)
    jobs = [add_job(settings, world, next_run_at=now - timedelta(minutes=i)) for i in range(3)]
    queued = enqueue_due_runs(settings.db_url, now=now)
    assert len(queued) == 3
    queued_per_job = [[r for r in runs_of(settings, job) if r.status == RunStatus.queued] for job in jobs]
    assert sorted(len(runs) for runs in queued_per_job) == [1, 1, 1]


def test_concurrent_schedulers_never_queue_the_same_fire_twice(settings, world):
    now = utc(2024, 3, 1, 6, 0)
    job = add_job(settings, world, next_run_at=now)
    results, errors = [], []
    barrier = threading.Barrier(4)

    def scheduler():
        barrier.wait()
        try:
            results.append(enqueue_due_runs(settings.db_url, now=now))
        except Exception as exc:  # a busy SQLite may refuse the loser's write: that queues nothing
            errors.append(exc)

    threads = [threading.Thread(target=scheduler) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(runs_of(settings, job)) == 1
    assert sum(len(r) for r in results) == 1


def queue_run(settings, job_id, status=RunStatus.queued) -> int:
    with session_scope(settings.db_url) as session:
        run = JobRun(job_id=job_id, status=status, trigger="manual", scheduled_for=utcnow())
        session.add(run)
        session.flush()
        return run.id


def test_a_queued_run_is_claimed_once(settings, world):
    job = add_job(settings, world)
    done = queue_run(settings, job, RunStatus.succeeded)
    first, second = queue_run(settings, job), queue_run(settings, job)
    assert claim_next_run(settings.db_url) == first
    assert claim_next_run(settings.db_url) == second
    assert claim_next_run(settings.db_url) is None
    statuses = {run.id: (run.status, run.started_at is not None) for run in runs_of(settings, job)}
    assert statuses == {
        done: (RunStatus.succeeded, False),
        first: (RunStatus.running, True),
        second: (RunStatus.running, True),
    }


def test_concurrent_claims_hand_each_run_to_one_worker(settings, world):
    job = add_job(settings, world)
    run_ids = {queue_run(settings, job) for _ in range(3)}
    claimed, errors, barrier = [], [], threading.Barrier(6)

    def worker():
        barrier.wait()
        for _ in range(3):
            try:
                run = claim_next_run(settings.db_url)
            except Exception as exc:  # SQLite busy: this worker simply claims nothing this time
                errors.append(exc)
            else:
                if run is not None:
                    claimed.append(run)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(claimed) == len(set(claimed))
    assert set(claimed) <= run_ids
    while (run := claim_next_run(settings.db_url)) is not None:
        claimed.append(run)
    assert sorted(claimed) == sorted(run_ids)


def test_interrupted_runs_are_queued_again_at_once_and_others_left_alone(settings, world):
    job = add_job(settings, world)
    queued = queue_run(settings, job)
    done = queue_run(settings, job, RunStatus.succeeded)
    running = [queue_run(settings, job, RunStatus.running), queue_run(settings, job, RunStatus.running)]
    with session_scope(settings.db_url) as session:
        for run_id in (running[0], done):
            mint_token(
                session,
                kind=TokenKind.job,
                user_id=world["ana"],
                org_id=world["acme"],
                ttl_seconds=600,
                job_run_id=run_id,
            )
    assert recover_interrupted_runs(settings) == 2
    assert recover_interrupted_runs(settings) == 0
    runs = {run.id: run for run in runs_of(settings, job)}
    for run_id in running:
        # A transient failure whose wait was the downtime: queued again, no backoff, its try counted.
        assert (runs[run_id].status, runs[run_id].not_before) == (RunStatus.queued, None)
        assert runs[run_id].error.startswith("Try 1 of ") and "Interrupted" in runs[run_id].error
        assert runs[run_id].attempt == 2 and runs[run_id].finished_at is None
    assert (runs[queued].status, runs[queued].finished_at) == (RunStatus.queued, None)
    assert (runs[done].status, runs[done].error) == (RunStatus.succeeded, None)
    # The interrupted run's token is revoked (its retry mints its own); another run's is not touched.
    with session_scope(settings.db_url) as session:
        tokens = session.scalars(select(Token).where(Token.job_run_id.in_([running[0], done]))).all()
        assert {t.job_run_id: t.revoked_at is not None for t in tokens} == {running[0]: True, done: False}
    # Everything queued is there for the restarted scheduler, in order.
    assert [claim_next_run(settings.db_url) for _ in range(3)] == [queued, *running]


@pytest.mark.parametrize(
    "change, error",
    [
        pytest.param("restricted", "may no longer open this app", id="app-restricted-away"),
        pytest.param("disabled", "no longer an active member", id="owner-disabled"),
        pytest.param("left", "no longer an active member", id="owner-left-org"),
    ],
)
def test_a_run_fails_when_its_owner_lost_the_right_to_the_app(settings, world, change, error):
    from carnet.scheduler.executor import JobExecutor

    job = add_job(settings, world)
    run_id = queue_run(settings, job, RunStatus.running)
    with session_scope(settings.db_url) as session:
        if change == "restricted":
            session.get(
                App, world["app"]
            ).visibility = "restricted"  # shared with nobody; ana did not publish
        elif change == "disabled":
            session.get(User, world["ana"]).is_active = False
        else:
            session.execute(
                delete(Membership).where(
                    Membership.user_id == world["ana"], Membership.org_id == world["acme"]
                )
            )
    assert JobExecutor(settings, run_id).run() == RunStatus.failed
    run = runs_of(settings, job)[-1]
    assert run.status == RunStatus.failed and error in run.error
    with session_scope(settings.db_url) as session:  # no credential was minted for the run
        assert session.scalar(select(Token).where(Token.note == f"job run {run_id}")) is None


def test_a_run_past_its_time_limit_fails_and_leaves_no_process(settings, world, monkeypatch):
    import os
    import time
    from pathlib import Path

    import nbformat

    from carnet.publishing import publish
    from carnet.scheduler.executor import JobExecutor

    monkeypatch.setenv("CARNET_ISOLATION", "off")  # the run's processes are this test's own
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import time\ntime.sleep(120)")])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    with session_scope(settings.db_url) as session:
        publish(
            session,
            settings,
            org_id=world["acme"],
            user_id=world["ana"],
            slug="report",
            title="Slow",
            notebook=notebook,
        )
    job = add_job(settings, world)
    with session_scope(settings.db_url) as session:  # papermill's parameters: the notebook path
        session.get(Job, job).parameters = {"wait": 120}
    run_id = queue_run(settings, job, RunStatus.running)
    started = time.monotonic()
    assert JobExecutor(settings, run_id, run_timeout=8).run() == RunStatus.failed
    assert time.monotonic() - started < 60
    run = runs_of(settings, job)[-1]
    assert run.error == "The notebook did not finish within 8 s" and run.finished_at is not None
    # Neither papermill nor the kernel it started is still working in the run's folder.
    folder = str(Path(run.output_dir).resolve())
    left = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "cwd") == folder:
                    left.append(entry.name)
            except OSError:
                pass
    assert left == []


# -- mail --------------------------------------------------------------------------------------------------
def make_pdf(path):
    writer = PdfWriter()
    writer.add_blank_page(width=200, height=200)
    with open(path, "wb") as f:
        writer.write(f)
    return path


def attachments(message) -> list:
    return [part for part in message.walk() if part.get_content_disposition() == "attachment"]


def test_mail_without_smtp_goes_to_the_outbox_as_a_parseable_eml(tmp_path):
    settings = CarnetSettings(data_dir=str(tmp_path / "data"), smtp_host="", mail_from="carnet@acme.example")
    pdf = make_pdf(tmp_path / "Weekly-report.pdf")
    where = send_mail(
        settings, ["a@acme.example", "b@acme.example"], "[Carnet] Weekly", "See attached.", [pdf]
    )
    eml = tmp_path / "data" / "outbox" / where.rsplit("/", 1)[-1]
    assert where == str(eml) and eml.is_file()
    message = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    assert message["Subject"] == "[Carnet] Weekly"
    assert message["From"] == "carnet@acme.example"
    assert [a.addr_spec for a in message["To"].addresses] == ["a@acme.example", "b@acme.example"]
    assert message.get_body(preferencelist=("plain",)).get_content().strip() == "See attached."
    [attachment] = attachments(message)
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_filename() == "Weekly-report.pdf"
    assert attachment.get_content() == pdf.read_bytes()
    assert len(PdfReader(io.BytesIO(attachment.get_content())).pages) == 1


def test_two_mails_never_overwrite_each_other(tmp_path):
    settings = CarnetSettings(data_dir=str(tmp_path / "data"), smtp_host="")
    paths = {send_mail(settings, ["a@acme.example"], f"n{i}", "body") for i in range(5)}
    assert len(paths) == 5
    assert len(list((tmp_path / "data" / "outbox").glob("*.eml"))) == 5


def test_mail_with_smtp_reaches_the_server(tmp_path, smtp_server):
    settings = CarnetSettings(
        data_dir=str(tmp_path / "data"), smtp_host="127.0.0.1", smtp_port=smtp_server.port
    )
    pdf = make_pdf(tmp_path / "report.pdf")
    subject = f"[Carnet] unit {uuid.uuid4().hex}"
    to = ["one@acme.example", "two@globex.example"]
    assert send_mail(settings, to, subject, "Body text", [pdf]) == f"smtp://127.0.0.1:{smtp_server.port}"
    [message] = [m for m in smtp_server.messages if m["Subject"] == subject]
    assert sorted(message["X-Envelope-To"].split(", ")) == sorted(to)
    [attachment] = attachments(message)
    assert attachment.get_filename() == "report.pdf"
    assert attachment.get_payload(decode=True) == pdf.read_bytes()
    assert not (tmp_path / "data" / "outbox").exists()


# -- publishing --------------------------------------------------------------------------------------------
def notebook(text: str) -> dict:
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "cells": [
            {"cell_type": "markdown", "id": "intro", "metadata": {}, "source": f"# {text}"},
            {
                "cell_type": "code",
                "id": "code",
                "metadata": {},
                "source": f"print({text!r})",
                "outputs": [],
                "execution_count": None,
            },
        ],
    }


def do_publish(settings, org_id, nb, slug="sales", title="Sales"):
    with session_scope(settings.db_url) as session:
        app = publish(session, settings, org_id=org_id, user_id=None, slug=slug, title=title, notebook=nb)
        return app.id, app.current_version


def snapshot(settings, app_id, version):
    with session_scope(settings.db_url) as session:
        row = session.scalar(
            select(AppVersion).where(AppVersion.app_id == app_id, AppVersion.version == version)
        )
        return settings.published_dir / row.notebook_path


def test_publish_adds_read_only_versions_that_never_change(settings, world):
    app_id, version = do_publish(settings, world["acme"], notebook("first"))
    assert version == 1
    v1 = snapshot(settings, app_id, 1)
    assert stat.S_IMODE(v1.stat().st_mode) == 0o444
    v1_bytes = v1.read_bytes()
    assert "print('first')" in json.dumps(json.loads(v1_bytes))

    same_app, version = do_publish(settings, world["acme"], notebook("second"), title="Sales v2")
    assert (same_app, version) == (app_id, 2)
    v2 = snapshot(settings, app_id, 2)
    assert v2 != v1 and stat.S_IMODE(v2.stat().st_mode) == 0o444
    assert v1.read_bytes() == v1_bytes
    assert "print('second')" in v2.read_text()
    with session_scope(settings.db_url) as session:
        app = session.get(App, app_id)
        assert (app.current_version, app.title, [v.version for v in app.versions]) == (2, "Sales v2", [1, 2])

    # The same slug in another organization is another app.
    other, version = do_publish(settings, world["globex"], notebook("theirs"))
    assert other != app_id and version == 1


@pytest.mark.parametrize(
    "bad",
    [
        "print(1)",
        [],
        {},
        {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": "nope"},
        {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [{"cell_type": "bogus"}]},
    ],
    ids=["string", "list", "empty", "cells not a list", "bogus cell"],
)
def test_publish_refuses_an_invalid_notebook_and_changes_nothing(settings, world, bad):
    app_id, _ = do_publish(settings, world["acme"], notebook("good"))
    files = sorted(settings.published_dir.rglob("*"))
    with pytest.raises(ValidationError) as caught:
        do_publish(settings, world["acme"], bad)
    assert caught.value.fields["field"] == "notebook"
    assert sorted(settings.published_dir.rglob("*")) == files
    with session_scope(settings.db_url) as session:
        assert session.get(App, app_id).current_version == 1


@pytest.mark.parametrize("slug", ["Sales", "-sales", "sa les", "", "x" * 101, None, "../up", "sales\n"])
def test_publish_refuses_an_invalid_slug(settings, world, slug):
    with pytest.raises(ValidationError) as caught:
        do_publish(settings, world["acme"], notebook("x"), slug=slug)
    assert caught.value.fields["field"] == "slug"
    assert not settings.published_dir.exists() or not any(settings.published_dir.rglob("*.ipynb"))


# -- passwords ---------------------------------------------------------------------------------------------
def test_password_hash_and_verify():
    hashed = hash_password("correct horse")
    assert hashed != "correct horse" and hashed.startswith("$2")
    assert hash_password("correct horse") != hashed  # salted
    assert verify_password("correct horse", hashed)
    assert not verify_password("correct horse ", hashed)
    assert not verify_password("", hashed)
    assert not verify_password("correct horse", None)


def test_passwords_longer_than_72_bytes_are_refused():
    exactly = "a" * MAX_PASSWORD_BYTES
    assert MAX_PASSWORD_BYTES == 72
    assert verify_password(exactly, hash_password(exactly))
    for too_long in ("a" * 73, "é" * 37):  # 73 bytes; 74 bytes in 37 characters
        with pytest.raises(ValidationError):
            hash_password(too_long)
    # bcrypt would compare only the first 72 bytes: a longer candidate must never match
    assert not verify_password(exactly + "tail", hash_password(exactly))


def test_password_hashes_cost_12_unless_told_and_any_cost_verifies(monkeypatch):
    monkeypatch.delenv(ROUNDS_VARIABLE, raising=False)  # the suite runs with 4 (tests/conftest.py)
    production = hash_password("correct horse")
    assert production.startswith("$2b$12$") and hash_rounds() == 12
    assert dummy_hash().startswith("$2b$12$") and not verify_password("", dummy_hash())
    monkeypatch.setenv(ROUNDS_VARIABLE, "5")
    cheap = hash_password("correct horse")
    assert cheap.startswith("$2b$05$")
    # A hash carries its own cost: one made before a change of the setting still verifies after it.
    assert verify_password("correct horse", production) and verify_password("correct horse", cheap)
    assert dummy_hash().startswith("$2b$05$")
    for bad in ("3", "32", "twelve", "-1", "1e1"):
        monkeypatch.setenv(ROUNDS_VARIABLE, bad)
        with pytest.raises(ValueError, match=ROUNDS_VARIABLE):
            hash_password("correct horse")


def test_generated_passwords_are_random_and_usable():
    passwords = {generate_password() for _ in range(20)}
    assert len(passwords) == 20
    assert all(len(p) >= 16 and len(p.encode()) <= MAX_PASSWORD_BYTES for p in passwords)


# -- process start ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "code",
    [
        "import carnet, nbformat",
        "import carnet.scheduler.app",
        "import carnet.service.app",
    ],
    ids=["import carnet first", "the scheduler", "the service"],
)
def test_carnet_processes_start_without_jsonschemas_iri_parser_and_still_validate(code):
    """carnet/fast_imports.py: a Carnet process never loads rfc3987_syntax (2-3 s of CPU per start), and
    jsonschema still checks formats (a bad date-time is refused) and notebooks still validate."""
    check = (
        f"{code}\nimport sys, jsonschema, nbformat\n"
        "assert 'rfc3987_syntax' in sys.modules and sys.modules['rfc3987_syntax'] is None\n"
        "schema = {'type': 'string', 'format': 'date-time'}\n"
        "checker = jsonschema.Draft7Validator.FORMAT_CHECKER\n"
        "assert 'iri' not in checker.checkers and 'date-time' in checker.checkers\n"
        "jsonschema.validate('2026-11-28T10:00:00Z', schema, format_checker=checker)\n"
        "try:\n    jsonschema.validate('not a date', schema, format_checker=checker)\n"
        "except jsonschema.ValidationError:\n    pass\nelse:\n    raise SystemExit('no format check')\n"
        "nbformat.validate(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('1')]))\n"
        "print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_the_hub_and_jupyter_servers_start_through_the_launcher():
    """Hub and singleuser servers start via carnet.hub_config.launch (which skips the parser first); an
    unknown program name is a usage error, not a start."""
    from carnet.hub_config import launch

    with pytest.raises(SystemExit, match="usage"):
        launch.main(["jupyter-lab"])
    shown = subprocess.run(
        [sys.executable, "-m", "carnet.hub_config.launch", "singleuser", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0 and shown.stdout.strip(), shown.stderr[-2000:]
    shown = subprocess.run(
        [sys.executable, "-m", "carnet.hub_config.launch", "hub", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    import jupyterhub

    assert shown.returncode == 0 and shown.stdout.strip() == jupyterhub.__version__, shown.stderr[-2000:]


# -- warehouse identifiers ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["gapminder", "_private", "Sales_2024", "a", "t" * 63])
def test_check_identifier_accepts_plain_names(name):
    assert check_identifier(name) == name
    assert quote(name) == f'"{name}"'


@pytest.mark.parametrize(
    "name",
    [
        "x; DROP TABLE gapminder",
        'gapminder"; DROP TABLE gapminder; --',
        "gapminder --",
        "main.gapminder",
        "../warehouse",
        "1abc",
        "a b",
        "a-b",
        "",
        "t" * 64,
        "café",
        "tab\n",
        None,
        5,
        ["gapminder"],
    ],
)
def test_check_identifier_refuses_hostile_names(name):
    with pytest.raises(ValidationError) as caught:
        check_identifier(name)
    assert caught.value.status == 400
    with pytest.raises(ValidationError):
        quote(name)


def test_warehouse_refuses_hostile_names_and_keeps_its_tables(tmp_path):
    warehouse = Warehouse(tmp_path / "warehouse.duckdb")
    assert warehouse.replace_table("gapminder", pa.table({"country": ["A", "B"], "year": [2000, 2001]})) == 2
    for hostile in ("x; DROP TABLE gapminder", 'gapminder"; DROP TABLE gapminder; --'):
        with pytest.raises(ValidationError):
            warehouse.read_arrow(hostile)
        with pytest.raises(ValidationError):
            warehouse.replace_table(hostile, pa.table({"a": [1]}))
        with pytest.raises(ValidationError):
            warehouse.columns(hostile)
    assert warehouse.tables() == ["gapminder"]
    assert warehouse.read_arrow("gapminder").num_rows == 2
    assert warehouse.read_arrow("gapminder", limit=1).num_rows == 1


def test_carnet_warehouse_module_forwards_kernel_calls_to_the_helper(monkeypatch):
    """Once carnet/warehouse.py is imported it holds the name carnet.warehouse: write and sync must still
    reach the kernel helper (which calls the REST API with the kernel's token)."""
    import carnet.warehouse as module
    from carnet.kernel_helpers import warehouse as helper

    calls = []
    monkeypatch.setattr(
        helper, "sync", lambda *args, **kwargs: calls.append(("sync", args, kwargs)) or {"ok": 1}
    )
    monkeypatch.setattr(
        helper, "write", lambda *args, **kwargs: calls.append(("write", args, kwargs)) or {"ok": 2}
    )
    assert module.sync("orders_pg", "orders", mode="upsert", key="id") == {"ok": 1}
    assert module.write([{"a": 1}], "t", mode="append") == {"ok": 2}
    assert calls == [
        ("sync", ("orders_pg", "orders"), {"mode": "upsert", "key": "id", "types": None, "variables": None}),
        ("write", ([{"a": 1}], "t"), {"mode": "append", "key": None, "types": None}),
    ]


def test_studio_kernels_get_the_orgs_brand_colour_and_the_map_outlines(settings, world):
    """carnet.dash draws in JupyterLab as in the Viewer (hub_config/spawner.py): only a checked #rrggbb."""
    from carnet.hub_config.spawner import STUDIO_TOPOJSON_URL, mint_studio_token

    for stored, given in (("#AA3300", "#aa3300"), ("", None), ("red;}body{", None)):
        with session_scope(settings.db_url) as session:
            session.get(Organization, world["acme"]).settings = {"primary_color": stored}
        token, user_id, page_env = mint_studio_token(settings, "ana@acme.example")
        assert token.startswith("ck_") and user_id == world["ana"]
        assert page_env.get("CARNET_BRAND_COLOR") == given
        assert page_env["CARNET_TOPOJSON_URL"] == STUDIO_TOPOJSON_URL


# -- OS accounts (carnet/isolation.py) --------------------------------------------------------------------
@pytest.mark.parametrize(
    "prefix", ["", "Carnet-u", "1carnet", "carnet_u", "carnet u", "c" * 25], ids=lambda p: repr(p)[:12]
)
def test_a_bad_os_account_prefix_is_refused(prefix):
    with pytest.raises(ValueError, match="os_account_prefix"):
        CarnetSettings(os_account_prefix=prefix)


@pytest.mark.skipif(not accounts_enabled(), reason="needs root and useradd: accounts are off here")
def test_accounts_are_named_with_the_installations_prefix(tmp_path):
    import pwd
    import subprocess

    prefixes = [f"carnet-t{uuid.uuid4().hex[:6]}-u" for _ in range(2)]
    try:
        accounts = [
            ensure_account(CarnetSettings(data_dir=str(tmp_path / p), os_account_prefix=p), 7)
            for p in prefixes
        ]
        for prefix, account in zip(prefixes, accounts, strict=True):
            assert account.name == f"{prefix}7" and account.uid != 0
            home = tmp_path / prefix / "homes" / "u7"
            assert pwd.getpwnam(account.name).pw_dir == str(home) and home.stat().st_uid == account.uid
        # Two installations' user 7 are two accounts.
        assert accounts[0].uid != accounts[1].uid
    finally:
        for prefix in prefixes:
            subprocess.run(["userdel", f"{prefix}7"], capture_output=True, check=False)


@pytest.mark.parametrize(
    "uri, logged",
    [
        ("/services/carnet/api/v1/hooks/jobs/Abc-_123", "/services/carnet/api/v1/hooks/jobs/[secret]"),
        ("/services/carnet/api/v1/hooks/jobs/Abc?x=1", "/services/carnet/api/v1/hooks/jobs/[secret]?x=1"),
        ("/services/carnet/api/v1/push/ab12_cd34", "/services/carnet/api/v1/push/[secret]"),
        ("/services/carnet/api/v1/jobs/7/webhook", "/services/carnet/api/v1/jobs/7/webhook"),
        (
            "/services/carnet/api/v1/warehouse/tables/t/push-endpoints/3",
            "/services/carnet/api/v1/warehouse/tables/t/push-endpoints/3",
        ),
    ],
    ids=["webhook", "webhook with query", "push", "webhook management", "push endpoints"],
)
def test_the_services_request_log_hides_credentials_in_paths(uri, logged):
    from carnet.service.api.base import without_path_secrets

    assert without_path_secrets(uri) == logged


def test_the_services_logged_errors_hide_credentials_in_paths(caplog):
    """A refusal or a crash on a webhook's or push URL's path is logged with ``[secret]`` in its place."""
    from unittest import mock

    from tornado.httputil import HTTPServerRequest
    from tornado.web import Application

    from carnet.errors import ValidationError
    from carnet.service.api.base import BaseHandler

    secret = "Zq7" * 14
    request = HTTPServerRequest(method="POST", uri=f"/services/carnet/api/v1/hooks/jobs/{secret}")
    request.connection = mock.Mock()
    handler = BaseHandler(Application(log=logging.getLogger("carnet.service.test")), request)
    caplog.set_level("INFO")
    for error in (ValidationError("bad body", field="body"), RuntimeError("boom")):
        try:
            raise error
        except Exception:
            handler.log_exception(*sys.exc_info())
    assert secret not in caplog.text
    assert caplog.text.count("POST /services/carnet/api/v1/hooks/jobs/[secret]") == 2
