"""A real SMTP server on loopback that keeps what it receives: the mail provider of tests and demos.

It speaks SMTP through aiosmtpd (ESMTP, 8BITMIME, SMTPUTF8), so the email channel is tested over
a socket with the same client code that talks to a real relay. Each accepted message is stored
with its envelope and parsed (headers, text and HTML parts). Failures a relay really answers can
be injected: a recipient refused for good (550), a temporary refusal (451) at MAIL, RCPT or after
the data, and a connection dropped right after the message was received (the answer lost: the
sender cannot know whether it went out).

    with SmtpSink() as sink:
        sink.connection_env()            # {"AIRFLOW_CONN_SMTP_DEFAULT": "..."}
        ...send...
        sink.wait_for(1)[0].subject

The server runs its own event loop in a background thread; the Python API is thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
import logging
import secrets
import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Literal

from aiosmtpd.smtp import SMTP, Envelope, Session

Stage = Literal["MAIL", "RCPT", "DATA"]

DEFAULT_FROM_EMAIL = "Cart Recovery <recovery@cart-recovery.example>"


@dataclass(frozen=True)
class ReceivedMessage:
    """One message as the sink accepted it: the envelope, the raw bytes and the parsed message."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    message: EmailMessage
    queue_id: str
    dropped: bool = False  # the connection was cut before the sender got the 250

    def header(self, name: str) -> str | None:
        """A header's value, RFC 2047 encoded words decoded (``Subject`` in Turkish reads as such)."""
        value = self.message[name]
        return None if value is None else str(value)

    @property
    def subject(self) -> str | None:
        return self.header("Subject")

    @property
    def message_id(self) -> str | None:
        return self.header("Message-ID")

    def _part(self, subtype: str) -> str | None:
        part = self.message.get_body(preferencelist=(subtype,))
        return None if part is None else part.get_content()

    @property
    def text(self) -> str | None:
        return self._part("plain")

    @property
    def html(self) -> str | None:
        return self._part("html")


@dataclass
class _Failure:
    code: int
    text: str
    remaining: int


@dataclass
class _Faults:
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)
    next: dict[str, deque[_Failure]] = field(default_factory=dict)
    drops_after_data: int = 0


class _Handler:
    """aiosmtpd's hooks; they run on the sink's loop and consult the sink for injected faults."""

    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_MAIL(self, server, session, envelope: Envelope, address: str, mail_options):
        failure = self.sink._take_failure("MAIL")
        if failure:
            return failure
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server, session, envelope: Envelope, address: str, rcpt_options):
        refused = self.sink._refusal(address)
        if refused:
            code, text = refused
            return f"{code} {text}"
        failure = self.sink._take_failure("RCPT")
        if failure:
            return failure
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope):
        failure = self.sink._take_failure("DATA")
        if failure:  # refused after the data: not kept, as a relay would not queue it
            return failure
        drop = self.sink._take_drop()
        received = self.sink._store(envelope, dropped=drop)
        if drop:
            # The message is queued, then the connection dies before the 250 reaches the sender.
            server.transport.abort()
            await asyncio.sleep(3600)  # cancelled at once by aiosmtpd's connection_lost
        return f"250 2.0.0 Ok: queued as {received.queue_id}"


