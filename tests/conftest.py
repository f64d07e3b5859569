"""Shared fixtures: real H.264 files written by the tests (no mocked decoders), one torch thread per
test, and the real local servers of `tests/servers/` (loaded here as plugins, with `servers.ci`: under
CI, failures printed as they happen and a deadline for the run)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.register_assert_rewrite("servers")
pytest_plugins = ["servers.s3", "servers.mlflow_server", "servers.ray_head", "servers.cluster", "servers.ci"]

from actionlab.data import synthetic  # noqa: E402

INDEX_STEP = 8  # pixel value of frame i in `index_video` files is i * INDEX_STEP


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Runs every test with one torch intra-op thread, restoring the count after. The tests run tiny
    models, where starting and syncing threads costs more than the maths: on a shared 2-core machine
    one thread is several times faster than two. Code under test that sets its own count (bench) still
    can; subprocesses are not affected."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory) -> Path:
    """A tiny motion dataset (4 classes x 6 videos, 8 frames, 32 px); returns its manifest path."""
    out = tmp_path_factory.mktemp("synth")
    return synthetic.synthesize(out, num_classes=4, videos_per_class=6, num_frames=8, size_px=32, seed=0, num_procs=1)


def index_frames(num_frames: int, *, height: int = 32, width: int = 48) -> np.ndarray:
    """(T, H, W, 3) uint8 frames whose every pixel equals `frame index * INDEX_STEP`."""
    values = (np.arange(num_frames) * INDEX_STEP).astype(np.uint8)
    return np.broadcast_to(values[:, None, None, None], (num_frames, height, width, 3)).copy()


@pytest.fixture
def index_video(tmp_path):
    """Factory: writes an H.264 MP4 whose frame i has pixel value i * INDEX_STEP; returns its path."""

    def make(name: str = "index.mp4", *, num_frames: int = 24, height: int = 32, width: int = 48) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        synthetic.write_mp4(
            path,
            index_frames(num_frames, height=height, width=width),
            options={"g": "6", "bf": "2", "crf": "10", "preset": "ultrafast"},
        )
        return path

    make.step = INDEX_STEP
    return make


@pytest.fixture
def params_built(monkeypatch) -> list[str]:
    """The names of the workload Params classes built through `registry.from_mapping` while the test runs."""
    from workloads import registry

    built, real = [], registry.from_mapping

    def counting(cls, *args, **kwargs):
        built.append(cls.__name__)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(registry, "from_mapping", counting)
    return built
