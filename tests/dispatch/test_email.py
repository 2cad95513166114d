"""The email channel against a real SMTP server on loopback (the simulator's sink): what arrives,
and how each way a relay can answer becomes the dispatcher's outcome."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parseaddr

import pytest

from cart_recovery.dispatch.email import EmailSender, SmtpSettings
from cart_recovery.dispatch.message import Coupon, MessageContext, Outcome
from cart_recovery.dispatch.templates import EmailContent, render_email
from cart_recovery.errors import ConfigurationError
from cart_recovery.simulator.smtp_sink import SmtpSink

FROM = "Sepet Hatırlatma <sepet@anatolia-keten.example>"
TO = "isil.sagdas@example.com.tr"
SENT_AT = datetime(2025, 10, 28, 9, 30, tzinfo=UTC)


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        yield running


@pytest.fixture
def sender(sink: SmtpSink, monkeypatch: pytest.MonkeyPatch) -> EmailSender:
    for name, value in sink.connection_env(from_email=FROM).items():
        monkeypatch.setenv(name, value)
    return EmailSender.from_connection()


@pytest.fixture
def content() -> EmailContent:
    ctx = MessageContext(
        plan_key="anatolia-shopify:7010:2",
        cart_key="anatolia-shopify:7010",
        shop_id="anatolia-shopify",
        shop_name="Anatolia Keten Atölyesi",
        platform="shopify",
        stage=2,
        template="cart_reminder_coupon_tr",
        language="tr",
        timezone="Europe/Istanbul",
        first_name="Işıl",
        product="Keten Gömlek",
        item_count=1,
        cart_value=Decimal("1234.50"),
        currency="TRY",
        cart_link="https://hooks.anatolia.example/r/abc.def",
        unsubscribe_link="https://hooks.anatolia.example/u/abc.ghi",
        coupon=Coupon("GERI-5K7Q2", Decimal(5), False, datetime(2025, 10, 30, 20, 59, tzinfo=UTC)),
    )
    return render_email(ctx)


def _crlf(text: str | None) -> str:
    return (text or "").replace("\r\n", "\n")


def test_a_recovery_email_arrives_whole(sender: EmailSender, sink: SmtpSink, content: EmailContent):
    result = sender.send(TO, content, {"X-Cart-Recovery-Plan": "anatolia-shopify:7010:2"}, sent_at=SENT_AT)

    assert result.outcome is Outcome.SENT, result
    [received] = sink.wait_for(1)
    assert received.mail_from == "sepet@anatolia-keten.example"
    assert received.rcpt_tos == (TO,)
    assert not received.dropped

    msg = received.message
    assert msg.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in msg.iter_parts()] == ["text/plain", "text/html"]
    assert _crlf(received.text) == content.text
    assert _crlf(received.html) == content.html
    assert "Keten Gömlek" in received.text and "GERI-5K7Q2" in received.html

    assert received.message_id == result.provider_message_id
    assert received.message_id.startswith("<") and received.message_id.endswith("@anatolia-keten.example>")
    assert received.header("List-Unsubscribe") == "<https://hooks.anatolia.example/u/abc.ghi>"
    assert received.header("List-Unsubscribe-Post") == "List-Unsubscribe=One-Click"
    assert parseaddr(received.header("From")) == ("Anatolia Keten Atölyesi", "sepet@anatolia-keten.example")
    assert received.header("To") == TO
    assert received.header("Date") == "Tue, 28 Oct 2025 09:30:00 +0000"
    assert received.header("X-Cart-Recovery-Plan") == "anatolia-shopify:7010:2"
    assert result.response["code"] == 250 and "queued as" in result.response["message"]


def test_a_turkish_subject_travels_as_encoded_words(
    sender: EmailSender, sink: SmtpSink, content: EmailContent
):
    assert content.subject == "Işıl, Keten Gömlek için sana özel %5 indirim"
    assert sender.send(TO, content).outcome is Outcome.SENT
    [received] = sink.wait_for(1)

    assert received.raw.isascii()  # 7-bit on the wire: headers RFC 2047, bodies quoted-printable
    raw_headers = received.raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    raw_subject = next(line for line in raw_headers.splitlines() if line.startswith("Subject:"))
    assert "=?utf-8?" in raw_subject.lower() and "Işıl" not in raw_subject
    assert received.subject == content.subject
    assert "Anatolia Keten Atölyesi" in received.header("From")


def test_every_send_has_its_own_message_id(sender: EmailSender, sink: SmtpSink, content: EmailContent):
    first = sender.send(TO, content)
    second = sender.send(TO, content)
    received = sink.wait_for(2)
    assert first.provider_message_id != second.provider_message_id
    assert [m.message_id for m in received] == [first.provider_message_id, second.provider_message_id]


def test_a_recipient_refused_for_good_is_rejected(sender: EmailSender, sink: SmtpSink, content: EmailContent):
    sink.refuse_recipient(TO)
    result = sender.send(TO, content)
    assert result.outcome is Outcome.REJECTED
    assert result.error_code == "550"
    assert "User unknown" in result.error and result.response["stage"] == "RCPT"
    assert result.provider_message_id is None
    assert sink.messages == []


@pytest.mark.parametrize("stage", ["MAIL", "RCPT", "DATA"])
def test_a_temporary_refusal_is_retried_and_the_retry_goes_through(
    sender: EmailSender, sink: SmtpSink, content: EmailContent, stage: str
):
    sink.fail_next(stage, 451, "4.3.0 Mailbox temporarily unavailable")
    result = sender.send(TO, content)
    assert result.outcome is Outcome.RETRY
    assert result.error_code == "451" and result.response["stage"] == stage
    assert sink.messages == []

    again = sender.send(TO, content)
    assert again.outcome is Outcome.SENT
    assert [m.message_id for m in sink.wait_for(1)] == [again.provider_message_id]


def test_a_message_refused_after_its_data_is_rejected(
    sender: EmailSender, sink: SmtpSink, content: EmailContent
):
    sink.fail_next("DATA", 554, "5.7.1 Message rejected as spam")
    result = sender.send(TO, content)
    assert result.outcome is Outcome.REJECTED
    assert (result.error_code, result.response["stage"]) == ("554", "DATA")
    assert sink.messages == []


def test_an_answer_lost_after_the_data_is_unknown(sender: EmailSender, sink: SmtpSink, content: EmailContent):
    """The relay queued the message and the connection died before its 250: sending again could
    deliver it twice, so the outcome is UNKNOWN, with the Message-ID a bounce or log can match."""
    sink.drop_after_data()
    result = sender.send(TO, content)

    assert result.outcome is Outcome.UNKNOWN, result
    [received] = sink.wait_for(1)
    assert received.dropped
    assert received.message_id == result.provider_message_id


def test_no_relay_listening_is_retried(content: EmailContent):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sender = EmailSender(
        SmtpSettings(host="127.0.0.1", port=port, from_email=FROM, use_ssl=False, starttls=False, timeout=5)
    )
    result = sender.send(TO, content)
    assert result.outcome is Outcome.RETRY
    assert result.error_code == "connect_failed" and "ConnectionRefusedError" in result.error


def test_ssl_against_a_plain_relay_is_retried_not_sent(sink: SmtpSink, content: EmailContent):
    """The provider's default is SSL; a relay that speaks plain SMTP fails the handshake."""
    sender = EmailSender(SmtpSettings(host=sink.host, port=sink.port, from_email=FROM, timeout=5))
    result = sender.send(TO, content)
    assert result.outcome is Outcome.RETRY and result.error_code == "connect_failed"
    assert "SSL" in result.error
    assert sink.messages == []


