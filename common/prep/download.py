"""Streamed, resumable, verified downloads and safe archive extraction.

A download goes to `DEST.part` and is renamed to DEST only after its checksum
matched, so DEST is always a verified file. An interrupted transfer resumes from
the bytes already in `DEST.part` with an HTTP Range request; a server that
answers 200 instead of 206 sends the whole file again, so the part file is
truncated and written from byte 0 (appending would corrupt it).

Failures that retrying cannot fix (unknown host, a malformed URL, HTTP 4xx other
than 408/429) raise DownloadError at once; transient ones (refused or reset
connections, timeouts, stalls, HTTP 5xx) are retried with exponential backoff.
Either way the message is one short line, never urllib3's nested repr.
"""
import logging
import os
import shutil
import socket
import ssl
import tarfile
import time
import urllib.parse

import requests
import urllib3

from ..cli import UserError, WriteFailed, progress
from ..fsutil import file_digest, makedirs_tracked, read_json, remove_empty_folders, write_json_atomic

log = logging.getLogger(__name__)

_CHUNK = 1 << 16
# Connect / read timeouts in seconds; a stalled read is retried (and resumed).
DEFAULT_TIMEOUT = (15.0, 60.0)
_RETRYABLE_4XX = {408, 429}  # request timeout, too many requests: worth another try


class DownloadError(WriteFailed):
    """A download failed (after its retries, if retrying could help); the message is one line.

    Callers add what the user can do instead (e.g. use a local copy).
    """


class _TransferCut(Exception):
    """The connection ended before the announced length arrived; resume it."""


class _HTTPStatus(Exception):
    """An HTTP error status; `permanent` when asking again cannot change the answer."""

    def __init__(self, resp):
        super().__init__(f"HTTP {resp.status_code} {resp.reason or ''}".strip())
        self.permanent = resp.status_code < 500 and resp.status_code not in _RETRYABLE_4XX


# (exception types anywhere in the cause chain, permanent?, reason): the first match
# wins. Order matters: urllib3 derives NameResolutionError and NewConnectionError
# from ConnectTimeoutError.
_DIAGNOSES = [
    ((urllib3.exceptions.NameResolutionError, socket.gaierror), True,
     "host {host} not found (no network?)"),
    ((requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema,
      requests.exceptions.InvalidURL), True, "not a valid http(s) URL"),
    ((ssl.SSLCertVerificationError,), True, "the TLS certificate of {host} did not verify"),
    ((ConnectionRefusedError,), False, "connection refused by {host}"),
    ((ConnectionResetError, ConnectionAbortedError), False, "connection reset by {host}"),
    ((requests.ConnectTimeout,), False, "no answer from {host} within {connect:g} s"),
    ((requests.ReadTimeout, urllib3.exceptions.ReadTimeoutError, TimeoutError), False,
     "no data from {host} for {read:g} s"),
    ((urllib3.exceptions.NewConnectionError,), False, "cannot connect to {host}"),
]


def url_filename(url):
    """The file name a URL points at, without its query string."""
    name = os.path.basename(urllib.parse.urlparse(url).path)
    if not name:
        raise UserError(f"cannot tell a file name from URL {url!r}")
    return name


def download(url, dest, checksum=None, retries=5, timeout=DEFAULT_TIMEOUT, backoff=1.0):
    """Fetch `url` into `dest` unless `dest` already holds a verified copy.

    checksum: ('md5' | 'sha256', hex) or None (no verification possible).
    A cached `dest` that fails its checksum is removed and fetched again; a fresh
    download that fails it is removed and raises UserError. A transfer that fails
    is retried up to `retries` times (waits of backoff * 2**attempt seconds) unless
    retrying cannot help; then DownloadError, with the bytes received kept in
    DEST.part for the next run (a folder made for DEST is removed if it stayed
    empty). timeout: (connect, read) seconds.
    Returns `dest`.
    """
    if os.path.exists(dest):
        if checksum is None or _matches(dest, checksum):
            log.info("using verified %s", dest)
            return dest
        log.warning("%s does not match its %s checksum; downloading it again", dest, checksum[0])
        os.remove(dest)
    created = []
    makedirs_tracked(os.path.dirname(os.path.abspath(dest)), created)
    try:
        _fetch_verified(url, dest + ".part", checksum, retries, timeout, backoff)
    except BaseException:
        remove_empty_folders(created)  # made for this download, and nothing arrived
        raise
    os.replace(dest + ".part", dest)
    return dest


