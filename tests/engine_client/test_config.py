from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine_client import config
from engine_client.errors import InvalidInput


def test_defaults() -> None:
    cfg = config.load()
    assert (cfg.state_dir, cfg.updater.interval, cfg.updater.chunk_size,
            cfg.updater.concurrency) == ("sluice-engine-data", 3600.0, 100, 4)
    assert json.loads(cfg.to_json())["http"]["upload_timeout"] == 300.0


def test_file_and_override(tmp_path: Path) -> None:
    path = tmp_path / "engine.toml"
    path.write_text('state_dir = "/var/lib/x"\n[updater]\ninterval = 600\nconcurrency = 8\n'
                    "[http]\nzstd = false\nconnect_timeout = 2.5\n")
    cfg = config.load(str(path), state_dir="here")
    assert (cfg.state_dir, cfg.updater.interval, cfg.updater.concurrency) == ("here", 600.0, 8)
    assert cfg.http.zstd is False and cfg.http.connect_timeout == 2.5


@pytest.mark.parametrize("text, message", [
    pytest.param("[updater]\nintervall = 1\n", "unknown config option updater.intervall",
                 id="typo"),
    pytest.param("[updater]\nconcurrency = '4'\n", "updater.concurrency must be int",
                 id="string"),
    pytest.param("[updater]\nchunk_size = 1.5\n", "updater.chunk_size must be int",
                 id="float-for-int"),
    pytest.param("[http]\nzstd = 1\n", "http.zstd must be bool", id="int-for-bool"),
    pytest.param("updater = 3\n", r"section \[updater\] must be a table", id="not-a-table"),
    pytest.param("[updater]\nconcurrency = 0\n", "updater.concurrency must be positive",
                 id="zero"),
    pytest.param("[updater]\njitter = 1.0\n", r"updater.jitter must be in \[0, 1\)",
                 id="jitter"),
    pytest.param("[updater]\nbackoff_max = 1\n", "must not be below updater.backoff_base",
                 id="backoff"),
    pytest.param("[updater\n", "is not valid TOML", id="syntax"),
    pytest.param("[http]\nrequest_timeout = inf\n", "http.request_timeout must be positive",
                 id="inf"),  # TOML has inf and nan: a traceback at the first request
    pytest.param("[http]\nconnect_timeout = nan\n", "http.connect_timeout must be positive",
                 id="nan"),
    pytest.param("[updater]\nbackoff_max = inf\n", "must not be below", id="inf-backoff"),
])
def test_bad_config(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "engine.toml"
    path.write_text(text)
    with pytest.raises(InvalidInput, match=message):
        config.load(str(path))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"cannot read config file .*: No such file"):
        config.load(str(tmp_path / "none.toml"))
