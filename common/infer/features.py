"""extract_features.py: the output of any layer of a checkpoint, for a .rec or image files.

The network is cut at the layer (by default the input of the classifier, the
FullyConnected before the softmax: flatten0 in the zoo's ResNets and ours) and
bound for inference with every parameter it still reads checked by name and
shape. A .rec goes through the validation iterator, every record exactly once
(common.evaluate.set_outputs); image files get common.transforms.preprocess,
which gives exactly the iterator's input for the same image. So a row of
features is what the classifier itself reads: for the default layer,
softmax(features @ fc_weight.T + fc_bias) is the model's prediction.
"""
import dataclasses
import datetime
import json
import logging
import os
import sys

import numpy as np

from .. import checkpoint
from ..cli import MissingFile, UserError, progress, software_versions
from ..evaluate import set_outputs
from ..fsutil import atomic_output, file_digest, remove_file, write_json_atomic, write_text_atomic
from ..records import check_record_set, class_list_path, read_classes, read_keys, require_record_files
from ..transforms import record_iter
from . import graph
from .model import PROBABILITY_OPS, ZOO_NOTE, Model, bind_module, inference_batch
from .predict import find_images, forward_files

log = logging.getLogger(__name__)

_CANDIDATES_SHOWN = 12
_NO_CLASS_LIST = 2 ** 31  # labels of a set without a class list: only checked to be whole and >= 0
PIPELINE = ("validation: shorter side to the resize, center crop to the image shape (smaller images "
            "enlarged as MXNet's ImageRecordIter does), RGB, raw 0-255 floats, no mean or std")


def default_layer(symbol):
    """The input of the FullyConnected that feeds the output softmax ('flatten0'), or None.

    Casts between them (a float16 checkpoint's) are looked through.
    """
    graph_json = json.loads(symbol.tojson())
    nodes = graph_json["nodes"]

    def source(node):
        node = nodes[node["inputs"][0][0]] if node["inputs"] else node
        while node["op"] == "Cast":
            node = nodes[node["inputs"][0][0]]
        return node
    head = nodes[graph_json["heads"][0][0]]
    if head["op"] not in PROBABILITY_OPS or source(head)["op"] != "FullyConnected":
        return None
    features = source(source(head))
    return features["name"] if features["op"] != "null" else None


def layer_symbol(symbol, layer, prefix):
    """(the output of `layer` ('flatten0' or 'flatten0_output') as a symbol, its name).

    Raises UserError naming the candidates, nearest the output first.
    """
    names = graph.candidate_layers(symbol)
    name = layer[:-len("_output")] if layer.endswith("_output") and layer not in names else layer
    internals = symbol.get_internals()
    outputs = [key for key in internals.list_outputs() if key.startswith(f"{name}_output")]
    if name not in names or not outputs:
        shown = ", ".join(names[:_CANDIDATES_SHOWN]) + (", ..." if len(names) > _CANDIDATES_SHOWN else "")
        raise UserError(f"--layer {layer}: no such layer in {prefix}; candidates, nearest the output "
                        f"first: {shown} ({len(names)} layers; draw_net.py --model-prefix {prefix} "
                        f"lists them all)")
    return internals[outputs[0]], name


@dataclasses.dataclass
class Extractor:
    """A checkpoint cut at `layer` and bound; shape: one image's output, as the layer gives it."""
    model: Model
    layer: str
    shape: tuple


def load_extractor(prefix, epoch, layer, image_shape, contexts, batch_size):
    """Load PREFIX at EPOCH (verified when digests exist), cut it at `layer`
    (None: default_layer) and bind it for batches of `batch_size` (all devices)."""
    symbol, arg_params, aux_params = checkpoint.load_checkpoint(prefix, epoch, note=ZOO_NOTE)
    if layer is None:
        layer = default_layer(symbol)
        if layer is None:
            names = ", ".join(graph.candidate_layers(symbol)[:_CANDIDATES_SHOWN])
            raise UserError(f"{prefix}'s output is not a softmax over a FullyConnected, so there is no "
                            f"default layer: name one with --layer ({names}, ...)")
    cut, name = layer_symbol(symbol, layer, prefix)
    _, _, outputs = graph.infer_shapes(cut, (1,) + tuple(image_shape))
    shape = tuple(outputs[cut.list_outputs()[0]][1:])
    module = bind_module(cut, arg_params, aux_params, contexts, batch_size, image_shape)
    return Extractor(Model(module, prefix, epoch, None, tuple(image_shape), batch_size), name, shape)


