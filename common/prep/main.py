"""prepare_data.sh: an image-folder dataset -> seeded train/val split -> RecordIO.

The classes come from class folders (imagefolder.py) or from a labels CSV over one
folder of images (labels.py); everything after that is the same.

Steps, each skipped when its finished output is already there (`--force` redoes
them): download and verify the archive, extract it, check that every image
decodes (the same decode resizes and encodes its record, spooled for the packs),
split each class, write PREFIX-classes.txt and the .lst files, pack each set into
.rec/.idx, write PREFIX-summary.json (one of each per dataset, so that
several datasets can share an --out folder). A run that fails removes the folders it
created, if they are still empty.
"""
import argparse
import hashlib
import logging
import os
import re
import sys

from . import download as dl
from ..cli import (HelpFormatter, MissingFile, OneLineArgumentParser, UserError, int_in_range, nonnegative_int,
                  positive_int, run_entry, setup_logging, software_versions)
from ..fsutil import (makedirs_tracked, read_json, remove_empty_folders, text_digest,
                      write_json_atomic, write_text_atomic)
from ..transforms import RESIZE_FILTER
from .imagefolder import lst_text, scan_tree, split_class
from .labels import add_labels_args, report_lines, scan_labelled, stamp_key
from .parallel import WorkerPool, parallel_map
from .pack import Spool, encode_record, pack_set

log = logging.getLogger(__name__)

# Caltech-256 moved to CaltechDATA; the old vision.caltech.edu link is dead.
CALTECH256_URL = "https://data.caltech.edu/records/nyy15-4j048/files/256_ObjectCategories.tar?download=1"
CALTECH256_MD5 = "67b4f42ca05d46448c6bb8ecd2220f6d"  # published checksum of 256_ObjectCategories.tar
SETS = ("train", "val")
_REPORT_AT_MOST = 10  # skipped files printed; summary.json lists all
# Dataset folders (or archive names) whose outputs get their dataset's name.
KNOWN_DATASETS = {"256_ObjectCategories": "caltech256", "101_ObjectCategories": "caltech101"}
_DOWNLOAD_ONLY = ("url", "md5", "download_dir")  # options a --src run does not use
_CSV_ONLY = ("labels_csv", "csv_id_column", "csv_label_column")  # options class folders do not use
_FOLDERS_ONLY = ("include_clutter",)  # options a --labels-csv run does not use


def get_parser():
    parser = OneLineArgumentParser(
        prog="prepare_data.sh", formatter_class=HelpFormatter,
        description="Split an image-folder dataset (default: Caltech-256, downloaded) into "
                    "seeded train/val lists and pack both into MXNet RecordIO.")
    src = parser.add_argument_group("source")
    src.add_argument("--src", metavar="DIR", help="extracted dataset, one subfolder per class (with "
                     "--labels-csv: one folder of images); without it the archive at --url is "
                     "downloaded and extracted")
    src.add_argument("--url", default=CALTECH256_URL, help="dataset archive (tar) to download")
    src.add_argument("--md5", default=CALTECH256_MD5, type=_md5_arg,
                     help="MD5 of the archive; 'none' skips verification")
    src.add_argument("--download-dir", metavar="DIR", default="data/download",
                     help="where the archive is downloaded and extracted")
    add_labels_args(parser)
    out = parser.add_argument_group("output")
    out.add_argument("--out", metavar="DIR", default="data", help="output folder")
    out.add_argument("--prefix", type=_prefix_arg,
                     help="output names: PREFIX-train.rec, PREFIX-val.rec, ... (default: "
                          "caltech256 for Caltech-256, else the --src folder's or the "
                          "archive's name, e.g. flowers for --src photos/Flowers)")
    split = parser.add_argument_group("split")
    split.add_argument("--train-per-class", metavar="N", type=positive_int, default=60,
                       help="training images per class")
    split.add_argument("--val-per-class", metavar="N", type=positive_int, default=None,
                       help="validation images per class (default: all the rest)")
    split.add_argument("--seed", metavar="S", type=nonnegative_int, default=0, help="split seed")
    split.add_argument("--include-clutter", action="store_true",
                       help="keep a class folder whose name ends in '.clutter'")
    pack = parser.add_argument_group("packing")
    pack.add_argument("--resize", metavar="N", type=nonnegative_int, default=256,
                      help="shorter side in pixels (0: keep the original size)")
    pack.add_argument("--quality", metavar="Q", type=int_in_range(1, 100), default=95,
                      help="JPEG quality")
    pack.add_argument("--num-thread", metavar="N", type=positive_int, default=os.cpu_count() or 1,
                      help="worker processes for checking and packing")
    pack.add_argument("--force", action="store_true", help="redo finished steps")
    return parser


