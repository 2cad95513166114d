"""The WhatsApp client against the simulator's fake Cloud API over loopback: each of Meta's
answers mapped to its Outcome, retries only where nothing was sent, the shared rate limiter, and
signed status callbacks stored by the real webhook service."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import random
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import psycopg2
import pytest
import uvicorn

from cart_recovery.database import Database
from cart_recovery.dispatch.dispatcher import CONCURRENCY, Channels, in_flight
from cart_recovery.dispatch.message import Outcome
from cart_recovery.dispatch.whatsapp import (
    RateLimiter,
    RetryPolicy,
    Timeouts,
    WhatsAppClient,
    classify,
    connections_for,
)
from cart_recovery.errors import ConfigurationError
from cart_recovery.simulator import Simulator, run_simulator
from cart_recovery.simulator.whatsapp_api import load_templates
from cart_recovery.webhooks.app import create_app
from cart_recovery.webhooks.config import WebhookConfig, whatsapp_secrets

GENTLE_TR = ("cart_reminder_gentle_tr", "tr", ["Ayşe", "Keten Gömlek", "899,90 TL", "https://r.example/r/t1"])
COUPON_EN = (
    "cart_reminder_coupon_en",
    "en",
    ["John", "Wool Scarf", "10%", "BACK-7F3K", "22 Nov 2026, 18:00", "https://r.example/r/t2"],
)


def _number() -> str:
    """A fresh E.164 number, so no test meets another's pair-rate or registry entries."""
    return f"+90555{random.randrange(10**7):07d}"


