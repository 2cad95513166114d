"""What every ``cart-recovery`` command starts from: the project's .env and Airflow home."""

from __future__ import annotations

import os

import pytest

from cart_recovery import cli, settings


def test_dotenv_fills_what_the_shell_did_not_set(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text(
        "# a comment\n"
        'AIRFLOW_CONN_SHOP_X=\'{"conn_type": "http", "password": "tok"}\'\n'
        "CART_RECOVERY_TEST_FROM_DOTENV=from-file\n"
        "CART_RECOVERY_TEST_SET_IN_SHELL=from-file\n"
    )
    monkeypatch.setenv(settings.HOME_ENV, str(tmp_path))
    monkeypatch.setenv("CART_RECOVERY_TEST_SET_IN_SHELL", "from-shell")
    for name in ("AIRFLOW_CONN_SHOP_X", "CART_RECOVERY_TEST_FROM_DOTENV"):
        # setenv first, so that monkeypatch removes what the .env sets even if an assert fails
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)

    loaded = cli.load_dotenv_file()

    assert sorted(loaded) == ["AIRFLOW_CONN_SHOP_X", "CART_RECOVERY_TEST_FROM_DOTENV"]
    assert os.environ["AIRFLOW_CONN_SHOP_X"] == '{"conn_type": "http", "password": "tok"}'
    assert os.environ["CART_RECOVERY_TEST_SET_IN_SHELL"] == "from-shell"  # the shell wins


def test_no_dotenv_is_fine(tmp_path, monkeypatch):
    monkeypatch.setenv(settings.HOME_ENV, str(tmp_path))
    assert cli.load_dotenv_file() == []


def test_every_command_uses_the_projects_airflow_home(tmp_path, monkeypatch, capsys):
    """Not Airflow's default ~/airflow: the webhook service read ~/airflow/airflow.cfg before."""
    monkeypatch.setenv(settings.HOME_ENV, str(tmp_path))  # not the checkout's own .env and .airflow
    monkeypatch.setenv("AIRFLOW_HOME", "")
    monkeypatch.delenv("AIRFLOW_HOME")
    monkeypatch.delenv(settings.AIRFLOW_HOME_ENV, raising=False)

    assert cli.main(["env"]) == 0

    assert os.environ["AIRFLOW_HOME"] == str(settings.Paths.from_env().airflow_home())
    assert f"export AIRFLOW_HOME={settings.Paths.from_env().airflow_home()}" in capsys.readouterr().out


def test_secrets_from_connections_lose_surrounding_whitespace(monkeypatch):
    from cart_recovery.connections import required_extra

    monkeypatch.setenv(
        "AIRFLOW_CONN_SHOP_PASTED", '{"conn_type": "http", "extra": {"webhook_secret": "  s3cret\\n"}}'
    )
    assert required_extra("shop_pasted", "webhook_secret") == "s3cret"


@pytest.mark.parametrize(
    ("argv", "tool_args"),
    [
        (["dbt", "--quiet", "ls"], ["--quiet", "ls"]),
        (["airflow", "--help"], ["--help"]),
        (["-v", "dbt", "build", "--select", "staging"], ["build", "--select", "staging"]),
        (["dbt"], []),
    ],
)
def test_everything_after_the_tool_goes_to_it(argv, tool_args):
    """`cart-recovery dbt --quiet ls` was refused by argparse ("unrecognized arguments")."""
    from cart_recovery.cli import parse_args

    args = parse_args(argv)
    assert args.args == tool_args
    assert args.verbose == (argv[0] == "-v")
