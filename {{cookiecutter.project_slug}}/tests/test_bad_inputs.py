"""The catalogue of bad inputs: each one, given to `train.py` or `test.py` as a user would,
must end with exit status 2 and one `error:` line on stderr that names the offending key or
file, with no traceback, and must leave every file as it was (nothing created, nothing
overwritten).

Each case runs in a fresh working folder holding `config.json` (the project's own config,
shrunk to CPU and the synthetic test data), a valid checkpoint `good.pth` and a set of bad
files. To add a case, add a `Case` to CATALOGUE.
"""

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import MNIST_CONFIG, PROJECT_ROOT, call_main, victoresque_checkpoint
from torchvision import datasets

import test as test_script
import train
from model.model import MnistModel
from parse_config import ConfigParser

DELETE = object()  # an `edits` value that removes the key


@dataclass(frozen=True)
class Case:
    id: str
    kind: str  # config, lookup, arguments, cli, checkpoint or data: what the user got wrong
    args: tuple[str, ...]  # the command line; -c config.json is the edited config below
    names: str  # the message must contain this: the key or file, and what is wrong
    edits: dict[str, Any] = field(default_factory=dict)  # dotted key -> new value (or DELETE)
    script: str = "train"


def c(id: str, names: str, kind: str = "config", **edits: Any) -> Case:
    """A case of `python train.py -c config.json` with `edits` made to config.json; `edits`
    keys use `__` for the dots of the dotted key."""
    return Case(id, kind, ("-c", "config.json"), names, {k.replace("__", "."): v for k, v in edits.items()})


