"""Object storage: shards read from a real S3 endpoint on loopback (moto's server), and outputs that
are URLs refused with the fix instead of landing in a local folder named ``s3:``."""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path

import numpy as np
import pytest

from pipeline.curate import CurateConfig, run
from pipeline.loader import LoaderConfig, make_loader
from pipeline.shards import ShardWriter
from runtime.config import ConfigError
from runtime.train import load_train_config

REPO = Path(__file__).resolve().parents[2]


def latent_dataset(root: Path) -> Path:
    with ShardWriter(root / "shards", samples_per_shard=4) as w:
        for i in range(10):
            members = {"json": {"key": f"c{i}"}, "latents.npy": np.full((2, 3), i, np.float32)}
            if i % 3:
                members["actions.npy"] = np.arange(2) + i
            w.write(f"c{i}", members)
    return root


@pytest.fixture(scope="module")
def s3():
    """A bucket on moto's threaded S3 server on 127.0.0.1, and an ``s3fs`` filesystem that talks to it."""
    server_module = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir("videos")
    try:
        yield fs
    finally:
        server.stop()
        s3fs.S3FileSystem.clear_instance_cache()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def keys(loader) -> list[str]:
    return [k for batch in loader for k in batch["key"]]


def test_shards_in_a_bucket_load_like_the_same_shards_on_disk(s3, tmp_path):
    local = latent_dataset(tmp_path / "local")
    s3.put(str(local / "shards"), "videos/ds/shards", recursive=True)
    assert len(s3.glob("videos/ds/shards/*.index.json")) == 3
    cfg = dict(batch_size=2, resampled=False, require=["actions"], shuffle_buffer=4)
    expected = keys(make_loader(LoaderConfig(shards=str(local), **cfg), seed=3))
    assert sorted(expected) == sorted(f"c{i}" for i in range(10) if i % 3)
    folder = make_loader(LoaderConfig(shards="s3://videos/ds", **cfg), seed=3)  # a dataset folder
    assert keys(folder) == expected
    on_s3 = make_loader(LoaderConfig(shards="s3://videos/ds/shards/shard-*.tar", **cfg), seed=3)
    assert on_s3.urls == [f"s3://videos/ds/shards/shard-00000{i}.tar" for i in range(3)]
    assert keys(on_s3) == expected
    for index in s3.glob("videos/ds/shards/*.index.json"):  # without the indexes the tars are scanned
        s3.rm(index)
    assert keys(make_loader(LoaderConfig(shards="s3://videos/ds", **cfg), seed=3)) == expected
    with pytest.raises(FileNotFoundError, match="no .tar shards in object storage"):
        make_loader(LoaderConfig(shards="s3://videos/nothing-here", **cfg))


def test_an_output_url_is_refused_with_the_fix_and_nothing_is_written_locally(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = CurateConfig(input=str(tmp_path), output="s3://videos/curated")
    with pytest.raises(ValueError, match=r"output='s3://videos/curated' is a s3:// URL.*aws s3 sync"):
        run(cfg)
    assert list(tmp_path.iterdir()) == []  # no local folder named "s3:"
    with pytest.raises(ConfigError, match="run_dir='gs://b/run' is a gs:// URL"):
        load_train_config(REPO / "jobs" / "reference.yaml", ["run_dir=gs://b/run"])


def test_a_bucket_without_its_filesystem_package_names_the_extra_to_install():
    if importlib.util.find_spec("gcsfs") is not None:  # not a test dependency: the error path runs here
        pytest.skip("gcsfs is installed")
    with pytest.raises(ImportError, match=r"pip install 'vidworld\[gcs\]'"):
        make_loader(LoaderConfig(shards="gs://bucket/curated"))
