"""Checkpoints in MXNet's model-zoo format, committed atomically and verified on load.

Format: PREFIX-symbol.json + PREFIX-EPOCH.params (keys 'arg:NAME'/'aux:NAME'),
as mx.model.save_checkpoint writes (byte for byte: common/paramfile.py writes the
.params past the page cache), so MXNet and every tool that reads the zoo's
files load them. Unlike mx.model.save_checkpoint (which writes in place: a kill
leaves a truncated file, and a flipped byte loads silently), a training run
writes each checkpoint as a commit:

1. PREFIX-symbol.json, PREFIX-EPOCH.params and PREFIX-EPOCH.states (optimizer
   state), each under a temporary name, fsynced and renamed, with a PATH.sha256
   beside it (sha256sum's format);
2. PREFIX-EPOCH.manifest.json, last: the commit marker. It lists every file with
   its SHA-256 and records what the checkpoint is (epoch, and batch for the
   mid-epoch one; the run it belongs to; learning rate, update count, figures).

Only a checkpoint whose manifest verifies counts as committed. The mid-epoch
checkpoint a preempted run leaves has the tag RESUME instead of an epoch:
PREFIX-resume.params, .states, .manifest.json. Files without a manifest (the
zoo's, or a checkpoint's files before its manifest) are verified by their
.sha256 when there is one.
"""
import datetime
import glob
import json
import logging
import os
import re

from . import paramfile
from .cli import MissingFile, UserError, mxnet_reason
from .fsutil import atomic_output, file_digest, remove_file, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)


RESUME = "resume"  # the tag of the mid-epoch checkpoint (the others are tagged by epoch)
MANIFEST_VERSION = 1


class CorruptCheckpoint(UserError):
    """A checkpoint file is missing, unreadable or differs from its recorded digest."""


def _tag(tag):
    return tag if tag == RESUME else f"{tag:04d}"


def symbol_path(prefix):
    return f"{prefix}-symbol.json"


def params_path(prefix, tag):
    return f"{prefix}-{_tag(tag)}.params"


def raw_params_path(prefix, tag):
    """The raw (not averaged) weights of an --ema run's checkpoint (common.train.ema)."""
    return f"{prefix}-{_tag(tag)}.raw.params"


def states_path(prefix, tag):
    return f"{prefix}-{_tag(tag)}.states"


def manifest_path(prefix, tag):
    return f"{prefix}-{_tag(tag)}.manifest.json"


def record_digest(path):
    """Write PATH.sha256 ('HEX  NAME', sha256sum's format) for an existing file."""
    digest = file_digest(path)
    write_text_atomic(path + ".sha256", f"{digest}  {os.path.basename(path)}\n")
    return digest


def recorded_digest(path):
    """The digest recorded beside `path`, or None when none was recorded."""
    try:
        with open(path + ".sha256", encoding="utf-8") as f:
            return f.read().split()[0]
    except (OSError, IndexError):
        return None


def verify_digest(path):
    """Raise UserError if `path` differs from its recorded digest (no record: no check)."""
    expected = recorded_digest(path)
    if expected is not None and file_digest(path) != expected:
        raise UserError(f"{path} is corrupt: its SHA-256 differs from the one recorded in "
                        f"{path}.sha256 when it was written")


def save_file_atomic(path, write):
    """Call write(tmp_path), rename the result to `path`, record its digest; returns it.

    write may return the hex SHA-256 of the bytes it wrote (paramfile.save does), which
    spares reading the file back.

    The old PATH.sha256 goes before the rename, so that it never describes the
    new file; the new one is written after it.
    """
    with atomic_output(path) as tmp:
        try:
            digest = write(tmp) or file_digest(tmp)
        except OSError as exc:
            if exc.filename != tmp:
                raise
            raise OSError(exc.errno, exc.strerror, path) from None  # the file it was to be, not its temporary name
        remove_file(path + ".sha256")
    write_text_atomic(path + ".sha256", f"{digest}  {os.path.basename(path)}\n")
    return digest


def _arrays(arg_params, aux_params):
    import mxnet as mx
    arrays = {f"arg:{k}": v.as_in_context(mx.cpu()) for k, v in arg_params.items()}
    arrays.update({f"aux:{k}": v.as_in_context(mx.cpu()) for k, v in aux_params.items()})
    return arrays


