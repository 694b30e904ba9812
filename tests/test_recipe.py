"""--recipe classic|modern and its pieces (common/train/recipe.py), each also a flag.

Parsing and the optimizer's per-parameter weight decay are checked without
training; label smoothing, the training-only augmentation and early stopping on
tiny runs (trainkit's 4 colour classes, 32 training images, ResNet-20 from scratch,
a second or two an epoch).
"""
import contextlib
import io
import json
import logging

import mxnet as mx
import numpy as np
import pytest

import score
import train_caltech
from common import cli, evaluate
from common.train import heads, modes, recipe, schedule, surgery
from tests import trainkit

SHAPE = trainkit.IMAGE_SHAPE
# Today's defaults (before --recipe): what a run without --recipe, or with --recipe classic, trains with.
CLASSIC = {"lr": 0.01, "mom": 0.0, "wd": 0.0, "num_epochs": 8, "no_wd_bn_bias": False, "lr_mult_pretrained": 1.0,
           "lr_schedule": "step", "lr_step_epochs": [], "warmup_epochs": 0.0, "label_smoothing": 0.0,
           "random_resized_crop": False, "color_jitter": 0.0, "clip_gradient": None, "early_stopping": None}
AUGMENT_KEYS = {"rand_crop", "random_resized_crop", "min_random_area", "max_random_area", "min_aspect_ratio",
                "max_aspect_ratio", "brightness", "contrast", "saturation"}


def resolved(*argv, mode="full"):
    """train_caltech's options as main resolves them (mode: what fusion.default_mode gave)."""
    args, given = recipe.parse_args(train_caltech.get_parser(), list(argv))
    args.mode = args.mode or mode
    return recipe.apply(args, given)


# ---------------------------------------------------------------- parsing

@pytest.mark.parametrize("argv", [[], ["--recipe", "classic"]])
def test_classic_is_exactly_todays_defaults(argv):
    args = resolved(*argv)
    assert {key: getattr(args, key) for key in CLASSIC} == CLASSIC
    assert args.recipe == "classic" and args.recipe_filled == []
    assert recipe.augment(args) is None
    # Nothing else differs from what the parser alone gives either.
    plain = vars(train_caltech.get_parser().parse_args(["--mode", "full"]))
    assert {k: v for k, v in vars(args).items() if k != "recipe_filled"} == plain


def test_modern_fills_every_piece():
    args = resolved("--recipe", "modern")
    for key, value in recipe.MODERN.items():
        assert getattr(args, key) == value, key
    assert args.recipe_filled == sorted(recipe.MODERN)
    assert args.lr == 0.01 and args.num_epochs == 8 and args.clip_gradient is None and args.early_stopping is None
    assert recipe.augment(args).iter_params() == {
        "rand_crop": False, "random_resized_crop": True, "min_random_area": 0.35, "max_random_area": 1.0,
        "min_aspect_ratio": 0.75, "max_aspect_ratio": 4 / 3, "brightness": 0.2, "contrast": 0.2, "saturation": 0.2}


# An explicit value for each piece, other than the preset's (the flags' other form).
EXPLICIT = {"mom": (["--mom", "0.5"], 0.5), "wd": (["--wd", "0"], 0.0), "no_wd_bn_bias": (["--wd-bn-bias"], False),
            "lr_mult_pretrained": (["--lr-mult-pretrained", "1"], 1.0),
            "lr_schedule": (["--lr-schedule", "step"], "step"), "warmup_epochs": (["--warmup-epochs", "0"], 0.0),
            "label_smoothing": (["--label-smoothing", "0"], 0.0),
            "random_resized_crop": (["--no-random-resized-crop"], False),
            "crop_area": (["--crop-area", "0.5,0.9"], (0.5, 0.9)),
            "crop_aspect": (["--crop-aspect", "1,1"], (1.0, 1.0)), "color_jitter": (["--color-jitter", "0"], 0.0)}


def test_every_piece_of_modern_has_an_explicit_form_here():
    assert set(EXPLICIT) == set(recipe.MODERN)


@pytest.mark.parametrize("key", sorted(EXPLICIT))
def test_an_explicit_option_wins_over_modern_and_the_rest_is_filled(key):
    argv, value = EXPLICIT[key]
    args = resolved("--recipe", "modern", *argv)
    assert getattr(args, key) == value
    assert key not in args.recipe_filled
    for other, preset in recipe.MODERN.items():
        if other != key:
            assert getattr(args, other) == preset, other


