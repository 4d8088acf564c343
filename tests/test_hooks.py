"""The pre-generation hook refuses bad answers with one line and leaves nothing on disk."""

import subprocess
import sys
from pathlib import Path

import pytest
from cookiecutter.exceptions import FailedHookException

from conftest import TEMPLATE, Render

BAD_ANSWERS = [
    ({"project_slug": "my-project"}, "project_slug 'my-project' is not a valid Python identifier"),
    ({"project_slug": "1project"}, "project_slug '1project' is not a valid Python identifier"),
    ({"project_slug": "my project"}, "project_slug 'my project' is not a valid Python identifier"),
    ({"project_slug": "class"}, "project_slug 'class' is a Python keyword"),
    ({"project_slug": "torch"}, "project_slug 'torch' would shadow a module"),
    ({"project_slug": "test"}, "project_slug 'test' would shadow a module"),
    ({"project_slug": "json"}, "project_slug 'json' would shadow a module"),
    ({"project_slug": "engine"}, "project_slug 'engine' would shadow a module"),  # the project's engine/
    ({"project_name": "   ", "project_slug": "fine"}, "project_name '   ' is empty"),
    ({"python_version": "3.9"}, "python_version '3.9' is not of the form MAJOR.MINOR with version 3.10"),
    ({"python_version": "three"}, "python_version 'three' is not of the form MAJOR.MINOR"),
    ({"project_name": "Two\nLines", "project_slug": "fine"}, "project_name 'Two\\nLines' contains a line break"),
    ({"author_name": "Ada\nLovelace"}, "author_name 'Ada\\nLovelace' contains a line break"),
    ({"description": "tab\there"}, "description 'tab\\there' contains a line break or another control character"),
]


@pytest.mark.parametrize(("answers", "message"), BAD_ANSWERS)
def test_bad_answers_are_refused_and_leave_nothing(
    render: Render, tmp_path: Path, answers: dict[str, str], message: str
) -> None:
    with pytest.raises(FailedHookException):
        render(**answers)
    leftovers = list((tmp_path / "rendered").rglob("*")) if (tmp_path / "rendered").exists() else []
    assert leftovers == []


def test_an_empty_slug_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "fresh"  # must not exist yet, or cookiecutter stops before the hook runs
    result = cookiecutter_cli(out, "project_slug=")
    assert result.returncode != 0
    assert "error: project_slug '' is empty" in result.stderr
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize(("answers", "message"), BAD_ANSWERS)
def test_the_refusal_is_one_line_naming_the_answer(tmp_path: Path, answers: dict[str, str], message: str) -> None:
    result = cookiecutter_cli(tmp_path / "out", *(f"{key}={value}" for key, value in answers.items()))
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in result.stderr


def cookiecutter_cli(out: Path, *answers: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "cookiecutter", "--no-input", "-o", str(out), str(TEMPLATE), *answers]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_good_answers_pass(render: Render) -> None:
    project = render(project_name="Café Digits", project_slug="cafe_digits", python_version="3.12")
    assert project.name == "cafe_digits" and (project / "train.py").is_file()
