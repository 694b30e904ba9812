"""common/prep/download.py and the download path of common/prep/main.py, against a loopback server.

Every request goes to 127.0.0.1 (tests/loopback_http.py) with a timeout of a few
seconds, and every server the tests start is stopped by its fixture.
"""
import functools
import hashlib
import io
import json
import logging
import os
import random
import socket
import subprocess
import sys
import tarfile
import threading
import time
import uuid

import pytest
import requests
import urllib3

from common.prep import download as dl
from common.prep import main as prepare
from common.cli import UserError
from common.prep.imagefolder import read_lst
from common.prep.pack import verify_records
from tools.imagegen import make_class_tree
from tests.loopback_http import LoopbackServer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Short timeouts and no backoff sleeps: a hung or retried download fails fast.
FAST = dict(timeout=(2.0, 5.0), backoff=0)
CHUNK = 1 << 16  # download.py's read size
PATH = "/files/blob.bin"


def md5(data):
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def server():
    with LoopbackServer() as srv:  # stop() shuts down and joins the server thread
        yield srv


@pytest.fixture
def body():
    """300 kB of fixed pseudo-random bytes: several chunks, and any corruption shows."""
    return random.Random(1234).randbytes(300_000)


@pytest.fixture
def dest(tmp_path):
    return str(tmp_path / "dl" / "blob.bin")


def read(path):
    with open(path, "rb") as f:
        return f.read()


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


# ---------------------------------------------------------------- the test server itself

def test_loopback_server_answers_head_get_and_ranges(server, body):
    server.add(PATH, body)
    head = requests.head(server.url(PATH), timeout=5)
    assert (head.status_code, head.headers["Content-Length"], head.content) == (200, str(len(body)), b"")
    part = requests.get(server.url(PATH), headers={"Range": "bytes=10-19"}, timeout=5)
    assert (part.status_code, part.content) == (206, body[10:20])
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(body)}"
    past = requests.get(server.url(PATH), headers={"Range": f"bytes={len(body)}-"}, timeout=5)
    assert (past.status_code, past.headers["Content-Range"]) == (416, f"bytes */{len(body)}")
    assert requests.get(server.url("/nope"), timeout=5).status_code == 404
    assert [(r.method, r.status) for r in server.requests] == [
        ("HEAD", 200), ("GET", 206), ("GET", 416), ("GET", 404)]


def test_loopback_server_stalls_mid_body_and_stop_does_not_wait_for_the_stall(body):
    threads_before = set(threading.enumerate())
    server = LoopbackServer().start()
    try:
        server.add(PATH, body, stall_after=1000, stall_for=30)
        with requests.get(server.url(PATH), stream=True, timeout=(2, 0.3)) as resp:
            assert resp.raw.read(1000) == body[:1000]
            with pytest.raises(urllib3.exceptions.ReadTimeoutError):
                resp.raw.read(1)
        assert [(r.sent, r.stalled) for r in server.hits(PATH)] == [(1000, True)]
    finally:
        started = time.monotonic()
        server.stop()  # the handler is still in its 30 s stall
    assert time.monotonic() - started < 2
    assert set(threading.enumerate()) == threads_before  # no handler thread left behind


# ---------------------------------------------------------------- download()

def test_download_verifies_and_reuses_the_cached_file(server, body, dest):
    server.add(PATH, body)
    assert dl.download(server.url(PATH), dest, checksum=("md5", md5(body)), **FAST) == dest
    assert read(dest) == body
    assert not os.path.exists(dest + ".part")
    # The cached file verifies, so the second call must not touch the network.
    dl.download(server.url(PATH), dest, checksum=("md5", md5(body)), **FAST)
    assert len(server.hits(PATH)) == 1


def test_cut_transfer_is_resumed_with_a_range_request(server, body, dest):
    cut = 2 * CHUNK
    server.add(PATH, body, cut_after=cut, cut_times=1)
    dl.download(server.url(PATH), dest, checksum=("md5", md5(body)), **FAST)
    hits = server.hits(PATH)
    assert [(r.range, r.status, r.sent) for r in hits] == [
        (None, 200, cut), (f"bytes={cut}-", 206, len(body) - cut)]
    assert read(dest) == body
    assert not os.path.exists(dest + ".part")