def save_checkpoint(prefix, epoch, symbol, arg_params, aux_params):
    """Write PREFIX-symbol.json and PREFIX-EPOCH.params (atomic, with digests)."""
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    save_file_atomic(symbol_path(prefix), symbol.save)
    arrays = _arrays(arg_params, aux_params)
    save_file_atomic(params_path(prefix, epoch), lambda tmp: paramfile.save(tmp, arrays))


def commit(prefix, tag, *, symbol, arg_params, aux_params, write_states, info, raw=None):
    """Write a checkpoint's files, then its manifest, the commit marker; returns the manifest.

    tag: the epoch, or RESUME. write_states(tmp_path) writes the optimizer state
    (Module.save_optimizer_states). info: what the manifest records besides the
    files (JSON values). raw: (arg_params, aux_params) of an --ema run's raw weights,
    written to PREFIX-TAG.raw.params (arg_params are then the averages). Raises
    OSError when a file cannot be written; the
    checkpoints committed before are untouched.
    """
    import mxnet as mx
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    remove_file(manifest_path(prefix, tag))  # a tag written again is not committed until its new manifest is
    arrays = _arrays(arg_params, aux_params)
    writes = [(symbol_path(prefix), symbol.save),
              (params_path(prefix, tag), lambda tmp: paramfile.save(tmp, arrays)),
              (states_path(prefix, tag), write_states)]
    if raw is not None:
        raw_arrays = _arrays(*raw)
        writes.append((raw_params_path(prefix, tag), lambda tmp: paramfile.save(tmp, raw_arrays)))
    files = {}
    for path, write in writes:
        files[os.path.basename(path)] = save_file_atomic(path, write)
    manifest = dict(info, version=MANIFEST_VERSION, tag=tag, files=files, mxnet=mx.__version__,
                    written=datetime.datetime.now().astimezone().isoformat(timespec="seconds"))
    write_json_atomic(manifest_path(prefix, tag), manifest)
    return manifest


def read_manifest(prefix, tag, verify=True):
    """The manifest of checkpoint `tag`, its files verified; raises CorruptCheckpoint naming the bad file.

    verify=False reads the manifest only (its files are not hashed): for decisions
    that load nothing, such as retention.
    """
    path = manifest_path(prefix, tag)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
        files = manifest["files"]
        assert manifest["version"] == MANIFEST_VERSION and manifest["tag"] == tag and files
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise CorruptCheckpoint(f"{path} is missing or not a manifest of this project") from None
    folder = os.path.dirname(prefix)
    for name, digest in sorted(files.items()) if verify else ():
        file = os.path.join(folder, name)
        if not os.path.isfile(file):
            raise CorruptCheckpoint(f"{file}, listed in {path}, is missing")
        if file_digest(file) != digest:
            raise CorruptCheckpoint(f"{file} is corrupt: its SHA-256 differs from the one in {path}")
    return manifest


def committed_epochs(prefix):
    """Epochs with a manifest file (not yet verified: read_manifest does that), newest first."""
    pattern = re.compile(re.escape(os.path.basename(prefix)) + r"-(\d{4,})\.manifest\.json$")
    names = (os.path.basename(p) for p in glob.glob(glob.escape(prefix) + "-*.manifest.json"))
    return sorted((int(m.group(1)) for m in map(pattern.match, names) if m), reverse=True)


def remove_checkpoint(prefix, tag):
    """Delete checkpoint `tag`: its manifest first (so it is no longer committed), then its files."""
    remove_file(manifest_path(prefix, tag))
    for path in (params_path(prefix, tag), states_path(prefix, tag), raw_params_path(prefix, tag)):
        remove_file(path + ".sha256")
        remove_file(path)


def saved_epochs(prefix):
    """Epochs with a PREFIX-EPOCH.params file, sorted."""
    pattern = re.compile(re.escape(os.path.basename(prefix)) + r"-(\d{4,})\.params$")
    names = (os.path.basename(p) for p in glob.glob(glob.escape(prefix) + "-*.params"))
    return sorted(int(m.group(1)) for m in map(pattern.match, names) if m)