class SmtpSink:
    """An SMTP server on ``host`` (loopback) and a free port, keeping every accepted message."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, hostname: str = "smtp-sink.localhost"):
        self.host = host
        self._requested_port = port
        self.hostname = hostname
        self.port = 0
        self._lock = threading.Condition()
        self._messages: list[ReceivedMessage] = []
        self._faults = _Faults()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None

    # --- lifecycle ---

    def start(self) -> SmtpSink:
        if self._thread is not None:
            raise RuntimeError("the SMTP sink is already running")
        logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command at INFO
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._requested_port))
        sock.listen(64)
        self.port = sock.getsockname()[1]
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, daemon=True, name="smtp-sink")
        self._thread.start()
        handler = _Handler(self)

        def factory() -> SMTP:
            return SMTP(handler, hostname=self.hostname, enable_SMTPUTF8=True, loop=loop)

        future = asyncio.run_coroutine_threadsafe(loop.create_server(factory, sock=sock), loop)
        try:
            self._server = future.result(timeout=10)
        except Exception:
            self.stop()
            sock.close()
            raise
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:  # open sessions
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = self._server = None

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- what arrived ---

    @property
    def messages(self) -> list[ReceivedMessage]:
        with self._lock:
            return list(self._messages)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[ReceivedMessage]:
        """At least ``count`` messages, waiting up to ``timeout`` seconds; TimeoutError otherwise."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._messages) >= count, timeout=timeout):
                raise TimeoutError(f"the SMTP sink received {len(self._messages)} messages, expected {count}")
            return list(self._messages)

    def to(self, address: str) -> list[ReceivedMessage]:
        """The messages whose envelope names ``address`` (case-insensitive)."""
        wanted = address.lower()
        return [m for m in self.messages if wanted in (r.lower() for r in m.rcpt_tos)]

    def clear(self) -> None:
        """Forget the messages and every injected failure."""
        with self._lock:
            self._messages.clear()
            self._faults = _Faults()

    # --- injected failures ---

    def refuse_recipient(
        self, address: str, code: int = 550, text: str = "5.1.1 Recipient address rejected: User unknown"
    ) -> None:
        """Answer ``RCPT TO:<address>`` with ``code`` for as long as the sink runs."""
        with self._lock:
            self._faults.refused[address.lower()] = (code, text)

    def fail_next(
        self,
        stage: Stage,
        code: int = 451,
        text: str = "4.3.0 Temporary failure, try again later",
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` MAIL, RCPT or end-of-data with ``code`` instead of 250."""
        if stage not in ("MAIL", "RCPT", "DATA"):
            raise ValueError(f"stage must be MAIL, RCPT or DATA, not {stage!r}")
        with self._lock:
            self._faults.next.setdefault(stage, deque()).append(_Failure(code, text, times))

    def drop_after_data(self, times: int = 1) -> None:
        """Keep the next ``times`` messages but cut the connection before answering 250."""
        with self._lock:
            self._faults.drops_after_data += times

    # --- how to reach it ---

    def connection(self, from_email: str = DEFAULT_FROM_EMAIL) -> dict:
        """The Airflow smtp connection (JSON form): plain SMTP on loopback, no TLS, no login."""
        if not self.port:
            raise RuntimeError("the SMTP sink is not running")
        return {
            "conn_type": "smtp",
            "host": self.host,
            "port": self.port,
            "extra": {"from_email": from_email, "disable_ssl": True, "disable_tls": True, "timeout": 10},
        }

    def connection_env(self, conn_id: str = "smtp_default", from_email: str = DEFAULT_FROM_EMAIL) -> dict:
        return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(self.connection(from_email))}

    # --- called from the handler, on the sink's loop ---

    def _refusal(self, address: str) -> tuple[int, str] | None:
        with self._lock:
            return self._faults.refused.get(address.lower())

    def _take_failure(self, stage: Stage) -> str | None:
        with self._lock:
            queue = self._faults.next.get(stage)
            if not queue:
                return None
            failure = queue[0]
            failure.remaining -= 1
            if failure.remaining <= 0:
                queue.popleft()
            return f"{failure.code} {failure.text}"

    def _take_drop(self) -> bool:
        with self._lock:
            if self._faults.drops_after_data <= 0:
                return False
            self._faults.drops_after_data -= 1
            return True

    def _store(self, envelope: Envelope, *, dropped: bool) -> ReceivedMessage:
        raw = envelope.original_content or b""
        message = email.message_from_bytes(raw, policy=email.policy.default)
        received = ReceivedMessage(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            raw=raw,
            message=message,  # type: ignore[arg-type]  # policy.default parses to EmailMessage
            queue_id=secrets.token_hex(5).upper(),
            dropped=dropped,
        )
        with self._lock:
            self._messages.append(received)
            self._lock.notify_all()
        return received