def _md5_arg(text):
    if text.lower() == "none":
        return None
    if len(text) != 32 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise argparse.ArgumentTypeError(f"expected 32 hex digits or 'none', got {text!r}")
    return text.lower()


def _prefix_arg(text):
    if not text or "/" in text or text.startswith("."):
        raise argparse.ArgumentTypeError(f"expected a plain file name prefix, got {text!r}")
    return text


def _check_combination(parser, args):
    """Usage errors argparse cannot see: options that need, or exclude, another."""
    if args.labels_csv and not args.src:
        parser.error("--labels-csv needs --src IMAGES, the folder its ids are relative to")
    if args.csv_id_column == args.csv_label_column:
        parser.error(f"--csv-id-column and --csv-label-column are both {args.csv_id_column!r}; "
                     f"ids and labels need two columns")


def main(argv=None):
    parser = get_parser()
    args = parser.parse_args(argv)
    _check_combination(parser, args)
    setup_logging()
    created = []  # folders this run made: removed again on failure while empty
    try:
        prepare(args, created)
    except BaseException:
        remove_empty_folders(created)
        raise


def prepare(args, created):
    """Every step for parsed `args`; appends each folder it creates to `created`."""
    _ensure_writable(args.out, created)
    _warn_unused(args)
    prefix, prefix_from = resolve_prefix(args)
    source = {"folder": args.src} if args.src else fetch_dataset(args, created)
    root = source["folder"]
    _refuse_another_dataset(args, prefix, root)
    scan, labels = _scan_source(args, root)
    if labels:
        source["labels_csv"] = os.path.abspath(args.labels_csv)
    # One set of processes checks and packs; each image checked is encoded in the same
    # decode, its record spooled for the pack.
    with WorkerPool(args.num_thread) as workers, Spool(os.path.join(args.out, f".{prefix}-spool.tmp")) as spool:
        reasons = check_images(root, [rel for _, files in scan.classes for rel in files], workers,
                               _hidden(args.out, prefix, "check-cache"), (spool, args.resize, args.quality),
                               args.force)
        splits = {name: split_class([rel for rel in files if reasons[rel] is None], name, args.seed,
                                    args.train_per_class, args.val_per_class)
                  for name, files in scan.classes}
        names = [name for name, _ in scan.classes]
        write_text_atomic(os.path.join(args.out, f"{prefix}-classes.txt"), "".join(f"{n}\n" for n in names))
        lists = {}
        for index, set_name in enumerate(SETS):
            items = [(label, rel) for label, name in enumerate(names) for rel in splits[name][index]]
            lists[set_name] = _write_set(args, prefix, root, set_name, items, workers, spool, stamp_key(labels))
    summary = build_summary(args, source, (prefix, prefix_from), scan, reasons, splits, lists, labels)
    write_json_atomic(summary_path(args.out, prefix), summary)
    print_report(summary, args.out)


def _refuse_another_dataset(args, prefix, root):
    """UserError if --out holds a dataset of this name prepared from another folder
    (two folders called images/, say): its files would be replaced."""
    summary = read_json(summary_path(args.out, prefix))
    source = summary.get("source") if isinstance(summary, dict) else None
    previous = source.get("folder") if isinstance(source, dict) else None
    if previous and previous != os.path.abspath(root) and not args.force:
        raise UserError(f"--out {args.out} already holds the dataset {prefix} prepared from {previous}; "
                        f"pass --prefix NAME to keep both, or --force to replace it")


