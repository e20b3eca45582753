"""The README cannot rot: its runnable examples (and those of docs/) run, and it names every
public thing.

A fenced ``python`` block whose first line is ``# runnable`` is run in a fresh interpreter with
``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` pointed at a running emulator, exactly as a reader
would run it against the real API with those variables set.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import oaiws
from oaiws import errors
from oaiws.testing import Emulator

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
RUNNABLE = "# runnable"

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _blocks(language: str, text: str = README) -> list[str]:
    return [body for lang, body in _FENCE.findall(text) if lang == language]


def _runnable() -> list[Any]:
    params = []
    pages = [("README", README)] + [
        (page.stem, page.read_text(encoding="utf-8"))
        for page in sorted((ROOT / "docs").glob("*.md"))
    ]
    for name, text in pages:
        for body in _blocks("python", text):
            if body.startswith(RUNNABLE + "\n"):
                first_code = next(line for line in body.splitlines()[1:] if line.strip())
                prefix = "" if name == "README" else f"{name}: "
                params.append(pytest.param(body, id=prefix + first_code[:40]))
    return params


def _environment(emulator: Emulator) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("OPENAI_") and "proxy" not in name.lower()
    }
    env["OPENAI_BASE_URL"] = emulator.base_url
    env["OPENAI_API_KEY"] = emulator.api_key
    return env


def test_the_readme_has_runnable_examples() -> None:
    assert len(_runnable()) >= 5, "the quickstart, streaming, errors and conversation examples"


@pytest.mark.parametrize("code", _runnable())
def test_a_runnable_example_runs(code: str, oaiws_emulator: Emulator, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=_environment(oaiws_emulator),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"the example failed:\n{code}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    if "Emulator(" not in code:  # an example that starts its own emulator uses that one
        assert oaiws_emulator.stats()["requests"] > 0, "the example never reached the emulator"


def test_the_readme_opens_with_the_demo_and_the_test_command() -> None:
    commands = _blocks("sh")[:2]
    assert commands == [
        'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[emulator]" '
        "&& oaiws demo\n",
        'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]" '
        "&& python -m pytest\n",
    ]


@pytest.mark.parametrize("name", sorted(set(oaiws.__all__) - {"errors", "__version__"}))
def test_every_public_name_is_documented(name: str) -> None:
    assert f"`{name}`" in README or re.search(rf"\b{name}\b", README), name


def _option_rows() -> dict[str, str]:
    rows = {}
    for line in README.splitlines():
        match = re.match(r"\| `(\w+)` \| ([^|]*) \|", line)
        if match:
            rows.setdefault(match.group(1), match.group(2))
    return rows


_CLIENT_OPTIONS = [
    parameter
    for parameter in inspect.signature(oaiws.Client).parameters.values()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY
]


@pytest.mark.parametrize("option", _CLIENT_OPTIONS, ids=lambda p: p.name)
def test_every_client_option_is_in_the_table_with_its_true_default(
    option: inspect.Parameter,
) -> None:
    rows = _option_rows()
    assert option.name in rows, f"Client({option.name}=...) is not in the README's option table"
    shown = re.match(r"\s*`([^`]*)`", rows[option.name])
    assert shown is not None, f"the default of {option.name} is not shown in backticks"
    assert shown.group(1) == repr(option.default), (
        f"README says {option.name} defaults to {shown.group(1)}, the code says {option.default!r}"
    )


@pytest.mark.parametrize(
    "variable",
    [
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "OPENAI_ORG_ID",
        "OPENAI_PROJECT_ID",
        "OPENAI_WEBSOCKET_BASE_URL",
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "NO_PROXY",
    ],
)
def test_every_environment_variable_is_documented(variable: str) -> None:
    source = (ROOT / "oaiws" / "_config.py").read_text(encoding="utf-8")
    if variable.startswith("OPENAI_"):
        assert f'"{variable}"' in source, f"{variable} is no longer read: update this test"
    assert f"`{variable}`" in README


def test_every_pool_stat_is_explained(oaiws_emulator: Emulator) -> None:
    with oaiws.Client(api_key=oaiws_emulator.api_key, base_url=oaiws_emulator.base_url) as client:
        keys = list(client.pool_stats())
    missing = [key for key in keys if f"`{key}`" not in README]
    assert not missing, f"pool_stats() keys missing from the README: {missing}"


def _exception_classes() -> list[type[BaseException]]:
    found = {
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, errors.OAIWSError)
    }
    found |= {
        value
        for value in vars(oaiws).values()
        if isinstance(value, type) and issubclass(value, errors.OAIWSError)
    }
    return sorted(found, key=lambda cls: cls.__name__)


@pytest.mark.parametrize("cls", _exception_classes(), ids=lambda cls: cls.__name__)
def test_every_exception_is_in_the_hierarchy_and_the_table(cls: type[BaseException]) -> None:
    tree = README.split("## Exceptions", 1)[1].split("## Retries", 1)[0]
    name = cls.__name__
    assert re.search(rf"(^|[─ ]){name}\b", tree, re.MULTILINE), (
        f"{name} is missing from the hierarchy"
    )
    assert re.search(rf"^\| `{name}`", tree, re.MULTILINE), (
        f"{name} has no row saying when it is raised and whether it is retried"
    )
    for base in cls.__mro__[1:]:
        if base is errors.OAIWSError:
            break
        if issubclass(base, errors.OAIWSError):
            # The parent must appear above the child, indented less.
            child = re.search(rf"^(.*?){name}\b", tree, re.MULTILINE)
            parent = re.search(rf"^(.*?){base.__name__}\b", tree, re.MULTILINE)
            assert child is not None and parent is not None
            assert parent.start() < child.start(), f"{base.__name__} must come before {name}"
            assert len(parent.group(1)) < len(child.group(1)), f"{name} under {base.__name__}"
            break


def test_the_linked_documents_exist() -> None:
    for target in re.findall(r"\]\(((?:docs|examples)/[^)#]+)", README):
        assert (ROOT / target).exists() or target == "docs/performance.md", target