class Sleeps:
    """An injected sleep: records each wait and returns at once."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        await asyncio.sleep(0)


@pytest.fixture
def simulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[Simulator]:
    """The simulator (one small shop) with its whatsapp_default connection in the environment."""
    with run_simulator(seed=5, carts_per_shop=1, shop_ids=["anatolia-shopify"]) as sim:
        monkeypatch.setenv("AIRFLOW_CONN_WHATSAPP_DEFAULT", json.dumps(sim.whatsapp_connection()))
        yield sim


def _client(**options) -> WhatsAppClient:
    """A client from the connection whose backoff waits are recorded, not slept."""
    options.setdefault("sleep", Sleeps())
    return WhatsAppClient.from_connection(**options)


def _send(client_options: dict | None = None, *calls):
    """Run sends (coroutine factories taking the client) on one client; their results in order."""

    async def scenario():
        async with _client(**(client_options or {})) as client:
            return [await call(client) for call in calls]

    return asyncio.run(scenario())


def template(to: str, spec=GENTLE_TR, callback_data: str | None = "plan-1"):
    name, language, parameters = spec
    return lambda client: client.send_template(to, name, language, parameters, callback_data)


def text(to: str, body: str = "Bedeni M olarak değiştirebiliriz."):
    return lambda client: client.send_text(to, body, "plan-text")


def _raw_post(sim: Simulator, body: dict, *, token: str | None = None, phone_number_id: str | None = None):
    """One request exactly as a client puts it on the wire, answered by the fake."""
    conn = sim.whatsapp_connection()
    url = f"{conn['host']}/v21.0/{phone_number_id or conn['extra']['phone_number_id']}/messages"
    return httpx.post(url, json=body, headers={"Authorization": f"Bearer {token or conn['password']}"})


def _template_body(to: str, name: str, language: str, parameters: list[str]) -> dict:
    return {
        "messaging_product": "whatsapp",
        "to": to,
        "type": "template",
        "template": {
            "name": name,
            "language": {"code": language},
            "components": [{"type": "body", "parameters": [{"type": "text", "text": p} for p in parameters]}],
        },
    }


# -- accepted sends and the connection -------------------------------------------------------


def test_template_send_is_accepted_logged_and_answered_like_meta(simulator):
    to = _number()
    [result] = _send(None, template(to, callback_data="plan-abc:1"))
    assert result.outcome is Outcome.SENT and result.provider_message_id.startswith("wamid.")
    assert result.response["messaging_product"] == "whatsapp"
    assert result.response["contacts"] == [{"input": to, "wa_id": to.lstrip("+")}]
    assert result.response["messages"][0]["id"] == result.provider_message_id
    [logged] = simulator.whatsapp.messages(to)
    assert (logged.id, logged.template, logged.language, logged.category) == (
        result.provider_message_id,
        "cart_reminder_gentle_tr",
        "tr",
        "MARKETING",
    )
    assert list(logged.parameters) == GENTLE_TR[2] and logged.callback_data == "plan-abc:1"
    served = httpx.get(f"{simulator.base_url}/whatsapp/_log", params={"to": to}).json()
    assert [m["id"] for m in served["messages"]] == [result.provider_message_id]
    assert served["messages"][0]["parameters"] == GENTLE_TR[2]


def test_connection_is_airflow_json_and_serves_the_webhook_service(simulator):
    conn = json.loads(simulator.connection_env()["AIRFLOW_CONN_WHATSAPP_DEFAULT"])
    assert conn["conn_type"] == "http" and conn["host"] == f"{simulator.base_url}/whatsapp"
    assert conn["password"] == simulator.whatsapp.access_token
    assert conn["extra"]["api_version"] == "v21.0" and conn["extra"]["messages_per_second"] == 80
    assert conn["extra"]["phone_number_id"] == simulator.whatsapp.phone_number_id
    secrets = whatsapp_secrets()  # the webhook service reads the same connection
    assert (secrets.app_secret, secrets.verify_token) == (
        conn["extra"]["app_secret"],
        conn["extra"]["verify_token"],
    )


def test_the_fake_approves_exactly_the_registry():
    approved = load_templates()
    assert len(approved) == 10
    assert approved[("cart_reminder_coupon_en", "en")].parameter_count == 6
    assert {t.category for t in approved.values()} == {"MARKETING"}


# -- each error code, on the wire and as an Outcome ------------------------------------------


@pytest.mark.parametrize(
    ("name", "language", "parameters", "status", "code"),
    [
        ("cart_reminder_does_not_exist", "tr", GENTLE_TR[2], 404, 132001),
        ("cart_reminder_gentle_tr", "en", GENTLE_TR[2], 404, 132001),  # approved in tr only
        ("cart_reminder_gentle_tr", "tr", GENTLE_TR[2][:3], 400, 132000),
        ("cart_reminder_coupon_en", "en", GENTLE_TR[2], 400, 132000),
    ],
)
def test_template_refusals_use_metas_error_object(simulator, name, language, parameters, status, code):
    to = _number()
    answer = _raw_post(simulator, _template_body(to, name, language, parameters))
    assert answer.status_code == status
    error = answer.json()["error"]
    assert error["code"] == code and error["type"] == "OAuthException"
    assert error["message"].startswith(f"(#{code}) ")
    assert error["error_data"]["messaging_product"] == "whatsapp" and error["error_data"]["details"]
    assert error["fbtrace_id"]
    [result] = _send(None, lambda client: client.send_template(to, name, language, parameters, "plan-x"))
    assert (result.outcome, result.error_code) == (Outcome.REJECTED, str(code))
    assert result.response["error"]["code"] == code
    assert simulator.whatsapp.messages(to) == []


def test_wrong_token_is_an_oauth_error_and_not_retried(simulator, monkeypatch):
    answer = _raw_post(simulator, _template_body(_number(), *GENTLE_TR), token="EAAexpired")
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == 190 and answer.json()["error"]["type"] == "OAuthException"
    conn = simulator.whatsapp_connection() | {"password": "EAAexpired"}
    monkeypatch.setenv("AIRFLOW_CONN_WHATSAPP_DEFAULT", json.dumps(conn))
    sleeps = Sleeps()
    to = _number()
    [result] = _send({"sleep": sleeps}, template(to))
    # Nothing was sent and every message would fail alike: back to the queue, not failed for good.
    assert (result.outcome, result.error_code) == (Outcome.RETRY, "190")
    assert sleeps.calls == [] and simulator.whatsapp.messages(to) == []


def test_unknown_phone_number_id_is_refused(simulator, monkeypatch):
    answer = _raw_post(simulator, _template_body(_number(), *GENTLE_TR), phone_number_id="999")
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == 100 and answer.json()["error"]["type"] == "GraphMethodException"
    conn = simulator.whatsapp_connection()
    conn["extra"]["phone_number_id"] = "999"
    monkeypatch.setenv("AIRFLOW_CONN_WHATSAPP_DEFAULT", json.dumps(conn))
    [result] = _send(None, template(_number()))
    assert (result.outcome, result.error_code) == (Outcome.REJECTED, "100")


def test_number_not_on_whatsapp_falls_back(simulator):
    to = _number()
    simulator.whatsapp.not_on_whatsapp(to)
    answer = _raw_post(simulator, _template_body(to, *GENTLE_TR))
    assert (answer.status_code, answer.json()["error"]["code"]) == (400, 131026)
    [result] = _send(None, template(to))
    assert (result.outcome, result.error_code) == (Outcome.FALLBACK, "131026")


def test_free_text_only_inside_the_24_hour_window(simulator):
    closed, stale, open_ = _number(), _number(), _number()
    simulator.whatsapp.open_window(stale, at=time.time() - 25 * 3600)
    simulator.whatsapp.open_window(open_, at=time.time() - 23 * 3600)
    results = _send(None, text(closed), text(stale), text(open_))
    assert [(r.outcome, r.error_code) for r in results] == [
        (Outcome.FALLBACK, "131047"),
        (Outcome.FALLBACK, "131047"),
        (Outcome.SENT, None),
    ]
    [logged] = simulator.whatsapp.messages(open_)
    assert (logged.type, logged.category, logged.text) == (
        "text",
        "SERVICE",
        "Bedeni M olarak değiştirebiliriz.",
    )


def test_stopped_promotions_stop_marketing_templates_only(simulator):
    to = _number()
    simulator.whatsapp.stop_promotions(to)
    simulator.whatsapp.open_window(to)
    simulator.whatsapp.knobs.pair_interval = 0
    answer = _raw_post(simulator, _template_body(to, *COUPON_EN))
    assert (answer.status_code, answer.json()["error"]["code"]) == (400, 131050)
    marketing, reply = _send(None, template(to, COUPON_EN), text(to))
    assert (marketing.outcome, marketing.error_code) == (Outcome.STOP, "131050")
    assert reply.outcome is Outcome.SENT  # a service reply is not a promotion


def test_pair_rate_defers_a_second_message_to_the_same_person(simulator):
    to, other = _number(), _number()
    first, second, elsewhere = _send(None, template(to), template(to), template(other))
    assert first.outcome is Outcome.SENT and elsewhere.outcome is Outcome.SENT
    assert (second.outcome, second.error_code) == (Outcome.DEFER, "131056")
    assert second.response["error"]["error_data"]["details"]
    simulator.whatsapp.knobs.pair_interval = 0  # bulk benchmarks switch it off
    [third] = _send(None, template(to))
    assert third.outcome is Outcome.SENT
    assert len(simulator.whatsapp.messages(to)) == 2


# -- retries: only when nothing was sent -----------------------------------------------------


def test_5xx_answers_are_retried_with_growing_backoff_then_sent(simulator):
    simulator.whatsapp.inject_failures(2, status=500)
    sleeps = Sleeps()
    to = _number()
    [result] = _send({"sleep": sleeps, "retry": RetryPolicy(attempts=4, base_delay=0.5)}, template(to))
    assert result.outcome is Outcome.SENT
    assert len(simulator.whatsapp.messages(to)) == 1
    assert len(sleeps.calls) == 2
    # Retry n waits between half and all of base * 2**(n-1).
    assert 0.25 <= sleeps.calls[0] <= 0.5 and 0.5 <= sleeps.calls[1] <= 1.0


@pytest.mark.parametrize(("status", "code"), [(500, "131000"), (503, "2"), (502, "HTTP 502")])
def test_5xx_answers_end_in_retry_after_bounded_attempts(simulator, status, code):
    simulator.whatsapp.inject_failures(10, status=status)
    sleeps = Sleeps()
    to = _number()
    [result] = _send({"sleep": sleeps, "retry": RetryPolicy(attempts=3)}, template(to))
    assert (result.outcome, result.error_code) == (Outcome.RETRY, code)
    assert len(sleeps.calls) == 2 and simulator.whatsapp.knobs.fail_next == 7  # 3 attempts made
    assert simulator.whatsapp.messages(to) == []


def test_throughput_limit_answers_130429(simulator):
    simulator.whatsapp.knobs.messages_per_second = 3
    conn = simulator.whatsapp_connection()
    url = f"{conn['host']}/v21.0/{conn['extra']['phone_number_id']}/messages"
    with httpx.Client(headers={"Authorization": f"Bearer {conn['password']}"}) as http:
        started = time.monotonic()
        answers = [http.post(url, json=_template_body(_number(), *GENTLE_TR)) for _ in range(20)]
        elapsed = time.monotonic() - started
    accepted = [a for a in answers if a.status_code == 200]
    limited = [a for a in answers if a.status_code == 400 and a.json()["error"]["code"] == 130429]
    # A full bucket of 3, then 3 more per second of the run.
    assert 3 <= len(accepted) <= 3 + 3 * elapsed + 1
    assert limited and len(accepted) + len(limited) == 20
    assert limited[0].json()["error"]["error_data"]["details"]


def test_throughput_refusals_are_retried_then_retry(simulator):
    simulator.whatsapp.knobs.messages_per_second = 0.1  # one token, back in 10 s
    first, throttled = _number(), _number()
    sleeps = Sleeps()
    # The client's own limiter far above the fake's; its backoff waits are not slept, so the
    # fake's bucket is still empty at every attempt.
    options = {"sleep": sleeps, "limiter": RateLimiter(1000), "retry": RetryPolicy(attempts=4)}
    accepted, refused = _send(options, template(first), template(throttled))
    assert accepted.outcome is Outcome.SENT
    assert (refused.outcome, refused.error_code) == (Outcome.RETRY, "130429")
    assert len(sleeps.calls) == 3 and simulator.whatsapp.messages(throttled) == []


def test_no_connection_is_retry(simulator, monkeypatch):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conn = simulator.whatsapp_connection() | {"host": f"http://127.0.0.1:{port}/whatsapp"}
    monkeypatch.setenv("AIRFLOW_CONN_WHATSAPP_DEFAULT", json.dumps(conn))
    sleeps = Sleeps()
    [result] = _send({"sleep": sleeps, "retry": RetryPolicy(attempts=3)}, template(_number()))
    assert result.outcome is Outcome.RETRY and result.error.startswith("not sent: ConnectError")
    assert len(sleeps.calls) == 2


def test_read_timeout_is_unknown_and_never_retried(simulator):
    simulator.whatsapp.knobs.response_delay = 1.5
    sleeps = Sleeps()
    to = _number()
    [result] = _send({"sleep": sleeps, "timeout": httpx.Timeout(0.3, connect=5.0)}, template(to))
    assert result.outcome is Outcome.UNKNOWN and "ReadTimeout" in result.error
    assert sleeps.calls == []
    # Why it must not be re-sent: the fake took it.
    assert len(simulator.whatsapp.messages(to)) == 1


def test_no_free_connection_in_time_is_retry_and_nothing_is_sent(simulator):
    # one pooled connection, held by a slow send: the second send never gets it, so never goes out
    simulator.whatsapp.knobs.response_delay = 1.5
    first, second = _number(), _number()
    options = {
        "max_connections": 1,
        "timeout": Timeouts(read=10.0, connect=0.2, pool=0.2),  # at most 0.4 s without a connection
        "retry": RetryPolicy(attempts=1),
    }

    async def scenario():
        async with _client(**options) as client:
            return await asyncio.gather(template(first)(client), template(second)(client))

    slow, starved = asyncio.run(scenario())
    assert slow.outcome is Outcome.SENT
    assert starved.outcome is Outcome.RETRY and starved.error.startswith("not sent: ConnectTimeout")
    assert simulator.whatsapp.messages(second) == []


@contextlib.contextmanager
def _hang_up_after_request() -> Iterator[tuple[str, list[bytes]]]:
    """A loopback server that reads a request and closes the connection without an answer."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    received: list[bytes] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                with conn:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        data += conn.recv(65536)
                    head, _, body = data.partition(b"\r\n\r\n")
                    length = next(
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    )
                    while len(body) < length:
                        body += conn.recv(65536)
                    received.append(body)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", received
    finally:
        listener.close()


