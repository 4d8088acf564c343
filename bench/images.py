"""Speed benchmark of the image_folder option on photos: the rendered project's `train.py` with its
image cache in memory and memory-mapped, against torchvision's `ImageFolder` + PIL + `DataLoader`,
all measured in one invocation.

    python bench/images.py [--epochs N] [--repeats R] [--out DIR] [--threads T] [--json FILE]

Setup: the `dataset=image_folder` project is rendered into OUT/mnist_classifier (its cache/
emptied) and OUT/photos/ gets 1,000 training (100 per class) and 100 validation (10 per class)
JPEG photos of mixed sizes and aspect ratios, each side 160 to 480 pixels (tests/photo_sample.py:
smooth random colour fields with a disc of the class's hue). Everything is timed in child
processes (`python -c`), on the CPU (CUDA hidden), with the photo recipe: `preprocessing`
"photo", `image_size` 64 (the cache holds 73-pixel squares), `hflip`, batch 64, the project's
ImageClassifier, Adam lr 1e-3 amsgrad. Three contenders, in R rounds (default 3), the order
rotated every round:

  * in-memory: `python train.py -c config.json -o data_loader.args.data_dir=OUT/photos -o n_gpu=0
    -o trainer.epochs=N -o data_loader.args.preprocessing=photo ...` in the project (metrics,
    checkpoints every epoch), with bench.py's timers around the Trainer and one around the
    cache; the first run builds the cache (decoding every photo once), measured apart;
  * memory-mapped: the same run with the cache's memory budget forced to 0 (below the data's
    size), so both folders are read through a memory map of the cache file (the same file;
    the operating system keeps it in memory if it can, as for any file, so this measures the
    map, not the disk);
  * torchvision (`baseline_worker`): `datasets.ImageFolder` with the same recipe per sample
    (RandomResizedCrop 64, RandomHorizontalFlip, ToTensor, Normalize 0.5; validation Resize 73
    and CenterCrop 64), `DataLoader(batch_size=64, shuffle=True, num_workers=2)`, the same
    model and optimizer in a bare loop: TORCHVISION_EPOCHS epochs (training and one validation
    pass), and one pass over the training loader alone;
  * each of ours also times its loader alone: one epoch of `ImageFolderDataLoader` (cache
    warm) through its `device_transform` (crops, flips, normalisation), no model.

An epoch of ours is the median of epochs 2..N of a run (default N 3), of torchvision's the median
of its epochs; each figure is the median over the rounds. It prints the seconds and the ratios
that the issue's targets name. Seconds depend on the machine and on whatever else runs on it;
the ratios, measured side by side in one run, are the figures to quote.
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
N_TRAIN_PER_CLASS, N_VAL_PER_CLASS, SIDES = 100, 10, (160, 480)
BATCH_SIZE, IMAGE_SIZE, RESIZE_SIZE, WORKERS = 64, 64, 73, 2
TORCHVISION_EPOCHS = 2  # torchvision's epochs are all alike (no cache): the median of these


def prepare(out: Path) -> tuple[Path, Path]:
    """Render the image_folder project (empty cache/) and write the photo folders; returns both."""
    import compileall

    from cookiecutter.main import cookiecutter

    shutil.rmtree(out / bench.PROJECT_NAME, ignore_errors=True)
    project = Path(
        cookiecutter(str(bench.REPO), no_input=True, output_dir=str(out), extra_context={"dataset": "image_folder"})
    )
    compileall.compile_dir(str(project), quiet=1)
    sys.path.insert(0, str(bench.REPO / "tests"))
    try:
        from photo_sample import write_photo_folders
    finally:
        sys.path.remove(str(bench.REPO / "tests"))
    data = out / "photos"
    shutil.rmtree(data, ignore_errors=True)
    write_photo_folders(data, N_TRAIN_PER_CLASS, N_VAL_PER_CLASS, sides=SIDES)
    return project, data


# --------------------------------------------------------------------------- children


def ours_worker(train_args: list[str], data_dir: str, timings_path: str, memory_mapped: bool) -> int:
    """train.py as __main__ in the project, with the Trainer's timers and the cache's; with
    `memory_mapped`, the cache's memory budget is 0, so every folder is read through a map."""
    import runpy

    import data_loader.image_files as image_files
    import data_loader.image_folder as image_folder
    from trainer import Trainer

    if memory_mapped:
        image_files.CACHE_MEMORY_FRACTION = 0.0
    timings = bench.install_ours_timers(Trainer)
    cache: dict[str, Any] = {"seconds": 0.0, "in_memory": []}
    cached_images = image_folder.cached_images

    def timed_cached_images(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return cached_images(*args, **kwargs)
        finally:
            cache["seconds"] += time.perf_counter() - start
            cache["in_memory"].append(kwargs.get("in_memory", args[4] if len(args) > 4 else True))

    image_folder.cached_images = timed_cached_images
    sys.argv = ["train.py", *train_args]
    try:
        runpy.run_path("train.py", run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    epochs = bench.summarise_epochs(timings["records"], timings["train_end"])
    loader = our_loader_epoch(data_dir)
    Path(timings_path).write_text(json.dumps({"cache": cache, "epochs": epochs, "loader": loader}))
    return 0


def our_loader_epoch(data_dir: str) -> float:
    """Seconds of one epoch of the project's loader (cache warm) as the trainer takes it: batches
    gathered from the cache, then `device_transform`."""
    import torch
    from data_loader import ImageFolderDataLoader

    loader = ImageFolderDataLoader(data_dir, BATCH_SIZE, IMAGE_SIZE, preprocessing="photo", hflip=True)
    loader.keep_on(torch.device("cpu"))
    loader.set_epoch(1)
    return timed(lambda: [loader.device_transform(batch, 1, index) for index, batch in enumerate(loader)])


def baseline_worker(project: str, data_dir: str, timings_path: str) -> int:
    """torchvision's loaders with the same recipe per sample: alone, then with the model."""
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    sys.path.insert(0, project)
    from model.model import ImageClassifier

    torch.manual_seed(bench.SEED)
    normalise = [transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)]
    augment = [transforms.RandomResizedCrop(IMAGE_SIZE), transforms.RandomHorizontalFlip()]
    centre = [transforms.Resize(RESIZE_SIZE), transforms.CenterCrop(IMAGE_SIZE)]
    train_set = datasets.ImageFolder(f"{data_dir}/train", transforms.Compose([*augment, *normalise]))
    val_set = datasets.ImageFolder(f"{data_dir}/val", transforms.Compose([*centre, *normalise]))
    train_loader = DataLoader(train_set, BATCH_SIZE, shuffle=True, num_workers=WORKERS)
    val_loader = DataLoader(val_set, BATCH_SIZE, num_workers=WORKERS)
    result: dict[str, Any] = {"loader": timed(lambda: sum(len(target) for _, target in train_loader))}
    model = ImageClassifier(num_classes=10, in_channels=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=bench.LEARNING_RATE, amsgrad=True)
    result["epochs"] = [
        timed(lambda: train_and_validate(model, optimizer, train_loader, val_loader)) for _ in range(TORCHVISION_EPOCHS)
    ]
    Path(timings_path).write_text(json.dumps(result))
    return 0


def timed(work: Any) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


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


def train_args(data: Path, epochs: int, run_id: str) -> list[str]:
    overrides = {
        "data_loader.args.data_dir": data,
        "n_gpu": 0,
        "trainer.epochs": epochs,
        "data_loader.args.preprocessing": "photo",
        "data_loader.args.image_size": IMAGE_SIZE,
        "data_loader.args.hflip": "true",
        "data_loader.args.batch_size": BATCH_SIZE,
    }
    args = ["-c", "config.json"]
    for key, value in overrides.items():
        args += ["-o", f"{key}={value}"]
    return [*args, "--run-id", run_id]


CONTENDERS = ("in_memory", "memory_mapped", "torchvision")


def measure(out: Path, epochs: int, repeats: int, threads: int | None) -> dict[str, list[dict[str, Any]]]:
    """Render, write the photos, then `repeats` rounds of the three contenders, the order rotated
    every round (ours in memory first in the first round: it builds the cache, cold)."""
    project, data = prepare(out)
    shutil.rmtree(project / "cache", ignore_errors=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    env = bench.child_env("cpu", threads)
    timings: dict[str, list[dict[str, Any]]] = {name: [] for name in CONTENDERS}
    for repeat in range(repeats):
        for name in CONTENDERS[repeat % 3 :] + CONTENDERS[: repeat % 3]:
            json_path, log = logs / f"{name}-r{repeat}.json", logs / f"{name}-r{repeat}.log"
            if name == "torchvision":
                print(
                    f"round {repeat + 1}: torchvision: ImageFolder + PIL + DataLoader(num_workers={WORKERS})",
                    flush=True,
                )
                call = f"baseline_worker({str(project)!r}, {str(data)!r}, {str(json_path)!r})"
                timings[name].append(child(call, project, env, log, json_path))
                continue
            args = train_args(data, epochs, f"bench-{name}-r{repeat}")
            shutil.rmtree(project / "saved" / "ImageFolder_CNN" / f"bench-{name}-r{repeat}", ignore_errors=True)
            print(f"round {repeat + 1}: {name}: python train.py {shlex.join(args)}  (in {project})", flush=True)
            mapped = name == "memory_mapped"
            call = f"ours_worker({args!r}, {str(data)!r}, {str(json_path)!r}, {mapped!r})"
            timings[name].append(child(call, project, env, log, json_path))
            if set(timings[name][-1]["cache"]["in_memory"]) != {not mapped}:
                sys.exit(f"{name}: the caches were not {name.replace('_', '-')}; see {log}")
    return timings


def report(timings: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """Print the seconds (medians over the rounds) and the target ratios; returns the ratios."""
    later, loader = {}, {}
    for name in ("in_memory", "memory_mapped"):
        runs = timings[name]
        later[name] = statistics.median(statistics.median(e["total"] for e in run["epochs"][1:]) for run in runs)
        loader[name] = statistics.median(run["loader"] for run in runs)
        print(f"ours, {name.replace('_', '-'):13}  epochs 2+ {later[name]:6.2f} s, loader alone {loader[name]:5.2f} s")
    cold = timings["in_memory"][0]
    print(
        f"ours, first run: cache build (decoding every photo once) {cold['cache']['seconds']:.2f} s, "
        f"epoch 1 {cold['epochs'][0]['total']:.2f} s"
    )
    later["torchvision"] = statistics.median(statistics.median(run["epochs"]) for run in timings["torchvision"])
    loader["torchvision"] = statistics.median(run["loader"] for run in timings["torchvision"])
    print(f"torchvision             epoch {later['torchvision']:6.2f} s, loader alone {loader['torchvision']:5.2f} s")
    ratios = {
        "memory_mapped_over_in_memory": later["memory_mapped"] / later["in_memory"],
        "torchvision_over_in_memory": later["torchvision"] / later["in_memory"],
        "torchvision_over_memory_mapped": later["torchvision"] / later["memory_mapped"],
        "torchvision_loader_over_ours": loader["torchvision"] / loader["in_memory"],
    }
    print(
        f"ratios:  memory-mapped / in-memory (epochs 2+) {ratios['memory_mapped_over_in_memory']:.2f}x "
        f"(target <= 1.2x); torchvision's epoch / ours: in memory {ratios['torchvision_over_in_memory']:.2f}x, "
        f"memory-mapped {ratios['torchvision_over_memory_mapped']:.2f}x (target > 1x); "
        f"loader alone, torchvision / ours {ratios['torchvision_loader_over_ours']:.1f}x"
    )
    return ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each run of ours (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the three contenders (default 3)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"work folder (default {OUT})")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the children (default: torch's)")
    parser.add_argument("--json", type=Path, help="also write the timings and ratios to this JSON file")
    args = parser.parse_args(argv)
    if args.epochs < 2 or args.repeats < 1:
        parser.error(
            "--epochs must be 2 or more (the first epoch of the first run builds the cache), --repeats 1 or more"
        )
    sys.dont_write_bytecode = True  # importing tests/photo_sample.py must leave no __pycache__ in the repo
    print(f"command: {shlex.join(['python', *sys.argv])}")
    print(f"machine: {bench.machine('cpu', args.threads)}")
    print(f"load:    {bench.load_average()} (1, 5, 15 min) before the runs")
    timings = measure(args.out.resolve(), args.epochs, args.repeats, args.threads)
    print(f"load:    {bench.load_average()} (1, 5, 15 min) after the runs")
    ratios = report(timings)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"timings": timings, "ratios": ratios}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