def test_cut_inside_a_read_loses_no_received_byte(server, body, dest):
    cut = CHUNK + 12_345  # mid-read: every byte that arrived must be kept
    server.add(PATH, body, cut_after=cut, cut_times=1)
    dl.download(server.url(PATH), dest, checksum=("md5", md5(body)), **FAST)
    assert [r.range for r in server.hits(PATH)] == [None, f"bytes={cut}-"]
    assert read(dest) == body


def test_a_206_from_the_wrong_offset_is_discarded_and_refetched(server, body, dest):
    write(dest + ".part", body[:1000])
    # A broken server: its 206 starts at byte 0 although byte 1000 was asked for.
    server.add(PATH, body, status=206, status_times=1, headers={"Content-Range": f"bytes 0-99/{len(body)}"})
    dl.download(server.url(PATH), dest, checksum=None, **FAST)
    assert read(dest) == body


def test_resumed_bad_bytes_get_one_fresh_download(server, body, dest):
    # Wrong bytes kept from an earlier run, and a server that honours Range:
    # the resumed file fails its checksum, so it is fetched once from the start.
    write(dest + ".part", b"\x00" * 5000)
    server.add(PATH, body)
    dl.download(server.url(PATH), dest, checksum=("md5", md5(body)), **FAST)
    assert [r.range for r in server.hits(PATH)] == ["bytes=5000-", None]
    assert read(dest) == body


def test_part_file_of_a_previous_run_is_resumed(server, body, dest):
    have = 12_345  # any length: the offset comes from the .part file's size
    write(dest + ".part", body[:have])
    server.add(PATH, body)
    dl.download(server.url(PATH), dest, checksum=("md5", md5(body)), **FAST)
    assert [(r.range, r.status) for r in server.hits(PATH)] == [(f"bytes={have}-", 206)]
    assert read(dest) == body


def test_complete_part_file_is_finished_without_a_body(server, body, dest):
    # Killed after the last byte but before the rename: the server answers 416.
    write(dest + ".part", body)
    server.add(PATH, body)
    dl.download(server.url(PATH), dest, checksum=("md5", md5(body)), **FAST)
    assert [(r.range, r.status) for r in server.hits(PATH)] == [(f"bytes={len(body)}-", 416)]
    assert read(dest) == body and not os.path.exists(dest + ".part")


def test_part_file_longer_than_the_file_is_discarded(server, body, dest):
    # A stale .part (e.g. of an older, bigger version): 416, then a fresh download.
    write(dest + ".part", body + b"stale tail")
    server.add(PATH, body)
    dl.download(server.url(PATH), dest, checksum=("md5", md5(body)), **FAST)
    assert [(r.range, r.status) for r in server.hits(PATH)] == [
        (f"bytes={len(body) + 10}-", 416), (None, 200)]
    assert read(dest) == body


def test_longer_part_file_without_a_checksum_is_not_taken_as_complete(server, body, dest):
    # A zoo file's first download has no checksum to catch a stale tail: the size must.
    write(dest + ".part", body + b"stale tail of an older, longer version")
    server.add(PATH, body)
    dl.download(server.url(PATH), dest, checksum=None, **FAST)
    assert read(dest) == body
    assert [r.status for r in server.hits(PATH)] == [416, 200]


def test_a_stalled_transfer_times_out_and_is_resumed(server, body, dest):
    stall = CHUNK + 100
    server.add(PATH, body, stall_after=stall, stall_for=20, stall_times=1)
    started = time.monotonic()
    dl.download(server.url(PATH), dest, checksum=("md5", md5(body)), timeout=(2.0, 0.5), backoff=0)
    assert time.monotonic() - started < 5  # the 0.5 s read timeout, not the 20 s stall
    assert [(r.range, r.status, r.stalled) for r in server.hits(PATH)] == [
        (None, 200, True), (f"bytes={stall}-", 206, False)]
    assert read(dest) == body