def test_connection_dropped_after_the_request_is_unknown(simulator, monkeypatch):
    with _hang_up_after_request() as (url, received):
        conn = simulator.whatsapp_connection() | {"host": url}
        monkeypatch.setenv("AIRFLOW_CONN_WHATSAPP_DEFAULT", json.dumps(conn))
        sleeps = Sleeps()
        [result] = _send({"sleep": sleeps}, template(_number(), callback_data="plan-drop"))
    assert result.outcome is Outcome.UNKNOWN and "RemoteProtocolError" in result.error
    assert len(received) == 1 and json.loads(received[0])["biz_opaque_callback_data"] == "plan-drop"
    assert sleeps.calls == []


def test_answers_without_an_id_or_body_are_classified_safely():
    unknown, again = classify(200, {"messaging_product": "whatsapp", "messages": []})
    assert (unknown.outcome, again) == (Outcome.UNKNOWN, False)
    throttled, again = classify(429, "<html>Too Many Requests</html>")
    assert (throttled.outcome, throttled.error_code, again) == (Outcome.RETRY, "HTTP 429", True)
    assert throttled.response == {"http_status": 429, "body": "<html>Too Many Requests</html>"}


# -- the shared rate limiter -----------------------------------------------------------------


def test_rate_limiter_spaces_reservations():
    now = [100.0]
    limiter = RateLimiter(4, clock=lambda: now[0])
    assert [limiter.reserve() for _ in range(4)] == [0.0, 0.25, 0.5, 0.75]
    now[0] += 10  # idle: the bucket refills, up to its burst only
    assert limiter.reserve() == 0.0 and limiter.reserve() == 0.25
    burst = RateLimiter(4, burst=3, clock=lambda: now[0])
    assert [burst.reserve() for _ in range(5)] == [0.0, 0.0, 0.0, 0.25, 0.5]