def _fetch_verified(url, part, checksum, retries, timeout, backoff):
    """Complete `part` from `url` and check it; a file failing its checksum is removed."""
    resumed = os.path.exists(part)
    _fetch_with_retries(url, part, retries, timeout, backoff)
    if checksum is not None and not _matches(part, checksum) and resumed:
        # The bytes kept from an earlier run may be the bad ones: one fresh try.
        log.warning("resumed download of %s fails its checksum; downloading it from the start", url)
        os.remove(part)
        _fetch_with_retries(url, part, retries, timeout, backoff)
    if checksum is not None and not _matches(part, checksum):
        actual = file_digest(part, checksum[0])
        os.remove(part)
        raise UserError(f"checksum mismatch for {url}: expected {checksum[0]} {checksum[1]}, "
                        f"got {actual}; the bad file was removed")


def _matches(path, checksum):
    algo, expected = checksum
    return file_digest(path, algo) == expected.lower()


def _fetch_with_retries(url, part, retries, timeout, backoff):
    for attempt in range(retries + 1):
        try:
            _fetch(url, part, timeout)
            return
        except (requests.RequestException, _TransferCut, _HTTPStatus) as exc:
            permanent, reason = _diagnose(exc, url, timeout)
            if permanent:
                raise DownloadError(f"cannot download {url}: {reason}") from None
            if attempt == retries:
                tries = f"{retries + 1} attempts" if retries else "1 attempt"
                raise DownloadError(f"cannot download {url}: {reason} (gave up after {tries})") from None
            wait = backoff * 2 ** attempt
            log.warning("download of %s failed (%s); retrying in %.0f s",
                        os.path.basename(part)[: -len(".part")], reason, wait)
            time.sleep(wait)


def _diagnose(exc, url, timeout=DEFAULT_TIMEOUT):
    """(permanent, reason) for a failed request: can a retry help, and why it failed in a few words."""
    if isinstance(exc, _HTTPStatus):
        return exc.permanent, str(exc)
    if isinstance(exc, _TransferCut):
        return False, str(exc)
    chain = _causes(exc)
    connect, read = timeout if isinstance(timeout, (tuple, list)) else (timeout, timeout)
    host = urllib.parse.urlsplit(url).hostname or url
    for types, permanent, reason in _DIAGNOSES:
        if any(isinstance(e, types) for e in chain):
            return permanent, reason.format(host=host, connect=connect, read=read)
    return False, type(chain[-1]).__name__  # unknown: worth a retry; the name, not the repr


def _causes(exc):
    """exc and what caused it, outermost first (urllib3 keeps the cause in `.reason`)."""
    chain = []
    while isinstance(exc, BaseException) and exc not in chain:
        chain.append(exc)
        reason = getattr(exc, "reason", None)
        exc = reason if isinstance(reason, BaseException) else (exc.__cause__ or exc.__context__)
    return chain


def _fetch(url, part, timeout):
    """One request: resume `part` if possible, else write it from byte 0."""
    offset = os.path.getsize(part) if os.path.exists(part) else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as resp:
        if resp.status_code == 416 and offset:
            # Range starts at or past the end: the part file is complete or stale.
            if _range_total(resp) == offset:
                return
            os.remove(part)
            raise _TransferCut("stale partial file discarded")
        if resp.status_code >= 400:
            raise _HTTPStatus(resp)
        if resp.status_code == 206 and _range_start(resp) != offset:
            # A piece of the file from somewhere else: not safe to write anywhere.
            if os.path.exists(part):
                os.remove(part)
            raise _TransferCut(f"server sent bytes from {_range_start(resp)}, asked for {offset}")
        if offset and resp.status_code != 206:
            log.info("server did not resume at byte %d; downloading from the start", offset)
            offset = 0
        total = _expected_size(resp, offset)
        written = _stream_body(resp, part, offset, total)
    if total is not None and written < total:
        raise _TransferCut(f"got {written} of {total} bytes")


def _expected_size(resp, offset):
    """Size of the whole file once this response is written at `offset`, if known."""
    if resp.status_code == 206 and _range_total(resp) is not None:
        return _range_total(resp)  # a 206 may stop short of the end: trust the total
    length = resp.headers.get("Content-Length")
    return offset + int(length) if length is not None else None


