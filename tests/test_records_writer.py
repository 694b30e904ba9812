"""records.RecordWriter against MXNet's own writer, byte for byte, and the shared
worker pool prepare_data.sh checks and packs with."""
import os
import struct

import mxnet as mx
import numpy as np
import pytest

from common import records
from common.prep.parallel import WorkerPool, parallel_map

MAGIC = struct.pack("<I", 0xCED7230A)
# The 24-byte IRHeader keeps the payload 4-byte aligned, so a magic word at an
# aligned payload offset makes dmlc cut the record into parts.
PAYLOADS = [b"", b"a", b"abc", b"abcd", MAGIC, b"xy" + MAGIC, MAGIC + b"123", b"abcd" + MAGIC + MAGIC + b"z",
            b"12345678" + MAGIC, np.random.default_rng(0).bytes(1001)]


def write_both(tmp_path, payloads, labels):
    mine, theirs = str(tmp_path / "mine"), str(tmp_path / "theirs")
    with records.RecordWriter(mine + ".rec", mine + ".idx") as writer:
        for key, (label, payload) in enumerate(zip(labels, payloads)):
            writer.write(key, label, payload)
    reference = mx.recordio.MXIndexedRecordIO(theirs + ".idx", theirs + ".rec", "w")
    for key, (label, payload) in enumerate(zip(labels, payloads)):
        reference.write_idx(key, mx.recordio.pack(mx.recordio.IRHeader(0, float(label), key, 0), payload))
    reference.close()
    return mine, theirs


def read(path):
    with open(path, "rb") as f:
        return f.read()


def test_writer_matches_mxnet_byte_for_byte_including_records_cut_at_magic_words(tmp_path):
    labels = [i % 3 for i in range(len(PAYLOADS))]
    mine, theirs = write_both(tmp_path, PAYLOADS, labels)
    assert read(mine + ".rec") == read(theirs + ".rec")
    assert read(mine + ".idx") == read(theirs + ".idx")
    reader = mx.recordio.MXIndexedRecordIO(mine + ".idx", mine + ".rec", "r")
    for key, payload in enumerate(PAYLOADS):
        header, body = mx.recordio.unpack(reader.read_idx(key))
        assert (header.id, header.label, body) == (key, float(labels[key]), payload)
    reader.close()
    assert records.read_labels(mine + ".rec", mine + ".idx").tolist() == labels


def test_writer_keeps_fractional_labels_and_large_keys(tmp_path):
    mine, theirs = write_both(tmp_path, [b"jpeg", b"more"], [2.5, 255.0])
    assert read(mine + ".rec") == read(theirs + ".rec")


def worker_pid(_):
    return os.getpid()


def test_a_worker_pool_serves_several_maps_with_the_same_processes():
    with WorkerPool(2) as pool:
        first = set(parallel_map(worker_pid, range(16), pool, "a", chunksize=1))
        # Consumed through zip, which leaves the generator suspended after the last result.
        second = {pid for _, pid in zip(range(16), parallel_map(worker_pid, range(16), pool, "b", chunksize=1))}
        third = set(parallel_map(worker_pid, range(16), pool, "c", chunksize=1))
        assert os.getpid() not in first
        assert second <= first and third <= first


def test_a_map_stopped_early_closes_the_shared_pool_and_the_next_one_starts_afresh():
    with WorkerPool(2) as pool:
        results = parallel_map(worker_pid, range(64), pool, "a", chunksize=1)
        first = next(results)
        results.close()  # the consumer gave up with items outstanding
        assert pool._pool is None
        assert first not in set(parallel_map(worker_pid, range(8), pool, "b", chunksize=1))
