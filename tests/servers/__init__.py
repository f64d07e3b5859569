"""Real local servers for the integration tests, one module per server, each a pytest plugin
(tests/conftest.py loads them):

- `s3`: an S3 endpoint (moto's server mode, real HTTP that boto3 and pyarrow talk to) and a proxy that
  can take it away (`OutageProxy`);
- `mlflow_server`: `actionlab mlflow-server` (SQLite store, artifacts proxied to that S3);
- `ray_head`: `ray start --head`, one per test session for the tests that run Ray (`RAY_ADDRESS`),
  and more for tests that must own theirs;
- `chromium`: headless Chromium driven over the DevTools protocol (the MLflow UI test).

`process` holds what they share. Everything listens on 127.0.0.1 on a free port, keeps its files under
the session's temp dir and is stopped by PID, inside the private network + PID namespace of
scripts/test.sh (ACTIONLAB_TEST_NETNS=1).
"""
