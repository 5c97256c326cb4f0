"""A warm notebook worker: ``python -m carnet.scheduler.notebook_worker``, started by the scheduler's pool
(carnet/scheduler/notebook_workers.py) as one OS account, with a neutral environment (no run's token).

It imports papermill once and keeps ONE kernel pre-started. The protocol is JSON lines on stdin/stdout:

- worker -> scheduler: ``{"ready": true, "kernel_pid": N}`` once its kernel answers;
- scheduler -> worker: one run: ``{"input", "output", "parameters", "cwd", "timeout", "env"}``;
- worker -> scheduler: ``{"ok": true}`` or ``{"error": "<what notebook_run would have said>"}``.

For a run, the pre-started kernel becomes the run's: a silent execute sets the run's environment
(CARNET_TOKEN, CARNET_JOB_PARAMS, CARNET_RUN_DIR...) and working directory inside the kernel, then papermill
runs the notebook on it. After the run the kernel is shut down and a fresh one is started for the next run:
a kernel never serves two runs (variables, imports and credentials would leak from one to the next). End of
stdin: the worker stops its kernel and exits.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

# jsonschema imports rfc3987_syntax (when installed) for its "iri" format checks, which builds a grammar
# at import: 0.9 s of every cold start. Blocking it only turns those format checks off in this process;
# nbformat's notebook validation does not use them.
sys.modules.setdefault("rfc3987_syntax", None)

import nbformat  # noqa: E402 - after the line above on purpose
import papermill  # noqa: E402
from jupyter_client.blocking import BlockingKernelClient  # noqa: E402
from jupyter_client.manager import KernelManager  # noqa: E402
from papermill.exceptions import PapermillExecutionError  # noqa: E402
from traitlets import DottedObjectName  # noqa: E402

KERNEL_START_TIMEOUT = 60


class WarmKernelClient(BlockingKernelClient):
    """A client connected while the kernel waits for its run: starting its channels again is a no-op, and
    once the run's setup execute went round (shell reply and IOPub idle), waiting for the kernel is too.
    nbclient's wait_for_ready would otherwise cost ~0.2 s: it wants an IOPub message within 0.2 s of a
    kernel_info reply, and asks again when it has none."""

    verified = False

    def start_channels(self, *args, **kwargs):
        if not self.channels_running:
            super().start_channels(*args, **kwargs)

    def wait_for_ready(self, timeout=None):
        if not self.verified:
            super().wait_for_ready(timeout=timeout)


class RunKernelManager(KernelManager):
    """The kernel of one run, with its client connected ahead (pre-start): the run's setup execute and
    nbclient use that client, so the run does not wait for new channels to connect (~0.2 s: a fresh
    client's first kernel_info goes round again until its IOPub subscription is up). The worker closes every
    client made of it after the run (nbclient leaves the channels of a kernel it did not start open)."""

    client_class = DottedObjectName("carnet.scheduler.notebook_worker.WarmKernelClient")

    def client(self, **kwargs):
        if self.ready_client is not None:
            client, self.ready_client = self.ready_client, None  # handed out once: to nbclient
            return client
        client = super().client(**kwargs)
        self.made_clients.append(client)
        return client

    def close_clients(self) -> None:
        for client in self.made_clients:
            client.stop_channels()
        self.made_clients.clear()


def start_kernel() -> RunKernelManager:
    manager = RunKernelManager(kernel_name="python3")
    manager.made_clients, manager.ready_client = [], None
    manager.start_kernel()
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=KERNEL_START_TIMEOUT)
    except BaseException:
        manager.close_clients()
        raise
    manager.ready_client = client
    return manager


def setup_code(env: dict, cwd: str) -> str:
    """Code that makes the kernel the run's, defining no name in the user's namespace."""
    variables = {str(name): str(value) for name, value in env.items()}
    return f"(lambda os: (os.environ.update({variables!r}), os.chdir({cwd!r})))(__import__('os'))"


def make_kernel_the_runs(manager: RunKernelManager, env: dict, cwd: str) -> None:
    """A silent execute: not counted, not in the history, its messages read here (never by nbclient, which
    only reads the replies to its own requests)."""
    reply = manager.ready_client.execute_interactive(
        setup_code(env, cwd),
        silent=True,
        store_history=False,
        allow_stdin=False,
        timeout=KERNEL_START_TIMEOUT,
        output_hook=lambda message: None,
    )
    if reply["content"]["status"] != "ok":
        raise RuntimeError(f"Setting up the kernel failed: {reply['content'].get('evalue', '')}")
    manager.ready_client.verified = True  # execute_interactive returned: the kernel answered on both channels


def run(manager: RunKernelManager, request: dict) -> dict:
    try:
        make_kernel_the_runs(manager, request["env"], request["cwd"])
        papermill.execute_notebook(
            request["input"],
            request["output"],
            parameters=request["parameters"],
            kernel_name="python3",
            cwd=request["cwd"],
            execution_timeout=request["timeout"],
            progress_bar=False,
            log_output=False,
            km=manager,
        )
    except PapermillExecutionError as exc:
        # The same words as notebook_run: papermill wrote the error into the output notebook.
        return {"error": f"Cell {exc.exec_count} raised {exc.ename}: {exc.evalue}"}
    except Exception as exc:
        # notebook_run's process would end with this traceback; its last line is what the run reports.
        traceback.print_exc()
        return {"error": traceback.format_exception_only(exc)[-1].strip()}
    finally:
        manager.close_clients()
    return {"ok": True}


def main() -> int:
    # Answers go to a private copy of stdout; fd 1 (inherited by every kernel) goes to stderr, so that
    # nothing a kernel prints can be taken for an answer.
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    # nbformat compiles its notebook schema on first use (~0.05 s): done here, not in the first run.
    nbformat.validate(nbformat.v4.new_notebook())
    while True:
        manager = start_kernel()
        try:
            answers.write(json.dumps({"ready": True, "kernel_pid": manager.provisioner.pid}) + "\n")
            line = sys.stdin.readline()
            if not line:
                return 0
            result = run(manager, json.loads(line))
        finally:
            manager.shutdown_kernel(now=True)
        answers.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    sys.exit(main())