CATALOGUE = [
    # The config file itself
    Case("config-missing", "config", ("-c", "nope.json"), "config 'nope.json': cannot read it"),
    Case("config-not-json", "config", ("-c", "broken.json"), "config 'broken.json': invalid JSON at line 3 column 3"),
    Case("config-empty", "config", ("-c", "empty.json"), "config 'empty.json': invalid JSON at line 1 column 1"),
    Case("config-a-list", "config", ("-c", "list.json"), "config 'list.json': must be a JSON object"),
    Case("config-yaml", "config", ("-c", "config.yaml"),
         "config 'config.yaml': not JSON (configs are JSON files; this one begins with '# my config')"),
    Case("config-not-utf8", "config", ("-c", "latin1.json"),
         "config 'latin1.json': not JSON text (configs are JSON files in UTF-8)"),
    Case("config-a-folder", "config", ("-c", "folder"), "config 'folder': cannot read it"),
    Case("config-duplicate-key", "config", ("-c", "duplicate.json"),
         "config 'duplicate.json': key 'lr' appears twice in one object"),
    # Keys, types and ranges
    c("unknown-key", "unknown key 'optimiser'; did you mean 'optimizer'?", optimiser={}),
    c("misspelt-trainer-key", "unknown key 'trainer.epoch'; did you mean 'trainer.epochs'?", trainer__epoch=3),
    c("missing-arch", "missing required key 'arch'", arch=DELETE),
    c("missing-epochs", "missing required key 'trainer.epochs'", trainer__epochs=DELETE),
    c("epochs-a-string", "'trainer.epochs' must be an integer, got '10'", trainer__epochs="10"),
    c("epochs-negative", "'trainer.epochs' must be >= 1, got -1", trainer__epochs=-1),
    c("epochs-fractional", "'trainer.epochs' must be an integer, got 2.5", trainer__epochs=2.5),
    c("batch-size-zero", "'data_loader.args.batch_size' must be >= 1, got 0", data_loader__args__batch_size=0),
    c("validation-split-above-one", "'data_loader.args.validation_split' must be a fraction in [0, 1)",
      data_loader__args__validation_split=1.5),
    c("validation-split-too-many", "'data_loader.args.validation_split' must be a count from 0 to 399, got 400",
      data_loader__args__validation_split=400),
    c("num-workers-negative", "'data_loader.args.num_workers' must be >= 0", data_loader__args__num_workers=-2),
    c("lr-negative", "'optimizer.args.lr' must be > 0, got -0.001", optimizer__args__lr=-0.001),
    c("lr-a-word", "'optimizer.args.lr' must be a number, got 'fast'", optimizer__args__lr="fast"),
    c("monitor-bad-mode", "'trainer.monitor' must be 'off' or '<min|max> <metric>'", trainer__monitor="avg val_loss"),
    c("monitor-unlogged-metric", "'trainer.monitor' watches 'val_acc', which is not logged",
      trainer__monitor="min val_acc"),
    c("monitor-without-validation", "'trainer.monitor' watches 'val_loss', which is not logged",
      data_loader__args__validation_split=0.0),
    c("precision-unknown", "'trainer.precision' must be one of 'fp32', 'bf16', 'fp16', got 'fp8'",
      trainer__precision="fp8"),
    c("precision-fp16-on-cpu", "'trainer.precision' is 'fp16', which needs a CUDA GPU", trainer__precision="fp16"),
    c("tensorboard-a-word", "'trainer.tensorboard' must be true or false, got 'yes'", trainer__tensorboard="yes"),
    c("n-gpu-negative", "'n_gpu' must be >= 0, got -1", n_gpu=-1),
    c("seed-fractional", "'trainer.seed' must be an integer or null, got 1.5", trainer__seed=1.5),
    c("metrics-not-a-list", "'metrics' must be a list, got 'accuracy'", metrics="accuracy"),
    c("clip-zero", "'trainer.clip_grad_norm' must be > 0, got 0", trainer__clip_grad_norm=0),
    c("verbosity-out-of-range", "'trainer.verbosity' must be one of 0, 1, 2, got 3", trainer__verbosity=3),
    c("save-period-zero", "'trainer.save_period' must be >= 1, got 0", trainer__save_period=0),
    c("early-stop-negative", "'trainer.early_stop' must be >= 0, got -1", trainer__early_stop=-1),
    # NaN and Infinity (JSON files may spell them) pass range checks and unchecked class arguments
    c("lr-infinite", "config: 'optimizer.args.lr' is Infinity; numbers must be finite",
      optimizer__args__lr=float("inf")),
    c("clip-infinite", "config: 'trainer.clip_grad_norm' is Infinity; numbers must be finite",
      trainer__clip_grad_norm=float("inf")),
    c("scheduler-gamma-nan", "config: 'lr_scheduler.args.gamma' is NaN; numbers must be finite",
      lr_scheduler__args__gamma=float("nan")),
    c("betas-minus-infinity-in-a-list", "config: 'optimizer.args.betas[1]' is -Infinity; numbers must be finite",
      optimizer__args__betas=[0.9, float("-inf")]),
    # Names of classes and functions: looked up in their own module only
    c("arch-unknown", "'arch.type' is 'ResNet', not one of model.model: ", "lookup", arch__type="ResNet"),
    c("loss-import-attempt", "'loss' is 'os.system', not one of model.loss", "lookup", loss="os.system"),
    c("optimizer-unknown", "'optimizer.type' is 'Adamm', not one of torch.optim", "lookup", optimizer__type="Adamm"),
    c("optimizer-unknown-suggested", ", SGD, SparseAdam; did you mean 'AdamW'?", "lookup", optimizer__type="adamw"),
    c("scheduler-abstract-base", "'lr_scheduler.type' is 'LRScheduler', not one of torch.optim.lr_scheduler",
      "lookup", lr_scheduler__type="LRScheduler"),
    c("metric-argument-unknown", "'metrics[1].args' do not fit top_k_acc: got an unexpected keyword argument 'kk'",
      "arguments", metrics=["accuracy", {"type": "top_k_acc", "args": {"kk": 2}}]),
    c("loss-block-malformed", "'loss' must be a name or {\"type\": name, \"args\": {...}}",
      loss={"name": "nll_loss"}),
    c("metric-unknown", "'metrics[1]' is 'acc', not one of model.metric", "lookup", metrics=["accuracy", "acc"]),
    c("data-loader-unknown", "'data_loader.type' is 'MNIST', not one of data_loader: ", "lookup",
      data_loader__type="MNIST"),
    # ... and say where the name must be defined
    c("data-loader-unknown-says-where",
      "MnistDataLoader; a data loader class must subclass BaseDataLoader in a .py file of data_loader/", "lookup",
      data_loader__type="MyLoader"),
    c("data-loader-imported-base", "'data_loader.type' is 'BaseDataLoader', not one of data_loader: ", "lookup",
      data_loader__type="BaseDataLoader"),  # imported by every loader file, defined in none
    c("arch-unknown-says-where", "'arch.type' is 'ResNet', not one of model.model: ImageClassifier, MnistModel, "
      "TorchvisionClassifier; "
      "a model class must subclass BaseModel (or nn.Module) in model/model.py", "lookup", arch__type="ResNet"),
    c("loss-unknown-says-where", "'loss' is 'l1', not one of model.loss: cross_entropy, nll_loss; "
      "a loss must be a function f(output, target) in model/loss.py", "lookup", loss="l1"),
    c("metric-unknown-says-where", "'metrics[0]' is 'acc', not one of model.metric: accuracy, top_k_acc; "
      "a metric must be a function f(output, target) in model/metric.py", "lookup", metrics=["acc"]),
    # Class arguments
    c("arch-unexpected-argument", "'arch.args' do not fit MnistModel: got an unexpected keyword argument 'layers'",
      "arguments", arch__args={"layers": 3}),
    Case("optimizer-type-changed-alone", "arguments", ("-c", "config.json", "-o", "optimizer.type=SGD"),
         "'optimizer.args' do not fit SGD: got an unexpected keyword argument 'amsgrad'; -o 'optimizer.args={...}' "
         "gives the arguments whole, replacing the config's"),
    c("optimizer-misspelt-argument", "'optimizer.args' do not fit Adam: got an unexpected keyword argument 'lrr'; "
      "did you mean 'lr'?", "arguments", optimizer__args__lrr=0.1),
    c("data-loader-misspelt-argument", "got an unexpected keyword argument 'batchsize'; did you mean 'batch_size'?",
      "arguments", data_loader__args__batchsize=8),
    c("optimizer-argument-out-of-range", "'optimizer.args' rejected by Adam: Invalid beta parameter", "arguments",
      optimizer__args__betas=[2, 0.5]),
    c("scheduler-missing-argument", "'lr_scheduler.args' do not fit StepLR: missing a required argument: 'step_size'",
      "arguments", lr_scheduler__args={}),
    c("plateau-without-monitor", "'lr_scheduler.type' ReduceLROnPlateau steps on the monitored metric", "arguments",
      lr_scheduler={"type": "ReduceLROnPlateau", "args": {}}, trainer__monitor="off"),
    c("plateau-mode-against-monitor", "'lr_scheduler.args.mode' is 'max' but 'trainer.monitor' is 'min val_loss'",
      "arguments", lr_scheduler={"type": "ReduceLROnPlateau", "args": {"mode": "max"}}),
    c("plateau-per-step", "'lr_scheduler.interval' is 'step', but ReduceLROnPlateau steps on the monitored metric",
      "arguments", lr_scheduler={"type": "ReduceLROnPlateau", "args": {}, "interval": "step"}),
    c("interval-unknown", "'lr_scheduler.interval' must be one of 'epoch', 'step', got 'batch'",
      lr_scheduler={"type": "StepLR", "args": {"step_size": 1}, "interval": "batch"}),
    c("one-cycle-too-short", "OneCycleLR has 5 steps but the run takes 6 optimizer steps (1 x 6 per epoch)",
      "arguments",
      lr_scheduler={"type": "OneCycleLR", "args": {"max_lr": 0.01, "total_steps": 5}}),
    c("freeze-backbone-without-a-head", "'trainer.freeze_backbone_epochs' is 2, but the model MnistModel has no "
      "head_parameters() method", "arguments", trainer__freeze_backbone_epochs=2),
    c("torchvision-model-unknown", "'arch.args.name' is 'resnet19', not a torchvision classification model; did you "
      "mean resnet18", "arguments", arch={"type": "TorchvisionClassifier", "args": {"name": "resnet19",
                                                                                  "num_classes": 10}}),
    c("save-every-minutes-zero", "'trainer.save_every_minutes' must be > 0, got 0", trainer__save_every_minutes=0),
    # MNIST's classes are the digits its labels use ("0" to "9"), held against the model's outputs
    c("num-classes-below-labels",
      "config: the data has 10 classes (0, 1, 2, 3, 4, 5, 6, 7, 8, 9) but the model outputs 5; set "
      "'arch.args.num_classes' to 10", "arguments",
      arch__args={"num_classes": 5}),
    Case("num-classes-below-labels-dry-run", "arguments", ("-c", "config.json", "--dry-run"),
         "config: the data has 10 classes (0, 1, 2, 3, 4, 5, 6, 7, 8, 9) but the model outputs 5",
         {"arch.args": {"num_classes": 5}}),
    Case("top-k-above-classes", "arguments",
         ("-c", "config.json", "-o", "data_loader.args.data_dir=two_classes", "-o", "arch.args.num_classes=2"),
         "config: metric 'top_k_acc': top-k with k=3 needs at least 3 classes, the model outputs 2"),
    Case("test-num-classes-below-labels", "arguments", ("-r", "five_classes.pth"),
         "config: the data has 10 classes (0, 1, 2, 3, 4, 5, 6, 7, 8, 9) but the model outputs 5", script="test"),
    # The command line
    Case("no-config-no-checkpoint", "cli", (), "no config: give a config file with -c or a checkpoint with -r"),
    Case("unknown-option", "cli", ("-c", "config.json", "--epochs", "3"), "unrecognized arguments: --epochs 3"),
    Case("batch-size-not-a-number", "cli", ("-c", "config.json", "--bs", "many"),
         "argument --bs: invalid int value: 'many'"),
    Case("override-without-value", "cli", ("-c", "config.json", "-o", "trainer.epochs"),
         "override 'trainer.epochs': expected KEY=VALUE"),
    Case("override-through-a-value", "cli", ("-c", "config.json", "-o", "trainer.epochs.max=3"),
         "override 'trainer.epochs.max=3': 'trainer.epochs' is not an object"),
    Case("override-nan", "cli", ("-c", "config.json", "-o", "lr_scheduler.args.gamma=NaN"),
         "config: 'lr_scheduler.args.gamma' is NaN; numbers must be finite"),
    Case("override-infinity-in-an-object", "cli", ("-c", "config.json", "-o", 'arch.args={"scale": Infinity}'),
         "config: 'arch.args.scale' is Infinity; numbers must be finite"),
    Case("override-duplicate-key", "cli", ("-c", "config.json", "-o", 'optimizer.args={"lr": 0.1, "lr": 0.2}'),
         "key 'lr' appears twice in one object"),
    Case("override-unknown-key", "cli", ("-c", "config.json", "-o", "trainer.epoch=3"),
         "unknown key 'trainer.epoch'; did you mean 'trainer.epochs'?"),
    Case("device-not-indices", "cli", ("-c", "config.json", "-d", "gpu0"),
         "argument -d/--device: 'gpu0' is not a list of GPU indices"),
    Case("run-id-escapes", "cli", ("-c", "config.json", "--run-id", "../elsewhere"),
         "argument --run-id: '../elsewhere' is not a folder name"),
    Case("run-id-taken", "cli", ("-c", "config.json", "--run-id", "taken"),
         "saved/Mnist_LeNet/taken' already exists; choose another --run-id"),
    Case("save-dir-a-file", "cli", ("-c", "config.json", "-o", "trainer.save_dir=a_file"),
         "a_file/Mnist_LeNet/"),
    Case("test-without-checkpoint", "cli", ("-c", "config.json"),
         "no checkpoint: give the checkpoint to evaluate with -r", script="test"),
    # Checkpoints
    Case("checkpoint-missing", "checkpoint", ("-r", "missing.pth"), "checkpoint 'missing.pth': no such file"),
    Case("checkpoint-a-folder", "checkpoint", ("-r", "folder"), "checkpoint 'folder': a folder, not a checkpoint file"),
    Case("checkpoint-a-run-folder", "checkpoint", ("-r", "saved/Mnist_LeNet/done"),
         "checkpoint 'saved/Mnist_LeNet/done': a folder, not a checkpoint file; did you mean "
         "saved/Mnist_LeNet/done/latest.pth?\n"),
    Case("checkpoint-a-run-folders-config", "checkpoint", ("-r", "saved/Mnist_LeNet/done/config.json"),
         "checkpoint 'saved/Mnist_LeNet/done/config.json': config.json is not a checkpoint; did you mean "
         "saved/Mnist_LeNet/done/latest.pth?\n"),
    Case("test-checkpoint-a-run-folders-metrics", "checkpoint", ("-r", "saved/Mnist_LeNet/done/metrics.csv"),
         "checkpoint 'saved/Mnist_LeNet/done/metrics.csv': metrics.csv is not a checkpoint; did you mean ",
         script="test"),
    Case("checkpoint-truncated", "checkpoint", ("-r", "truncated.pth"),  # whole sentences, not cut mid-way
         "checkpoint 'truncated.pth': not a readable checkpoint: the file is cut short or damaged (PytorchStreamReader "
         "failed reading zip archive: failed finding central directory)\n"),
    Case("checkpoint-of-another-run", "checkpoint",
         ("-r", "saved/Mnist_LeNet/done/copied.pth", "-o", "trainer.epochs=3"),
         "checkpoint 'saved/Mnist_LeNet/done/copied.pth': it is of another run (run_uid 0123456789abcdef) than the run "
         "in its folder "),
    Case("checkpoint-in-a-folder-of-checkpoints", "checkpoint", ("-r", "scratch/a.pth", "-o", "trainer.epochs=3"),
         "but files that resuming there would overwrite or mix with the run's (b.pth); put the checkpoint alone in an "
         "empty folder and resume it there"),
    Case("resume-change-refused-before-the-data-are-read", "checkpoint",
         ("-c", "config.json", "-r", "good.pth", "-o", "trainer.epochs=3", "-o", "data_loader.args.batch_size=16",
          "-o", "data_loader.args.data_dir=no_data"),
         "checkpoint 'good.pth': resuming cannot change 'data_loader.args.batch_size' (64 -> 16)"),
    Case("checkpoint-text", "checkpoint", ("-r", "notes.pth"), "checkpoint 'notes.pth': not a readable checkpoint"),
    Case("checkpoint-foreign-dict", "checkpoint", ("-r", "foreign.pth"),
         "checkpoint 'foreign.pth': not a checkpoint of this project (no format_version)"),
    Case("checkpoint-pickled-model", "checkpoint", ("-r", "pickled.pth"),
         "checkpoint 'pickled.pth': not a readable checkpoint"),
    Case("checkpoint-victoresque", "checkpoint", ("-r", "victoresque.pth"),
         "checkpoint 'victoresque.pth': saved by victoresque/pytorch-template (it pickles its config object), which "
         "is not loaded for safety; convert it with: python convert_checkpoint.py victoresque.pth OUT.pth "
         "--trust-pickle"),
    Case("test-checkpoint-victoresque", "checkpoint", ("-r", "victoresque.pth"),
         "checkpoint 'victoresque.pth': saved by victoresque/pytorch-template", script="test"),
    Case("checkpoint-newer-format", "checkpoint", ("-r", "newer.pth"),
         "checkpoint 'newer.pth': format_version 99 is newer than this code reads"),
    Case("checkpoint-other-arch", "checkpoint", ("-r", "other_arch.pth"),
         "checkpoint 'other_arch.pth': saved for arch 'ResNet', the config builds 'MnistModel'"),
    Case("checkpoint-weights-do-not-fit", "checkpoint", ("-r", "reshaped.pth"),
         "checkpoint 'reshaped.pth': weights do not fit the model"),
    Case("fine-tune-into-another-head", "checkpoint",
         ("-r", "good.pth", "--fine-tune", "-o", "arch.args.num_classes=12"),  # the whole line, not cut short
         "error: checkpoint 'good.pth': weights do not fit the model MnistModel: 2 tensors differ in shape "
         "(checkpoint -> model): fc2.weight (10, 50) -> (12, 50), fc2.bias (10,) -> (12,); to start from the 6 of "
         "its 8 tensors that fit (the others as initialised), add --partial\n"),
    Case("fine-tune-partial-matches-nothing", "checkpoint", ("-r", "renamed.pth", "--fine-tune", "--partial"),
         "checkpoint 'renamed.pth': --partial: none of its 8 tensors matches a tensor of the model MnistModel by "
         "name and shape (8 tensors are in the checkpoint only: net.conv1.weight, net.conv1.bias, "
         "net.conv2.weight, ... (8 in all); 8 tensors are in the model only: conv1.weight, "),
    Case("partial-without-fine-tune", "cli", ("-r", "good.pth", "--partial"),
         "--partial loads part of a checkpoint's weights into a new run: use it with --fine-tune -r CHECKPOINT"),
    Case("checkpoint-other-optimizer", "checkpoint",
         ("-r", "good.pth", "-o", "optimizer.type=AdamW", "-o", "trainer.epochs=3"),
         "checkpoint 'good.pth': saved with optimizer 'Adam', the config asks for 'AdamW'"),
    Case("checkpoint-run-finished", "checkpoint", ("-r", "good.pth"),
         "checkpoint 'good.pth': the run already reached epoch 1 of trainer.epochs 1"),
    Case("test-checkpoint-truncated", "checkpoint", ("-r", "truncated.pth"),
         "checkpoint 'truncated.pth': not a readable checkpoint", script="test"),
    # Data
    Case("mnist-absent-offline", "data", ("-c", "config.json", "-o", "data_loader.args.data_dir=no_data"),
         "/no_data/MNIST/raw': missing train-images-idx3-ubyte"),  # the path as the run records it: absolute
    Case("data-dir-a-file", "data", ("-c", "config.json", "-o", "data_loader.args.data_dir=a_file"),
         "/a_file', which is a file, not a folder"),
    Case("mnist-file-damaged", "data", ("-c", "config.json", "-o", "data_loader.args.data_dir=damaged"),
         "/damaged/MNIST/raw/train-images-idx3-ubyte' is damaged"),
    Case("dry-run-downloads-nothing", "data",
         ("-c", "config.json", "--dry-run", "-o", "data_loader.args.data_dir=no_data"),
         "/no_data/MNIST/raw'"),
]