def check_records(rec):
    """(the checked RecordSet of `rec`, its class list path or None).

    Every header is read before MXNet opens the file (a truncated .rec kills the
    process natively). Labels are checked against the set's own class list: the
    model may have been trained on other classes (a zoo checkpoint's features
    for Caltech-256).
    """
    require_record_files(rec)
    classes = class_list_path(rec)
    if not os.path.isfile(classes):
        return check_record_set(rec, _NO_CLASS_LIST), None
    return check_record_set(rec, len(read_classes(classes))), classes


def split_inputs(paths):
    """('rec', the .rec) for one .rec, else ('files', image files, problems) as find_images.

    Raises UserError for a .rec given with other paths, MissingFile when no path
    exists at all.
    """
    recs = [path for path in paths if os.path.splitext(path)[1] in (".rec", ".idx", ".lst")]
    if recs and len(paths) > 1:
        raise UserError(f"{recs[0]}: a .rec is extracted on its own; give one .rec, or image files "
                        f"and folders ({len(paths)} paths were given)")
    if recs:
        return "rec", recs[0], []
    files, problems = find_images(paths)
    missing = [path for path, reason in problems if not os.path.exists(path)]
    if not files and len(missing) == len(paths):
        raise MissingFile(f"{missing[0]}: no such file or folder"
                          + (f" (nor {len(missing) - 1} other paths)" if len(missing) > 1 else ""))
    if not files:
        raise UserError(f"{problems[0][0]}: {problems[0][1]}")
    return "files", files, problems


def extract_records(extractor, record_set, threads):
    """(N, ...) float32: the layer's output for every record of the set, in file order."""
    model = extractor.model
    data_iter = record_iter(record_set, image_shape=model.image_shape, batch_size=model.batch_size,
                            train=False, threads=threads)
    features, have = np.empty((len(record_set),) + extractor.shape, dtype=np.float32), 0
    with progress(total=len(record_set), desc=f"features {os.path.basename(record_set.rec)}", unit="img") as bar:
        for rows in set_outputs(model.module, data_iter, record_set.labels):
            features[have:have + len(rows)] = rows
            have += len(rows)
            bar.update(len(rows))
    return features


def extract_files(extractor, files, resize):
    """(features (n, ...) float32 of the files that decode, their paths, [(path, reason)] of the others)."""
    features = np.empty((len(files),) + extractor.shape, dtype=np.float32)
    names, failed = [], []
    with progress(total=len(files), desc="features", unit="img") as bar:
        for path, output, reason in forward_files(extractor.model, files, resize):
            if reason:
                failed.append((path, reason))
            else:
                features[len(names)] = output
                names.append(path)
            bar.update(1)
    return features[:len(names)], names, failed


def as_rows(features, keep_shape):
    """(N, D): each image's output flattened (C, H, W -> C*H*W); keep_shape: as the layer gives it."""
    return features if keep_shape or features.ndim <= 2 else features.reshape(len(features), -1)


def output_paths(out):
    """The files OUT names, by role."""
    return {"features": f"{out}-features.npy", "labels": f"{out}-labels.npy", "names": f"{out}-names.txt",
            "description": f"{out}-features.json"}


def _save_npy(path, array):
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.save would append .npy to the temporary name
            np.save(f, array)


def write_outputs(out, features, labels, names, description):
    """OUT-features.npy, OUT-labels.npy (labels not None), OUT-names.txt, then OUT-features.json.

    Each is written atomically into OUT's folder (which must exist); the
    description goes last and lists the others with their SHA-256, so a set of
    files it does not describe (a run killed half-way through replacing them) has
    no OUT-features.json. An OUT-labels.npy of an earlier run goes when there are
    no labels. Returns the paths written.
    """
    paths = output_paths(out)
    remove_file(paths["description"])
    _save_npy(paths["features"], features)
    if labels is None:
        remove_file(paths["labels"])
    else:
        _save_npy(paths["labels"], np.asarray(labels, dtype=np.int64))
    write_text_atomic(paths["names"], "".join(f"{name}\n" for name in names))
    written = [paths[role] for role in ("features", "labels", "names") if os.path.exists(paths[role])]
    files = {os.path.basename(path): file_digest(path) for path in written}
    write_json_atomic(paths["description"], dict(description, files=files))
    return written + [paths["description"]]