def test_starttls_that_the_relay_does_not_offer_is_retried(sink: SmtpSink, content: EmailContent):
    sender = EmailSender(
        SmtpSettings(host=sink.host, port=sink.port, from_email=FROM, use_ssl=False, starttls=True, timeout=5)
    )
    result = sender.send(TO, content)
    assert result.outcome is Outcome.RETRY and result.error_code == "starttls_unsupported"
    assert sink.messages == []


def test_an_invalid_address_is_rejected_without_a_connection(
    sender: EmailSender, sink: SmtpSink, content: EmailContent
):
    for bad in ("isil.example.com", "isil@", "Işıl <isil@example.com>, x@y.z", ""):
        result = sender.send(bad, content)
        assert (result.outcome, result.error_code) == (Outcome.REJECTED, "invalid_address"), bad
    assert sink.messages == []


@pytest.mark.parametrize(
    ("headers", "unsubscribe", "message"),
    [
        ({"Subject": "Other"}, "https://h.example/u/1", "set by the email channel"),
        ({"Message-ID": "<x@y>"}, "https://h.example/u/1", "set by the email channel"),
        ({"X-Plan": "a\r\nBcc: victim@example.com"}, "https://h.example/u/1", "line break"),
        ({"X Plan": "a"}, "https://h.example/u/1", "not a header name"),
        ({}, None, "needs an unsubscribe link"),
        ({}, "mailto:unsubscribe@example.com", "must be <https://...>"),
        ({"List-Unsubscribe": "<https://h.example/u/2>"}, "https://h.example/u/1", "differs"),
    ],
)
def test_bad_headers_are_refused_before_sending(
    sender: EmailSender, sink: SmtpSink, content: EmailContent, headers, unsubscribe, message
):
    content = EmailContent(content.subject, content.text, content.html, content.from_name, unsubscribe)
    with pytest.raises(ValueError, match=re.escape(message)):
        sender.send(TO, content, headers)
    assert sink.messages == []


def test_a_naive_sending_time_is_refused(sender: EmailSender, sink: SmtpSink, content: EmailContent):
    with pytest.raises(ValueError, match="must carry its time zone"):
        sender.send(TO, content, sent_at=datetime(2025, 10, 28, 9, 30))
    assert sink.messages == []


