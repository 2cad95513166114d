"""The Compose interpolation and env-file helpers that test_docker_compose.py relies on."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from compose_interpolation import (
    InvalidTemplate,
    MissingRequiredValue,
    interpolate,
    interpolate_config,
    parse_env_file,
)
from dotenv import dotenv_values

ROOT = Path(__file__).resolve().parents[2]
ENV = {"SET": "value", "EMPTY": ""}  # UNSET (and any other name) is not set


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("plain text", "plain text"),
        ("", ""),
        # $$ is a literal dollar, and what follows it is not a variable
        ("$$", "$"),
        ("$$SET", "$SET"),
        ("$${SET}", "${SET}"),
        ("a$$$SET", "a$value"),
        ('--hostname "$${HOSTNAME}"', '--hostname "${HOSTNAME}"'),
        # $VAR and ${VAR}; the unbraced name is the longest run of name characters
        ("$SET", "value"),
        ("$SET-x", "value-x"),
        ("$SET_x", ""),
        ("${SET}x", "valuex"),
        ("$UNSET", ""),
        ("${UNSET}", ""),
        ("${EMPTY}", ""),
        ("${set}", ""),  # names are case-sensitive
        # :- (unset or empty) and - (unset only)
        ("${SET:-d}", "value"),
        ("${EMPTY:-d}", "d"),
        ("${UNSET:-d}", "d"),
        ("${SET-d}", "value"),
        ("${EMPTY-d}", ""),
        ("${UNSET-d}", "d"),
        ("${UNSET:-}", ""),
        ("${UNSET:-a:b c}", "a:b c"),
        ("${UNSET:--}", "-"),
        ("${UNSET--x}", "-x"),
        # :+ (set and not empty) and + (set)
        ("${SET:+alt}", "alt"),
        ("${EMPTY:+alt}", ""),
        ("${UNSET:+alt}", ""),
        ("${SET+alt}", "alt"),
        ("${EMPTY+alt}", "alt"),
        ("${UNSET+alt}", ""),
        # :? and ? when the value is there
        ("${SET:?message}", "value"),
        ("${SET?message}", "value"),
        ("${EMPTY?message}", ""),
        # defaults and alternatives are interpolated in turn, and only when used
        ("${UNSET:-${SET}}", "value"),
        ("${UNSET:-${ALSO_UNSET:-deep}}", "deep"),
        ("${UNSET:-$$}", "$"),
        ("${SET:+[$SET]}", "[value]"),
        ("${SET:-${UNSET:?never evaluated}}", "value"),
        # several expressions in one string
        ("${SET}/${UNSET:-d}/$SET", "value/d/value"),
        ("${AIRFLOW_EXECUTOR:-LocalExecutor}", "LocalExecutor"),
    ],
)
def test_interpolate(template, expected):
    assert interpolate(template, ENV) == expected


@pytest.mark.parametrize(
    ("template", "variable", "message"),
    [
        ("${UNSET:?set UNSET}", "UNSET", "set UNSET"),
        ("${EMPTY:?set EMPTY}", "EMPTY", "set EMPTY"),  # :? refuses an empty value ...
        ("${UNSET?set UNSET}", "UNSET", "set UNSET"),  # ... ? only an unset one
        ("${UNSET:?}", "UNSET", "UNSET"),
        ("x ${UNSET:?set it in .env (see .env.example)} y", "UNSET", "set it in .env (see .env.example)"),
        ("${UNSET:-${OTHER:?need OTHER}}", "OTHER", "need OTHER"),
    ],
)
def test_required_variables(template, variable, message):
    with pytest.raises(MissingRequiredValue) as error:
        interpolate(template, ENV)
    assert (error.value.variable, error.value.message) == (variable, message)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "template",
    ["$", "a$", "$1", "$-", "${}", "${SET", "${1X}", "${SET:}", "${SET:x}", "${A B}", "${SET:-${X}"],
)
def test_invalid_templates(template):
    with pytest.raises(InvalidTemplate):
        interpolate(template, ENV)


def test_interpolate_config_is_recursive_over_values_not_keys():
    config = {
        "a": ["$SET", {"b": "${UNSET:-d}"}],
        "number": 5,
        "flag": True,
        "nothing": None,
        "$SET": "k",
    }
    original = copy.deepcopy(config)
    assert interpolate_config(config, ENV) == {
        "a": ["value", {"b": "d"}],
        "number": 5,
        "flag": True,
        "nothing": None,
        "$SET": "k",
    }
    assert config == original  # a copy; the input is left alone


def test_interpolate_config_says_where_it_failed():
    config = {"services": {"web": {"environment": {"S": "${UNSET:?need S}"}, "command": ["ok", "$"]}}}
    with pytest.raises(MissingRequiredValue) as missing:
        interpolate_config(config, ENV)
    assert missing.value.path == ("services", "web", "environment", "S")
    assert (
        str(missing.value) == "services.web.environment.S: required variable UNSET is missing a value: need S"
    )
    del config["services"]["web"]["environment"]
    with pytest.raises(InvalidTemplate) as invalid:
        interpolate_config(config, ENV)
    assert invalid.value.path == ("services", "web", "command", 1)


SAMPLE_ENV_FILE = """\
# a comment

FIRST=1
EMPTY=
  INDENTED = spaced value
WITH_EQUALS=a=b
INLINE=value # a comment
HASH=no#comment
SINGLE='quoted # kept'
DOUBLE="two words"
export EXPORTED=yes
FIRST=2
"""


def test_parse_env_file():
    assert parse_env_file(SAMPLE_ENV_FILE) == {
        "FIRST": "2",
        "EMPTY": "",
        "INDENTED": "spaced value",
        "WITH_EQUALS": "a=b",
        "INLINE": "value",
        "HASH": "no#comment",
        "SINGLE": "quoted # kept",
        "DOUBLE": "two words",
        "EXPORTED": "yes",
    }


@pytest.mark.parametrize("line", ["JUST_A_NAME", "1BAD=x", "BAD KEY=x", "=x"])
def test_parse_env_file_refuses_what_is_not_an_assignment(line):
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_env_file(f"OK=1\n{line}\n")


@pytest.mark.parametrize("source", ["sample", ".env.example"])
def test_parse_env_file_agrees_with_python_dotenv(source, tmp_path):
    """python-dotenv reads .env for `cart-recovery` (cli.load_dotenv_file) and for docker-compose 1.x."""
    path = ROOT / ".env.example" if source == ".env.example" else tmp_path / "sample.env"
    if source == "sample":
        path.write_text(SAMPLE_ENV_FILE)
    assert parse_env_file(path.read_text()) == dotenv_values(path, interpolate=False)
