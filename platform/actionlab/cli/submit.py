"""`actionlab submit -- COMMAND ...`: an actionlab command as a Ray job (Jobs SDK + platform/runtime_env.yaml)."""

from __future__ import annotations

import argparse
import sys

from .common import add_command


def add_parser(subparsers) -> None:
    """Adds `submit` to the top-level subparsers."""
    sp = add_command(subparsers, "submit", run_submit,
                     "run an actionlab command as a Ray job (Jobs SDK + platform/runtime_env.yaml)")
    sp.add_argument("--address", help="Ray dashboard URL (default: $RAY_API_SERVER_ADDRESS, an http $RAY_ADDRESS, "
                    "or http://127.0.0.1:8265)")
    sp.add_argument("--follow", action="store_true", help="stream the job's logs until it ends; exit 1 unless it succeeded")
    sp.add_argument("--runtime-env", help="runtime env YAML (default: platform/runtime_env.yaml of this checkout)")
    sp.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra env var for the job (credentials are refused: the dashboard shows them)")
    sp.add_argument("--job-id", help="submission id (default: actionlab-COMMAND-TIMESTAMP-RANDOM)")
    sp.add_argument("--num-gpus", type=float, help="GPUs reserved for the job's driver (usually none)")
    sp.add_argument("command", nargs=argparse.REMAINDER, help="-- train|tune|eval ... (an actionlab command)")


def run_submit(args) -> int:
    """`actionlab submit`: `jobs.submit`, then `jobs.follow` with `--follow`; exit 1 unless the job succeeded,
    130 when following is interrupted (the job keeps running)."""
    from .. import jobs

    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    env = {}
    for text in args.env:
        key, sep, value = text.partition("=")
        if not sep:
            raise ValueError(f"--env {text!r}: expected KEY=VALUE")
        env[key] = value
    job = jobs.submit(command, address=args.address, runtime_env_file=args.runtime_env, env=env,
                      submission_id=args.job_id, num_gpus=args.num_gpus)
    print(f"job id: {job.job_id}")
    print(f"address: {job.address}")
    print(f"entrypoint: {job.entrypoint}")
    print(f"env forwarded: {', '.join(job.env_keys) or '-'}", flush=True)
    if not args.follow:
        print(f"status: {jobs.status(job.job_id, address=args.address)}")
        print(f"follow: ray job logs -f {job.job_id} --address {job.address}")
        return 0
    print("--- logs ---", flush=True)
    try:
        state = jobs.follow(job.job_id, address=args.address)
    except KeyboardInterrupt:
        print(f"\nstopped following; the job keeps running (ray job stop {job.job_id} --address {job.address})")
        return 130
    print(f"--- job {job.job_id} {state} ---")
    if state != "SUCCEEDED":
        message = jobs.failure_message(job.job_id, address=args.address)
        if message:
            print(message, file=sys.stderr)
        return 1
    return 0
