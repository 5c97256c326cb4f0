"""A job kind for the scheduler's own tests, registered the way other packages add kinds (the
``carnet.job_kinds`` entry point group) or directly with ``register``. It writes one output file (written then
renamed), can wait, can fail transiently or for good on its first tries, and counts its executions in
``executions.log`` of the run's folder, so a test can tell that a resumed run did not render again."""

from __future__ import annotations

import time

from carnet.scheduler.attachments import written_then_renamed
from carnet.scheduler.executor import JobRunError, TransientRunError
from carnet.scheduler.kinds import JobKind, PlannedMail


class EchoKind(JobKind):
    name = "test_echo"
    description = "Tests only: writes echo.txt and mails it."
    needs_recipients = True

    def validate(self, session, settings, principal, body):
        return dict(body.get("config") or {})

    def execute(self, executor, context):
        config = context.config
        with open(context.output_dir / "executions.log", "a") as log:
            log.write(f"{context.attempt}\n")
        time.sleep(float(config.get("sleep", 0)))
        if context.attempt <= int(config.get("fail_tries", 0)):
            if config.get("failure") == "permanent":
                raise JobRunError("The data is wrong", step="execute")
            raise TransientRunError("The source's server did not answer", step="execute")
        output = context.output_dir / "echo.txt"
        with written_then_renamed(output) as partial:
            partial.write_text(f"run {context.run_id} for {context.scheduled_for.isoformat()}\n")
        return [
            PlannedMail(
                context.recipients,
                f"Echo of run {context.run_id}",
                f"Run {context.run_id} of {context.job_name}",
                [output],
            )
        ]
