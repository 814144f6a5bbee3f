"""The /dev/shm check: a setup whose workers' shared batch buffers cannot fit is refused at build time."""

import pytest

import pipeline.data.loader as loader_module
from pipeline.config import ConfigError
from pipeline.data.loader import build_loader
from pipeline.testing.shards import write_shards
from tests.data.loader_testlib import PATCH, config

MIB = 2 ** 20
# 2 workers x (prefetch 2 + 2) slots x batch 3 x (3 x 8 x 32 x 32) uint8 = 0.56 MiB
NEED = 2 * 4 * 3 * 3 * 8 * 32 * 32


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shm")
    write_shards(folder, [6])
    return folder


def test_refused_when_the_rings_do_not_fit(folder, monkeypatch):
    monkeypatch.setattr(loader_module, "shm_free_bytes", lambda: MIB // 2)
    with pytest.raises(ConfigError) as e:
        build_loader(config(folder, num_workers=2), patch_size=PATCH)
    message = str(e.value)
    assert message.startswith("data.num_workers: the workers' batch buffers need 0.6 MiB of shared memory "
                              "(1 rank(s) x 2 workers x 4 batches of 0.1 MiB) but /dev/shm has 0.5 MiB free")
    assert "docker run --shm-size=2G" in message and "data.prefetch_factor" in message and "\n" not in message


def test_ranks_on_the_node_share_it(folder, monkeypatch):
    monkeypatch.setattr(loader_module, "shm_free_bytes", lambda: 3 * NEED)
    build_loader(config(folder, num_workers=2), patch_size=PATCH)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pytest.raises(ConfigError, match=r"need 2\.2 MiB .*\(4 rank\(s\) x 2 workers"):
        build_loader(config(folder, num_workers=2), patch_size=PATCH)


def test_fitting_setups_pass(folder, monkeypatch):
    monkeypatch.setattr(loader_module, "shm_free_bytes", lambda: NEED)
    assert len(build_loader(config(folder, num_workers=2), patch_size=PATCH)) == 2
    monkeypatch.setattr(loader_module, "shm_free_bytes", lambda: 0)
    build_loader(config(folder, num_workers=0), patch_size=PATCH)  # no workers, no rings
    monkeypatch.setattr(loader_module, "shm_free_bytes", lambda: None)  # no /dev/shm here
    build_loader(config(folder, num_workers=2), patch_size=PATCH)
