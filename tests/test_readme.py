"""README.md stays true: its two commands, its pipeline table, its links and paths, its install notes.

* "The two commands" holds exactly the demo command and the test command, and `.ci/run` runs that test command
  (and installs the same extras).
* Every command of the pipeline table is a console script of pyproject.toml, and every `--flag` it uses appears
  in that program's `--help` (a subcommand's own `--help` for `scada-runtime run ...`). The programs run as
  subprocesses of this interpreter through their entry points, all at once.
* Every relative link in README.md and docs/*.md points to a file or folder of the repository, and every
  `configs/...` path they mention exists.
* The base-install paragraph names exactly pyproject's `dependencies`, and the trainer paragraph exactly the
  commands behind `scada_tcn.extras`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import pytest

from scada_tcn.extras import missing_train_modules

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
DEMO_COMMAND = 'pip install -e ".[train,dev]" && scada-demo'
TEST_COMMAND = "python -m pytest -q -n 2 --dist loadfile"
MAX_README_LINES = 250  # a newcomer's page; details go to docs/

# Runs an entry point "module:function" under a program name: python -c ENTRY <module:function> <name> args...
_ENTRY = (
    "import importlib, sys\n"
    "target = sys.argv.pop(1)\n"
    "sys.argv[0] = sys.argv.pop(1)\n"
    "module, attr = target.split(':')\n"
    "sys.exit(getattr(importlib.import_module(module), attr)())\n"
)
_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_CONFIG_PATH = re.compile(r"(?<![\w/.-])configs/[\w./-]*")


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _section(text: str, title: str) -> str:
    """The body of the level-2 section whose heading starts with `title`, up to the next level-2 heading."""
    m = re.search(rf"^## {re.escape(title)}[^\n]*\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert m, f"README has no section '## {title}'"
    return m.group(1)


def _code_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"^```[\w-]*\n(.*?)^```", text, flags=re.M | re.S)]


def _paragraph(text: str, needle: str) -> str:
    found = [p for p in re.split(r"\n\s*\n", text) if needle in p]
    assert len(found) == 1, f"expected one README paragraph with {needle!r}, found {len(found)}"
    return found[0]


@cache
def _pyproject() -> dict:
    return tomllib.loads(_text(ROOT / "pyproject.toml"))


def _scripts() -> dict[str, str]:
    return _pyproject()["project"]["scripts"]


def _table_commands() -> list[str]:
    """The backticked commands of the pipeline table's `command` column, in table order."""
    rows = [line for line in _section(_text(README), "The pipeline").splitlines() if line.startswith("|")]
    commands = []
    for row in rows[2:]:  # header and separator first
        cells = [c.strip() for c in row.strip().strip("|").split(" | ")]
        commands += re.findall(r"`([^`]+)`", cells[1])
    return commands


def _program_and_sub(command: str) -> tuple[str, str | None]:
    """`scada-runtime run --bundle B` -> ("scada-runtime", "run"); a trainer command has no subcommand."""
    words = command.split()
    sub = words[1] if len(words) > 1 and re.fullmatch(r"[a-z][a-z-]*", words[1]) else None
    return words[0], sub