def test_a_piece_alone_without_a_recipe():
    args = resolved("--label-smoothing", "0.1")
    assert args.label_smoothing == 0.1 and args.recipe_filled == []
    assert {k: getattr(args, k) for k in CLASSIC if k != "label_smoothing"} == \
        {k: v for k, v in CLASSIC.items() if k != "label_smoothing"}


def test_modern_leaves_out_what_does_not_apply():
    last = resolved("--recipe", "modern", "--mode", "last-layer")
    assert last.lr_mult_pretrained == 1.0 and "lr_mult_pretrained" not in last.recipe_filled
    assert last.random_resized_crop and last.mom == 0.9
    cached = resolved("--recipe", "modern", "--mode", "last-layer", "--cache-features")
    assert not cached.random_resized_crop and cached.color_jitter == 0.0 and recipe.augment(cached) is None
    assert cached.label_smoothing == 0.1


BAD_VALUES = [("--label-smoothing", ["1", "-0.1", "x"], ">= 0 and < 1"),
              ("--color-jitter", ["1.5", "-0.2"], ">= 0 and <= 1"),
              ("--crop-area", ["0,1", "0.5,0.2", "0.5,2", "0.5"], "0 < MIN <= MAX <= 1"),
              ("--crop-aspect", ["0,1", "2,1", "a,b"], "0 < MIN <= MAX"),
              ("--clip-gradient", ["0", "-1", "inf"], "> 0"),
              ("--early-stopping", ["0"], ">= 1"),
              ("--mixup", ["-0.1", "x", "nan"], ">= 0"),
              ("--ema", ["1", "-0.1", "x"], "< 1"),
              ("--multi-scale", ["0.4,1", "1,0.9", "1,2.5", "1", "x,y"], "0.5 <= MIN <= MAX <= 2"),
              ("--recipe", ["fancy"], "classic")]


@pytest.mark.parametrize("option,values,words", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_bad_values_are_one_line_naming_value_and_range(option, values, words, capsys):
    for value in values:
        with pytest.raises(SystemExit) as exit_info:
            resolved(f"{option}={value}")
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and option in err and value in err and words in err, err


@pytest.mark.parametrize("argv,words", [
    (["--crop-area", "0.5,1"], ["--crop-area 0.5,1", "--random-resized-crop only"]),
    (["--recipe", "modern", "--no-random-resized-crop", "--crop-aspect", "1,2"], ["--crop-aspect 1,2"]),
    (["--mode", "last-layer", "--cache-features", "--color-jitter", "0.1"], ["--color-jitter", "--cache-features"]),
])
def test_pieces_that_do_not_apply_are_refused(argv, words):
    with pytest.raises(cli.UserError) as error:
        resolved(*argv)
    for word in words:
        assert word in str(error.value)


# ---------------------------------------------------------------- weight decay, clipping

def optimizer_of(contexts, **build):
    """The optimizer Module.init_optimizer makes for a scratch ResNet-20 (wd 1e-4, clip 0.5)."""
    net = modes.build_model(mode="scratch", network="resnet-20", num_classes=4, image_shape=SHAPE, **build)
    module = mx.mod.Module(net.symbol, context=contexts, fixed_param_names=net.fixed)
    module.bind(data_shapes=[("data", (4,) + SHAPE)], label_shapes=[("softmax_label", (4,))])
    module.init_params(mx.init.Xavier())
    plan = schedule.Schedule(num_epochs=1, lr=0.1, mom=0.9, wd=1e-4, clip_gradient=0.5)
    module.init_optimizer(kvstore="device", optimizer="sgd",
                          optimizer_params=schedule.optimizer_params(plan, epoch_size=1, dtype="float32"))
    return module._optimizer


def wds(optimizer):
    """{parameter name: the weight decay the optimizer applies to it}, from its own _get_wd."""
    return {name: optimizer._get_wd(index) for index, name in optimizer.idx2name.items()}


@pytest.mark.parametrize("cpus", [1, 2])  # two contexts: the kvstore updates, indices map otherwise
def test_no_wd_bn_bias_reaches_the_optimizer_for_gammas_betas_and_biases_only(cpus):
    contexts = [mx.cpu(i) for i in range(cpus)]
    spared = wds(optimizer_of(contexts, no_wd_bn_bias=True))
    default = wds(optimizer_of(contexts))
    suffixes = ("_gamma", "_beta", "_bias")
    assert any(n.endswith("_gamma") for n in spared) and any(n.endswith("_bias") for n in spared)
    for name, wd in spared.items():
        assert wd == (0.0 if name.endswith(suffixes) else 1e-4), name
    # MXNet's own rule decays weights and gammas: the flag is what spares the gammas.
    for name, wd in default.items():
        assert wd == (1e-4 if name.endswith(("_weight", "_gamma")) else 0.0), name


def test_clip_gradient_reaches_the_optimizer():
    assert optimizer_of([mx.cpu()]).clip_gradient == 0.5
    plain = schedule.optimizer_params(schedule.Schedule(num_epochs=1, lr=0.1, mom=0.0, wd=0.0), epoch_size=1,
                                      dtype="float32")
    assert "clip_gradient" not in plain


# ---------------------------------------------------------------- label smoothing

def test_label_smoothing_changes_the_gradient_not_the_output():
    plain = modes.build_model(mode="scratch", network="resnet-20", num_classes=4, image_shape=SHAPE)
    smooth = modes.build_model(mode="scratch", network="resnet-20", num_classes=4, image_shape=SHAPE,
                               label_smoothing=0.3)
    assert surgery.label_smoothing(smooth.symbol) == 0.3 and surgery.label_smoothing(plain.symbol) == 0.0
    rng = np.random.default_rng(0)
    batch = mx.io.DataBatch(data=[mx.nd.array(rng.uniform(0, 255, (4,) + SHAPE))], label=[mx.nd.array([0, 1, 2, 3])])
    outputs, grads, params = [], [], None
    for net in (plain, smooth):
        module = mx.mod.Module(net.symbol, context=mx.cpu())
        module.bind(data_shapes=[("data", (4,) + SHAPE)], label_shapes=[("softmax_label", (4,))])
        if params is None:
            module.init_params(mx.init.Xavier())
            params = module.get_params()
        else:
            module.set_params(*params)
        module.forward_backward(batch)
        outputs.append(module.get_outputs()[0].asnumpy())
        head = module._exec_group.param_names.index("fc1_weight")
        grads.append(module._exec_group.grad_arrays[head][0].asnumpy())
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=0, atol=1e-7)
    assert not np.allclose(grads[0], grads[1])