def test_concurrent_sends_hold_the_connections_rate(simulator, monkeypatch):
    rate, count = 20, 50
    simulator.whatsapp.knobs.messages_per_second = rate
    monkeypatch.setenv("AIRFLOW_CONN_WHATSAPP_DEFAULT", json.dumps(simulator.whatsapp_connection()))
    numbers = [_number() for _ in range(count)]

    async def scenario():
        async with WhatsAppClient.from_connection() as client:  # real sleeps
            started = time.monotonic()
            results = await asyncio.gather(*(template(n)(client) for n in numbers))
            return results, time.monotonic() - started

    results, elapsed = asyncio.run(scenario())
    assert all(r.outcome is Outcome.SENT for r in results), {r.error_code for r in results}
    # 50 sends at 20/s need (50 - 1) / 20 = 2.45 s at least; generous upper bound for a busy box.
    assert 2.2 <= elapsed <= 15
    accepted = sorted(
        m.accepted_at for m in simulator.whatsapp.messages() if m.wa_id in {n[1:] for n in numbers}
    )
    busiest = max(sum(1 for t in accepted if start <= t < start + 1.0) for start in accepted)
    assert busiest <= rate + 2


def test_sends_in_flight_follow_the_limit():
    # enough connections for the limit when each answer takes half a second, between 64 and 512
    assert [connections_for(rate) for rate in (1, 80, 128, 500, 1000, 100_000)] == [64, 64, 64, 250, 500, 512]
    fast = WhatsAppClient(access_token="t", phone_number_id="1", messages_per_second=1000)
    assert (fast.max_connections, in_flight(Channels(whatsapp=fast))) == (500, 500)
    fixed = WhatsAppClient(access_token="t", phone_number_id="1", messages_per_second=1000, max_connections=8)
    assert in_flight(Channels(whatsapp=fixed)) == 8
    assert in_flight(Channels()) == CONCURRENCY  # no WhatsApp client: email only


