"""The email channel: one recovery email over SMTP, and the relay's answer as an ``Outcome``.

The connection follows the Airflow smtp provider (``SmtpHook``): host, port, login, password and
the extras ``from_email``, ``disable_ssl`` (SSL from the first byte unless true), ``disable_tls``
(STARTTLS unless true; not attempted on an SSL connection), ``timeout`` (seconds, 30) and
``ssl_context`` (``default`` or ``none``: no certificate check). It is read through
``cart_recovery.connections`` so the same ``AIRFLOW_CONN_SMTP_DEFAULT`` works inside and outside
Airflow. Booleans written as strings in the URI form ("false") mean what they say. The hook's
connect retries (``retry_limit``) are not repeated here: a failed connect is ``RETRY`` and the
dispatcher sends the row again later.

Each message is multipart/alternative (text, then HTML), carries RFC 8058 one-click unsubscribe
headers and a ``Message-ID`` made here, which is returned as the provider_message_id: it is the
only id a relay and a bounce share with us.

Outcomes, by what the relay could have done with the message:

- refused with 5xx at MAIL, RCPT or after the data -> ``REJECTED`` (permanent for this message);
- refused with 4xx, or no connection at all (refused, timeout, TLS or login failure) -> ``RETRY``:
  the message was certainly not accepted;
- the connection dropped or timed out after the message data was written and before the answer
  -> ``UNKNOWN``: the relay may have queued it, so it is never sent again automatically.
"""

from __future__ import annotations

import email.policy
import smtplib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, formatdate, make_msgid, parseaddr
from typing import Any
from urllib.parse import urlsplit

from cart_recovery.connections import get_connection
from cart_recovery.dispatch.message import Outcome, SendResult
from cart_recovery.dispatch.templates import EmailContent
from cart_recovery.errors import ConfigurationError

SMTP_CONN_ID = "smtp_default"

# Headers this module writes; a caller's extra headers may not replace them.
_MANAGED_HEADERS = frozenset(
    name.lower()
    for name in (
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
        "List-Unsubscribe-Post",
    )
)
_ONE_CLICK = "List-Unsubscribe=One-Click"


def _flag(value: Any, name: str, conn_id: str) -> bool:
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise ConfigurationError(
        f"Airflow connection {conn_id!r}: extra {name!r} must be true or false, not {value!r}"
    )


def _address(value: str, *, bare: bool = True) -> Address:
    """``local@domain`` as an Address (``bare=False``: a display name may precede it in <>);
    ValueError when it is not one address."""
    _, addr = parseaddr(value)
    local, at, domain = addr.rpartition("@")
    if (
        not at
        or not local
        or "." not in domain
        or any(c.isspace() or c in "<>,;" for c in addr)
        or (bare and value.strip() != addr)
    ):
        raise ValueError(f"not an email address: {value!r}")
    return Address(addr_spec=addr)


@dataclass(frozen=True)
class SmtpSettings:
    """Where and how to hand messages over; ``from_email`` may carry a display name."""

    host: str
    from_email: str
    port: int | None = None
    login: str | None = None
    password: str | None = None
    use_ssl: bool = True
    starttls: bool = True
    timeout: float = 30.0
    verify_certificate: bool = True

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigurationError("the SMTP connection has no host")
        try:
            _address(self.from_email, bare=False)
        except ValueError as exc:
            raise ConfigurationError(f"the SMTP from_email is not an address: {self.from_email!r}") from exc

    @property
    def sender(self) -> Address:
        name, addr = parseaddr(self.from_email)
        return Address(display_name=name, addr_spec=addr)

    @property
    def domain(self) -> str:
        return self.sender.domain


class _Tracking:
    """Knows whether the message data went out: after that, a lost answer leaves it unknown."""

    data_sent = False
    _after_354 = False

    def getreply(self):
        code, text = super().getreply()  # type: ignore[misc]
        self._after_354 = code == 354
        return code, text

    def send(self, s):
        data = self._after_354  # the first write after "354 End data with <CR><LF>.<CR><LF>"
        super().send(s)  # type: ignore[misc]
        if data:
            self.data_sent = True


class _SMTP(_Tracking, smtplib.SMTP):
    pass


class _SMTP_SSL(_Tracking, smtplib.SMTP_SSL):
    pass


class _Refused(Exception):
    def __init__(self, stage: str, code: int, text: str) -> None:
        super().__init__(f"{stage} {code} {text}")
        self.stage, self.code, self.text = stage, code, text


