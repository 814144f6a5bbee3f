import shutil

import pytest

from pipeline.config import ConfigError
from pipeline.data.shards import count_tar_samples, list_shards
from pipeline.testing.shards import write_shards


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    write_shards(folder, [2, 3, 1], split="train", num_frames=4, size=16)
    val = tmp_path_factory.mktemp("val")
    write_shards(val, [2], split="val", num_frames=4, size=16)
    shutil.copy(val / "val-000000.tar", folder / "val-000000.tar")
    return folder


def names(refs):
    return [(r.name, r.samples) for r in refs]


def test_manifest_and_its_folder(shard_dir):
    expected = [("train-000000.tar", 2), ("train-000001.tar", 3), ("train-000002.tar", 1)]
    assert names(list_shards(str(shard_dir / "manifest.json"), split="train")) == expected
    assert names(list_shards(str(shard_dir), split="train")) == expected
    with pytest.raises(ConfigError, match="none of split 'val'"):
        list_shards(str(shard_dir), split="val")


def test_globs_braces_and_split_filter(shard_dir):
    refs = list_shards(str(shard_dir / "*.tar"), split="train")
    assert names(refs) == [("train-000000.tar", 2), ("train-000001.tar", 3), ("train-000002.tar", 1)]
    refs = list_shards(str(shard_dir / "*.tar"), split=None)
    assert ("val-000000.tar", 2) in names(refs)  # not in the manifest: counted from its headers
    refs = list_shards(str(shard_dir / "train-{000000..000001}.tar"), split="train")
    assert names(refs) == [("train-000000.tar", 2), ("train-000001.tar", 3)]
    both = f"{shard_dir}/train-000002.tar::{shard_dir}/val-000000.tar"
    assert names(list_shards(both, split="val")) == [("val-000000.tar", 2)]


def test_header_scan_counts_without_manifest_and_ignores_unfinished(shard_dir, tmp_path):
    assert count_tar_samples(str(shard_dir / "train-000001.tar")) == 3
    write_shards(tmp_path, [3, 2], num_frames=4, size=16, manifest=False)
    (tmp_path / "train-000001.tar").rename(tmp_path / "train-000001.tar.tmp")
    assert names(list_shards(str(tmp_path / "*"))) == [("train-000000.tar", 3)]


def test_pipe_shards_need_a_manifest(shard_dir):
    spec = f"pipe:cat {shard_dir}/train-{{000000..000002}}.tar"
    refs = list_shards(spec, manifest=str(shard_dir / "manifest.json"), split="train")
    assert [r.url for r in refs][0] == f"pipe:cat {shard_dir}/train-000000.tar"
    assert [r.samples for r in refs] == [2, 3, 1]
    with pytest.raises(ConfigError, match="no sample count for it; name a manifest.json"):
        list_shards(spec)


@pytest.mark.parametrize("spec, needle", [
    ("{d}/nothing-*.tar", "matches no shard"),
    ("{d}/missing.tar", "matches no shard"),
    ("{d}/nope/manifest.json", "manifest not found"),
    ("", "no shards given"),
])
def test_bad_specs_are_one_line_errors(shard_dir, spec, needle):
    with pytest.raises(ConfigError) as e:
        list_shards(spec.format(d=shard_dir))
    assert needle in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith("data.shards")


def test_manifest_listing_a_missing_shard(shard_dir, tmp_path):
    for f in shard_dir.iterdir():
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "train-000001.tar").unlink()
    with pytest.raises(ConfigError, match="shard listed but not found: .*train-000001.tar"):
        list_shards(str(tmp_path), split="train")