# -- bad input and configuration -------------------------------------------------------------


def test_bad_input_is_refused_before_sending(simulator):
    async def scenario():
        async with _client() as client:
            for call in (
                lambda: client.send_template(_number(), "cart_reminder_gentle_tr", "tr", ["Ayşe", ""], None),
                lambda: client.send_template(_number(), "cart_reminder_gentle_tr", "tr", "Ayşe", None),
                lambda: client.send_template("", *GENTLE_TR, None),
                lambda: client.send_template(_number(), *GENTLE_TR, "x" * 513),
                lambda: client.send_text(_number(), "", None),
            ):
                with pytest.raises(ValueError):
                    await call()

    asyncio.run(scenario())
    assert simulator.whatsapp.messages() == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"password": None}, "no access token"),
        ({"extra": {"api_version": "v21.0"}}, "no phone_number_id"),
        ({"extra": {"phone_number_id": "1", "messages_per_second": "fast"}}, "messages_per_second"),
    ],
)
def test_incomplete_connection_says_what_to_set(simulator, monkeypatch, change, message):
    monkeypatch.setenv("AIRFLOW_CONN_WHATSAPP_DEFAULT", json.dumps(simulator.whatsapp_connection() | change))
    with pytest.raises(ConfigurationError, match=message):
        WhatsAppClient.from_connection()


