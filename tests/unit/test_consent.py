"""STOP words: what revokes WhatsApp consent, and what must not (cart_recovery.dispatch.consent)."""

from __future__ import annotations

import pytest

from cart_recovery.dispatch.consent import fold, is_stop_message, normalise_address

STOPS = [
    # the keywords the law and Meta's rules name, in every case and spelling
    "STOP",
    "stop",
    "Stop.",
    "DUR",
    "dur",
    "IPTAL",
    "İPTAL",
    "iptal",
    "ıptal",
    "İptal!",
    "UNSUBSCRIBE",
    "Unsubscribe",
    "STOPALL",
    "opt out",
    "CANCEL",
    "quit",
    "end",
    "  stop  \n",
    "🛑 STOP 🛑",
    "stop stop",
    "DUR DUR",
    # whole message with polite filler or a "do it"
    "dur lütfen",
    "Dur lutfen",
    "lütfen dur",
    "DUR LÜTFEN",
    "stop please",
    "Please stop",
    "iptal edin",
    "İptal et lütfen",
    "I want to unsubscribe",
    "ok stop",
    # Turkish phrases, with and without Turkish letters
    "mesaj atmayın",
    "Mesaj atmayin",
    "MESAJ ATMAYIN",
    "lütfen bana bir daha mesaj atmayın",
    "mesaj göndermeyin",
    "Mesaj istemiyorum",
    "mesajları durdurun",
    "abonelikten çık",
    "Abonelikten cik",
    "ABONELİKTEN ÇIK",
    "abonelikten çıkmak istiyorum",
    "aboneliğimi iptal edin",
    "beni listeden çıkarın",
    "bir daha yazmayın",
    "rahatsız etmeyin",
    # English phrases
    "stop sending me messages",
    "Stop messaging me",
    "STOP texting me!!",
    "don't message me",
    "do not text me again",
    "no more messages",
    "remove me from your list",
    "unsubscribe me please",
    # a leading unambiguous keyword, whatever follows
    "STOP. Not interested",
    "listenizden silin beni",
    "Stop, I already bought it elsewhere",
    "unsubscribe from all of this",
    "Abonelikten çık, teşekkürler",
]

NOT_STOPS = [
    "durum ne?",
    "kargo durdu mu",
    "stop light",  # "stop" begins the name of a thing: a product question, not an opt-out
    "Stop lambası var mı?",
    "",
    "   ",
    "ok",
    "Thanks!",
    "Merhaba, kargo ücreti ne kadar?",
    "Do you ship to Izmir?",
    # a keyword inside a sentence or negated
    "don't stop sending me offers",
    "Do not stop, I love your offers",
    "why did you stop the sale?",
    "Can I stop by the store?",
    "Stopped by yesterday, loved it",
    # DUR / IPTAL / CANCEL / END as a first word are as often "wait" or "cancel my order"
    "dur bir dakika, kargo ne zaman gelir?",
    "Dur, önce bedenimi sorayım",
    "iptal etmek istiyorum siparişimi",
    "İptal ettiğim sipariş ne oldu?",
    "cancel my order please",
    "end of season sale?",
    "istemiyorum",  # "I don't want (it)": an answer to a question, not an opt-out
    "mesaj",
]


@pytest.mark.parametrize("text", STOPS)
def test_stop_messages_revoke(text):
    assert is_stop_message(text) is True


@pytest.mark.parametrize("text", NOT_STOPS)
def test_other_messages_do_not(text):
    assert is_stop_message(text) is False


def test_none_is_no_stop():
    assert is_stop_message(None) is False


@pytest.mark.parametrize(
    ("text", "folded"),
    [
        ("İPTAL", "iptal"),
        ("IPTAL", "iptal"),
        ("ıptal", "iptal"),
        ("i̇ptal", "iptal"),  # i + combining dot above, as "İ".lower() makes it
        ("Abonelikten ÇIK!", "abonelikten cik"),
        ("MESAJ ATMAYIN", "mesaj atmayin"),
        ("don't  stop", "dont stop"),
        ("Ağır, şık, güzel, önü", "agir sik guzel onu"),
        ("Café  crème", "cafe creme"),
    ],
)
def test_fold(text, folded):
    assert fold(text) == folded


@pytest.mark.parametrize(
    ("channel", "address", "normalised"),
    [
        ("whatsapp", "905551234567", "+905551234567"),
        ("whatsapp", "+905551234567", "+905551234567"),
        ("whatsapp", " +447700900123 ", "+447700900123"),
        ("email", "Ayse.Yilmaz@Example.COM", "ayse.yilmaz@example.com"),
    ],
)
def test_normalise_address(channel, address, normalised):
    assert normalise_address(channel, address) == normalised


@pytest.mark.parametrize(
    ("channel", "address", "message"),
    [
        ("sms", "+905551234567", "channel must be one of whatsapp, email"),
        ("whatsapp", "", "address is required"),
        ("whatsapp", "0555 123 45 67", "not an E.164 phone number"),
        ("whatsapp", "+0123456789", "not an E.164 phone number"),
        ("whatsapp", "+12", "not an E.164 phone number"),
        ("email", "no-at-sign.example.com", "not an email address"),
        ("email", "two words@example.com", "not an email address"),
    ],
)
def test_normalise_address_refuses_bad_input(channel, address, message):
    with pytest.raises(ValueError, match=message):
        normalise_address(channel, address)