def _unused_options(args):
    """[(option names this run does not use, why)]: given anyway, they are warned of."""
    groups = [(_DOWNLOAD_ONLY, f"--src {args.src} is read instead of a download")] if args.src else []
    if args.labels_csv:
        groups.append((_FOLDERS_ONLY, f"--labels-csv {args.labels_csv} gives the classes, not folders"))
    else:
        groups.append((_CSV_ONLY, "no --labels-csv given"))
    return groups


def _warn_unused(args):
    parser = get_parser()
    for names, why in _unused_options(args):
        given = [f"--{name.replace('_', '-')}" for name in names if getattr(args, name) != parser.get_default(name)]
        if given:
            log.warning("%s not used: %s", ", ".join(given), why)


def _ensure_writable(out, created):
    try:
        makedirs_tracked(out, created)
        probe = os.path.join(out, ".write-test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as exc:
        raise UserError(f"--out {out}: not a writable folder ({exc.strerror})") from None


def _hidden(out, prefix, what):
    """Path of a bookkeeping file in `out` (hidden, so it is not mistaken for output)."""
    return os.path.join(out, f".{prefix}-{what}.json")


def resolve_prefix(args):
    """(output prefix, where it came from): --prefix, else named after the dataset.

    The dataset's name is its folder's (--src) or its archive's file name (download)
    without extensions: Caltech's own names map to caltech256 / caltech101, any other
    becomes a safe file-name form of itself (safe_prefix).
    """
    if args.prefix:
        return args.prefix, "--prefix"
    if args.src:
        name, what = os.path.basename(os.path.abspath(args.src)), "the --src folder's name"
    else:
        name, what = dl.url_filename(args.url).split(".")[0], "the archive's name"
    if name in KNOWN_DATASETS:
        return KNOWN_DATASETS[name], f"{what}, {name}"
    return safe_prefix(name), f"{what}, {name}"


def safe_prefix(name):
    """`name` as a file-name prefix: lower case; runs of anything but a-z, 0-9, '.', '_'
    and '-' become '-'; no '-', '.' or '_' at either end; 'dataset' if nothing is left."""
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._") or "dataset"


def fetch_dataset(args, created):
    """Download (or reuse) the --url archive and extract it.

    Returns the source record for summary.json: the extracted dataset folder, the
    URL, the MD5 it was verified against (None: not verified) and the archive.
    """
    makedirs_tracked(args.download_dir, created)
    archive = os.path.join(args.download_dir, dl.url_filename(args.url))
    # --force does not fetch a verified archive again: it is checked on every run.
    if args.md5 is None:
        log.warning("--md5 none: %s will not be verified", args.url)
    try:
        dl.download(args.url, archive, checksum=("md5", args.md5) if args.md5 else None)
    except dl.DownloadError as exc:
        raise UserError(f"{exc}; to work offline, pass --src DIR (an extracted copy of the dataset)") from None
    folder = dl.extract_once(archive, args.download_dir, force=args.force)
    return {"folder": folder, "url": args.url, "md5": args.md5, "archive": os.path.abspath(archive)}


def _scan_source(args, root):
    """(Scan, Labels or None): the classes from --labels-csv, else from the class folders."""
    if not args.labels_csv:
        return _scan(root, args.include_clutter), None
    _require_folder(root, "the folder of images the CSV's ids are relative to")
    return scan_labelled(root, args.labels_csv, args.csv_id_column, args.csv_label_column)


def _require_folder(root, expected):
    if os.path.isfile(root):
        raise UserError(f"--src {root}: is a file, not a folder; expected {expected} "
                        f"(an archive must be extracted first)")
    if not os.path.isdir(root):
        raise MissingFile(f"--src {root}: no such folder")


def _scan(root, include_clutter):
    _require_folder(root, "the dataset folder with one subfolder per class")
    scan = scan_tree(root, include_clutter)
    if not scan.classes:
        found = "no image files" if scan.excluded else "no class subfolders"
        raise UserError(f"--src {root}: {found}; expected one subfolder per class "
                        f"(e.g. 001.ak47/001_0001.jpg)")
    if len(scan.classes) == 1:
        only = scan.classes[0][0]
        raise UserError(f"--src {root}: only one class folder ({only!r}); "
                        f"if it holds the class folders, pass --src {os.path.join(root, only)}")
    return scan


def check_images(root, rel_paths, workers, cache_path, spool, force=False):
    """Decode every image once; returns {relative path: None or reason unusable}.

    Each usable image decoded is also resized and encoded as its record, which goes
    into spool = (Spool, resize, quality) for pack_set: one decode per image.
    workers: a process count or a WorkerPool (parallel_map). Results are cached in
    `cache_path` by (size, mtime), so a rerun only decodes files that changed.
    """
    cache = read_json(cache_path, {}) if not force else {}
    if cache.get("root") != os.path.abspath(root):
        cache = {}
    entries = cache.get("files", {})
    stats = {rel: os.stat(os.path.join(root, rel)) for rel in rel_paths}
    todo = [rel for rel in rel_paths
            if entries.get(rel, [None, None])[:2] != [stats[rel].st_size, stats[rel].st_mtime_ns]]
    for rel, reason in zip(todo, _check_and_encode(root, todo, stats, workers, spool)):
        entries[rel] = [stats[rel].st_size, stats[rel].st_mtime_ns, reason]
    if todo:
        write_json_atomic(cache_path, {"root": os.path.abspath(root), "files": entries})
    return {rel: entries[rel][2] for rel in rel_paths}


def _check_and_encode(root, todo, stats, workers, spool):
    """Yield each of `todo`'s reason, spooling the records of the usable ones."""
    spool, resize, quality = spool
    jobs = [(os.path.join(root, rel), resize, quality) for rel in todo]
    for rel, (payload, reason) in zip(todo, parallel_map(encode_record, jobs, workers, "check")):
        if reason is None:
            spool.put(rel, stats[rel], payload)
        yield reason


def _write_set(args, prefix, root, set_name, items, workers, spool, labels_key=None):
    """Write PREFIX-SET.lst and, unless a matching finished pack exists, .rec/.idx.

    The pack's stamp records everything its bytes depend on: the list, each listed
    file's size and mtime (an image rewritten in place changes them), --resize,
    --quality and the source folder; and `labels_key`, the labels CSV's digest and
    columns (labels.stamp_key; None for class folders, as in stamps written before
    there were CSVs, so that those packs stay current). And the resize filter
    (transforms.RESIZE_FILTER): a pack made with another one is repacked, so that
    predict.py's resize stays the packed one.
    """
    base = os.path.join(args.out, f"{prefix}-{set_name}")
    text = lst_text(items)
    stamp = {"lst_sha256": text_digest(text), "records": len(items),
             "files_sha256": files_digest(root, items),
             "resize": args.resize,
             "resize_filter": RESIZE_FILTER,
             "quality": args.quality,
             "root": os.path.abspath(root),
             "labels_csv": labels_key}
    if not _lst_matches(base + ".lst", text):
        write_text_atomic(base + ".lst", text)
    stamp_path = _hidden(args.out, prefix, f"{set_name}-done")
    if not args.force and _pack_is_current(stamp_path, stamp, base):
        log.info("%s.rec is complete and matches; skipping (use --force to repack)", base)
    else:
        if not items:
            log.warning("the %s set is empty", set_name)
        pack_set(root, items, base + ".rec", base + ".idx", resize=args.resize, quality=args.quality,
                 workers=workers, desc=f"pack {set_name}", spool=spool)
        stamp.update(rec_bytes=os.path.getsize(base + ".rec"), idx_bytes=os.path.getsize(base + ".idx"))
        write_json_atomic(stamp_path, stamp)
    return {"lst": base + ".lst", "rec": base + ".rec", "idx": base + ".idx",
            "images": len(items), "lst_sha256": stamp["lst_sha256"]}


def files_digest(root, items):
    """SHA-256 over each listed file's path, size and mtime (ns), in list order.

    Taken before packing, so a file changed while it is packed is repacked next
    time. A stat per file: far cheaper than reading the images again.
    """
    digest = hashlib.sha256()
    for _, rel in items:
        info = os.stat(os.path.join(root, rel))
        digest.update(f"{rel}\0{info.st_size}\0{info.st_mtime_ns}\n".encode("utf-8"))
    return digest.hexdigest()


def _lst_matches(path, text):
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return f.read() == text
    except (OSError, UnicodeDecodeError):
        return False


def _pack_is_current(stamp_path, expected, base):
    """True if the stamp of a finished pack matches `expected` and the files are intact."""
    stamp = read_json(stamp_path)
    if not stamp or any(stamp.get(key) != value for key, value in expected.items()):
        return False
    try:
        return (os.path.getsize(base + ".rec") == stamp["rec_bytes"]
                and os.path.getsize(base + ".idx") == stamp["idx_bytes"])
    except (OSError, KeyError):
        return False


def build_summary(args, source, prefix, scan, reasons, splits, lists, labels=None):
    """Everything a user needs to trust (or reproduce) the split, as one dict.

    source: fetch_dataset's record, or {'folder': --src}; prefix: (name, where it
    came from); labels: the Labels of a --labels-csv run, else None. 'options'
    holds only the options this run used, with the prefix it resolved.
    """
    classes = []
    for label, (name, files) in enumerate(scan.classes):
        train, val, unused = splits[name]
        classes.append({"label": label, "name": name, "images": len(files),
                        "unreadable": sum(reasons[rel] is not None for rel in files),
                        "train": len(train), "val": len(val), "unused": len(unused)})
    unused_options = {name for names, _ in _unused_options(args) for name in names}
    if not args.src:
        unused_options.add("src")
    options = {key: value for key, value in vars(args).items() if key not in unused_options}
    return {
        "source": dict(source, folder=os.path.abspath(source["folder"])),
        "prefix": prefix[0],
        "prefix_from": prefix[1],
        "num_classes": len(classes),
        "train_images": lists["train"]["images"],
        "val_images": lists["val"]["images"],
        "seed": args.seed,
        "options": dict(options, prefix=prefix[0]),
        "classes": classes,
        "warnings": _class_warnings(classes, args.train_per_class),
        "skipped": [{"path": rel, "reason": why} for rel, why in sorted(reasons.items()) if why],
        "ignored": [{"path": rel, "reason": why} for rel, why in scan.ignored],
        "excluded_classes": [{"name": n, "images": c, "reason": why} for n, c, why in scan.excluded],
        "labels_csv": labels.record() if labels else None,
        "lists": lists,
        "versions": software_versions(),
    }


def _class_warnings(classes, train_per_class):
    warnings = []
    for c in classes:
        if c["train"] + c["val"] == 0:
            warnings.append(f"class {c['label']} ({c['name']}) has no usable image at all")
        elif c["val"] == 0:
            warnings.append(f"class {c['label']} ({c['name']}) has NO validation image "
                            f"(only {c['train']} usable)")
        elif c["train"] < train_per_class:
            warnings.append(f"class {c['label']} ({c['name']}) has only {c['train']} training "
                            f"images (kept one of its {c['train'] + c['val']} for validation)")
    return warnings


def summary_path(out, prefix):
    return os.path.join(out, f"{prefix}-summary.json")


def print_report(summary, out):
    """The counts a user checks first, on stdout."""
    print(f"prefix: {summary['prefix']} ({summary['prefix_from']}; --prefix sets another)")
    print(f"{summary['num_classes']} classes")
    for c in summary["excluded_classes"]:
        print(f"  left out: {c['name']} ({c['images']} images): {c['reason']}")
    for set_name in SETS:
        info = summary["lists"][set_name]
        print(f"{set_name}: {info['images']} images -> {info['rec']}")
    print(f"unreadable images skipped: {len(summary['skipped'])}; "
          f"non-image files ignored: {len(summary['ignored'])} (see {summary_path(out, summary['prefix'])})")
    for entry in summary["skipped"][:_REPORT_AT_MOST]:
        print(f"  skipped {entry['path']}: {entry['reason']}")
    if len(summary["skipped"]) > _REPORT_AT_MOST:
        print(f"  ... and {len(summary['skipped']) - _REPORT_AT_MOST} more")
    if summary["labels_csv"]:
        for line in report_lines(summary["labels_csv"], _REPORT_AT_MOST):
            print(line)
    for warning in summary["warnings"]:
        print(f"WARNING: {warning}")


if __name__ == "__main__":
    sys.exit(run_entry(main, "prepare_data.sh"))