def saved_prefixes(folder):
    """Checkpoint prefixes (PREFIX-symbol.json) in `folder`, sorted."""
    found = glob.glob(os.path.join(glob.escape(folder or "."), "*-symbol.json"))
    return sorted(p[:-len("-symbol.json")] for p in found)


def require_checkpoint(prefix, epoch, *, prefix_flag="--model-prefix", epoch_flag="--epoch",
                       states=False, note="", verify=True):
    """Check that PREFIX's symbol and EPOCH's params (and .states) exist and match their digests.

    The one place a checkpoint's files are looked for. The flags name the options
    that gave `prefix` and `epoch`, for the message; `note` is appended to the
    message for a missing prefix; verify=False checks existence only (load_checkpoint
    verifies). Raises UserError naming the missing or corrupt file and what exists
    instead (checkpoints in the folder, or saved epochs).
    """
    sym = symbol_path(prefix)
    named = re.fullmatch(r"(.+)-(\d{4,})\.params|(.+)-symbol\.json", prefix)
    if named and not os.path.isfile(sym):
        given = named.group(1) or named.group(3)
        epoch_hint = f" {epoch_flag} {int(named.group(2))}" if named.group(2) else ""
        raise UserError(f"{prefix_flag} {prefix}: that is a checkpoint file; pass its prefix: "
                        f"{prefix_flag} {given}{epoch_hint}")
    if not os.path.isfile(sym):
        folder = os.path.dirname(prefix)
        others = ", ".join(saved_prefixes(folder)) or "none"
        raise MissingFile(f"{prefix_flag} {prefix}: {sym} not found{note}; "
                        f"checkpoints in {folder or '.'}: {others}")
    files = [params_path(prefix, epoch)] + ([states_path(prefix, epoch)] if states else [])
    for path in files:
        if not os.path.isfile(path):
            epochs = ", ".join(map(str, saved_epochs(prefix))) or "none"
            raise MissingFile(f"{epoch_flag} {epoch}: {path} not found; saved epochs of {prefix}: {epochs}")
    for path in [sym] + files if verify else []:
        verify_digest(path)


def load_checkpoint(prefix, epoch, **flags):
    """(symbol, arg_params, aux_params) of PREFIX at EPOCH, verified.

    flags: require_checkpoint's prefix_flag, epoch_flag and note, for messages.
    Raises UserError naming the missing or corrupt file.
    """
    import mxnet as mx
    require_checkpoint(prefix, epoch, **flags)
    try:
        symbol = mx.sym.load(symbol_path(prefix))
        arrays = mx.nd.load(params_path(prefix, epoch))
    except (mx.base.MXNetError, UnicodeDecodeError) as exc:
        # A corrupt file can make MXNet's own message undecodable, hence UnicodeDecodeError.
        raise UserError(f"checkpoint {prefix} (epoch {epoch}) cannot be read: {mxnet_reason(exc)}") from None
    return (symbol,) + split_params(arrays, params_path(prefix, epoch))


def split_params(arrays, source):
    """{'arg:NAME'|'aux:NAME': array} -> (arg_params, aux_params)."""
    args, aux = {}, {}
    for key, value in arrays.items():
        kind, _, name = key.partition(":")
        if kind not in ("arg", "aux") or not name:
            raise UserError(f"{source}: unexpected key {key!r} (expected 'arg:NAME' or 'aux:NAME')")
        (args if kind == "arg" else aux)[name] = value
    return args, aux


def match_params(expected, params, kind, what):
    """{name: checkpoint array} for every expected {name: shape}, or UserError.

    kind: 'argument' or 'auxiliary state'; what: the checkpoint, for the message.
    """
    missing = sorted(name for name in expected if name not in params)
    wrong = sorted(f"{name} {tuple(params[name].shape)} != {tuple(shape)}"
                   for name, shape in expected.items()
                   if name in params and tuple(params[name].shape) != tuple(shape))
    if missing or wrong:
        problems = ([f"missing {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "")]
                    if missing else []) + [f"shape {w}" for w in wrong[:5]]
        raise UserError(f"{what} does not fit the network: {len(missing)} {kind}(s) "
                        f"missing, {len(wrong)} of another shape: {'; '.join(problems)}")
    return {name: params[name] for name in expected}