def test_knobs_are_checked_and_reset(simulator):
    simulator.whatsapp.knobs.status_callbacks = "sometimes"
    to = _number()
    answer = _raw_post(simulator, _template_body(to, *GENTLE_TR))
    assert answer.status_code == 500 and "status_callbacks" in answer.text
    assert simulator.whatsapp.messages(to) == []  # refused before anything was accepted
    knobs = simulator.whatsapp.knobs
    simulator.whatsapp.not_on_whatsapp(to)
    simulator.whatsapp.reset()
    assert simulator.whatsapp.knobs is knobs and knobs.status_callbacks == "all"
    [result] = _send(None, template(to))
    assert result.outcome is Outcome.SENT  # the registry was forgotten too
    with pytest.raises(ValueError, match="5xx"):
        simulator.whatsapp.inject_failures(1, status=404)


def test_simulate_command_prints_the_connection_and_points_webhooks_at_the_service(simulator, capsys):
    from cart_recovery.simulator.command import _announce

    _announce(simulator, None)
    printed = capsys.readouterr().out
    assert f"{simulator.base_url}/whatsapp" in printed and "export AIRFLOW_CONN_WHATSAPP_DEFAULT=" in printed
    assert simulator.whatsapp.webhook_url is None
    simulator.state.shops.clear()  # no shop webhooks to send: only the WhatsApp wiring is checked
    _announce(simulator, "http://127.0.0.1:8081/")
    assert simulator.whatsapp.webhook_url == "http://127.0.0.1:8081/webhooks/whatsapp"