def test_the_head_trained_on_cached_features_keeps_the_smoothing():
    net = modes.build_model(mode="scratch", network="resnet-20", num_classes=4, image_shape=SHAPE,
                            label_smoothing=0.2)
    model = modes.Model(net.symbol, {}, {}, fresh=["fc1_weight", "fc1_bias"], fixed=[])
    assert surgery.label_smoothing(heads.head_symbol(model, 4, "float32")) == 0.2
    plain = modes.Model(modes.build_model(mode="scratch", network="resnet-20", num_classes=4,
                                          image_shape=SHAPE).symbol, {}, {}, fresh=model.fresh, fixed=[])
    assert surgery.label_smoothing(heads.head_symbol(plain, 4, "float32")) == 0.0


# ---------------------------------------------------------------- tiny runs

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return trainkit.prepare_dataset(str(tmp_path_factory.mktemp("recipe")))


def train(data_dir, prefix, *extra, epochs=1):
    """train_caltech.main in this process: (its return value, stdout); drops the run's log handler."""
    root, out = logging.getLogger(), io.StringIO()
    before = list(root.handlers)
    try:
        with contextlib.redirect_stdout(out):
            val = train_caltech.main(trainkit.train_args(str(data_dir), str(prefix), *extra, epochs=epochs))
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)
            handler.close()
    return val, out.getvalue()


class IterRecorder:
    """Records the keyword arguments of every ImageRecordIter made: (train, kwargs) by shuffle."""

    def __init__(self, monkeypatch):
        self.calls, original = [], mx.io.ImageRecordIter

        def recording(**kwargs):
            self.calls.append(dict(kwargs))
            return original(**kwargs)
        monkeypatch.setattr(mx.io, "ImageRecordIter", recording)

    def of(self, train):
        return [c for c in self.calls if c["shuffle"] == train]


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    """A classic and a --recipe modern run (scratch, 1 epoch) with their iterators' arguments."""
    root, result = tmp_path_factory.mktemp("runs"), {}
    for name in ("classic", "modern"):
        with pytest.MonkeyPatch.context() as monkeypatch:  # one recorder per run, not nested
            recorder = IterRecorder(monkeypatch)
            prefix = root / name / "run"
            val, _ = train(data_dir, prefix, "--mode", "scratch", "--recipe", name, "--wd", "1e-4")
        with open(f"{prefix}-args.json") as f:
            result[name] = dict(prefix=str(prefix), val=val, calls=recorder, args=json.load(f))
    return result


