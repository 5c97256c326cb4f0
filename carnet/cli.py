"""The ``carnet`` command line.

carnet init [--demo]        create the data directory, secrets and database (and the demo content)
carnet demo                 init --demo, then start the Hub and print where to sign in
carnet hub                  start the Hub (and through it the Carnet service, Viewer and scheduler)
carnet run-job ORG JOB      queue a run of a job now (the scheduler picks it up)
carnet set-password EMAIL   give a user a new random password, printed once
carnet load ORG TABLE FILE   load a file into a warehouse table through the REST API (progress on stderr)
carnet sync ORG TABLE --source NAME   copy what a source answers into a warehouse table (server-side)
carnet warehouse ls|describe TABLE|preview TABLE   the warehouse's tables (same --url/--api-key)
"""

from __future__ import annotations

import argparse
import os
import sys

from carnet.errors import CarnetError
from carnet.settings import CarnetSettings


def _settings(args) -> CarnetSettings:
    if args.data_dir:
        os.environ["CARNET_DATA_DIR"] = os.path.abspath(args.data_dir)
    return CarnetSettings()


def cmd_init(args) -> int:
    from carnet.db import upgrade
    from carnet.secret_files import ensure_hub_secrets

    settings = _settings(args)
    ensure_hub_secrets(settings.data_dir)
    upgrade(settings.db_url)
    print(f"Carnet data directory: {settings.data_dir}")
    if args.demo:
        _print_demo(settings)
    return 0


def _print_demo(settings: CarnetSettings) -> None:
    from carnet.demo import seed_demo

    result = seed_demo(settings)
    for item in result.created:
        print(f"  created {item}")
    if result.created_passwords:
        print("\nDemo accounts (passwords are shown this once; `carnet set-password EMAIL` makes a new one):")
        for email, password in result.created_passwords.items():
            print(f"  {email:28s} {password}")
    else:
        print("Demo content already present; passwords were printed at the first run.")
    outbox = (
        settings.outbox_dir if not settings.smtp_host else f"smtp://{settings.smtp_host}:{settings.smtp_port}"
    )
    print(f"Mail goes to: {outbox}")


def cmd_hub(args) -> int:
    from carnet.hub_config import CONFIG_FILE

    settings = _settings(args)
    os.environ.setdefault("CARNET_DATA_DIR", settings.data_dir)
    port = os.environ.setdefault("CARNET_HUB_PORT", str(args.port))
    os.environ.setdefault("CARNET_PUBLIC_URL", f"http://127.0.0.1:{port}/")
    print(f"\nCarnet is starting at http://127.0.0.1:{port}/  (Ctrl-C stops it)\n", flush=True)
    os.chdir(settings.data_dir)
    # JupyterHub itself, started through carnet.hub_config.launch (without jsonschema's slow IRI parser).
    launch = [sys.executable, "-m", "carnet.hub_config.launch", "hub", "-f", str(CONFIG_FILE)]
    os.execv(sys.executable, launch)  # noqa: S606 - replaces this process with the Hub
    return 0  # not reached


def cmd_demo(args) -> int:
    args.demo = True
    cmd_init(args)
    return cmd_hub(args)


def cmd_run_job(args) -> int:
    from sqlalchemy import select

    from carnet.db import session_scope
    from carnet.db.models import Job, JobRun, Organization, RunStatus, utcnow

    settings = _settings(args)
    with session_scope(settings.db_url) as session:
        job = session.scalar(
            select(Job)
            .join(Organization, Job.org_id == Organization.id)
            .where(Organization.slug == args.org, Job.name == args.job)
        )
        if job is None:
            raise CarnetError(f"No job {args.job!r} in organization {args.org!r}")
        run = JobRun(job_id=job.id, status=RunStatus.queued, trigger="manual", scheduled_for=utcnow())
        session.add(run)
        session.flush()
        print(f"Queued run {run.id} of job {job.name!r}; the scheduler runs it within seconds.")
    return 0


def cmd_set_password(args) -> int:
    from sqlalchemy import select

    from carnet.db import session_scope
    from carnet.db.models import User
    from carnet.passwords import generate_password, hash_password

    settings = _settings(args)
    with session_scope(settings.db_url) as session:
        user = session.scalar(select(User).where(User.email == args.email.lower()))
        if user is None:
            raise CarnetError(f"No user {args.email!r}")
        password = generate_password()
        user.password_hash = hash_password(password)
    print(f"New password for {args.email}: {password}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="carnet", description="Carnet: Jupyter-native business intelligence"
    )
    parser.add_argument("--data-dir", help="Carnet's data directory (default: $CARNET_DATA_DIR or ./.carnet)")
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", help="create the data directory, secrets and database")
    init.add_argument("--demo", action="store_true", help="also create the demo organizations and content")
    init.set_defaults(func=cmd_init)
    for name, func, text in (("demo", cmd_demo, "set up the demo and start it"), ("hub", cmd_hub, "start")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--port", type=int, default=int(os.environ.get("CARNET_HUB_PORT", "8000")))
        sub.set_defaults(func=func)
    run_job = commands.add_parser("run-job", help="queue a run of a job now")
    run_job.add_argument("org")
    run_job.add_argument("job")
    run_job.set_defaults(func=cmd_run_job)
    set_password = commands.add_parser("set-password", help="give a user a new random password")
    set_password.add_argument("email")
    set_password.set_defaults(func=cmd_set_password)
    from carnet.cli_warehouse import add_commands

    add_commands(commands)  # load, warehouse: clients of the REST API, in their own module
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CarnetError as exc:
        print(f"carnet: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