# -- status callbacks and inbound messages into the real webhook service ---------------------


@contextlib.contextmanager
def _serve(app) -> Iterator[str]:
    """An ASGI app under uvicorn on a free loopback port, in a thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the webhook service did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def webhook_service(simulator, database: Database) -> Iterator[str]:
    """The webhook service on the test warehouse, configured from the simulator's connection, and
    the fake posting its webhooks to it."""
    config = WebhookConfig(database_url=database.url, shops={}, whatsapp=whatsapp_secrets())
    with _serve(create_app(config)) as url:
        simulator.whatsapp.set_webhook(f"{url}/webhooks/whatsapp")
        simulator.whatsapp.knobs.status_delay = 0.01
        yield url


def _stored(database: Database, message_id: str, expected: int, timeout: float = 10.0) -> list[tuple]:
    """raw.webhook_events rows of one WhatsApp message, once ``expected`` of them have landed."""
    deadline = time.monotonic() + timeout
    conn = psycopg2.connect(database.url)
    conn.autocommit = True
    try:
        while True:
            with conn.cursor() as cur:
                cur.execute(
                    "select topic, delivery_id, payload from raw.webhook_events "
                    "where platform = 'whatsapp' and split_part(delivery_id, ':', 1) = %s order by event_id",
                    (message_id,),
                )
                rows = cur.fetchall()
            if len(rows) >= expected or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)
    finally:
        conn.close()


def test_status_callbacks_arrive_signed_and_land_in_raw(simulator, webhook_service, database):
    to = _number()
    [result] = _send(None, template(to, callback_data="plan-42:2"))
    rows = _stored(database, result.provider_message_id, 3)
    assert [(topic, delivery) for topic, delivery, _ in rows] == [
        ("statuses", f"{result.provider_message_id}:sent"),
        ("statuses", f"{result.provider_message_id}:delivered"),
        ("statuses", f"{result.provider_message_id}:read"),
    ]
    envelope = rows[0][2]
    assert envelope["object"] == "whatsapp_business_account"
    value = envelope["entry"][0]["changes"][0]["value"]
    assert envelope["entry"][0]["changes"][0]["field"] == "messages"
    assert value["metadata"]["phone_number_id"] == simulator.whatsapp.phone_number_id
    [sent] = value["statuses"]
    assert sent["recipient_id"] == to[1:] and sent["biz_opaque_callback_data"] == "plan-42:2"
    assert (
        sent["conversation"]["origin"]["type"] == "marketing"
        and "expiration_timestamp" in sent["conversation"]
    )
    assert sent["pricing"] == {
        "billable": True,
        "pricing_model": "PMP",
        "type": "regular",
        "category": "marketing",
    }
    [read] = rows[2][2]["entry"][0]["changes"][0]["value"]["statuses"]
    assert read["status"] == "read" and "pricing" not in read
    deliveries = [d for d in simulator.whatsapp.deliveries() if d.message_id == result.provider_message_id]
    assert [(d.status, d.http_status) for d in deliveries] == [
        ("sent", 200),
        ("delivered", 200),
        ("read", 200),
    ]


def test_a_failure_meta_reports_later_comes_in_a_signed_failed_status(simulator, webhook_service, database):
    to = _number()
    simulator.whatsapp.fail_later(131026, to)
    [result] = _send(None, template(to, callback_data="plan-43:1"))
    assert result.outcome is Outcome.SENT  # accepted: the failure is known only later
    rows = _stored(database, result.provider_message_id, 2)
    assert [(topic, delivery) for topic, delivery, _ in rows] == [
        ("statuses", f"{result.provider_message_id}:sent"),
        ("statuses", f"{result.provider_message_id}:failed"),
    ]
    [failed] = rows[1][2]["entry"][0]["changes"][0]["value"]["statuses"]
    assert failed["status"] == "failed" and failed["biz_opaque_callback_data"] == "plan-43:1"
    [error] = failed["errors"]
    assert (error["code"], error["title"]) == (131026, "Message Undeliverable")
    assert error["error_data"]["details"] and "pricing" not in failed
    with pytest.raises(ValueError, match="error codes"):
        simulator.whatsapp.fail_later(999999, to)


def test_status_callback_modes(simulator, webhook_service, database):
    simulator.whatsapp.knobs.status_callbacks = "delivered"
    [partial] = _send(None, template(_number()))
    assert [r[1].split(":")[1] for r in _stored(database, partial.provider_message_id, 2)] == [
        "sent",
        "delivered",
    ]
    simulator.whatsapp.knobs.status_callbacks = "off"
    [silent] = _send(None, template(_number()))
    simulator.whatsapp.knobs.status_callbacks = "all"
    [loud] = _send(None, template(_number()))
    _stored(database, loud.provider_message_id, 3)  # the later message's callbacks have landed
    assert _stored(database, silent.provider_message_id, 0) == []
    assert all(d.message_id != silent.provider_message_id for d in simulator.whatsapp.deliveries())


def test_callbacks_signed_with_another_secret_are_refused(simulator, webhook_service, database):
    simulator.whatsapp.set_webhook(f"{webhook_service}/webhooks/whatsapp", app_secret="not-the-app-secret")
    simulator.whatsapp.knobs.status_callbacks = "delivered"
    [result] = _send(None, template(_number()))
    deadline = time.monotonic() + 10
    while len([d for d in simulator.whatsapp.deliveries() if d.message_id == result.provider_message_id]) < 2:
        assert time.monotonic() < deadline, simulator.whatsapp.deliveries()
        time.sleep(0.05)
    statuses = {
        d.http_status for d in simulator.whatsapp.deliveries() if d.message_id == result.provider_message_id
    }
    assert statuses == {401}
    assert _stored(database, result.provider_message_id, 0) == []


def test_inbound_message_is_posted_signed_and_opens_the_window(simulator, webhook_service, database):
    customer = _number()
    [closed] = _send(None, text(customer))
    assert closed.outcome is Outcome.FALLBACK
    answer = httpx.post(
        f"{simulator.base_url}/whatsapp/_inbound", json={"from": customer, "text": "DUR", "name": "Ayşe"}
    )
    assert answer.status_code == 200 and answer.json()["webhook_status"] == 200
    [(topic, delivery, payload)] = _stored(database, answer.json()["id"], 1)
    assert (topic, delivery) == ("messages", answer.json()["id"])
    value = payload["entry"][0]["changes"][0]["value"]
    assert value["messages"][0]["from"] == customer[1:] and value["messages"][0]["text"] == {"body": "DUR"}
    assert value["contacts"] == [{"profile": {"name": "Ayşe"}, "wa_id": customer[1:]}]
    [reply] = _send(None, text(customer))
    assert reply.outcome is Outcome.SENT


def test_signature_is_metas_hmac_of_the_raw_body(simulator):
    """Recomputed here independently of the package: sha256=<hex HMAC-SHA256(app secret, body)>."""
    received: list[tuple[bytes, str]] = []

    async def receiver(scope, receive, send):
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        headers = dict(scope["headers"])
        received.append((body, headers[b"x-hub-signature-256"].decode()))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    with _serve(receiver) as url:
        simulator.whatsapp.set_webhook(url, app_secret="s3cret")
        answer = httpx.post(
            f"{simulator.base_url}/whatsapp/_inbound", json={"from": _number(), "text": "Merhaba"}
        )
        assert answer.json()["webhook_status"] == 200
    [(body, signature)] = received
    assert signature == "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert json.loads(body)["object"] == "whatsapp_business_account"