def test_augmentation_reaches_the_training_iterator_only(runs):
    classic, modern = runs["classic"]["calls"], runs["modern"]["calls"]
    assert classic.of(True) and classic.of(False) and modern.of(True) and modern.of(False)
    for call in classic.of(True):
        assert call["rand_crop"] and not (AUGMENT_KEYS - {"rand_crop"}) & set(call)
    for call in modern.of(True):
        assert {k: call[k] for k in AUGMENT_KEYS} == recipe.augment(resolved("--recipe", "modern")).iter_params()
    # Validation is exactly what it was: the same arguments, path for path.
    strip = lambda calls: [{k: v for k, v in c.items() if "path" not in k} for c in calls]  # noqa: E731
    assert strip(modern.of(False)) == strip(classic.of(False))
    for call in modern.of(False):
        assert not call["rand_crop"] and not (AUGMENT_KEYS - {"rand_crop"}) & set(call)


def test_args_json_records_the_recipe_and_the_resolved_values(runs):
    classic, modern = runs["classic"]["args"], runs["modern"]["args"]
    assert classic["recipe"] == "classic" and classic["recipe_filled"] == []
    assert modern["recipe"] == "modern"
    # --wd was given, --lr-mult-pretrained does not apply to --mode scratch: neither is filled.
    assert modern["recipe_filled"] == sorted(set(recipe.MODERN) - {"wd", "lr_mult_pretrained"})
    assert modern["wd"] == 1e-4 and modern["mom"] == 0.9 and modern["label_smoothing"] == 0.1
    assert modern["lr_schedule"] == "cosine" and modern["lr_mult_pretrained"] == 1.0


def test_the_checkpoint_carries_smoothing_and_wd_mult_and_scores_like_validation(runs, tmp_path):
    prefix = runs["modern"]["prefix"]
    symbol = mx.sym.load(f"{prefix}-symbol.json")
    assert surgery.label_smoothing(symbol) == 0.1
    attrs = symbol.attr_dict()
    assert attrs["stage1_unit1_bn1_gamma"]["__wd_mult__"] == "0.0" and "__wd_mult__" not in attrs.get(
        "stage1_unit1_conv1_weight", {})
    # score.py (no training code) loads it; its figures are validation's: smoothing leaves outputs alone.
    report = score.main(["--model-prefix", prefix, "--epoch", "1", "--data-val", runs["modern"]["args"]["data_val"],
                         "--batch-size", "8", "--data-nthreads", "1",
                         "--out-dir", str(tmp_path / "score")])
    assert round(report["acc"], 6) == round(runs["modern"]["val"]["acc"], 6)
    assert report["loss"] == pytest.approx(runs["modern"]["val"]["loss"], abs=1e-4)


# ---------------------------------------------------------------- early stopping

def test_early_stopping_stops_after_patience_epochs_without_improvement_and_keeps_the_best(
        data_dir, tmp_path, monkeypatch, caplog):
    # Validation accuracy scripted per epoch: the best is epoch 2; 3 and 4 do not beat it (4 ties).
    script, real = {1: 0.5, 2: 0.75, 3: 0.5, 4: 0.75, 5: 1.0}, evaluate.evaluate_set
    seen = []

    def scripted(*args, **kwargs):
        result = real(*args, **kwargs)
        seen.append(len(seen) + 1)
        result.figures["acc"] = script[len(seen)]
        return result
    monkeypatch.setattr(evaluate, "evaluate_set", scripted)
    prefix = tmp_path / "run"
    argv = ["--mode", "scratch", "--early-stopping", "2", "--keep", "2"]
    val, stdout = train(data_dir, prefix, *argv, epochs=6)
    records = trainkit.metrics(prefix)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert trainkit.committed(prefix) == [2, 3, 4]  # the best stays beyond --keep 2
    with open(f"{prefix}-best.json") as f:
        assert json.load(f)["epoch"] == 2
    assert val["best_epoch"] == 2
    assert stdout.strip().endswith("best_epoch=2 best_val_acc=0.7500")
    log_text = open(f"{prefix}-train.log").read()
    assert "training stopped after epoch 4: --early-stopping 2" in log_text and "the best is epoch 2" in log_text
    # The same command again trains nothing more: the run has stopped (said on the console,
    # as "has finished all epochs already" is: no run files are written).
    caplog.clear()
    train(data_dir, prefix, *argv, epochs=6)
    assert [r["epoch"] for r in trainkit.metrics(prefix)] == [1, 2, 3, 4] and len(seen) == 4
    assert "stopped early already: nothing to train" in caplog.text
