"""`actionlab serve NAME[@ALIAS]`: a Ray Serve deployment of a registered model that follows its alias.

Each replica loads the version the alias names (actionlab's safetensors loader), batches concurrent
requests into one forward pass (`serve.batch`), and polls the registry: when the alias moves (say
`@champion` set to another version in the registry UI) it loads the new version beside the old and
swaps in one assignment, so requests in flight finish on the old model and none is dropped. Every
prediction says which version made it. HTTP binds 127.0.0.1 unless told otherwise.

Request: `POST /` with `{"videos": ["path or URI", ...]}` (or `"inputs"`); response:
`{"model": NAME, "predictions": [{"video", "version", "top": [{"class", "label", "prob"}]} | {"video", "error"}]}`.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

logger = logging.getLogger("actionlab.models.serve")


def parse_model(ref: str) -> tuple[str, str]:
    """`NAME[@ALIAS]` (also `models:/NAME@ALIAS`) -> (name, alias); the alias defaults to champion."""
    ref = ref.removeprefix("models:/")
    name, _, alias = ref.partition("@")
    if not name or "/" in name:
        raise ValueError(f"model {ref!r}: pass NAME or NAME@ALIAS (a registered model name, e.g. motion-tsm@champion)")
    return name, alias or "champion"


def score_videos(loaded, videos: list[str], *, top_k: int, device: str, cache_dir: str) -> list[dict]:
    """Top-k for each video, one forward pass for all of them (views of all videos stacked)."""
    import pandas as pd
    import torch
    import torch.nn.functional as F

    from .. import storage
    from ..data.dataset import build_dataset
    from ..train.evaluate import normalise, stats_tensors

    meta = loaded.meta
    out: list[dict] = [{} for _ in videos]
    views, owners = [], []
    for i, video in enumerate(videos):
        try:
            local = storage.local_copy(video, cache_dir) if storage.is_remote(video) else str(Path(video).resolve())
            row = pd.DataFrame({"video": [Path(local).name], "label": [0]})
            item = build_dataset(row, meta.preprocessing, train=False, root=str(Path(local).parent),
                                 classes=meta.classes)[0]
        except (OSError, ValueError) as err:
            item = {"error": f"{video}: {err}"}
        if "error" in item:
            out[i] = {"video": video, "error": item["error"]}
            continue
        views.append(item["clip"])  # (V, T, C, H, W) uint8
        owners.append(i)
    if views:
        mean_t, std_t = stats_tensors(meta.preprocessing.mean, meta.preprocessing.std, device)
        counts = [v.shape[0] for v in views]
        with torch.no_grad():
            x = normalise(torch.cat(views).to(device), mean_t, std_t)  # (sum V, T, C, H, W)
            logits = loaded.model(x).float()  # (sum V, K)
        for i, part in zip(owners, logits.split(counts)):
            probs = F.softmax(part.mean(0), dim=-1)  # (K,)
            values, indices = probs.topk(min(top_k, probs.numel()))
            out[i] = {
                "video": videos[i],
                "top": [{"class": meta.classes[k], "label": int(k), "prob": round(float(p), 4)}
                        for p, k in zip(values.tolist(), indices.tolist())],
            }
    return out


def build_app(name: str, alias: str, *, replicas: int = 1, num_cpus: float = 1.0, num_gpus: float = 0.0,
              poll_s: float = 10.0, max_batch_size: int = 8, batch_wait_s: float = 0.02, top_k: int = 5):
    """The Serve application: `replicas` copies of the model of `models:/name@alias`."""
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    from .. import tracking
    from . import folder

    env = {"MLFLOW_TRACKING_URI": tracking.tracking_uri(), "ACTIONLAB_HOME": str(tracking.home())}

    @serve.deployment(num_replicas=replicas, ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus},
                      max_ongoing_requests=4 * max_batch_size)
    class VideoModel:
        def __init__(self):
            import torch

            os.environ.update(env)
            torch.set_num_threads(max(1, int(num_cpus)))
            self.device = "cuda" if num_gpus and torch.cuda.is_available() else "cpu"
            self.cache_dir = str(tracking.home() / "cache")
            self.state = self._load(self._alias_version())  # (version, LoadedModel): swapped in one assignment
            self._stop = threading.Event()
            threading.Thread(target=self._follow, name="follow-alias", daemon=True).start()

        def _alias_version(self) -> str:
            return str(tracking.client().get_model_version_by_alias(name, alias).version)

        def _load(self, version: str):
            return version, folder.load_model(f"models:/{name}/{version}", device=self.device)

        def _follow(self) -> None:
            while not self._stop.wait(poll_s):
                try:
                    version = self._alias_version()
                    if version != self.state[0]:
                        previous = self.state[0]
                        self.state = self._load(version)
                        logger.warning("%s@%s moved: serving version %s (was %s)", name, alias, version, previous)
                except Exception as err:  # registry unreachable: keep serving the loaded version
                    logger.warning("checking %s@%s failed (%s); still serving version %s",
                                   name, alias, err, self.state[0])

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_s)
        async def _score(self, videos: list[str]) -> list[dict]:
            import asyncio

            version, loaded = self.state
            results = await asyncio.to_thread(score_videos, loaded, videos, top_k=top_k, device=self.device,
                                              cache_dir=self.cache_dir)
            return [{**r, "version": version} if "top" in r else r for r in results]

        async def __call__(self, request: Request):
            import asyncio

            try:
                body = await request.json()
                videos = body.get("videos", body.get("inputs")) if isinstance(body, dict) else body
                videos = [videos] if isinstance(videos, str) else videos
                if not videos or not all(isinstance(v, str) for v in videos):
                    raise ValueError
            except ValueError:
                return JSONResponse({"error": 'send JSON {"videos": ["path or URI", ...]}'}, status_code=400)
            predictions = await asyncio.gather(*(self._score(v) for v in videos))
            return {"model": name, "predictions": list(predictions)}

        def __del__(self):
            self._stop.set()

    return VideoModel.bind()


def serve_forever(model: str, *, host: str = "127.0.0.1", port: int = 8000, replicas: int = 1,
                  num_cpus: float = 1.0, num_gpus: float | None = None, poll_s: float = 10.0,
                  max_batch_size: int = 8, batch_wait_s: float = 0.02, top_k: int = 5) -> None:
    """Deploys on the jobs' Ray cluster (`RAY_ADDRESS`, else a local one) and serves until interrupted."""
    import ray
    from ray import serve

    from .. import tracking
    from ..cluster import init_ray

    name, alias = parse_model(model)
    version = tracking.client().get_model_version_by_alias(name, alias).version  # fails early, naming the model
    init_ray()
    if num_gpus is None:
        num_gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    serve.start(http_options={"host": host, "port": port})
    app = build_app(name, alias, replicas=replicas, num_cpus=num_cpus, num_gpus=num_gpus, poll_s=poll_s,
                    max_batch_size=max_batch_size, batch_wait_s=batch_wait_s, top_k=top_k)
    serve.run(app, name=f"actionlab-{name}", route_prefix="/")
    print(f"serving {name}@{alias} (version {version}, {replicas} replica(s), {num_gpus:g} GPU each) at "
          f"http://{host}:{port}/ ; following @{alias} every {poll_s:g}s", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()


def load_test(url: str, videos: list[str], *, requests: int = 100, concurrency: int = 4,
              timeout_s: float = 60.0) -> dict:
    """A bounded load generator: `requests` POSTs of one video each, `concurrency` at a time.

    Returns requests/s, p50/p99 latency in ms, the number of failed requests and how many answers
    each model version gave.
    """
    def one(i: int) -> tuple[float, str]:
        body = json.dumps({"videos": [videos[i % len(videos)]]}).encode()
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as response:
                pred = json.loads(response.read())["predictions"][0]
            return time.perf_counter() - start, str(pred.get("version", "error"))
        except (OSError, ValueError, KeyError) as err:
            return time.perf_counter() - start, f"failed: {type(err).__name__}"

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - start
    latencies = sorted(t for t, v in results if not v.startswith("failed"))
    versions: dict[str, int] = {}
    for _, v in results:
        versions[v] = versions.get(v, 0) + 1

    def pct(q: float) -> float:
        return round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1) if latencies else float("nan")

    return {
        "requests": requests,
        "concurrency": concurrency,
        "failed": sum(v.startswith("failed") for _, v in results),
        "requests_per_s": round(len(latencies) / wall, 2),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "mean_ms": round(1000 * statistics.fmean(latencies), 1) if latencies else float("nan"),
        "versions": versions,
    }
