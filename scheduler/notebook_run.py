"""Runs one notebook with papermill, in its own process: ``python -m carnet.scheduler.notebook_run``.

A separate process gives the job's kernel a clean environment (only its Carnet token, never the
scheduler's settings) and lets the scheduler kill a run that exceeds its time limit.
"""

import argparse
import json
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--parameters", default="{}", help="JSON object of parameters to inject")
    parser.add_argument("--cwd")
    parser.add_argument("--timeout", type=int, default=600, help="Seconds per cell")
    args = parser.parse_args(argv)

    # jsonschema imports rfc3987_syntax (when installed) for its "iri" format checks, which builds a grammar
    # at import: 0.9 s of every run. Blocking it only turns those format checks off in this process;
    # nbformat's notebook validation does not use them.
    sys.modules.setdefault("rfc3987_syntax", None)
    import papermill
    from papermill.exceptions import PapermillExecutionError

    try:
        papermill.execute_notebook(
            args.input,
            args.output,
            parameters=json.loads(args.parameters),
            kernel_name="python3",
            cwd=args.cwd,
            execution_timeout=args.timeout,
            progress_bar=False,
            log_output=False,
        )
    except PapermillExecutionError as exc:
        # papermill already wrote the error into the output notebook; say which cell failed.
        print(
            json.dumps({"error": f"Cell {exc.exec_count} raised {exc.ename}: {exc.evalue}"}), file=sys.stderr
        )
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
