"""``--config FILE``: a command's options from a TOML file, derived from its argparse parser.

Every long option of the parser is a key, spelled like the flag without its dashes
(``--max-connections`` is ``max-connections``): a flag added to the parser later gets a key
with no change here. Values take the TOML type the flag needs: ``true``/``false`` for switches,
a list for repeatable flags (``peer = ["wss://b:8765"]``), a string or number otherwise; each
goes through the flag's own argparse type and choices, so the file accepts exactly what the
command line accepts. Flags given on the command line override the file (a repeatable flag
given there replaces the file's list). Unknown keys and wrong types raise
:class:`ConfigFileError` naming the key (and close matches for a misspelt one).

Theory of operation: the file becomes argv tokens (``--port=8765``) placed before the real
argv, minus the options the real argv sets itself; argparse then parses both as one command line.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import tomllib
from collections.abc import Callable
from pathlib import Path

from accord.engine.errors import AccordError

CONFIG_FLAG = "--config"


class ConfigFileError(AccordError):
    """The ``--config`` file cannot be read or holds a key or value the command does not accept."""


def keys(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Each configurable option of ``parser`` by its key (its long flag without ``--``)."""
    found: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._VersionAction) or CONFIG_FLAG in action.option_strings:
            continue
        longs = [flag for flag in action.option_strings if flag.startswith("--") and not flag.startswith("--no-")]
        if longs:
            found[longs[0][2:]] = action
    return found


def config_path(argv: list[str]) -> Path | None:
    """The ``--config`` value in ``argv``, if any."""
    finder = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    finder.add_argument(CONFIG_FLAG, type=Path, default=None)
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            known, _rest = finder.parse_known_args(argv)
        except SystemExit:  # "--config" without a value: the real parse says so
            return None
    path: Path | None = known.config
    return path


def with_config(build_parser: Callable[[], argparse.ArgumentParser], argv: list[str]) -> list[str]:
    """``argv`` with the settings of its ``--config`` file (if any) placed before it.

    Args:
        build_parser: makes the command's parser (called again for each check, since checks
            change a parser's defaults).
        argv: the command line, after the command name.

    Raises:
        ConfigFileError: the file cannot be read, is not TOML, or holds an unknown key or a
            value of the wrong type; the message names the file and the key.
    """
    path = config_path(argv)
    if path is None:
        return argv
    settings = _read(path)
    options = keys(build_parser())
    given = _dests_given(build_parser, argv)
    tokens: list[str] = []
    for key, value in settings.items():
        action = options.get(key)
        if action is None:
            raise ConfigFileError(_unknown(path, key, list(options)))
        if action.dest in given:
            continue  # the command line says otherwise: it wins
        flag_tokens = _tokens(path, key, action, value)
        _check(build_parser, path, key, flag_tokens)
        tokens += flag_tokens
    return tokens + argv


def _read(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise ConfigFileError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"config file {path} is not valid TOML: {exc}") from None


def _unknown(path: Path, key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key.replace("_", "-").lower(), known, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(k) for k in close)}?" if close else ""
    return (f"{path}: unknown key {key!r}{hint} (keys are the command's flags without the leading --: "
            f"{', '.join(sorted(known))})")


def _tokens(path: Path, key: str, action: argparse.Action, value: object) -> list[str]:
    flag = f"--{key}"
    if action.nargs == 0:  # a switch
        if not isinstance(value, bool):
            raise ConfigFileError(f"{path}: {key} must be true or false, not {value!r}")
        if isinstance(action, argparse.BooleanOptionalAction):
            return [flag if value else f"--no-{key}"]
        return [flag] if value else []
    repeatable = isinstance(action, argparse._AppendAction)
    if repeatable or action.nargs in ("*", "+") or isinstance(action.nargs, int):
        if not isinstance(value, list):
            raise ConfigFileError(f"{path}: {key} takes a list, e.g. {key} = [{_example(action)}], not {value!r}")
        items = [_scalar(path, key, action, item) for item in value]
        return [f"{flag}={item}" for item in items] if repeatable else [flag, *items]
    return [f"{flag}={_scalar(path, key, action, value)}"]


def _scalar(path: Path, key: str, action: argparse.Action, value: object) -> str:
    if action.type is None and not isinstance(value, str):
        raise ConfigFileError(f"{path}: {key} must be a string (in quotes), e.g. {key} = {_example(action)}, "
                              f"not {value!r}")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigFileError(f"{path}: {key} must be a number or a string, not {value!r}")
    return str(value)


def _example(action: argparse.Action) -> str:
    """A value for ``key = ...`` in a message: a number if the flag reads numbers, else a quoted string."""
    try:
        number = callable(action.type) and isinstance(action.type("1"), int | float)  # type: ignore[operator]
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        number = False
    return "1" if number else f'"{action.metavar or action.dest.upper()}"'


def _check(build_parser: Callable[[], argparse.ArgumentParser], path: Path, key: str, tokens: list[str]) -> None:
    """Run one key's tokens through the flag's own type and choices."""
    parser = _lenient(build_parser())
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            parser.parse_known_args(tokens)
    except argparse.ArgumentError as exc:
        raise ConfigFileError(f"{path}: {key}: {exc.message}") from None
    except SystemExit:
        raise ConfigFileError(f"{path}: {key}: {tokens} is not accepted by --{key}") from None


def _dests_given(build_parser: Callable[[], argparse.ArgumentParser], argv: list[str]) -> set[str]:
    """The options ``argv`` sets itself (empty if argv does not parse: the real parse reports it)."""
    parser = _lenient(build_parser())
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            given, _rest = parser.parse_known_args(argv)
    except (argparse.ArgumentError, SystemExit):
        return set()
    return set(vars(given))


def _lenient(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.exit_on_error = False
    for action in parser._actions:
        action.required = False
    return parser
