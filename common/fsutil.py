"""Files that appear under their final name only when complete.

A killed run must never leave a truncated file under a name a later run would
take as finished, so everything is written to a hidden temporary name in the
same folder and renamed (atomic on POSIX) once complete. Likewise a failed run
removes the folders it created (makedirs_tracked) if they are still empty
(remove_empty_folders), and nothing else.
"""
import contextlib
import hashlib
import json
import os

_BLOCK = 1 << 20


def partial_path(path):
    """The temporary name used while `path` is being written (same folder, hidden)."""
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}.partial")


@contextlib.contextmanager
def atomic_output(path):
    """Yield a temporary path; rename it to `path` only if the block succeeds.

    The block must have closed the file. Its bytes are flushed to disk before the
    rename and the folder after it, so a power cut cannot leave an empty or torn
    file under `path` (the rename alone orders nothing on disk).
    """
    tmp = partial_path(path)
    try:
        yield tmp
        _fsync_path(tmp)
        os.replace(tmp, path)
        _fsync_path(os.path.dirname(path) or ".")
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _fsync_path(path):
    """fsync a file or folder by name (one open and one fsync: cheap next to the write)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_file(path):
    """os.remove(path), where a path that is not there is not an error."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def makedirs_tracked(path, created):
    """os.makedirs(path, exist_ok=True); appends the folders it made to `created`, parents first."""
    missing, head = [], os.path.abspath(path)
    while not os.path.lexists(head):
        missing.append(head)
        head = os.path.dirname(head)
    try:
        os.makedirs(path, exist_ok=True)
    finally:  # also when it failed part-way: what exists now was made here
        created.extend(folder for folder in reversed(missing) if os.path.isdir(folder))


def remove_empty_folders(created):
    """Remove the folders in `created` that are empty, deepest first; keep every other one."""
    for folder in reversed(created):
        try:
            os.rmdir(folder)  # only ever removes an empty folder
        except OSError:
            pass


class CannotCreate(OSError):
    """output_folder could not create the folder itself (not an error inside its block)."""


@contextlib.contextmanager
def output_folder(path):
    """Create folder `path` (and missing parents) for the block's output.

    If the block fails, the folders this call created are removed again as long
    as they are still empty (remove_empty_folders).
    Raises CannotCreate (an OSError) when the folder cannot be created.
    """
    created = []
    try:
        makedirs_tracked(path, created)
    except OSError as exc:
        remove_empty_folders(created)
        raise CannotCreate(exc.errno, exc.strerror, path) from None
    try:
        yield path
    except BaseException:
        remove_empty_folders(created)
        raise


def write_text_atomic(path, text):
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)


def write_json_atomic(path, obj):
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path, default=None):
    """The JSON in `path`, or `default` when it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def file_digest(path, algo="sha256"):
    """Hex digest of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def text_digest(text, algo="sha256"):
    return hashlib.new(algo, text.encode("utf-8")).hexdigest()
