"""Intent and language detection (cart_recovery.assistant.intents): TR and EN, typos, no Turkish
letters; STOP only where consent.is_stop_message says so; the labelled set and its split."""

from __future__ import annotations

from collections import Counter

import pytest

from cart_recovery.assistant import intents
from cart_recovery.dispatch.consent import is_stop_message

# Messages that are not in data/messages.csv: what the classifier must generalise to.
EXAMPLES = [
    # size_fit
    ("boyum 1.70 kilom 68, gömlekte M mi L mi?", "size_fit", "tr"),
    ("boyum 1.70 kilom 68 gomlekte M mi L mi", "size_fit", "tr"),  # no Turkish letters
    ("bedn tablosu atarmisiniz", "size_fit", "tr"),  # typos
    ("what size for 178cm 72kg?", "size_fit", "en"),
    ("does it run small or true to size", "size_fit", "en"),
    # shipping
    ("kargo ücreti ne kadar acaba?", "shipping", "tr"),
    ("kargo ucreti ne kadr", "shipping", "tr"),
    ("how many days for delivery to manchester?", "shipping", "en"),
    ("is shiping free?", "shipping", "en"),
    # returns_trust
    ("iade süreniz kaç gün?", "returns_trust", "tr"),
    ("iade edebiliyor muyum begenmezsem", "returns_trust", "tr"),
    ("can I send it back if I dont like it", "returns_trust", "en"),
    ("is this shop legit or a scam?", "returns_trust", "en"),
    # discount
    ("indirim kodu verir misiniz?", "discount", "tr"),
    ("indirim kodu verirmisiniz", "discount", "tr"),
    ("do you have any discount code for me?", "discount", "en"),
    # account
    ("üye olmak zorunda mıyım?", "account", "tr"),
    ("uye olmadan alabilir miyim", "account", "tr"),
    ("can I order without making an account?", "account", "en"),
    # payment_problem
    ("kartım reddedildi ne yapmalıyım", "payment_problem", "tr"),
    ("kartim reddedildi", "payment_problem", "tr"),
    ("taksit yapıyor musunuz?", "payment_problem", "tr"),
    ("my card keeps getting declined", "payment_problem", "en"),
    # product_question
    ("bu gömleğin mavisi var mı?", "product_question", "tr"),
    ("stokta var mi bu urun", "product_question", "tr"),
    ("is the sweater 100% wool?", "product_question", "en"),
    # human
    ("müşteri temsilcisiyle görüşmek istiyorum", "human", "tr"),
    ("musteri temsilcisi ile konusmak istiyorum", "human", "tr"),
    ("I want to talk to a real person please", "human", "en"),
    # other
    ("tamamdır teşekkür ederim", "other", "tr"),
    ("good afternoon", "other", "en"),
]

STOP_VARIANTS = [
    "STOP",
    "stop",
    "dur",
    "DUR",
    "mesaj atmayın",
    "mesaj atmayin",
    "MESAJ ATMAYIN",
    "abonelikten çık",
    "abonelikten cik",
    "ABONELİKTEN ÇIK",
    "unsubscribe",
    "Unsubscribe",
    "stop sending me messages",
    "beni listeden çıkarın lütfen",
]
NOT_STOP = [
    "durum ne?",
    "kargo durdu mu",
    "stop light",
    "dur bir dakika, kargo ne zaman gelir?",
    "siparişimin durumu ne",
    "why did you stop the sale?",
    "don't stop sending me offers",
    "indirim durumu nedir",
]


@pytest.mark.parametrize(("text", "intent", "language"), EXAMPLES)
def test_intent_and_language(text, intent, language):
    detection = intents.detect(text, default_language="en" if language == "tr" else "tr")
    assert (detection.intent, detection.language) == (intent, language)
    assert 0 < detection.confidence <= 1


@pytest.mark.parametrize("text", STOP_VARIANTS)
def test_stop_variants_are_stop(text):
    assert is_stop_message(text)
    assert intents.detect(text).intent == "stop"


@pytest.mark.parametrize("text", NOT_STOP)
def test_ordinary_messages_are_not_stop(text):
    assert not is_stop_message(text)
    assert intents.detect(text).intent != "stop"


def test_one_word_gets_the_default_language():
    assert intents.detect("ok", default_language="tr").language == "tr"
    assert intents.detect("STOP", default_language="tr").language == "tr"
    assert intents.detect("👍", default_language="en").language == "en"
    assert intents.detect("teşekkürler", default_language="en").language == "tr"  # Turkish letters decide


def test_emoji_only_is_other():
    assert intents.detect("🙏🙏").intent == "other"


def test_labelled_set_is_large_covers_every_intent_and_splits_disjointly():
    messages = intents.load_messages()
    assert len(messages) >= 400
    train = {m.text for m in messages if m.split == "train"}
    test = {m.text for m in messages if m.split == "test"}
    assert train and test and not train & test
    for split in ("train", "test"):
        covered = Counter(m.intent for m in messages if m.split == split)
        assert set(covered) == set(intents.INTENTS), split
        languages = Counter((m.intent, m.language) for m in messages if m.split == split)
        assert all(languages[(i, lang)] for i in intents.INTENTS for lang in intents.LANGUAGES)
    # Every STOP row is a STOP by the one rule set, and no other row is.
    assert all(is_stop_message(m.text) == (m.intent == "stop") for m in messages)


def test_classifier_never_sees_test_rows(monkeypatch):
    messages = intents.load_messages()
    seen: list[str] = []
    real_train = intents._train

    def spy(texts, labels, regularisation_c):
        texts = list(texts)
        seen.extend(texts)
        return real_train(texts, labels, regularisation_c)

    monkeypatch.setattr(intents, "_train", spy)
    intents.IntentClassifier(messages[::4])
    assert seen and not {m.text for m in messages if m.split == "test"} & set(seen)


def test_a_bad_labelled_row_is_refused_with_its_line(tmp_path):
    path = tmp_path / "messages.csv"
    path.write_text("text,intent,language,split\nkargo?,shiping,tr,train\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"messages.csv:2: unknown intent 'shiping'"):
        intents.load_messages(path)


def test_training_is_deterministic():
    messages = intents.load_messages()
    texts = [m.text for m in messages if m.split == "test"]
    subset = messages[::3]
    first, second = intents.IntentClassifier(subset), intents.IntentClassifier(subset)
    assert [first.detect(t) for t in texts] == [second.detect(t) for t in texts]
