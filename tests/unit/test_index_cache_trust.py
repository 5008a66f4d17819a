"""The index cache trusts nothing it cannot check: edited arrays are rebuilt, the key follows the
data's content (not its size and modification time), killed writers' temporaries are removed."""

import glob
import json
import logging
import os

import numpy as np
import pytest

from megatron.core.datasets.blended_dataset import BlendedDataset
from megatron.core.datasets.config import DatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.files import file_sha256, host_name
from tests.unit.test_gpt_dataset import make, random_docs, write_dataset


def _entry(cache, name):
    (path,) = glob.glob(os.path.join(cache, f"*-{name}.npy"))
    (description,) = glob.glob(os.path.join(cache, "*-description.json"))
    return path, description


def _rebuilt(caplog, build):
    with caplog.at_level(logging.WARNING):
        ds = build()
    messages = [r.getMessage() for r in caplog.records if "damaged index cache" in r.getMessage()]
    caplog.clear()
    return ds, messages


def test_edited_array_of_the_same_shape_is_rebuilt(tmp_path, caplog):
    indexed = write_dataset(tmp_path / "d", random_docs(1))
    cache = str(tmp_path / "cache")
    good = np.array(make(indexed, num_samples=30, cache=cache).sample_index)
    path, _ = _entry(cache, "sample_index")
    edited = good.copy()
    edited[5, 1] += 1  # in range, same shape and dtype: the old cache served it as is
    np.save(path, edited)
    ds, messages = _rebuilt(caplog, lambda: make(indexed, num_samples=30, cache=cache))
    assert len(messages) == 1 and path in messages[0] and "edited or damaged" in messages[0]
    np.testing.assert_array_equal(ds.sample_index, good)
    assert not _rebuilt(caplog, lambda: make(indexed, num_samples=30, cache=cache))[1]


@pytest.mark.parametrize(
    "name,row,value,problem",
    [
        ("document_index", 0, 10**6, "document_index leaves the split's documents"),
        ("sample_index", 3, -1, "sample_index holds positions"),
        ("shuffle_index", 0, 10**6, "shuffle_index holds sample ids"),
    ],
)
def test_out_of_range_values_are_rebuilt_even_with_a_matching_digest(
    tmp_path, caplog, name, row, value, problem
):
    indexed = write_dataset(tmp_path / "d", random_docs(2))
    cache = str(tmp_path / "cache")
    good = make(indexed, num_samples=30, cache=cache)
    expected = {n: np.array(getattr(good, n)) for n in good.INDEX_NAMES}
    path, description = _entry(cache, name)
    array = expected[name].copy()
    array.reshape(array.shape[0], -1)[row, 0] = value
    np.save(path, array)
    stored = json.load(open(description))  # re-signed: only the range checks can tell
    stored["arrays"][name]["sha256"] = file_sha256(path)
    json.dump(stored, open(description, "w"))
    ds, messages = _rebuilt(caplog, lambda: make(indexed, num_samples=30, cache=cache))
    assert len(messages) == 1 and problem in messages[0]
    for n in good.INDEX_NAMES:
        np.testing.assert_array_equal(getattr(ds, n), expected[n])


def test_rewritten_data_with_the_same_size_and_mtime_gets_a_new_key(tmp_path):
    docs = random_docs(3)
    indexed = write_dataset(tmp_path / "d", docs)
    key = make(indexed, num_samples=30, cache=tmp_path / "c").unique_description_hash
    stats = {ext: os.stat(str(tmp_path / "d") + ext) for ext in (".bin", ".idx")}
    for ext, st in stats.items():  # touching keeps the key: the content is the same
        os.utime(str(tmp_path / "d") + ext, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert make(IndexedDataset(str(tmp_path / "d")), num_samples=30).unique_description_hash == key
    # re-preprocessed with other tokens of the same lengths; sizes and mtimes put back
    write_dataset(tmp_path / "d", [np.asarray(d)[::-1] for d in docs])
    for ext, st in stats.items():
        assert os.path.getsize(str(tmp_path / "d") + ext) == st.st_size
        os.utime(str(tmp_path / "d") + ext, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = make(IndexedDataset(str(tmp_path / "d")), num_samples=30, cache=tmp_path / "c")
    assert again.unique_description_hash != key


def test_blend_with_out_of_range_member_samples_is_rebuilt(tmp_path, caplog):
    members = [
        make(write_dataset(tmp_path / f"m{i}", random_docs(10 + i)), cache=tmp_path / "c")
        for i in range(2)
    ]
    config = DatasetConfig(random_seed=1, sequence_length=16, path_to_cache=str(tmp_path / "b"))
    good = BlendedDataset(members, [0.5, 0.5], 20, config)
    expected = np.array(good.dataset_sample_index)
    path, description = _entry(str(tmp_path / "b"), "dataset_sample_index")
    np.save(path, expected + 10**6)
    stored = json.load(open(description))
    stored["arrays"]["dataset_sample_index"]["sha256"] = file_sha256(path)
    json.dump(stored, open(description, "w"))
    blend, messages = _rebuilt(caplog, lambda: BlendedDataset(members, [0.5, 0.5], 20, config))
    assert len(messages) == 1 and "past their member's length" in messages[0]
    np.testing.assert_array_equal(blend.dataset_sample_index, expected)


def test_the_building_rank_removes_killed_writers_temporaries(tmp_path):
    indexed = write_dataset(tmp_path / "d", random_docs(4))
    cache = tmp_path / "cache"
    make(indexed, num_samples=30, cache=cache)
    stale = cache / f"x-sample_index.npy.tmp-999999999-0123abcd-{host_name()}"
    stale.write_bytes(b"\0" * 4096)
    make(indexed, num_samples=30, cache=cache)
    assert not stale.exists() and len(os.listdir(cache)) == 4