def _stream_body(resp, part, offset, total):
    """Write the response body at `offset` of `part`; returns the new size."""
    mode = "ab" if offset else "wb"
    name = os.path.basename(part)[: -len(".part")]
    with open(part, mode) as f, progress(total=total, initial=offset, unit="B",
                                         unit_scale=True, unit_divisor=1024, desc=name) as bar:
        try:
            # read1 hands over whatever has arrived, so a cut connection loses
            # nothing already received (iter_content drops its unfinished chunk).
            while True:
                chunk = resp.raw.read1(_CHUNK, decode_content=True)
                if not chunk:
                    break
                f.write(chunk)
                bar.update(len(chunk))
        except urllib3.exceptions.ReadTimeoutError:
            raise _TransferCut(f"the transfer stalled after {f.tell()} bytes") from None
        except urllib3.exceptions.HTTPError as exc:
            raise _TransferCut(f"connection broken after {f.tell()} bytes ({type(exc).__name__})") from None
        return f.tell()


def _range_start(resp):
    """First byte of a 206 answer's Content-Range ('bytes START-END/TOTAL'), or None."""
    value = resp.headers.get("Content-Range", "")
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _range_total(resp):
    value = resp.headers.get("Content-Range", "")
    try:
        return int(value.rsplit("/", 1)[1])
    except (IndexError, ValueError):
        return None


# ---------------------------------------------------------------- extraction

def _unsafe_reason(member, root):
    """Why extracting `member` under `root` is unsafe, or None if it is safe."""
    name = member.name
    if os.path.isabs(name) or name.startswith(("/", "\\")):
        return "has an absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "contains '..'"
    target = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([target, root]) != root:
        return "would land outside the target folder"
    if member.issym() or member.islnk():
        return "is a link"
    if not (member.isfile() or member.isdir()):
        return "is a device, FIFO or other special file"
    return None


def safe_extract(archive, dest):
    """Extract a tar archive into the new folder `dest`.

    Every member is checked before anything is written: absolute paths, '..',
    links and special files are refused (UserError), and Python's 'data' filter
    is applied as a second guard.
    """
    root = os.path.realpath(dest)
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise UserError(f"{archive} is not a readable tar archive: {exc}") from None
    with tar:
        members = tar.getmembers()
        for member in members:
            reason = _unsafe_reason(member, root)
            if reason:
                raise UserError(f"refusing to extract {archive}: member {member.name!r} {reason}")
        os.makedirs(dest)
        for member in progress(members, desc="extract", unit="file"):
            tar.extract(member, dest, filter="data")


def extract_once(archive, parent, force=False):
    """Extract `archive` into `parent` unless a finished extraction is there.

    The archive is unpacked into a hidden temporary folder and moved into place;
    a stamp (written before the move, naming the archive's size, mtime and the
    result) marks the extraction as finished. `force` redoes it. Returns the
    dataset root: the archive's single top-level folder, or a folder named after
    the archive.
    """
    stamp_path = os.path.join(parent, f".{os.path.basename(archive)}.extracted.json")
    info = os.stat(archive)
    identity = {"archive_size": info.st_size, "archive_mtime_ns": info.st_mtime_ns}
    stamp = read_json(stamp_path) or {}
    ours = os.path.join(parent, stamp["root"]) if "root" in stamp else None
    if ours and os.path.isdir(ours):
        if not force and all(stamp.get(k) == v for k, v in identity.items()):
            log.info("using extracted %s", ours)
            return ours
        shutil.rmtree(ours)  # our own extraction of another archive, or --force
    tmp = os.path.join(parent, f".{os.path.basename(archive)}.extracting")
    shutil.rmtree(tmp, ignore_errors=True)
    safe_extract(archive, tmp)
    entries = os.listdir(tmp)
    single = len(entries) == 1 and os.path.isdir(os.path.join(tmp, entries[0]))
    root_name = entries[0] if single else os.path.basename(archive).split(".")[0]
    final = os.path.join(parent, root_name)
    if os.path.exists(final):
        shutil.rmtree(tmp)
        raise UserError(f"{final} already exists and was not extracted by this script; "
                        f"remove it, or pass it as --src")
    write_json_atomic(stamp_path, dict(identity, root=root_name))
    os.replace(os.path.join(tmp, root_name) if single else tmp, final)
    shutil.rmtree(tmp, ignore_errors=True)
    return final
