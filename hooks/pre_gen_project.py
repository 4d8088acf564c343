"""Pre-generation hook: refuse bad answers before anything is written.

Cookiecutter renders this file with Jinja first: the answers below become a JSON object
(``tojson`` escapes quotes, backslashes and line breaks) inside a raw string, so no answer can
break this script, and the file is valid Python (lintable) before it is rendered too. On a bad
answer it prints one line on stderr (which answer, its value, the rule) and exits 1;
cookiecutter then removes the half-made output folder.
"""

from __future__ import annotations

import json
import keyword
import re
import sys

ANSWERS: dict[str, str] = json.loads(r"""
{
    "project_name": {{ cookiecutter.project_name | tojson }},
    "project_slug": {{ cookiecutter.project_slug | tojson }},
    "python_version": {{ cookiecutter.python_version | tojson }},
    "author_name": {{ cookiecutter.author_name | tojson }},
    "description": {{ cookiecutter.description | tojson }}
}
""")

MIN_PYTHON = (3, 10)  # the generated code uses `X | Y` type unions at run time

# A folder named like a module that the generated project imports (or one of its own top-level
# modules) would shadow it when Python runs next to that folder.
PACKAGES_IMPORTED = {"torch", "torchvision", "numpy", "tqdm", "tensorboard", "pytest"}
PROJECT_MODULES = {"train", "test", "tests", "parse_config", "config_schema", "base", "model"}
PROJECT_PACKAGES = {"data_loader", "trainer", "logger", "utils", "engine"}
STDLIB_MODULES = set(sys.stdlib_module_names)
RESERVED = frozenset(PACKAGES_IMPORTED | PROJECT_MODULES | PROJECT_PACKAGES | STDLIB_MODULES)

IDENTIFIER_RULE = "use ASCII letters, digits and underscores, not starting with a digit"


def check_slug(slug: str) -> str | None:
    """Return why ``slug`` cannot be the project's folder/package name, or None if it can."""
    if not slug:
        return f"is empty ({IDENTIFIER_RULE})"
    if not (slug.isascii() and slug.isidentifier()):
        return f"is not a valid Python identifier ({IDENTIFIER_RULE})"
    if keyword.iskeyword(slug):
        return "is a Python keyword (choose another name, e.g. 'my_project')"
    if slug.lower() in RESERVED:
        return (
            "would shadow a module of the same name that the project or Python imports "
            f"(choose another name, e.g. '{slug}_project')"
        )
    return None


def check_name(name: str) -> str | None:
    """Return why ``name`` cannot be the human-readable project name, or None if it can."""
    if not name.strip():
        return "is empty (give a human-readable name, e.g. 'MNIST Classifier')"
    return check_one_line(name)


def check_python_version(version: str) -> str | None:
    """Return why ``version`` is not a usable lowest Python version, or None if it is."""
    match = re.fullmatch(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)", version)
    if match is None or (int(match[1]), int(match[2])) < MIN_PYTHON:
        return "is not of the form MAJOR.MINOR with version 3.10 or newer (e.g. '3.11')"
    return None


def check_one_line(text: str) -> str | None:
    """Return why ``text`` cannot go on one line of LICENSE, README and pyproject.toml, or None."""
    if any(not char.isprintable() for char in text):
        return "contains a line break or another control character (keep it to one line)"
    return None


CHECKS = {
    "project_name": check_name,
    "project_slug": check_slug,
    "python_version": check_python_version,
    "author_name": check_one_line,
    "description": check_one_line,
}


def main() -> int:
    """Check every answer; print the first problem found and return 1, else return 0."""
    for answer, check in CHECKS.items():
        value = ANSWERS[answer]
        problem = check(value)
        if problem is not None:
            print(f"error: {answer} {value!r} {problem}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
