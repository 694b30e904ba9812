"""`make demo` on a reduced budget: the same code path (tools/demo.py and the commands it
runs: prepare_data.sh, train_caltech.py in all three modes, predict.py), fewer epochs."""
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROW = re.compile(r"^\| (full|last-layer|scratch) \| (\d\.\d{4}) \| (\d\.\d{4}) \| (\d\.\d{4}) \| \d+ \|$", re.M)
TOOLBOX = re.compile(r"^\| ([^|]+) \| (\d\.\d{4}) \| (\d*) \|$", re.M)


def test_demo_runs_every_step_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "tools.demo", "--out", str(out), "--train-per-class", "3",
                             "--pretrain-epochs", "1", "--epochs", "1"], cwd=REPO, capture_output=True,
                            text=True, timeout=600, env=dict(os.environ, TQDM_DISABLE="1"))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {mode: [float(v) for v in figures] for mode, *figures in ROW.findall(result.stdout)}
    assert sorted(rows) == ["full", "last-layer", "scratch"], result.stdout
    for mode, (top1, top2, mean_class) in rows.items():
        assert 0 <= top1 <= top2 <= 1 and 0 <= mean_class <= 1, mode
    # The fine-tuning modes start from the demo's own "zoo" checkpoint, scratch does not.
    zoo = out / "model" / "digits04-resnet-20"
    assert (zoo.parent / (zoo.name + "-0000.params")).is_file()
    for mode in ("full", "last-layer"):
        log = (out / f"train-digits59-{mode}.log").read_text()
        assert f"pretrained model {zoo} (epoch 0), cut at flatten0" in log, mode
    assert "pretrained model" not in (out / "train-digits59-scratch.log").read_text()
    # predict.py ranks the 5 classes for one validation image of each digit.
    blocks = re.findall(r"^\S+/digit-(\d)/\S+\.png\n((?:  \d\. .*\n){3})", result.stdout, re.M)
    assert sorted(digit for digit, _ in blocks) == ["5", "6", "7", "8", "9"], result.stdout
    for _, ranked in blocks:
        assert [line.split()[-1][:6] for line in ranked.splitlines()] == ["digit-"] * 3
    assert "demo finished in" in result.stdout
    # The toolbox table: one row per technique, each from its own command's output.
    toolbox = {what: float(acc) for what, acc, _ in TOOLBOX.findall(result.stdout.split("toolbox", 1)[1])}
    expected = ["full, center crop", "full, TTA", "full, 3-fold ensemble", "last-layer (the table above)",
                "last-layer, cached features", "odd digits alone", "even digits alone", "fusion of two backbones"]
    assert [next(w for w in toolbox if e in w) for e in expected] == list(toolbox), result.stdout
    assert toolbox[next(w for w in toolbox if w.startswith("full, center"))] == rows["full"][0]
    assert toolbox["last-layer (the table above)"] == rows["last-layer"][0]
    assert (out / "model" / "digits59-full-kfold3-kfold.json").is_file()
    assert (out / "model" / "digits-odd-even-fused-symbol.json").is_file()
