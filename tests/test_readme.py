"""Every code block of the README runs, and the demo command works with nothing configured."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psycopg

from hotmesh_postgres.testing import test_dsn

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)( \w+)?\n(.*?)```", README, re.S)
PROGRAMS = [code for lang, tag, code in BLOCKS if lang == "python" and not tag]
PYTEST_FILES = [code for lang, tag, code in BLOCKS if lang == "python" and tag == " pytest"]
SQL = [code for lang, _, code in BLOCKS if lang == "sql"]
SHELL = [code for lang, _, code in BLOCKS if lang == "bash"]
TOML = [code for lang, _, code in BLOCKS if lang == "toml"]
DEMO_OUTPUT = "{'name': 'Ada', 'greetings': ['Hello, Ada!']}"
TWO_COMMANDS = [
    "pip install -e . && python examples/hello.py",
    'pip install -e ".[dev,bench,docs]" && python -m pytest',
]


def environment(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HOTMESH_DSN", "DATABASE_URL", "HOTMESH_BACKEND", "HOTMESH_APP")
    }
    # The `hotmesh` of this interpreter, not another install's.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return {**env, **extra}


def run(command: list[str], env: dict[str, str], cwd: Path = ROOT) -> str:
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_every_block_is_accounted_for() -> None:
    assert len(BLOCKS) == len(PROGRAMS) + len(PYTEST_FILES) + len(SQL) + len(SHELL) + len(TOML)
    assert PROGRAMS[0] in (ROOT / "examples" / "hello.py").read_text()  # the demo is verbatim


def test_blocks_run_in_order_against_postgres(tmp_path: Path) -> None:
    env = environment(HOTMESH_DSN=test_dsn())
    outputs = [run([sys.executable, "-c", code], env) for code in PROGRAMS]
    assert outputs[0].strip() == DEMO_OUTPUT
    assert any("time to stretch" in output for output in outputs)
    assert "charged o-1" in "".join(outputs) and "cancelled:" in "".join(outputs)
    assert outputs[-1].strip() == DEMO_OUTPUT  # the sync facade reads the same job
    for statement in SQL:  # the partial index, on the app the programs created
        with psycopg.connect(test_dsn(), autocommit=True) as conn:
            conn.execute(statement.encode())
    for block in SHELL:
        lines = [line for line in block.splitlines() if line.strip()]
        if any(command in block for command in TWO_COMMANDS):
            continue  # the two commands: the demo is run below, the tests by CI itself
        for line in lines:
            if line.startswith("export "):
                name, _, value = line.removeprefix("export ").partition("=")
                assert name == "HOTMESH_DSN" and value.startswith("postgresql://")
            elif line.startswith("hotmesh ") and " worker " in line:
                serve_until_sigterm(line, env)
            elif line.startswith("pytest --pyargs conformance"):
                run(
                    [
                        sys.executable,
                        "-m",
                        *line.replace("NAME", "memory").split()[:-1],
                        "--hotmesh-backend=memory",
                        "-q",
                        "-p",
                        "no:cacheprovider",
                    ],
                    env,
                    cwd=tmp_path,
                )
            else:
                run(["bash", "-c", line.split("  #")[0]], env)


def serve_until_sigterm(line: str, env: dict[str, str]) -> None:
    """A `hotmesh worker ...` line: it serves until SIGTERM, then exits 0."""
    worker = subprocess.Popen(
        ["bash", "-c", "exec " + line.split("  #")[0]],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert worker.stderr is not None
    first = worker.stderr.readline()
    assert "serves queue" in first, first + worker.stderr.read()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0, worker.stderr.read()


def test_pytest_example(tmp_path: Path) -> None:
    for number, code in enumerate(PYTEST_FILES):
        (tmp_path / f"test_readme_example_{number}.py").write_text(code)
    (tmp_path / "pyproject.toml").write_text("".join(TOML))  # the README's lines, as pasted
    out = run(
        [
            sys.executable,
            # pytest-asyncio's "asyncio_default_fixture_loop_scope is unset" warning
            # is silenced by our plugin: made an error here, it would fail the run.
            "-W",
            "error:The configuration option:DeprecationWarning",
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-W",
            "error::DeprecationWarning",
            str(tmp_path),
        ],
        environment(),
        cwd=tmp_path,
    )
    assert f"{len(PYTEST_FILES)} passed" in out
    assert "warning" not in out.lower(), out


def test_demo_command_runs_on_embedded_postgres(tmp_path: Path) -> None:
    """`python examples/hello.py` with no server configured: the embedded default."""
    out = run(
        [sys.executable, "examples/hello.py"], environment(HOTMESH_DATA_DIR=str(tmp_path / "pg"))
    )
    assert out.strip() == DEMO_OUTPUT
    assert (tmp_path / "pg" / "PG_VERSION").exists()


def test_the_two_commands_are_in_the_readme_and_ci() -> None:
    for command in TWO_COMMANDS:
        assert command in README
    assert TWO_COMMANDS[1] in (ROOT / ".ci" / "run").read_text()
