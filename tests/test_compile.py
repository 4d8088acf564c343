"""`trainer.compile` on the CPU, in a rendered project: a compiled run stopped by SIGTERM in the
middle of an epoch resumes bitwise to where a compiled straight run ends, its checkpoints load
into the plain model; a platform that cannot compile is one line and exit status 2.

One test process compiles (a few tens of seconds with a cold compiler cache), so the three runs
happen inside one `python` child; the compiled code is reused between them."""

import json
from pathlib import Path

import pytest

from conftest import run_python

pytestmark = pytest.mark.slow

# Runs in the project folder: argv = data_dir, save_dir. Batch 40 divides the 3,600 training
# and 400 validation images, so one training graph and one evaluation graph are compiled.
DRIVER = """
import json, signal, sys
from pathlib import Path
import torch
import train
from model.model import MnistModel
from parse_config import ConfigParser
from trainer import Trainer
from utils.errors import TrainingInterrupted

data_dir, save_dir = sys.argv[1:3]
config = json.load(open("config.json"))
config["n_gpu"] = 0
config["data_loader"]["args"].update(data_dir=data_dir, batch_size=40)
config["trainer"].update(epochs=2, save_dir=save_dir, verbosity=0, compile=True)

def run(run_id, resume=None):
    return train.train(ConfigParser(json.loads(json.dumps(config)), resume_path=resume, run_id=run_id))

run("straight")
original, calls = Trainer.train_step, []
def train_step(self, batch):
    result = original(self, batch)
    calls.append(1)
    if len(calls) == 90 + 37:  # epoch 2, batch 37
        signal.raise_signal(signal.SIGTERM)
    return result
Trainer.train_step = train_step
try:
    run("stopped")
    sys.exit("the signal did not stop the run")
except TrainingInterrupted as stop:
    checkpoint = Path(stop.checkpoint)
Trainer.train_step = original
position = torch.load(checkpoint, weights_only=True)
run("stopped", resume=checkpoint)
runs = {name: torch.load(f"{save_dir}/Mnist_LeNet/{name}/latest.pth", weights_only=True)
        for name in ("straight", "stopped")}
plain = MnistModel()
plain.load_state_dict(runs["stopped"]["state_dict"])  # strict: the names of the uncompiled model
same = all(torch.equal(runs["straight"]["state_dict"][k], value) for k, value in runs["stopped"]["state_dict"].items())
print(json.dumps({"epoch": position["epoch"], "batches_done": position["batches_done"], "bitwise": same}))
"""


def test_a_compiled_run_resumes_bitwise_and_saves_plain_checkpoints(
    default_project: Path, mnist_sample_dir: Path, tmp_path: Path
) -> None:
    result = run_python(default_project, "-c", DRIVER, str(mnist_sample_dir), str(tmp_path / "saved"))
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert (outcome["epoch"], outcome["batches_done"]) == (1, 37)  # stopped inside epoch 2
    assert outcome["bitwise"]
    rows = (tmp_path / "saved" / "Mnist_LeNet" / "stopped" / "metrics.csv").read_text().splitlines()
    assert rows == (tmp_path / "saved" / "Mnist_LeNet" / "straight" / "metrics.csv").read_text().splitlines()


def test_compiling_without_a_cpu_compiler_is_one_line(
    default_project: Path, mnist_sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    result = run_python(
        default_project,
        "train.py",
        "-c",
        "config.json",
        "-o",
        "trainer.compile=true",
        "-o",
        "n_gpu=0",
        "-o",
        f"data_loader.args.data_dir={mnist_sample_dir}",
        "-o",
        f"trainer.save_dir={tmp_path / 'saved'}",
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "'trainer.compile'" in result.stderr, result.stderr
    assert "no C++ compiler" in result.stderr
    assert not (tmp_path / "saved").exists()