def _decode(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


class EmailSender:
    """Sends one recovery email per call over its own SMTP session."""

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings

    @classmethod
    def from_connection(cls, conn_id: str = SMTP_CONN_ID) -> EmailSender:
        conn = get_connection(conn_id)
        extra = conn.extra_dejson if isinstance(conn.extra_dejson, dict) else {}
        from_email = str(extra.get("from_email") or "").strip()
        if not from_email:
            raise ConfigurationError(
                f"Airflow connection {conn_id!r} has no 'from_email' in its extra; add it, e.g. "
                '"extra": {"from_email": "Shop <shop@example.com>"}'
            )
        if str(extra.get("auth_type", "basic")).lower() != "basic":
            raise ConfigurationError(f"Airflow connection {conn_id!r}: only basic SMTP login is supported")
        ssl_context = extra.get("ssl_context") or "default"
        if ssl_context not in ("default", "none"):
            raise ConfigurationError(
                f"Airflow connection {conn_id!r}: ssl_context must be 'default' or 'none', "
                f"not {ssl_context!r}"
            )
        try:
            timeout = float(extra.get("timeout", 30))
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"Airflow connection {conn_id!r}: timeout must be a number") from exc
        return cls(
            SmtpSettings(
                host=conn.host or "",
                port=conn.port,
                from_email=from_email,
                login=conn.login or None,
                password=conn.password or None,
                use_ssl=not _flag(extra.get("disable_ssl"), "disable_ssl", conn_id),
                starttls=not _flag(extra.get("disable_tls"), "disable_tls", conn_id),
                timeout=timeout,
                verify_certificate=ssl_context == "default",
            )
        )

    # --- the message ---

    def build(
        self,
        to: str,
        content: EmailContent,
        headers: Mapping[str, str] | None = None,
        *,
        sent_at: datetime | None = None,
    ) -> EmailMessage:
        """The MIME message; ValueError for a bad address, header or unsubscribe link.

        ``Date`` is ``sent_at`` (the dispatcher's ``now``); without it, the moment of building,
        as a mail client stamps it.
        """
        headers = dict(headers or {})
        unsubscribe = self._unsubscribe_header(content, headers)
        for name, value in headers.items():
            if not name or any(not (33 <= ord(c) <= 126) or c == ":" for c in name):
                raise ValueError(f"not a header name: {name!r}")
            if name.lower() in _MANAGED_HEADERS:
                raise ValueError(f"header {name!r} is set by the email channel, not by the caller")
            if "\r" in str(value) or "\n" in str(value):
                raise ValueError(f"header {name!r} has a line break in its value")
        if sent_at is not None and (sent_at.tzinfo is None or sent_at.utcoffset() is None):
            raise ValueError(f"sent_at must carry its time zone, got {sent_at!r}")
        if "\r" in content.subject or "\n" in content.subject:
            raise ValueError("the subject has a line break")

        recipient = _address(to)
        sender = self.settings.sender
        if content.from_name:
            sender = Address(display_name=content.from_name, addr_spec=sender.addr_spec)
        msg = EmailMessage(policy=email.policy.SMTP)
        msg["From"] = sender
        msg["To"] = recipient
        msg["Subject"] = content.subject
        msg["Date"] = format_datetime(sent_at) if sent_at else formatdate(usegmt=True)
        msg["Message-ID"] = make_msgid(domain=self.settings.domain)
        msg["List-Unsubscribe"] = unsubscribe
        msg["List-Unsubscribe-Post"] = _ONE_CLICK
        for name, value in headers.items():
            if name.lower() != "list-unsubscribe":
                msg[name] = value
        # quoted-printable keeps the body 7-bit: no relay needs 8BITMIME to carry Turkish text
        msg.set_content(content.text, cte="quoted-printable")
        msg.add_alternative(content.html, subtype="html", cte="quoted-printable")
        return msg

    @staticmethod
    def _unsubscribe_header(content: EmailContent, headers: dict[str, str]) -> str:
        given = next((v for k, v in headers.items() if k.lower() == "list-unsubscribe"), None)
        from_content = f"<{content.unsubscribe_url}>" if content.unsubscribe_url else None
        if given and from_content and given.strip() != from_content:
            raise ValueError(f"List-Unsubscribe {given!r} differs from the content's {from_content!r}")
        value = (given or from_content or "").strip()
        if not value:
            raise ValueError("a recovery email needs an unsubscribe link (List-Unsubscribe, RFC 8058)")
        url = value[1:-1] if value.startswith("<") and value.endswith(">") else ""
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise ValueError(f"List-Unsubscribe must be <https://...>, got {value!r}")
        return value

    # --- the send ---

    def send(
        self,
        to: str,
        content: EmailContent,
        headers: Mapping[str, str] | None = None,
        *,
        sent_at: datetime | None = None,
    ) -> SendResult:
        try:
            _address(to)
        except ValueError as exc:
            return SendResult(Outcome.REJECTED, error_code="invalid_address", error=str(exc))
        msg = self.build(to, content, headers, sent_at=sent_at)
        message_id = str(msg["Message-ID"])
        recipient = str(msg["To"].addresses[0].addr_spec)
        international = not (recipient.isascii() and self.settings.sender.addr_spec.isascii())
        payload = msg.as_bytes(policy=msg.policy.clone(utf8=international))

        try:
            client = self._connect()
        except (OSError, smtplib.SMTPException) as exc:
            return self._not_connected(exc)
        try:
            code, reply = self._transaction(client, recipient, payload, international)
        except _Refused as refused:
            outcome = Outcome.REJECTED if 500 <= refused.code < 600 else Outcome.RETRY
            return SendResult(
                outcome,
                error_code=str(refused.code),
                error=f"{refused.stage}: {refused.text}",
                response={"stage": refused.stage, "code": refused.code, "message": refused.text},
            )
        except (OSError, smtplib.SMTPException) as exc:
            if client.data_sent:
                return SendResult(
                    Outcome.UNKNOWN,
                    provider_message_id=message_id,
                    error_code="no_answer",
                    error=f"the connection ended after the message was sent, before the answer: {exc}",
                )
            return SendResult(Outcome.RETRY, error_code="disconnected", error=f"{type(exc).__name__}: {exc}")
        finally:
            self._close(client)
        return SendResult(
            Outcome.SENT,
            provider_message_id=message_id,
            response={"code": code, "message": reply, "recipient": recipient},
        )

    def _connect(self) -> _SMTP | _SMTP_SSL:
        s = self.settings
        context = ssl.create_default_context()
        if not s.verify_certificate:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        client: _SMTP | _SMTP_SSL
        if s.use_ssl:
            client = _SMTP_SSL(s.host, s.port or 0, timeout=s.timeout, context=context)
        else:
            client = _SMTP(s.host, s.port or 0, timeout=s.timeout)
        try:
            client.ehlo()
            if s.starttls and not s.use_ssl:
                client.starttls(context=context)
                client.ehlo()
            if s.login and s.password:
                client.login(s.login, s.password)
        except BaseException:
            client.close()
            raise
        return client

    def _transaction(
        self, client: _SMTP | _SMTP_SSL, recipient: str, payload: bytes, international: bool
    ) -> tuple[int, str]:
        options = []
        if international:
            if not client.has_extn("smtputf8"):
                raise _Refused("MAIL", 553, "the relay does not accept non-ASCII addresses (no SMTPUTF8)")
            options.append("SMTPUTF8")
        code, reply = client.mail(self.settings.sender.addr_spec, options)
        if code != 250:
            raise _Refused("MAIL", code, _decode(reply))
        code, reply = client.rcpt(recipient)
        if code not in (250, 251):
            raise _Refused("RCPT", code, _decode(reply))
        try:
            code, reply = client.data(payload)
        except smtplib.SMTPDataError as exc:  # DATA itself refused (no 354)
            raise _Refused("DATA", exc.smtp_code, _decode(exc.smtp_error)) from exc
        if code != 250:
            raise _Refused("DATA", code, _decode(reply))
        return code, _decode(reply)

    @staticmethod
    def _not_connected(exc: BaseException) -> SendResult:
        code = getattr(exc, "smtp_code", None)
        detail = _decode(getattr(exc, "smtp_error", b"")) if code else str(exc)
        kind = (
            "auth_failed"
            if isinstance(exc, smtplib.SMTPAuthenticationError)
            else "starttls_unsupported"
            if isinstance(exc, smtplib.SMTPNotSupportedError)
            else "connect_failed"
        )
        return SendResult(
            Outcome.RETRY,
            error_code=str(code) if code else kind,
            error=f"{kind}: {type(exc).__name__}: {detail}",
        )

    @staticmethod
    def _close(client: smtplib.SMTP) -> None:
        try:
            client.quit()
        except (OSError, smtplib.SMTPException):
            client.close()