def test_list_unsubscribe_may_come_from_the_caller(
    sender: EmailSender, sink: SmtpSink, content: EmailContent
):
    bare = EmailContent(content.subject, content.text, content.html)
    assert sender.send(TO, bare, {"List-Unsubscribe": "<https://h.example/u/9>"}).outcome is Outcome.SENT
    [received] = sink.wait_for(1)
    assert received.header("List-Unsubscribe") == "<https://h.example/u/9>"
    assert received.header("From") == FROM  # no shop name given: the connection's from_email


def test_the_connection_follows_the_smtp_providers_conventions(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_SMTP_RELAY",
        "smtp://mailer:s3cret%21@smtp.example.com:587?from_email=shop%40example.com"
        "&disable_ssl=true&disable_tls=false&timeout=12",
    )
    settings = EmailSender.from_connection("smtp_relay").settings
    assert settings == SmtpSettings(
        host="smtp.example.com",
        port=587,
        from_email="shop@example.com",
        login="mailer",
        password="s3cret!",
        use_ssl=False,
        starttls=True,
        timeout=12.0,
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_SMTP_DEFAULTS",
        json.dumps({"conn_type": "smtp", "host": "smtp.example.com", "extra": {"from_email": "a@b.example"}}),
    )
    defaults = EmailSender.from_connection("smtp_defaults").settings
    assert (defaults.use_ssl, defaults.starttls, defaults.timeout, defaults.port) == (True, True, 30.0, None)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({}, "no 'from_email'"),
        ({"from_email": "not an address"}, "from_email is not an address"),
        ({"from_email": "a@b.example", "ssl_context": "strict"}, "ssl_context must be"),
        ({"from_email": "a@b.example", "disable_ssl": "maybe"}, "'disable_ssl' must be true or false"),
        ({"from_email": "a@b.example", "auth_type": "oauth2"}, "only basic SMTP login"),
    ],
)
def test_a_bad_connection_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch, extra, message):
    monkeypatch.setenv(
        "AIRFLOW_CONN_SMTP_BAD", json.dumps({"conn_type": "smtp", "host": "smtp.example.com", "extra": extra})
    )
    with pytest.raises(ConfigurationError, match=message):
        EmailSender.from_connection("smtp_bad")


def test_a_missing_connection_says_which_variable_to_set(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("AIRFLOW_CONN_SMTP_DEFAULT", raising=False)
    with pytest.raises(ConfigurationError, match="AIRFLOW_CONN_SMTP_DEFAULT"):
        EmailSender.from_connection()


def test_airflows_own_smtp_hook_sends_through_the_sinks_connection(
    sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
):
    """The connection the simulator prints is a valid smtp connection for the provider itself
    (the weekly KPI report is mailed through it): same extras, same meaning."""
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    for name, value in sink.connection_env().items():
        monkeypatch.setenv(name, value)
    with SmtpHook() as hook:
        assert (hook.use_ssl, hook.smtp_starttls) == (False, False)
        hook.send_email_smtp(to="ops@example.com", subject="Haftalık KPI raporu", html_content="<p>ok</p>")
    [received] = sink.wait_for(1)
    assert received.subject == "Haftalık KPI raporu" and received.rcpt_tos == ("ops@example.com",)


def test_the_simulator_runs_the_sink_and_prints_its_connection(capsys: pytest.CaptureFixture, content):
    from cart_recovery.simulator.command import _announce
    from cart_recovery.simulator.server import run_simulator

    with run_simulator(carts_per_shop=1, shop_ids=["hudson-woo"], smtp=True) as simulator:
        assert simulator.smtp is not None
        conn = json.loads(simulator.connection_env()["AIRFLOW_CONN_SMTP_DEFAULT"])
        assert conn["conn_type"] == "smtp" and conn["port"] == simulator.smtp.port
        assert conn["extra"]["disable_ssl"] is True and conn["extra"]["disable_tls"] is True

        _announce(simulator, None)
        out = capsys.readouterr().out
        assert f"smtp://127.0.0.1:{simulator.smtp.port}" in out
        assert "export AIRFLOW_CONN_SMTP_DEFAULT=" in out

        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps(conn))
            result = EmailSender.from_connection().send(TO, content)
        assert result.outcome is Outcome.SENT
        assert [m.message_id for m in simulator.smtp.wait_for(1)] == [result.provider_message_id]
        address = (simulator.smtp.host, simulator.smtp.port)
    with pytest.raises(ConnectionRefusedError):  # the sink stopped with the simulator
        socket.create_connection(address, timeout=5).close()

    with run_simulator(carts_per_shop=1, shop_ids=["hudson-woo"]) as without:
        assert without.smtp is None and "AIRFLOW_CONN_SMTP_DEFAULT" not in without.connection_env()