def test_a_server_that_always_stalls_ends_in_one_short_line(server, body, dest):
    server.add(PATH, body, stall_after=1000, stall_for=20)
    with pytest.raises(dl.DownloadError) as error:
        dl.download(server.url(PATH), dest, retries=2, timeout=(2.0, 0.3), backoff=0)
    message = str(error.value)
    assert "stalled" in message and "after 3 attempts" in message, message
    assert "\n" not in message and len(message) < 200, message
    assert len(server.hits(PATH)) == 3
    assert read(dest + ".part") == body[:3000]  # every received byte kept for the next run


@pytest.mark.parametrize("prefix", ["right", "wrong"])
def test_server_ignoring_range_restarts_from_byte_zero(server, body, dest, prefix):
    have = 50_000
    # 'wrong' bytes would survive only if the 200 body were appended or written at the offset.
    write(dest + ".part", body[:have] if prefix == "right" else b"\xAA" * have)
    server.add(PATH, body, ignore_range=True)
    dl.download(server.url(PATH), dest, checksum=("md5", md5(body)), **FAST)
    assert [(r.range, r.status) for r in server.hits(PATH)] == [(f"bytes={have}-", 200)]
    assert read(dest) == body


def test_cut_transfer_then_server_ignoring_range(server, body, dest):
    # The retry asks for the rest; the server sends everything again with 200.
    server.add(PATH, body, cut_after=CHUNK, cut_times=1, ignore_range=True)
    dl.download(server.url(PATH), dest, checksum=("md5", md5(body)), **FAST)
    assert [(r.range, r.status) for r in server.hits(PATH)] == [(None, 200), (f"bytes={CHUNK}-", 200)]
    assert read(dest) == body


@pytest.mark.parametrize("algo", ["md5", "sha256"])
def test_wrong_checksum_is_a_user_error_and_leaves_nothing(server, body, dest, algo):
    server.add(PATH, body)
    wrong = hashlib.new(algo, b"something else").hexdigest()
    with pytest.raises(UserError, match="checksum"):
        dl.download(server.url(PATH), dest, checksum=(algo, wrong), **FAST)
    assert not os.path.exists(dest)
    assert not os.path.exists(dest + ".part")


