"""Bad input through real processes: `python train.py ...` in a rendered project exits with
status 2 and one `error:` line, prints no traceback and leaves the project as it was.

The full catalogue (69 cases) runs in-process in the generated project's own
tests/test_bad_inputs.py, which test_options.py runs; these cases prove that the same
holds for a real interpreter, from process start to exit status.
"""

from pathlib import Path

import pytest
from cookiecutter.main import cookiecutter

from conftest import TEMPLATE, run_python

pytestmark = pytest.mark.slow

CASES = [
    (("train.py", "-c", "broken.json"), "config 'broken.json': invalid JSON at line 2 column 1"),
    (("train.py", "-c", "config.json", "-o", "trainer.epoch=3"), "did you mean 'trainer.epochs'?"),
    (("train.py", "-c", "config.json", "--bs", "many"), "argument --bs: invalid int value: 'many'"),
    (("train.py", "-r", "truncated.pth"), "checkpoint 'truncated.pth': not a readable checkpoint"),
    (
        (
            "train.py",
            "-c",
            "config.json",
            "-o",
            "data_loader.args.data_dir=no_data",
            "-o",
            "data_loader.args.download=false",
        ),
        "/no_data/MNIST/raw'",  # the path made absolute, as the run records it
    ),
    (("test.py", "-c", "config.json"), "no checkpoint: give the checkpoint to evaluate with -r"),
]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rendered")
    project = Path(cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(out)))
    (project / "broken.json").write_text('{"name": "x",\n}\n')
    (project / "truncated.pth").write_bytes(b"PK\x03\x04" + bytes(100))
    return project


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in root.rglob("*")
        if "__pycache__" not in path.parts
    }


@pytest.mark.parametrize(("args", "message"), CASES, ids=[" ".join(args) for args, _ in CASES])
def test_a_real_process_answers_bad_input_with_one_line(project: Path, args: tuple[str, ...], message: str) -> None:
    before = snapshot(project)
    result = run_python(project, *args, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert message in result.stderr
    assert snapshot(project) == before


def test_a_real_dry_run_checks_the_config_and_writes_nothing(project: Path, mnist_sample_dir: Path) -> None:
    before = snapshot(project)
    result = run_python(
        project,
        "train.py",
        "-c",
        "config.json",
        "--dry-run",
        "-o",
        f"data_loader.args.data_dir={mnist_sample_dir}",
        "-o",
        "n_gpu=0",
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "model MnistModel: 21,840 parameters (21,840 trainable)" in result.stdout
    assert '"epochs": 10' in result.stdout  # the resolved config is printed
    assert "dry run passed on cpu: one training and one validation batch" in result.stdout
    assert snapshot(project) == before
