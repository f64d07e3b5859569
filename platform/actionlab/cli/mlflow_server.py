"""`actionlab mlflow-server`: an MLflow tracking server with a database store and a proxied artifact root."""

from __future__ import annotations

from .common import add_command


def add_parser(subparsers) -> None:
    """Adds `mlflow-server` to the top-level subparsers."""
    sp = add_command(subparsers, "mlflow-server", run_mlflow_server,
                     "MLflow tracking server: database store + proxied S3 or local artifact root")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=5000)
    sp.add_argument("--backend-store-uri", default="",
                    help="database URI (default: sqlite:///$ACTIONLAB_HOME/server/mlflow.db)")
    sp.add_argument("--artifacts-destination", default="",
                    help="s3://bucket/prefix or a folder (default: $ACTIONLAB_HOME/server/artifacts)")
    sp.add_argument("--workers", type=int, default=1)
    sp.add_argument("--print-command", action="store_true", help="print the `mlflow server` command and exit")


def run_mlflow_server(args) -> int:
    """`actionlab mlflow-server`: `mlflow_server.serve`, or with `--print-command` the command it runs."""
    from .. import mlflow_server, storage

    kwargs = dict(host=args.host, port=args.port, backend_store_uri=args.backend_store_uri,
                  artifacts_destination=args.artifacts_destination, workers=args.workers)
    if args.print_command:
        print(" ".join(storage.redact(a) for a in mlflow_server.command(**kwargs)))
        return 0
    mlflow_server.serve(**kwargs)
    return 0