def test_corrupted_cached_file_is_downloaded_again(server, body, dest):
    server.add(PATH, body)
    dl.download(server.url(PATH), dest, checksum=("md5", md5(body)), **FAST)
    bad = bytearray(body)
    bad[len(bad) // 2] ^= 0xFF  # flip one byte in the middle
    write(dest, bytes(bad))
    dl.download(server.url(PATH), dest, checksum=("md5", md5(body)), **FAST)
    assert read(dest) == body
    assert len(server.hits(PATH)) == 2


def test_404_is_a_user_error_without_retries(server, dest):
    with pytest.raises(UserError, match="404"):
        dl.download(server.url("/missing.tar"), dest, retries=3, **FAST)
    assert len(server.hits("/missing.tar")) == 1
    assert not os.path.exists(dest) and not os.path.exists(dest + ".part")
    assert not os.path.exists(os.path.dirname(dest))  # made for the download, left empty: removed


def counting_fetch(monkeypatch):
    """Wrap download.py's one-request function; returns the list of URLs it was called with."""
    calls, real = [], dl._fetch
    monkeypatch.setattr(dl, "_fetch", lambda url, *a: (calls.append(url), real(url, *a))[1])
    return calls


def assert_short_line(message):
    assert "\n" not in message and len(message) < 200, message
    for raw in ("HTTPConnectionPool", "Max retries", "Caused by", "object at 0x"):
        assert raw not in message, message


def test_unknown_host_fails_at_once_without_retries(dest, monkeypatch):
    url = "http://no-such-host.invalid/files/blob.bin"  # RFC 2606: .invalid resolves nowhere
    started = time.monotonic()
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("no-such-host.invalid", 80)
    assert time.monotonic() - started < 2, "this machine's resolver is slow: the test below cannot time it"
    calls = counting_fetch(monkeypatch)
    started = time.monotonic()
    with pytest.raises(dl.DownloadError) as error:
        dl.download(url, dest, retries=5, timeout=(2.0, 5.0), backoff=1.0)  # retries would sleep 31 s
    assert time.monotonic() - started < 3
    assert calls == [url]
    assert "no-such-host.invalid not found" in str(error.value)
    assert_short_line(str(error.value))


def free_port():
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_connection_refused_is_retried_and_ends_in_one_short_line(dest, monkeypatch):
    url = f"http://127.0.0.1:{free_port()}/files/blob.bin"
    calls = counting_fetch(monkeypatch)
    with pytest.raises(dl.DownloadError) as error:
        dl.download(url, dest, retries=2, **FAST)
    assert len(calls) == 3
    assert "connection refused by 127.0.0.1" in str(error.value) and "after 3 attempts" in str(error.value)
    assert_short_line(str(error.value))


@pytest.mark.parametrize("status, attempts", [(403, 1), (410, 1), (400, 1), (429, 3), (500, 3)])
def test_only_retryable_http_statuses_are_retried(server, body, dest, status, attempts):
    server.add(PATH, body, status=status)
    with pytest.raises(dl.DownloadError, match=f"HTTP {status}") as error:
        dl.download(server.url(PATH), dest, retries=2, **FAST)
    assert len(server.hits(PATH)) == attempts
    assert_short_line(str(error.value))


@pytest.mark.parametrize("url", ["data.caltech.edu/x.tar", "ftp://example.invalid/x.tar", "http:///x.tar"])
def test_malformed_url_is_a_download_error_at_once(dest, monkeypatch, url):
    calls = counting_fetch(monkeypatch)
    with pytest.raises(dl.DownloadError, match="not a valid http"):
        dl.download(url, dest, retries=3, **FAST)
    assert len(calls) == 1


def test_503_twice_then_ok_succeeds(server, body, dest):
    server.add(PATH, body, status=503, status_times=2)
    dl.download(server.url(PATH), dest, checksum=("md5", md5(body)), **FAST)
    assert [r.status for r in server.hits(PATH)] == [503, 503, 200]
    assert read(dest) == body


def test_persistent_503_gives_up_after_the_retries(server, body, dest):
    server.add(PATH, body, status=503)  # every request
    with pytest.raises(UserError, match="after 3 attempts"):
        dl.download(server.url(PATH), dest, retries=2, **FAST)
    assert len(server.hits(PATH)) == 3
    assert not os.path.exists(dest)


# ---------------------------------------------------------------- extraction

def make_tar(path, members):
    """Write a tar of [(TarInfo, bytes or None)]; TarInfos are taken as given (no sanitising)."""
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def member(name, data=None, kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o644
    return info, (data if kind == tarfile.REGTYPE else None)


def snapshot(root):
    """Every path under `root` (files, folders, links): 'nothing was written' is 'no change'."""
    found = set()
    for folder, dirs, files in os.walk(root):
        found.update(os.path.join(folder, n) for n in dirs + files)
    return found


def unsafe_cases(tmp_path):
    absolute = str(tmp_path / f"abs-{uuid.uuid4().hex}.txt")
    return {
        "dotdot": member("../evil.txt", b"evil"),
        "nested-dotdot": member("top/../../evil.txt", b"evil"),
        "absolute": member(absolute, b"evil"),
        "symlink": member("top/link", kind=tarfile.SYMTYPE, linkname="/etc/passwd"),
        "hardlink": member("top/hard", kind=tarfile.LNKTYPE, linkname="top/ok.txt"),
        "fifo": member("top/fifo", kind=tarfile.FIFOTYPE),
        "chardev": member("top/null", kind=tarfile.CHRTYPE),
    }


@pytest.mark.parametrize("case", ["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink",
                                  "fifo", "chardev"])
def test_safe_extract_refuses_unsafe_member_and_writes_nothing(tmp_path, case):
    bad_info, bad_data = unsafe_cases(tmp_path)[case]
    # A harmless member first: the check must run over all members before any is written.
    archive = make_tar(str(tmp_path / "a.tar"), [member("top/ok.txt", b"fine"), (bad_info, bad_data)])
    dest = str(tmp_path / "out" / "dest")
    before = snapshot(tmp_path)
    with pytest.raises(UserError) as exc:
        dl.safe_extract(archive, dest)
    assert repr(bad_info.name) in str(exc.value)
    assert snapshot(tmp_path) == before  # not even dest, nor the harmless member
    # Where the member would have landed ('..' and absolute names point outside dest).
    assert not os.path.lexists(os.path.normpath(os.path.join(dest, bad_info.name)))


def test_extract_once_refuses_unsafe_archive_and_leaves_no_temp_folder(tmp_path):
    parent = tmp_path / "dl"
    parent.mkdir()
    archive = make_tar(str(parent / "a.tar"), [member("top/ok.txt", b"fine"), member("../evil.txt", b"x")])
    before = snapshot(tmp_path)
    with pytest.raises(UserError, match="evil.txt"):
        dl.extract_once(archive, str(parent))
    assert snapshot(tmp_path) == before  # no stamp, no .a.tar.extracting, no top/


@pytest.fixture
def good_archive(tmp_path):
    parent = tmp_path / "dl"
    parent.mkdir()
    archive = make_tar(str(parent / "data.tar"), [
        member("top/a/1.txt", b"one"), member("top/b/2.txt", b"two")])
    return archive, str(parent)


def test_extract_once_returns_the_single_top_folder(good_archive):
    archive, parent = good_archive
    root = dl.extract_once(archive, parent)
    assert root == os.path.join(parent, "top")
    assert read(os.path.join(root, "a", "1.txt")) == b"one"
    assert read(os.path.join(root, "b", "2.txt")) == b"two"
    assert sorted(os.listdir(parent)) == [".data.tar.extracted.json", "data.tar", "top"]


def test_extract_once_reuses_a_finished_extraction(good_archive):
    archive, parent = good_archive
    root = dl.extract_once(archive, parent)
    mtime = os.stat(os.path.join(root, "a", "1.txt")).st_mtime_ns
    write(os.path.join(root, "marker"), b"")  # a re-extraction would remove it
    assert dl.extract_once(archive, parent) == root
    assert os.path.exists(os.path.join(root, "marker"))
    assert os.stat(os.path.join(root, "a", "1.txt")).st_mtime_ns == mtime


def test_extract_once_cleans_the_temp_folder_of_a_killed_run(good_archive):
    archive, parent = good_archive
    # What a run killed mid-extraction leaves: a half-filled hidden temp folder, no stamp.
    leftover = os.path.join(parent, ".data.tar.extracting")
    write(os.path.join(leftover, "top", "a", "half.txt"), b"half")
    root = dl.extract_once(archive, parent)
    assert not os.path.exists(leftover)
    assert sorted(os.listdir(root)) == ["a", "b"]
    assert os.listdir(os.path.join(root, "a")) == ["1.txt"]


def test_extract_once_redoes_its_extraction_of_a_changed_archive(good_archive):
    archive, parent = good_archive
    dl.extract_once(archive, parent)
    make_tar(archive, [member("top/c/3.txt", b"three, a new version")])  # another size
    root = dl.extract_once(archive, parent)
    assert sorted(os.listdir(root)) == ["c"]


# ---------------------------------------------------------------- prepare_data end to end

TAR_NAME = "256_ObjectCategories.tar"
TAR_PATH = f"/records/x/files/{TAR_NAME}"
CLASSES = ["001.ak47", "002.bear", "003.camel"]


@pytest.fixture(scope="module")
def caltech_tar(tmp_path_factory):
    """A Caltech-256 look-alike: 3 classes x 6 JPEGs plus a clutter class, as tar bytes."""
    top = tmp_path_factory.mktemp("tree") / "256_ObjectCategories"
    make_class_tree(str(top), [6, 6, 6], names=CLASSES)
    make_class_tree(str(top), [4], seed=1, names=["257.clutter"])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(str(top), arcname=top.name)
    return buf.getvalue()


@pytest.fixture
def restore_logging():
    """prepare.main() configures the root logger; give the next tests the one they had."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_prepare_downloads_resumes_extracts_and_packs(server, caltech_tar, tmp_path, restore_logging):
    assert len(caltech_tar) > 2 * CHUNK  # so the cut below happens mid-file
    server.add(TAR_PATH, caltech_tar, cut_after=CHUNK, cut_times=1)
    download_dir, out = tmp_path / "download", tmp_path / "out"
    prepare.main(["--url", server.url(TAR_PATH) + "?download=1", "--md5", md5(caltech_tar),
                  "--download-dir", str(download_dir), "--out", str(out),
                  "--train-per-class", "3", "--num-thread", "1", "--resize", "32"])

    hits = server.hits(TAR_PATH)
    assert [(r.query, r.range, r.status) for r in hits] == [
        ("download=1", None, 200), ("download=1", f"bytes={CHUNK}-", 206)]
    assert read(download_dir / TAR_NAME) == caltech_tar  # named without the query string
    assert not (download_dir / (TAR_NAME + ".part")).exists()

    assert (out / "caltech256-classes.txt").read_text() == "".join(f"{c}\n" for c in CLASSES)
    summary = json.loads((out / "caltech256-summary.json").read_text())
    assert (summary["num_classes"], summary["train_images"], summary["val_images"]) == (3, 9, 9)
    # What was used: the URL, the MD5 it was verified against, the archive and its folder.
    assert summary["source"] == {"folder": str(download_dir / "256_ObjectCategories"),
                                 "url": server.url(TAR_PATH) + "?download=1", "md5": md5(caltech_tar),
                                 "archive": str(download_dir / TAR_NAME)}
    assert summary["prefix"] == "caltech256" and "src" not in summary["options"]
    assert [c["name"] for c in summary["excluded_classes"]] == ["257.clutter"]
    for set_name in ("train", "val"):
        base = out / f"caltech256-{set_name}"
        rows = read_lst(str(base) + ".lst")
        assert sorted(label for _, label, _ in rows) == [0.0] * 3 + [1.0] * 3 + [2.0] * 3
        verify_records(str(base) + ".idx", str(base) + ".rec", [label for _, label, _ in rows])


def test_a_failed_run_keeps_the_users_folder_and_the_received_bytes(server, caltech_tar, tmp_path,
                                                                   monkeypatch, restore_logging):
    server.add(TAR_PATH, caltech_tar, cut_after=CHUNK)  # every body is cut
    monkeypatch.setattr(dl, "download", functools.partial(dl.download, retries=1, backoff=0,
                                                          timeout=(2.0, 5.0)))
    out = tmp_path / "mine"
    out.mkdir()  # the user's own, empty folder
    download_dir = tmp_path / "new" / "download"
    with pytest.raises(UserError, match="gave up after 2 attempts.*pass --src DIR"):
        prepare.main(["--url", server.url(TAR_PATH), "--md5", md5(caltech_tar), "--num-thread", "1",
                      "--download-dir", str(download_dir), "--out", str(out)])
    assert out.is_dir() and os.listdir(out) == []
    # Made by the run but not empty: kept, so the next run resumes from byte 2 * CHUNK.
    assert os.listdir(download_dir) == [TAR_NAME + ".part"]
    assert read(download_dir / (TAR_NAME + ".part")) == caltech_tar[: 2 * CHUNK]


def test_prepare_data_sh_wrong_md5_is_one_error_line(server, caltech_tar, tmp_path):
    server.add(TAR_PATH, caltech_tar)
    download_dir = tmp_path / "download"
    env = dict(os.environ, PYTHON=sys.executable, TQDM_DISABLE="1")
    proc = subprocess.run(
        ["bash", os.path.join(REPO, "prepare_data.sh"), "--url", server.url(TAR_PATH) + "?download=1",
         "--md5", "0" * 32, "--download-dir", str(download_dir), "--out", str(tmp_path / "out"),
         "--num-thread", "1"],
        capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    # Progress bars (should TQDM_DISABLE be ignored) are not report lines.
    lines = [line for line in proc.stderr.splitlines()
             if line.strip() and "%|" not in line and "\r" not in line]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("prepare_data.sh: error:") and "checksum" in lines[0]
    # The bad download was removed, .part included, and so was the folder the run made for it.
    assert not download_dir.exists()
