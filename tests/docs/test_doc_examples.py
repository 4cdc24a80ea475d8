"""The code blocks of README.md and docs/ run, against a real embedded exchange.

Every fenced block tagged ``python``, ``bash`` or ``sh`` runs, unless the line before it
(blank lines aside) is an HTML comment saying why it cannot run here::

    <!-- doc-test: skip (needs a GPU) -->

so a new block that breaks fails this test until it is fixed or marked. Untagged blocks are
output, diagrams and layouts, and are not run. Two more markers:

- ``<!-- doc-test: continues -->``: a python block that goes on from the file's previous
  python block (it uses its names): the two run as one program.
- a python block whose first line is a ``# name.py`` comment is also saved as ``name.py``
  in the working directory, for later shell blocks (``crucible run app.py``).

Blocks run file by file, in order, in a scratch directory (with ``examples/`` linked in), one
embedded exchange per file (``crucible up --detach`` with a scratch ``CRUCIBLE_HOME``; this
machine is its one host, GPUs or not), each block in its own process: a python block with
``crucible run`` when it defines a local entrypoint, and with ``python`` when it does not or
has a ``__main__`` guard; a shell block with ``bash -e``.

Separately, every ``crucible ...`` command the docs show (in any code block, run or skipped,
and in inline code) must name a real command and only options it has."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness import free_port

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RUN = ("python", "bash", "sh")
_FENCE = re.compile(r"^```(\w*)\s*$")
_MARK = re.compile(r"^<!--\s*doc-test:\s*(skip|continues)\s*(?:\((.+)\))?\s*-->\s*$")
_SAVE_AS = re.compile(r"^#\s*([\w\-]+\.py)\s*$")
BLOCK_TIMEOUT_S = 180


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    mark: str = ""  # "", "skip" or "continues"
    reason: str = ""
    parts: list[Block] = field(default_factory=list)  # continuation blocks joined to it

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks_of(path: Path) -> list[Block]:
    """The fenced blocks of a markdown file, with their doc-test marks."""
    lines = path.read_text().splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        prev = i - 1
        while prev >= 0 and not lines[prev].strip():
            prev -= 1
        mark = _MARK.match(lines[prev].strip()) if prev >= 0 else None
        out.append(
            Block(
                path=path,
                line=i + 1,
                lang=m.group(1),
                code="\n".join(lines[i + 1 : end]) + "\n",
                mark=mark.group(1) if mark else "",
                reason=(mark.group(2) or "").strip() if mark else "",
            )
        )
        i = end + 1
    return out


def runnable(path: Path) -> list[Block]:
    """The blocks to run, continuations joined to the block they continue."""
    out: list[Block] = []
    last_python: Block | None = None
    for b in blocks_of(path):
        if b.lang not in RUN or b.mark == "skip":
            continue
        if b.mark == "continues":
            assert b.lang == "python" and last_python is not None, (
                f"{b.where}: `doc-test: continues` needs an earlier python block to go on from"
            )
            last_python.parts.append(b)
            continue
        out.append(b)
        if b.lang == "python":
            last_python = b
    return out


def test_every_mark_is_well_formed() -> None:
    """A skip says why; a mark is only ever one of the known ones."""
    for path in DOCS:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "doc-test" not in line:
                continue
            m = _MARK.match(line.strip())
            assert m is not None, f"{path.relative_to(ROOT)}:{n}: unknown doc-test mark {line!r}"
            if m.group(1) == "skip":
                assert m.group(2), f"{path.relative_to(ROOT)}:{n}: say why the block is skipped"


@dataclass
class Session:
    """One doc file's scratch directory and embedded exchange."""

    cwd: Path
    env: dict[str, str]

    def run(self, args: list[str], what: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            args,
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, (
            f"{what} failed (exit {done.returncode}); fix it or mark it "
            f"`<!-- doc-test: skip (why) -->`\n--- stdout\n{done.stdout[-4000:]}"
            f"\n--- stderr\n{done.stderr[-4000:]}"
        )
        return done


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    cwd = tmp_path / "work"
    cwd.mkdir()
    (cwd / "examples").symlink_to(ROOT / "examples")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRUCIBLE_")}
    bin_dir = str(Path(sys.executable).parent)
    env.update(
        CRUCIBLE_HOME=str(tmp_path / "home"),
        CRUCIBLE_PORT=str(free_port()),
        PATH=bin_dir + os.pathsep + env.get("PATH", ""),
        PYTHONPATH=str(ROOT / "src"),
        COLUMNS="100",
    )
    s = Session(cwd, env)
    crucible = [sys.executable, "-m", "crucible.cli.main"]
    s.run([*crucible, "up", "--detach"], "crucible up --detach")
    try:
        yield s
    finally:
        subprocess.run(
            [*crucible, "down"], cwd=cwd, env=env, capture_output=True, timeout=60, check=False
        )


def run_block(s: Session, b: Block, index: int) -> None:
    if b.lang == "python":
        code = "\n".join([b.code, *(p.code for p in b.parts)])
        first = b.code.splitlines()[0] if b.code.strip() else ""
        saved = _SAVE_AS.match(first)
        name = saved.group(1) if saved else f"doc_block_{index}.py"
        (s.cwd / name).write_text(code)
        if "local_entrypoint" in code:
            s.run([sys.executable, "-m", "crucible.cli.main", "run", name], b.where)
        if "local_entrypoint" not in code or '__name__ == "__main__"' in code:
            s.run([sys.executable, name], b.where)
    else:
        script = s.cwd / f"doc_block_{index}.sh"
        script.write_text(b.code)
        s.run(["bash", "-e", str(script)], b.where)


def _with_blocks() -> list[Path]:
    return [p for p in DOCS if runnable(p)]


@pytest.mark.parametrize("path", _with_blocks(), ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_blocks_run(path: Path, session: Session) -> None:
    for index, block in enumerate(runnable(path)):
        run_block(session, block, index)


_INLINE = re.compile(r"`(crucible [^`]+)`")


def _command_lines() -> list[tuple[str, str]]:
    """Every `crucible ...` command the docs show, in code blocks (run or not) and inline
    code, with where it is."""
    out: list[tuple[str, str]] = []
    for path in DOCS:
        for b in blocks_of(path):
            if b.lang not in RUN:
                continue
            for n, raw in enumerate(b.code.splitlines(), b.line + 1):
                line = raw.split(" #", 1)[0].strip().rstrip("\\").strip()
                for part in re.split(r"\s*(?:&&|;|\|)\s*", line):
                    if part.startswith("crucible "):
                        out.append((f"{path.relative_to(ROOT)}:{n}", part))
        for n, text in enumerate(path.read_text().splitlines(), 1):
            for m in _INLINE.finditer(text):
                out.append((f"{path.relative_to(ROOT)}:{n}", m.group(1)))
    return out


def test_every_cli_command_in_the_docs_exists_with_its_options() -> None:
    """Commands and options the docs show are the CLI's (checked against the real Typer
    app, without running anything)."""
    import typer

    from crucible.cli.main import app

    root = typer.main.get_command(app)
    problems = []
    for where, line in _command_lines():
        words = line.split()[1:]
        cmd: Any = root
        ctx = typer.Context(root)
        rest = list(words)
        while rest and hasattr(cmd, "get_command"):
            sub = cmd.get_command(ctx, rest[0])
            if sub is None and getattr(cmd, "default_command", None):
                sub, rest = cmd.get_command(ctx, cmd.default_command), ["", *rest]
            if sub is None:
                break
            cmd, rest = sub, rest[1:]
        if cmd is root:
            if words and not words[0].startswith("-") and words[0] not in ("...", "COMMAND"):
                problems.append(f"{where}: no command `crucible {words[0]}`")
            continue
        if (cmd.context_settings or {}).get("ignore_unknown_options"):
            continue  # `crucible run FILE -- ARGS`: the rest is the entrypoint's
        known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
        for w in rest:
            opt = w.split("=", 1)[0]
            if opt.startswith("--") and opt != "--" and opt not in known:
                problems.append(f"{where}: `{line}`: {cmd.name} has no option {opt}")
    assert problems == []
