"""``accord relay --config FILE``: keys from the parser, precedence, unknown keys, bad types."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from relays import RelayProcess

from accord import config_file
from accord.cli import main
from accord.relay.cli import build_parser

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def parse(tmp_path: Path, toml: str, *argv: str) -> argparse.Namespace:
    path = tmp_path / "relay.toml"
    path.write_text(toml)
    return build_parser().parse_args(config_file.with_config(build_parser, ["--config", str(path), *argv]))


def test_every_relay_flag_has_a_key_spelt_like_the_flag() -> None:
    keys = config_file.keys(build_parser())
    flags = {flag for action in build_parser()._actions for flag in action.option_strings if flag.startswith("--")}
    negations = {flag for flag in flags if flag.startswith("--no-")}  # `audit = false` says --no-audit
    assert {f"--{key}" for key in keys} == flags - {"--help", "--config"} - negations
    assert keys["id"].dest == "relay_id" and keys["max-connections"].dest == "max_connections"


def test_a_flag_added_to_the_parser_later_gets_a_key_with_no_other_change(tmp_path: Path) -> None:
    def grown() -> argparse.ArgumentParser:
        parser = build_parser()
        parser.add_argument("--ocsp-file", type=Path, default=None)
        parser.add_argument("--reuse-port", action=argparse.BooleanOptionalAction, default=True)
        return parser

    path = tmp_path / "relay.toml"
    path.write_text('id = "a"\nocsp-file = "/etc/accord/ocsp.der"\nreuse-port = false\n')
    args = grown().parse_args(config_file.with_config(grown, ["--config", str(path)]))
    assert args.ocsp_file == Path("/etc/accord/ocsp.der") and args.reuse_port is False


def test_the_file_sets_every_kind_of_option(tmp_path: Path) -> None:
    args = parse(tmp_path, """
id = "relay-a"
host = "127.0.0.1"
port = 9100
peer = ["ws://10.0.0.2:8765", "wss://partner.example:8765"]
home = ["clinic-*"]
hold-ttl = 900
insecure-open = true
max-calendar-mb = 64
log-format = "json"
""")
    assert (args.relay_id, args.port, args.hold_ttl, args.insecure_open, args.max_calendar_mb) == \
        ("relay-a", 9100, 900.0, True, 64)
    assert args.peer == ["ws://10.0.0.2:8765", "wss://partner.example:8765"] and args.home == ["clinic-*"]
    assert args.log_format == "json" and args.max_connections == 1000  # defaults stay for keys not given


def test_flags_on_the_command_line_override_the_file(tmp_path: Path) -> None:
    toml = 'id = "from-file"\nport = 9100\npeer = ["ws://a:1", "ws://b:2"]\nhome = ["clinic-*"]\nlog-level = "DEBUG"\n'
    args = parse(tmp_path, toml, "--port", "9200", "--peer", "ws://c:3", "--log-level=ERROR")
    assert args.port == 9200 and args.log_level == "ERROR"
    assert args.peer == ["ws://c:3"]  # a repeatable flag given on the command line replaces the file's list
    assert args.relay_id == "from-file" and args.home == ["clinic-*"]  # the rest still comes from the file
    assert parse(tmp_path, 'id = "from-file"\n', "--id", "from-flag").relay_id == "from-flag"


def relay_main(tmp_path: Path, toml: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "relay.toml"
    path.write_text(toml)
    code = main(["relay", "--config", str(path), "--port-file", str(tmp_path / "never")])
    assert not (tmp_path / "never").exists()  # refused before listening
    return code, capsys.readouterr().err


def test_an_unknown_key_is_an_error_naming_it_and_its_close_matches(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, err = relay_main(tmp_path, 'id = "a"\nmax_conections = 5\n', capsys)
    assert code == 2
    assert "unknown key 'max_conections'; did you mean 'max-connections'" in err
    code, err = relay_main(tmp_path, 'id = "a"\n[relay]\nport = 1\n', capsys)  # no sections: one key per flag
    assert code == 2 and "unknown key 'relay'" in err


@pytest.mark.parametrize(("line", "message"), [
    ('port = "eighty"', "port: invalid int value: 'eighty'"),
    ("port = 80.5", "port: invalid int value: '80.5'"),
    ("max-connections = 0", "max-connections: '0' must be at least 1"),
    ('insecure-open = "yes"', "insecure-open must be true or false, not 'yes'"),
    ('peer = "ws://b:8765"', "peer takes a list"),
    ("peer = [8765]", "peer: '8765' is not a relay URL"),
    ("peer-token = 12345", "peer-token must be a string (in quotes)"),
    ('log-format = "xml"', "log-format: invalid choice: 'xml'"),
    ("hold-ttl = true", "hold-ttl must be a number or a string, not True"),
])
def test_a_value_of_the_wrong_type_is_an_error_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            line: str, message: str) -> None:
    code, err = relay_main(tmp_path, f'id = "a"\n{line}\n', capsys)
    assert code == 2
    assert message in err


def test_an_unreadable_or_malformed_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["relay", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "cannot read config file" in capsys.readouterr().err
    code, err = relay_main(tmp_path, "id = \n", capsys)
    assert code == 2 and "is not valid TOML" in err


def test_the_example_file_parses_with_the_relay_parser() -> None:
    args = build_parser().parse_args(config_file.with_config(build_parser, ["--config", str(DEPLOY / "relay.toml")]))
    assert args.relay_id and args.db.startswith("/var/lib/accord/")


async def test_a_relay_started_from_a_file_uses_it_and_its_flags_win(tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text('id = "from-file"\nlog-format = "json"\nhome = ["clinic-*"]\nidle-unload = 60\n')
    relay = RelayProcess(tmp_path, "from-flag", "--config", str(config))  # the process gives --id, --port, --db
    try:
        await relay.start()
    finally:
        await relay.stop()
        relay.cleanup()
    lines = [json.loads(line) for line in relay.log_path.read_text().splitlines()]
    listening = next(line for line in lines if line["message"] == "relay listening")
    assert listening["relay"] == "from-flag" and listening["home"] == "clinic-*"
