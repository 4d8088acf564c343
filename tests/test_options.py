"""The option matrix: every value of every option (one at a time, defaults elsewhere) and
one all-non-default combination renders the exact file set, leaves no Jinja, passes ruff,
has parseable workflow files, and passes the generated project's own tests offline. A
project generated with `dataset=image_folder` trains on a folder of real PNG digits and
test.py evaluates it."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import DEFAULTS, Render, expected_files, files_of, run_python
from mnist_sample import write_png_folders

pytestmark = pytest.mark.slow

OPTIONS = ("dataset", "tensorboard", "github_actions", "license")
ONE_AT_A_TIME = [{option: value} for option in OPTIONS for value in DEFAULTS[option][1:]]
ALL_NON_DEFAULT = {"dataset": "image_folder", "tensorboard": "no", "github_actions": "no", "license": "none"}
VARIANTS = [*ONE_AT_A_TIME, ALL_NON_DEFAULT]


def variant_id(answers: dict[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in answers.items())


def test_every_non_default_value_is_in_the_matrix() -> None:
    assert {(option, value) for answers in ONE_AT_A_TIME for option, value in answers.items()} == {
        (option, value) for option in OPTIONS for value in DEFAULTS[option][1:]
    }
    assert all(isinstance(DEFAULTS[option], list) and len(DEFAULTS[option]) >= 2 for option in OPTIONS)


@pytest.mark.parametrize("answers", VARIANTS, ids=[variant_id(answers) for answers in VARIANTS])
def test_variant_renders_lints_and_passes_its_own_tests(render: Render, answers: dict[str, str]) -> None:
    project = render(**answers)
    assert files_of(project) == expected_files(answers)
    for name in files_of(project):
        text = (project / name).read_text()
        assert not any(marker in text for marker in ("{{", "{%", "{#")), name
    for workflow in (project / ".github").rglob("*.yml"):
        parsed: dict[Any, Any] = yaml.safe_load(workflow.read_text())
        steps = parsed["jobs"]["tests"]["steps"]
        assert any(step.get("run") == "pytest" for step in steps) and parsed[True] is not None  # `on:` is YAML's True
        setup = next(step["with"] for step in steps if step.get("uses", "").startswith("actions/setup-python@"))
        assert setup["cache"] == "pip"  # keyed on both requirements files
        assert setup["cache-dependency-path"].split() == ["requirements.txt", "requirements-dev.txt"]
    requirements = (project / "requirements.txt").read_text()
    assert ("tensorboard" in requirements) == (answers.get("tensorboard", "yes") == "yes")
    linted = run_python(project, "-m", "ruff", "check", "--no-cache", ".", timeout=120)
    assert linted.returncode == 0, linted.stdout[-3000:]
    tested = run_python(project, "-P", "-m", "pytest", "-p", "no:cacheprovider")
    assert tested.returncode == 0, tested.stdout[-3000:]
    assert " passed" in tested.stdout and "failed" not in tested.stdout


@pytest.fixture(scope="module")
def png_digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,000 training and 300 validation PNG digits of the real sample, in class folders."""
    return write_png_folders(tmp_path_factory.mktemp("pngs"), n_train_per_class=100, n_val_per_class=30)


def test_image_folder_project_trains_on_png_folders_and_evaluates(
    render: Render, png_digits: Path, tmp_path: Path
) -> None:
    project = render(dataset="image_folder")
    common = ["-o", f"data_loader.args.data_dir={png_digits}", "-o", "n_gpu=0"]
    trained = run_python(
        project,
        "train.py",
        "-c",
        "config.json",
        "--bs",
        "32",
        "-o",
        "trainer.epochs=6",
        "-o",
        "trainer.verbosity=1",
        "--run-id",
        "png",
        *common,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    run_dir = project / "saved" / "ImageFolder_CNN" / "png"
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    rows = [dict(zip(lines[0].split(","), line.split(","), strict=True)) for line in lines[1:]]
    print("image_folder val_accuracy by epoch:", [row["val_accuracy"] for row in rows])
    best = min(rows, key=lambda row: float(row["val_loss"]))  # what model_best.pth holds (monitor: min val_loss)
    assert len(rows) == 6 and float(best["val_accuracy"]) >= 0.75
    evaluated = run_python(project, "test.py", "-r", str(run_dir / "model_best.pth"), *common)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    accuracy = float(next(line for line in evaluated.stdout.splitlines() if line.startswith("accuracy: ")).split()[1])
    assert abs(accuracy - float(best["val_accuracy"])) < 1e-6  # without a test folder, test.py evaluates val
