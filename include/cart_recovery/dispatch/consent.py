"""Consent taken back: STOP words, and the one way to record and check a revocation.

Every revocation path (a WhatsApp STOP, Meta's 131050 "stop promotions", an email unsubscribe,
the dispatcher's STOP outcome, an operator) goes through :func:`revoke`, and the send-time guard
asks :func:`revoked`. A revocation applies at once, whatever the last dbt build says.

STOP words (:func:`is_stop_message`)
-----------------------------------
Turkish law 6563 and every marketing rule require honouring an opt-out, so a real STOP must never
be missed; but a customer who writes "dur bir dakika, kargo ne zaman gelir?" ("wait a minute, when
does shipping arrive?") or "don't stop sending me offers" must not lose the messages they want.
The rules, applied to the folded text (see :func:`fold`: lower case, Turkish letters and accents
to ASCII so that ``İPTAL``, ``IPTAL``, ``ıptal`` and ``iptal`` are one word, apostrophes dropped so
``don't`` is ``dont``, everything but letters and digits a word break):

1. Whole message. Without polite filler (``lütfen``, ``please``, ``artık``, ``thanks``,
   ``i want to``...), the message is a stop phrase: one of the keywords (STOP, STOPALL,
   UNSUBSCRIBE, DUR, DURDUR, IPTAL, CANCEL, END, QUIT, OPT OUT, possibly repeated or with
   ``et``/``edin``), or a phrase such as "mesaj atmayın", "abonelikten çık", "beni listeden
   çıkarın", "stop sending me messages", "do not text me", "remove me from your list".
2. Leading keyword. The message starts with an unambiguous keyword, STOP, STOPALL, UNSUBSCRIBE
   or "abonelikten çık", whatever follows ("STOP. Not interested", "unsubscribe me please"),
   except where "stop" begins the name of a thing ("stop light", "stop lambası", "stop watch").
   DUR, IPTAL, CANCEL, END and QUIT count only as the whole message: as a first word they are
   as often "wait" or "cancel my order" as an opt-out.

Anything else is not a STOP: a keyword inside a sentence ("why did you stop the sale?"), a
negated one ("don't stop"). The assistant answering the conversation can still offer the opt-out.
The accepted false positive: a message starting with "stop" that goes on to ask something
("stop, how much is shipping?") revokes; honouring an opt-out that was not meant is the lesser harm.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from datetime import datetime
from typing import Any

import psycopg2.extensions
from psycopg2.extras import Json

from cart_recovery import phones

log = logging.getLogger(__name__)

CHANNELS = ("whatsapp", "email")

# -- STOP words ----------------------------------------------------------------------------------

_TURKISH = str.maketrans(
    {
        "İ": "i",
        "I": "i",
        "ı": "i",
        "Ş": "s",
        "ş": "s",
        "Ğ": "g",
        "ğ": "g",
        "Ü": "u",
        "ü": "u",
        "Ö": "o",
        "ö": "o",
        "Ç": "c",
        "ç": "c",
        "'": "",
        "’": "",
        "`": "",
        "´": "",
    }
)
_WORD = re.compile(r"[a-z0-9]+")

# Words that never change what a message asks for.
_FILLER = frozenset(
    [
        "please",
        "pls",
        "plz",
        "lutfen",
        "artik",
        "now",
        "anymore",
        "thanks",
        "thank",
        "you",
        "thx",
        "tesekkurler",
        "tesekkur",
        "ederim",
        "sagol",
        "sagolun",
        "ok",
        "okay",
        "tamam",
        "hey",
        "hi",
        "hello",
        "merhaba",
        "selam",
        "ya",
    ]
)
_FILLER_PREFIXES = (
    ("i", "want", "to"),
    ("i", "would", "like", "to"),
    ("id", "like", "to"),
    ("can", "you"),
    ("could", "you"),
)
_KEYWORDS = "stop|stopall|unsubscribe|dur|durdur|iptal|cancel|end|quit|optout|opt out"
_WHOLE = re.compile(
    "|".join(
        rf"(?:{p})"
        for p in (
            # keywords, repeated or with a Turkish "do it" ("iptal edin", "stop stop", "dur dur")
            rf"(?:{_KEYWORDS})(?: (?:{_KEYWORDS}))*(?: (?:et|edin|ediyorum|etmek istiyorum))?",
            # Turkish: unsubscribe, stop sending, take me off the list, do not disturb
            r"abonelik(?:ten|imden)? (?:cik|cikin|cikar|cikarin|cikmak istiyorum|iptal(?: et| edin)?)",
            r"(?:aboneligi|aboneligimi) (?:iptal (?:et|edin|ediyorum)|sonlandir|sonlandirin|bitir)",
            r"(?:bana )?(?:bir daha )?mesaj(?:lar|lari|larinizi)? "
            r"(?:atmayin|atma|gondermeyin|gonderme|yollamayin|istemiyorum|durdur|durdurun)",
            r"(?:bana )?bir daha (?:yazmayin|mesaj atmayin|ulasmayin)",
            r"(?:beni )?(?:listeden|listenizden) (?:cikar|cikarin|silin|sil)(?: beni)?",
            r"rahatsiz etmeyin",
            # English: stop sending, do not contact, remove me
            r"(?:stop|quit) (?:sending|messaging|texting|contacting)(?: me)?"
            r"(?: (?:messages|offers|these|this|promotions))?",
            r"(?:dont|do not) (?:message|text|contact|send|write to)(?: me)?"
            r"(?: (?:messages|offers|again))?",
            r"no more (?:messages|offers|promotions)",
            r"(?:remove|delete) me(?: from (?:the|your|this) (?:list|mailing list))?",
            r"(?:opt|take) me out",
            r"unsubscribe me",
        )
    )
)
_LEADING = re.compile(r"(?:stop|stopall|unsubscribe|abonelikten cik)(?: |$)")
# "stop" as the first half of a thing's name, not an opt-out: "stop light", "stop lambası".
_NOT_LEADING = re.compile(r"stop (?:light|lights|lamp|lamps|lamba|lambasi|lambalari|sign|watch)(?: |$)")


def fold(text: str) -> str:
    """Lower-case ASCII words separated by single spaces: Turkish letters (dotted and dotless i
    alike), accents and case folded away, apostrophes dropped, anything else a word break."""
    text = unicodedata.normalize("NFKD", text.translate(_TURKISH))
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    return " ".join(_WORD.findall(text))


def _without_filler(words: list[str]) -> list[str]:
    for prefix in _FILLER_PREFIXES:
        if tuple(words[: len(prefix)]) == prefix:
            words = words[len(prefix) :]
            break
    return [w for w in words if w not in _FILLER]


def is_stop_message(text: str | None) -> bool:
    """Whether an inbound message asks to stop the messages (rules in the module docstring)."""
    if not text:
        return False
    folded = fold(text)
    if not folded:
        return False
    if _LEADING.match(folded) and not _NOT_LEADING.match(folded):
        return True
    core = " ".join(_without_filler(folded.split()))
    return bool(core) and _WHOLE.fullmatch(core) is not None


# -- revocations ---------------------------------------------------------------------------------


def normalise_address(channel: str, address: str) -> str:
    """The address as revocations store it: E.164 (``+905551234567``) for WhatsApp, the lower-cased
    email for email. A WhatsApp id without ``+`` (Meta's ``from``/``wa_id``: ``447700900456``) is
    the same number: the normal form is ``cart_recovery.phones``', as in the plan and the guards."""
    if channel not in CHANNELS:
        raise ValueError(f"channel must be one of {', '.join(CHANNELS)}, got {channel!r}")
    if not isinstance(address, str) or not address.strip():
        raise ValueError(f"a {channel} address is required, got {address!r}")
    address = address.strip()
    if channel == "whatsapp":
        phone = phones.whatsapp_e164(address)
        if phone is None:
            raise ValueError(f"not an E.164 phone number: {address!r}")
        return phone
    if "@" not in address or any(c.isspace() for c in address):
        raise ValueError(f"not an email address: {address!r}")
    return address.lower()


def revoke(
    cursor: psycopg2.extensions.cursor,
    channel: str,
    address: str,
    source: str,
    at: datetime,
    detail: dict[str, Any] | None = None,
    shop_id: str | None = None,
) -> bool:
    """Record that ``address`` took back its ``channel`` consent at ``at``; True when recorded.

    ``shop_id`` None revokes for every shop (a WhatsApp STOP reaches the one business number all
    shops share). Idempotent: when the same revocation (channel, address, shop, source) is already
    recorded, nothing is added (an earlier ``at`` moves its time back), so a retried webhook, a
    second click on "unsubscribe" or a replayed status never add a row. Concurrent calls for one
    address are serialised by a transaction-scoped advisory lock. Runs in the caller's transaction.
    """
    address = normalise_address(channel, address)
    if not source:
        raise ValueError("a revocation needs its source (e.g. whatsapp_stop, email_unsubscribe)")
    if at.tzinfo is None:
        raise ValueError(f"revocation time must be timezone-aware, got {at!r}")
    cursor.execute(
        "select pg_advisory_xact_lock(hashtextextended('consent_revocations:' || %s || ':' || %s, 0))",
        (channel, address),
    )
    cursor.execute(
        "update ops.consent_revocations set revoked_at = least(revoked_at, %s) "
        "where channel = %s and address = %s and shop_id is not distinct from %s and source = %s "
        "returning revocation_id",
        (at, channel, address, shop_id, source),
    )
    if cursor.fetchone() is not None:
        return False
    cursor.execute(
        "insert into ops.consent_revocations (channel, address, shop_id, source, revoked_at, detail) "
        "values (%s, %s, %s, %s, %s, %s)",
        (channel, address, shop_id, source, at, Json(detail) if detail is not None else None),
    )
    log.info("Consent revoked: %s %s (shop %s) by %s", channel, address, shop_id or "all", source)
    return True


def revoked(
    cursor: psycopg2.extensions.cursor,
    channel: str,
    address: str,
    at: datetime,
    shop_id: str | None = None,
) -> bool:
    """Whether ``address`` had revoked its ``channel`` consent at or before ``at``.

    With ``shop_id``, revocations of that shop and of every shop count; without it, any
    revocation of the address counts (the stricter answer).
    """
    address = normalise_address(channel, address)
    cursor.execute(
        "select exists (select 1 from ops.consent_revocations "
        "where channel = %s and address = %s and revoked_at <= %s "
        "and (%s::text is null or shop_id is null or shop_id = %s))",
        (channel, address, at, shop_id, shop_id),
    )
    return bool(cursor.fetchone()[0])