def _help(program: str, sub: str | None) -> subprocess.CompletedProcess:
    args = [sub, "--help"] if sub else ["--help"]
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    return subprocess.run(
        [sys.executable, "-c", _ENTRY, _scripts()[program], program, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@cache
def _helps() -> dict[tuple[str, str | None], subprocess.CompletedProcess]:
    """`--help` of every program of the table (and of its subcommand, if any), run concurrently."""
    keys: set[tuple[str, str | None]] = set()
    for command in _table_commands():
        program, sub = _program_and_sub(command)
        if program in _scripts():
            keys |= {(program, None), (program, sub)}
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = dict(zip(sorted(keys, key=str), pool.map(lambda k: _help(*k), sorted(keys, key=str))))
    return results


# ------------------------------------------------------------------------------------------- the two commands
def test_the_two_commands_are_the_readme_s_only_code_blocks_there():
    assert _code_blocks(_section(_text(README), "The two commands")) == [DEMO_COMMAND, TEST_COMMAND]


def test_ci_runs_exactly_the_readme_test_command_after_the_same_install():
    ci = [line.strip() for line in _text(ROOT / ".ci" / "run").splitlines()]
    ci = [line for line in ci if line and not line.startswith("#")]
    readme_test = _code_blocks(_section(_text(README), "The two commands"))[1]
    assert [line for line in ci if "pytest" in line] == [readme_test]
    install = [line for line in ci if " install " in line and "pip" in line]
    extras = re.search(r'-e "([^"]+)"', DEMO_COMMAND).group(1)
    assert install and all(f'-e "{extras}"' in line for line in install), install


def test_readme_names_the_pinned_torch_of_the_train_extra():
    torch_pins = [d for d in _pyproject()["project"]["optional-dependencies"]["train"] if d.startswith("torch")]
    assert torch_pins == ["torch==2.13.0"]
    assert "`torch==2.13.0` is pinned in the `train` extra" in _text(README)


def test_base_install_paragraph_lists_exactly_the_base_dependencies():
    para = _paragraph(_text(README), "`pip install .`").lower()
    base = [re.split(r"[<>=!~ \[]", d, maxsplit=1)[0].lower() for d in _pyproject()["project"]["dependencies"]]
    assert len(base) >= 6
    for name in base:
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", para), f"base dependency {name} not named"
    extras = _pyproject()["project"]["optional-dependencies"]["train"]
    for dep in extras:
        name = re.split(r"[<>=!~ \[]", dep, maxsplit=1)[0].lower()
        if name not in base:
            assert not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", para), f"{name} is not a base dependency"


def test_trainer_paragraph_names_exactly_the_commands_that_need_the_extra():
    para = _paragraph(_text(README), "need the `[train]` extra")
    named = set(re.findall(r"scada-[a-z]+", para)) - {"scada-tcn"}
    need_extra = {name for name, target in _scripts().items() if target.startswith("scada_tcn.extras:")}
    assert len(need_extra) >= 9 and "scada-runtime" not in need_extra
    assert named == need_extra


# ------------------------------------------------------------------------------------------ the pipeline table
def test_pipeline_table_covers_every_console_script_but_the_demo():
    commands = _table_commands()
    assert len(commands) >= 10
    programs = {_program_and_sub(c)[0] for c in commands}
    assert programs <= set(_scripts()), f"not console scripts: {programs - set(_scripts())}"
    assert set(_scripts()) - programs == {"scada-demo"}  # the demo is the first of the two commands


@pytest.mark.parametrize("command", _table_commands())
def test_pipeline_table_command_and_flags_exist(command):
    program, sub = _program_and_sub(command)
    assert program in _scripts(), f"{program} is not in [project.scripts]"
    if _scripts()[program].startswith("scada_tcn.extras:") and missing_train_modules():
        pytest.skip(f"{program} --help lists its options only with the [train] extra ({missing_train_modules()})")
    top = _helps()[(program, None)]
    assert top.returncode == 0, top.stderr[-1000:]
    assert "usage" in top.stdout.lower()
    if sub is not None:
        choices = re.search(r"\{([a-z,-]+)\}", top.stdout)
        assert choices and sub in choices.group(1).split(","), f"{program} has no subcommand {sub!r}"
    res = _helps()[(program, sub)]
    assert res.returncode == 0, res.stderr[-1000:]
    for flag in _FLAG.findall(command):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", res.stdout), (
            f"`{command}`: {program}{' ' + sub if sub else ''} --help does not list {flag}"
        )


# ------------------------------------------------------------------------------------------ links and paths
@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(doc):
    links = _LINK.findall(_text(doc))
    assert links, f"{doc.name} links nowhere (every page links to the others)"
    missing = []
    for target in links:
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor of this page
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        if not (path.exists() and path.is_relative_to(ROOT)):
            missing.append(target)
    assert missing == [], f"{doc.name}: links to missing files"


def test_readme_links_the_docs():
    links = set(_LINK.findall(_text(README)))
    assert {"docs/results.md", "docs/deploy.md", "docs/pipeline.md"} <= links
    assert {"results.md", "deploy.md", "pipeline.md"} <= {p.name for p in DOCS}


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_configs_paths_exist(doc):
    paths = {p.rstrip(".") for p in _CONFIG_PATH.findall(_text(doc))}
    if doc == README:
        assert "configs/config.yaml" in paths and "configs/data/la_haute_borne.yaml" in paths
    assert [p for p in sorted(paths) if not (ROOT / p).exists()] == []


def test_readme_stays_a_short_page():
    assert len(_text(README).splitlines()) <= MAX_README_LINES
