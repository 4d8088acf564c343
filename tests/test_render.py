"""Rendering: the exact files, no leftover Jinja, plain-Python template files, the answers
recorded, the license option."""

import ast
import json
from pathlib import Path

import pytest

from conftest import DEFAULTS, EXPECTED_FILES, TEMPLATE, Render, files_of, run_python

JINJA_MARKERS = ("{{", "{%", "{#")


def test_defaults_render_exactly_the_expected_files(rendered: Render) -> None:
    project = rendered()
    assert project.name == "mnist_classifier"
    assert files_of(project) == EXPECTED_FILES


def test_no_jinja_is_left_in_any_file(rendered: Render) -> None:
    project = rendered(project_name="Jinja Check", description="tricky {braces} and 'quotes'")
    for name in files_of(project):
        text = (project / name).read_text()
        for marker in JINJA_MARKERS:
            assert marker not in text, f"{name} still holds {marker!r}"


def test_template_python_files_are_plain_python_before_rendering() -> None:
    """Option differences are whole files that the post-generation hook keeps, moves or removes,
    or values in JSON: every template .py parses as it is and holds no Jinja."""
    source = TEMPLATE / "{{cookiecutter.project_slug}}"
    names = {path.relative_to(source).as_posix() for path in source.rglob("*.py")}
    assert len(names) > 50
    for name in sorted(names):
        text = (source / name).read_text()
        ast.parse(text, filename=name)
        assert not [marker for marker in JINJA_MARKERS if marker in text], f"{name} holds Jinja"


def test_answers_are_recorded_for_later_updates(rendered: Render) -> None:
    project = rendered(project_name="Digit Reader", author_name="Ada", license="BSD-3-Clause")
    answers = json.loads((project / ".cookiecutter.json").read_text())["cookiecutter"]  # replay-file layout
    assert answers["project_name"] == "Digit Reader"
    assert answers["project_slug"] == "digit_reader"
    assert answers["author_name"] == "Ada"
    assert answers["license"] == "BSD-3-Clause"
    assert not any(key.startswith("_output") for key in answers)  # no paths of this machine
    assert "Digit Reader" in (project / "README.md").read_text()
    assert 'name = "digit_reader"' in (project / "pyproject.toml").read_text()


@pytest.mark.parametrize(
    ("license_name", "expected"),
    [
        ("MIT", "MIT License"),
        ("BSD-3-Clause", "Redistribution and use in source and binary forms"),
        ("Apache-2.0", "Apache License, Version 2.0"),
        ("none", None),
    ],
)
def test_license_option_writes_the_right_file(rendered: Render, license_name: str, expected: str | None) -> None:
    project = rendered(license=license_name, author_name="Ada Lovelace")
    if expected is None:
        assert not (project / "LICENSE").exists()
        assert files_of(project) == EXPECTED_FILES - {"LICENSE"}
    else:
        text = (project / "LICENSE").read_text()
        assert expected in text and "Ada Lovelace" in text


def test_license_choices_are_the_documented_ones() -> None:
    assert DEFAULTS["license"] == ["MIT", "BSD-3-Clause", "Apache-2.0", "none"]


def test_generated_code_passes_ruff(rendered: Render) -> None:
    project = rendered()
    result = run_python(project, "-m", "ruff", "check", "--no-cache", ".", timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]


# The only place a tensorboard=no project may name TensorBoard: the config key that victoresque
# configs carry (accepted, only false).
TENSORBOARD_ROWS_KEPT = ("| `trainer.tensorboard` |",)


def tensorboard_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "tensorboard" in line.lower()]


def documents(project: Path) -> str:
    """README.md and every page of docs/, one after another."""
    return "\n".join(path.read_text() for path in [project / "README.md", *sorted((project / "docs").glob("*.md"))])


def test_readme_of_the_default_project_describes_tensorboard(rendered: Render) -> None:
    project = rendered()
    readme = (project / "README.md").read_text()
    assert "## TensorBoard" in readme and "tensorboard --logdir saved/" in readme
    assert len(tensorboard_lines(documents(project))) >= 8  # run directory, resume, stopping, dry run, ...


def test_a_project_without_tensorboard_mentions_it_only_where_it_must(rendered: Render) -> None:
    project = rendered(tensorboard="no")
    readme = tensorboard_lines(documents(project))
    assert [line for line in readme if not line.startswith(TENSORBOARD_ROWS_KEPT)] == []
    assert [line.split("|")[1].strip() for line in readme] == ["`trainer.tensorboard`"]
    assert "accepted for victoresque configs" in readme[0]
    for name in (
        "requirements.txt",
        "requirements-dev.txt",
        ".gitignore",
        "pyproject.toml",
        ".github/workflows/tests.yml",
        ".cookiecutter.json",
    ):
        lines = [
            line for line in tensorboard_lines((project / name).read_text()) if line.strip() != '"tensorboard": "no"'
        ]  # the recorded answer itself
        assert lines == [], f"{name}: {lines}"


def mlflow_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "mlflow" in line.lower()]


def test_a_project_without_mlflow_never_names_it(rendered: Render) -> None:
    """mlflow=no (the default): no MLflow key, requirement or word in the documents and files
    a user reads; only the recorded answer, and the plain-Python files that look for
    logger/mlflow_tracker.py, know the option."""
    project = rendered()
    assert mlflow_lines(documents(project)) == []
    assert "mlflow" not in json.loads((project / "config.json").read_text())["trainer"]
    for name in ("config.json", "requirements.txt", "requirements-dev.txt", ".gitignore", "pyproject.toml"):
        assert mlflow_lines((project / name).read_text()) == [], name
    assert [line.strip() for line in mlflow_lines((project / ".cookiecutter.json").read_text())] == ['"mlflow": "no",']


def test_an_mlflow_project_describes_tracking_where_a_user_looks(rendered: Render) -> None:
    project = rendered(mlflow="yes")
    readme = (project / "README.md").read_text()
    compare = readme[readme.index("## Compare runs") : readme.index("## Several GPUs")]
    assert "mlflow ui --backend-store-uri sqlite:///saved/mlflow.db" in compare
    assert "| [docs/tracking.md](docs/tracking.md) |" in readme
    config = json.loads((project / "config.json").read_text())["trainer"]["mlflow"]
    assert config == {"enabled": True, "tracking_uri": None, "experiment": None, "log_checkpoints": False}
    assert "mlflow>=2.8" in (project / "requirements.txt").read_text().splitlines()
    assert "`mlflow_run.json`" in (project / "docs" / "run-directory.md").read_text()
    assert "| `trainer.mlflow.tracking_uri` |" in (project / "docs" / "config.md").read_text()