@dataclasses.dataclass
class Extraction:
    """What one run extracted: rows (N, D) or (N, ...) float32; labels (N,) or None;
    names: one per row; source: what was read and what the names are;
    preprocessing: the settings used and where each came from; failed: [(file, reason)]."""
    extractor: Extractor
    rows: np.ndarray
    labels: object
    names: list
    source: dict
    preprocessing: dict
    failed: list


def from_records(rec, *, prefix, epoch, layer, shape, contexts, batch_size, threads, keep_shape):
    """The Extraction of every record of `rec` (shape: settings.Setting of the input shape)."""
    record_set, classes = check_records(rec)
    extractor = load_extractor(prefix, epoch, layer, shape.value, contexts, batch_size)
    log.info("layer %s (%s per image) of %s epoch %d for the %d records of %s; input %s (%s)",
             extractor.layer, "x".join(map(str, extractor.shape)), prefix, epoch, len(record_set), rec,
             ",".join(map(str, shape.value)), shape.source)
    rows = as_rows(extract_records(extractor, record_set, threads), keep_shape)
    source = {"rec": os.path.abspath(rec), "records": len(record_set),
              "classes": os.path.abspath(classes) if classes else None,
              "labels": "OUT-labels.npy: each record's label, int64",
              "names": "OUT-names.txt: each record's id (the .idx key, the first column of the set's .lst)"}
    preprocessing = {"image_shape": list(shape.value), "image_shape_from": shape.source,
                     "resize": None, "resize_from": "the .rec's images, as packed"}
    return Extraction(extractor, rows, record_set.labels, [str(key) for key in read_keys(record_set.idx)],
                      source, preprocessing, [])


def from_files(paths, files, *, prefix, epoch, layer, shape, resize, contexts, batch_size, keep_shape):
    """The Extraction of image `files` (found in `paths`); shape, resize: settings.Setting."""
    batch = inference_batch(batch_size, len(files), len(contexts))
    extractor = load_extractor(prefix, epoch, layer, shape.value, contexts, batch)
    log.info("layer %s (%s per image) of %s epoch %d for %d image files; input %s (%s), resize %d (%s)",
             extractor.layer, "x".join(map(str, extractor.shape)), prefix, epoch, len(files),
             ",".join(map(str, shape.value)), shape.source, resize.value, resize.source)
    rows, names, failed = extract_files(extractor, files, resize.value)
    source = {"paths": [os.path.abspath(p) for p in paths], "images": len(files), "extracted": len(names),
              "unreadable": [{"file": p, "reason": r} for p, r in failed],
              "names": "OUT-names.txt: each row's image file"}
    preprocessing = {"image_shape": list(shape.value), "image_shape_from": shape.source,
                     "resize": resize.value, "resize_from": resize.source}
    return Extraction(extractor, as_rows(rows, keep_shape), None, names, source, preprocessing, failed)


def describe(extraction, conditions):
    """OUT-features.json's content but its file list; conditions: batch size, devices, seconds."""
    extractor, rows = extraction.extractor, extraction.rows
    prefix, epoch = extractor.model.prefix, extractor.model.epoch
    return {
        "checkpoint": {"model_prefix": os.path.abspath(prefix), "epoch": epoch,
                       "symbol_sha256": file_digest(checkpoint.symbol_path(prefix)),
                       "params_sha256": file_digest(checkpoint.params_path(prefix, epoch))},
        "layer": extractor.layer, "layer_output_shape": list(extractor.shape),
        "features": {"shape": list(rows.shape), "dtype": str(rows.dtype),
                     "flattened": rows.shape[1:] != extractor.shape},
        "counts": {"rows": len(rows), "unreadable": len(extraction.failed)},
        "input": extraction.source,
        "preprocessing": dict(extraction.preprocessing, pipeline=PIPELINE),
        "conditions": dict(conditions, batch_size=extractor.model.batch_size,
                           date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                           versions=software_versions(), argv=sys.argv),
    }
