"""Storage URIs on the local filesystem (S3 is covered by the moto integration tests)."""

import pytest

from actionlab import storage


def test_local_and_file_uris(tmp_path):
    target = tmp_path / "a" / "b.bin"
    storage.write_bytes(target, b"hello")
    assert storage.read_bytes(target) == b"hello"
    assert storage.read_text(f"file://{target}") == "hello"
    assert storage.exists(target) and storage.exists(tmp_path / "a") and not storage.exists(tmp_path / "c")
    assert [p.name for p in target.parent.iterdir()] == ["b.bin"]  # no temp files left behind
    assert storage.local_copy(target, tmp_path / "cache") == str(target)
    assert storage.local_copy(f"file://{target}", tmp_path / "cache") == str(target)
    with pytest.raises(FileNotFoundError, match="c.bin"):
        storage.read_bytes(tmp_path / "c.bin")


def test_join_parent_is_remote():
    assert storage.join("s3://bkt/data/", "videos", "a.mp4") == "s3://bkt/data/videos/a.mp4"
    assert storage.join("/data", "videos", "a.mp4") == "/data/videos/a.mp4"
    assert storage.parent("s3://bkt/data/m.parquet") == "s3://bkt/data"
    assert storage.parent("/data/m.parquet") == "/data"
    assert storage.is_remote("s3://bkt/x") and not storage.is_remote("file:///x") and not storage.is_remote("/x")