def set_key(config: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = config
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> bytes:
    """The bytes of a real checkpoint after one epoch on the synthetic data."""
    config = base_config(mnist_dir)
    config["trainer"]["save_dir"] = str(tmp_path_factory.mktemp("saved"))
    parser = ConfigParser(config, run_id="good")
    train.train(parser)
    assert parser.run_dir is not None
    return (parser.run_dir / "checkpoint-epoch1.pth").read_bytes()


def base_config(mnist_dir: Path) -> dict[str, Any]:
    config = json.loads((PROJECT_ROOT / MNIST_CONFIG).read_text())
    config["n_gpu"] = 0
    config["data_loader"]["args"].update(data_dir=str(mnist_dir), batch_size=64)
    config["trainer"].update(epochs=1, save_dir="saved", verbosity=0)
    return config


def make_workspace(root: Path, mnist_dir: Path, good: bytes, edits: dict[str, Any]) -> None:
    """config.json (with `edits`), good.pth, and every bad file the catalogue refers to."""
    config = base_config(mnist_dir)
    for dotted, value in edits.items():
        set_key(config, dotted, value)
    (root / "config.json").write_text(json.dumps(config, indent=4))
    (root / "broken.json").write_text('{\n  "name": "x",\n  oops\n}\n')
    (root / "empty.json").write_text("")
    (root / "list.json").write_text("[1, 2]\n")
    (root / "config.yaml").write_text("# my config\nname: Mnist_LeNet\narch:\n  type: MnistModel\n")
    (root / "latin1.json").write_bytes('{"name": "Mnist_LeNet", "note": "café"}'.encode("latin-1"))
    text = json.dumps(base_config(mnist_dir), indent=4)
    assert '"lr": 0.001' in text
    (root / "duplicate.json").write_text(text.replace('"lr": 0.001', '"lr": 0.01, "lr": 0.001'))
    (root / "folder").mkdir()
    (root / "a_file").write_text("not a folder\n")
    (root / "saved" / "Mnist_LeNet" / "taken").mkdir(parents=True)
    (root / "saved" / "Mnist_LeNet" / "taken" / "metrics.csv").write_text("epoch,loss\n1,0.5\n")
    damaged = root / "damaged" / "MNIST" / "raw"
    shutil.copytree(mnist_dir / "MNIST" / "raw", damaged)
    images = damaged / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])  # a download cut short
    two_classes = root / "two_classes" / "MNIST" / "raw"
    shutil.copytree(mnist_dir / "MNIST" / "raw", two_classes)
    for labels in two_classes.glob("*-labels-idx1-ubyte"):
        data = labels.read_bytes()
        labels.write_bytes(data[:8] + bytes(label % 2 for label in data[8:]))  # digits 0-9 -> 0, 1
    (root / "good.pth").write_bytes(good)
    done = root / "saved" / "Mnist_LeNet" / "done"  # a run folder, holding a checkpoint of another run too
    done.mkdir()
    (done / "latest.pth").write_bytes(good)
    torch.save({**torch.load(done / "latest.pth", weights_only=True), "run_uid": "0123456789abcdef"},
               done / "copied.pth")
    (done / "config.json").write_text("{}\n")  # the run folder's other files, not checkpoints
    (done / "metrics.csv").write_text("epoch,loss\n1,0.5\n")
    (root / "scratch").mkdir()  # a folder of checkpoints, no run
    for name in ("a.pth", "b.pth"):
        (root / "scratch" / name).write_bytes(good)
    (root / "truncated.pth").write_bytes(good[: len(good) // 2])
    (root / "notes.pth").write_text("my notes, not a checkpoint\n")
    torch.save({"weights": torch.zeros(3)}, root / "foreign.pth")
    torch.save(MnistModel(), root / "pickled.pth")
    checkpoint = torch.load(root / "good.pth", weights_only=True)
    torch.save(victoresque_checkpoint(checkpoint["state_dict"], config), root / "victoresque.pth")
    torch.save({**checkpoint, "format_version": 99}, root / "newer.pth")
    torch.save({**checkpoint, "arch": "ResNet"}, root / "other_arch.pth")
    reshaped = dict(checkpoint["state_dict"], **{"fc2.bias": torch.zeros(5)})
    torch.save({**checkpoint, "state_dict": reshaped}, root / "reshaped.pth")
    renamed = {f"net.{key}": value for key, value in checkpoint["state_dict"].items()}
    torch.save({**checkpoint, "state_dict": renamed}, root / "renamed.pth")
    five = {**checkpoint["config"], "arch": {"type": "MnistModel", "args": {"num_classes": 5}}}
    five_weights = dict(checkpoint["state_dict"], **{"fc2.weight": torch.zeros(5, 50), "fc2.bias": torch.zeros(5)})
    torch.save({**checkpoint, "state_dict": five_weights, "config": five}, root / "five_classes.pth")


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every path below `roots` with its size and modification time (bytecode caches aside)."""
    return {
        str(path): (path.stat().st_size, path.stat().st_mtime_ns)
        for root in roots
        for path in root.rglob("*")
        if "__pycache__" not in path.parts
    }


def run(script: str, args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run train.py's or test.py's main() as the command line would; (status, stdout, stderr)."""
    return call_main(train.main if script == "train" else test_script.main, args, capsys)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """MNIST downloads go to a closed local port: the tests are offline whatever the machine."""
    monkeypatch.setattr(datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])


@pytest.mark.parametrize("case", CATALOGUE, ids=[case.id for case in CATALOGUE])
def test_a_bad_input_gets_one_line_status_2_and_changes_nothing(
    case: Case, tmp_path: Path, mnist_dir: Path, good_checkpoint: bytes,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_workspace(tmp_path, mnist_dir, good_checkpoint, case.edits)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path, mnist_dir)
    status, _, err = run(case.script, list(case.args), capsys)
    assert status == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "\x1b" not in err  # no terminal colour codes either
    assert case.names in err
    assert snapshot(tmp_path, mnist_dir) == before


def test_the_catalogue_is_distinct_and_covers_every_kind() -> None:
    ids = [case.id for case in CATALOGUE]
    assert len(ids) == len(set(ids)) >= 30
    assert {case.kind for case in CATALOGUE} == {"config", "lookup", "arguments", "cli", "checkpoint", "data"}


def test_dry_run_checks_everything_and_writes_nothing(
    tmp_path: Path, mnist_dir: Path, good_checkpoint: bytes, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_workspace(tmp_path, mnist_dir, good_checkpoint, {})
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path, mnist_dir)
    for args in (["-c", "config.json"], ["-r", "good.pth", "-o", "trainer.epochs=2"],
                 ["-c", "config.json", "-o", "trainer.epochs=7"]):
        status, out, err = run("train", [*args, "--dry-run"], capsys)
        assert status == 0, err
        resolved = json.loads(out[: out.index("\n}\n") + 2])  # the resolved config comes first
        assert resolved["trainer"]["precision"] == "fp32"  # defaults filled in
        n_parameters = sum(p.numel() for p in MnistModel().parameters())
        assert f"model MnistModel: {n_parameters:,} parameters ({n_parameters:,} trainable)" in out
        assert "one training and one validation batch (loss " in out and "val_loss " in out
    assert resolved["trainer"]["epochs"] == 7
    no_validation = ["-o", "data_loader.args.validation_split=0", "-o", "trainer.monitor=off"]
    status, out, err = run("train", ["-c", "config.json", *no_validation, "--dry-run"], capsys)
    assert status == 0, err
    assert "dry run passed on cpu: one training batch (no validation data) (loss " in out and "val_" not in out
    assert snapshot(tmp_path, mnist_dir) == before
