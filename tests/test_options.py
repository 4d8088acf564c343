"""The option matrix: every value of every option (one at a time, defaults elsewhere) and
one all-non-default combination renders the exact file set, leaves no Jinja, passes ruff and
has parseable workflow files. The generated project's own suite runs, offline, once for each
set of answers whose code differs: the default, and all non-defaults together
(`dataset=image_folder`, `tensorboard=no`, `sweeps=no`, `mlflow=yes`, ...). `license` and
`github_actions` change only LICENSE, README.md and .github/ (checked byte for byte), so their
code is the default's; the generated tests that read README.md run for them. A project
generated with `dataset=image_folder` trains on a folder of real PNG digits, test.py evaluates
it, predict.py's predictions on the same images have test.py's accuracy, and export.py writes
ONNX and .pt2 files checked against the model."""

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import DEFAULTS, EXPECTED_FILES, MLFLOW_FILES, SWEEP_FILES, Render, expected_files, files_of, run_python

pytestmark = pytest.mark.slow

OPTIONS = ("dataset", "tensorboard", "github_actions", "license", "sweeps", "mlflow")
ONE_AT_A_TIME = [{option: value} for option in OPTIONS for value in DEFAULTS[option][1:]]
ALL_NON_DEFAULT = {
    "dataset": "image_folder",
    "tensorboard": "no",
    "github_actions": "no",
    "license": "none",
    "sweeps": "no",
    "mlflow": "yes",
}
VARIANTS = [*ONE_AT_A_TIME, ALL_NON_DEFAULT]
# The generated suite runs on the defaults and on every non-default answer together: between
# them every version of every file whose Python code, configs or requirements an answer changes
# (the image_folder loader, the TensorBoard-less logger, no sweeps, MLflow). Single answers are rendered,
# file-checked and linted below; image_folder also trains in test_image_folder_project_... .
SUITE_VARIANTS = [{}, ALL_NON_DEFAULT]
CODE_OPTIONS = ("dataset", "tensorboard", "sweeps", "mlflow")
# What license and github_actions may change; everything else must be the default project's.
NOT_CODE = {"LICENSE", "README.md", ".cookiecutter.json", ".github/workflows/tests.yml"}
# The generated tests that read a file of NOT_CODE (the README's links).
TESTS_OF_NOT_CODE = ("tests/test_docs.py",)


def variant_id(answers: dict[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in answers.items()) or "defaults"


def test_every_non_default_value_is_in_the_matrix() -> None:
    assert {(option, value) for answers in ONE_AT_A_TIME for option, value in answers.items()} == {
        (option, value) for option in OPTIONS for value in DEFAULTS[option][1:]
    }
    assert all(isinstance(DEFAULTS[option], list) and len(DEFAULTS[option]) >= 2 for option in OPTIONS)
    # every option that may change code has its value in a suite variant
    assert {(option, value) for answers in SUITE_VARIANTS for option, value in answers.items()} >= {
        (option, value) for option in CODE_OPTIONS for value in DEFAULTS[option][1:]
    }
    assert set(OPTIONS) - set(CODE_OPTIONS) == {"github_actions", "license"}


def run_generated_tests(project: Path, *tests: str) -> None:
    # -P: like a bare `pytest`, without the current folder on sys.path
    result = run_python(project, "-P", "-m", "pytest", "-p", "no:cacheprovider", *tests)
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


@pytest.mark.parametrize("answers", VARIANTS, ids=[variant_id(answers) for answers in VARIANTS])
def test_variant_renders_the_exact_files_and_lints(rendered: Render, answers: dict[str, str]) -> None:
    project = rendered(**answers)
    assert files_of(project) == expected_files(answers)
    for name in files_of(project):
        text = (project / name).read_text()
        assert not any(marker in text for marker in ("{{", "{%", "{#")), name
    for workflow in (project / ".github").rglob("*.yml"):
        parsed: dict[Any, Any] = yaml.safe_load(workflow.read_text())
        steps = parsed["jobs"]["tests"]["steps"]
        assert any(step.get("run") == "pytest" for step in steps) and parsed[True] is not None  # `on:` is YAML's True
        setup = next(step["with"] for step in steps if step.get("uses", "").startswith("actions/setup-python@"))
        assert setup["cache"] == "pip"  # keyed on every requirements file
        keys = ["requirements.txt", "requirements-export.txt", "requirements-dev.txt"]
        assert setup["cache-dependency-path"].split() == keys
    requirements = (project / "requirements.txt").read_text()
    # export.py's ONNX packages: not for every user, but for the tests
    assert "onnx" not in requirements and "-r requirements-export.txt" in (project / "requirements-dev.txt").read_text()
    exporting = (project / "requirements-export.txt").read_text()
    assert all(f"\n{name}>=" in exporting for name in ("onnx", "onnxscript", "onnxruntime"))
    assert ("tensorboard" in requirements) == (answers.get("tensorboard", "yes") == "yes")
    assert ("optuna" in requirements) == (answers.get("sweeps", "yes") == "yes")
    assert ("mlflow>=" in requirements) == (answers.get("mlflow", "no") == "yes")
    assert "matplotlib>=" in requirements  # report.py's plots, in every variant
    linted = run_python(project, "-m", "ruff", "check", "--no-cache", ".", timeout=120)
    assert linted.returncode == 0, linted.stdout[-3000:]


@pytest.mark.parametrize("answers", SUITE_VARIANTS, ids=[variant_id(answers) for answers in SUITE_VARIANTS])
def test_variant_passes_its_own_tests(render: Render, answers: dict[str, str]) -> None:
    run_generated_tests(render(**answers))


NON_CODE_VARIANTS = [
    answers for answers in VARIANTS if answers not in SUITE_VARIANTS and not set(answers) & set(CODE_OPTIONS)
]


@pytest.mark.parametrize("answers", NON_CODE_VARIANTS, ids=[variant_id(answers) for answers in NON_CODE_VARIANTS])
def test_license_and_workflow_answers_change_no_code(render: Render, rendered: Render, answers: dict[str, str]) -> None:
    """Their code is byte for byte the default's, whose suite runs above; the tests that read
    what they change run here (in a fresh render: running leaves __pycache__ folders)."""
    assert set(answers) <= {"license", "github_actions"}
    project, default = rendered(**answers), rendered()
    code = expected_files(answers) - NOT_CODE
    assert code == EXPECTED_FILES - NOT_CODE
    for name in sorted(code):
        assert (project / name).read_bytes() == (default / name).read_bytes(), name
    run_generated_tests(render(**answers), *TESTS_OF_NOT_CODE)


def test_sweeps_no_only_leaves_the_sweep_out(render: Render, rendered: Render) -> None:
    """sweeps=no: the default project without sweep.py, sweeps/, sweep.json, docs/sweeps.md and their
    test, byte for byte, and a README, docs and requirements that do not mention them; the
    generated test of the documents' links runs."""
    project, default = rendered(sweeps="no"), rendered()
    documents = {"README.md", *(name for name in files_of(project) if name.startswith("docs/"))}
    changed = {*documents, "requirements.txt", ".cookiecutter.json"}
    assert files_of(project) == EXPECTED_FILES - SWEEP_FILES
    for name in sorted(EXPECTED_FILES - SWEEP_FILES - changed):
        assert (project / name).read_bytes() == (default / name).read_bytes(), name
    for name in sorted({*documents, "requirements.txt"}):
        text = (project / name).read_text().lower()
        assert "sweep" not in text and "optuna" not in text, name
    for name in ("README.md", "requirements.txt"):
        assert "optuna" in (default / name).read_text().lower(), name
    run_generated_tests(render(sweeps="no"), *TESTS_OF_NOT_CODE)


def test_mlflow_yes_only_adds_the_tracker(render: Render, rendered: Render) -> None:
    """mlflow=yes: the default project plus logger/mlflow_tracker.py, its test and docs/tracking.md;
    every other file but the documents, config.json and requirements.txt byte for byte the
    default's (the code knows MLflow by the tracker's file); the generated test of the
    documents' links runs."""
    project, default = rendered(mlflow="yes"), rendered()
    documents = {"README.md", *(name for name in files_of(project) if name.startswith("docs/"))}
    changed = {*documents, "config.json", "requirements.txt", ".cookiecutter.json"}
    assert files_of(project) == EXPECTED_FILES | MLFLOW_FILES
    for name in sorted(EXPECTED_FILES - changed):
        assert (project / name).read_bytes() == (default / name).read_bytes(), name
    for name in ("README.md", "config.json", "requirements.txt", "docs/config.md", "docs/run-directory.md"):
        assert "mlflow" in (project / name).read_text().lower(), name
    without_sweeps = rendered(mlflow="yes", sweeps="no")  # its tracking page names no sweep either
    assert "sweep" not in (without_sweeps / "docs" / "tracking.md").read_text().lower()
    run_generated_tests(render(mlflow="yes"), *TESTS_OF_NOT_CODE)


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

    # predict.py over the same images, each class read from its folder: test.py's accuracy
    predictions = tmp_path / "predictions.csv"
    checkpoint = str(run_dir / "model_best.pth")
    predicted = run_python(project, "predict.py", "-r", checkpoint, str(png_digits / "val"), "--out", str(predictions))
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    with predictions.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 300 and {row["class"] for row in rows} <= {str(digit) for digit in range(10)}
    right = sum(row["class"] == Path(row["path"]).parent.name for row in rows)
    assert abs(right / len(rows) - accuracy) < 1e-6

    # export.py checks each export on the val/ images against the model before it writes it
    for fmt in ("onnx", "pt2"):
        out = tmp_path / f"model.{fmt}"
        exported = run_python(project, "export.py", "-r", checkpoint, "--format", fmt, "--out", str(out), *common)
        assert exported.returncode == 0, exported.stderr[-3000:]
        assert "on batches of 1 and 8 inputs of the test split (ImageFolderDataLoader)" in exported.stdout
        described = json.loads(out.with_name(f"model.{fmt}.json").read_text())
        assert described["input"]["shape"] == ["batch", 3, 32, 32] and described["classes"] == list("0123456789")
        assert out.stat().st_size > 10_000 and described["verified"]["max_difference"] <= 1e-4
