"""What a customer's message asks for (its intent) and which language it is in.

STOP is decided by one rule set only, :func:`cart_recovery.dispatch.consent.is_stop_message`, the
same the dispatcher and the webhook service use: a message is ``stop`` exactly when that function
says so, whatever the classifier thinks, so an opt-out is never missed for want of a training
example and an ordinary message ("durum ne?", "dur bir dakika") never revokes consent.

Every other intent comes from a small classifier (scikit-learn): TF-IDF over character n-grams of
the folded text (Turkish letters to ASCII, lower case, emoji and punctuation as word breaks, see
``consent.fold``), which copes with typos and missing Turkish characters, plus word n-grams,
into a logistic regression. It is trained from the labelled set in ``data/messages.csv`` (its
``train`` rows only; the ``test`` rows are held apart for the benchmark) the first time it is
needed in a process, in about a second, and kept for the life of the process. Training is
deterministic (a fixed solver, no random state, rows in file order), so the same file gives the
same model; nothing is downloaded and no pickled model is shipped (a pickle would tie the repo
to one scikit-learn version and be one more artefact to keep in step with the data).

The language (``tr`` or ``en``) comes from a second classifier on the same features, trained on
the ``language`` column, with Turkish letters (ç ğ ı ö ş ü) as a decisive hint; a message too
short to tell (one word: ``ok``, ``STOP``, an emoji) gets the caller's default, the cart's
or the shop's language.
"""

from __future__ import annotations

import csv
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cart_recovery.assistant.rules import cue_hits
from cart_recovery.dispatch.consent import fold, is_stop_message

INTENTS = (
    "size_fit",
    "shipping",
    "returns_trust",
    "discount",
    "account",
    "payment_problem",
    "product_question",
    "stop",
    "human",
    "other",
)
LANGUAGES = ("tr", "en")
MESSAGES_FILE = Path(__file__).parent / "data" / "messages.csv"
SPLITS = ("train", "test")

# How much one keyword cue (rules.py) adds to the classifier's probability of its intent, the
# score under which a message with no cue at all is "other", and the classifier's regularisation:
# chosen by 5-fold cross-validation on the train rows (never the test rows).
CUE_WEIGHT = 0.5
OTHER_BELOW = 0.3
REGULARISATION_C = 5.0
# The language classifier's: weaker regularisation, so that it is sure of a clear sentence.
LANGUAGE_C = 20.0
# Below this probability the language classifier's answer is a guess: the default wins.
_LANGUAGE_CONFIDENCE = 0.7
_TURKISH_LETTERS = re.compile(r"[çğışöüÇĞİŞÖÜ]")


@dataclass(frozen=True)
class LabelledMessage:
    text: str
    intent: str
    language: str
    split: str


@dataclass(frozen=True)
class Detection:
    intent: str
    confidence: float
    language: str


def load_messages(path: Path = MESSAGES_FILE) -> list[LabelledMessage]:
    """The labelled set, checked: known intents, languages and splits, no empty or repeated text."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    messages = []
    seen: set[str] = set()
    for number, row in enumerate(rows, start=2):
        message = LabelledMessage(row["text"].strip(), row["intent"], row["language"], row["split"])
        problems = [
            f"unknown intent {message.intent!r}" if message.intent not in INTENTS else "",
            f"unknown language {message.language!r}" if message.language not in LANGUAGES else "",
            f"unknown split {message.split!r}" if message.split not in SPLITS else "",
            "empty text" if not message.text else "",
            f"text repeated from an earlier row: {message.text!r}" if message.text in seen else "",
        ]
        problems = [p for p in problems if p]
        if problems:
            raise ValueError(f"{path}:{number}: {'; '.join(problems)}")
        seen.add(message.text)
        messages.append(message)
    return messages


def _features():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    return FeatureUnion(
        [
            ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=1)),
            ("words", TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True)),
        ]
    )


def _train(texts: Iterable[str], labels: Iterable[str], regularisation_c: float):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    model = Pipeline(
        [("features", _features()), ("classify", LogisticRegression(C=regularisation_c, max_iter=2000))]
    )
    model.fit([fold(t) for t in texts], list(labels))
    return model


class IntentClassifier:
    """The offline backend's intent and language detection (see the module docstring)."""

    def __init__(self, messages: list[LabelledMessage]) -> None:
        train = [m for m in messages if m.split == "train"]
        if not train:
            raise ValueError("the labelled set has no train rows")
        # STOP is the rule's alone: the classifier chooses among the other intents.
        answerable = [m for m in train if m.intent != "stop"]
        self._intents = _train([m.text for m in answerable], [m.intent for m in answerable], REGULARISATION_C)
        self._languages = _train([m.text for m in train], [m.language for m in train], LANGUAGE_C)

    def language(self, text: str, default: str) -> str:
        if _TURKISH_LETTERS.search(text):
            return "tr"
        folded = fold(text)
        # One word ("STOP", "ok", "merci") or less says little about the language.
        if len(folded.split()) < 2:
            return default
        probabilities = self._languages.predict_proba([folded])[0]
        best = int(probabilities.argmax())
        if probabilities[best] < _LANGUAGE_CONFIDENCE:
            return default
        return str(self._languages.classes_[best])

    def detect(self, text: str, default_language: str = "tr") -> Detection:
        language = self.language(text, default_language)
        if is_stop_message(text):
            return Detection("stop", 1.0, language)
        folded = fold(text)
        if not folded:  # emoji or punctuation only
            return Detection("other", 1.0, default_language)
        probabilities = self._intents.predict_proba([folded])[0]
        hits = cue_hits(folded)
        scores = {
            str(intent): float(p) + CUE_WEIGHT * min(hits.get(str(intent), 0), 3)
            for intent, p in zip(self._intents.classes_, probabilities, strict=True)
        }
        best = max(scores, key=scores.__getitem__)
        if not hits and scores[best] < OTHER_BELOW:
            best = "other"
        confidence = scores[best] / sum(scores.values())
        return Detection(best, round(confidence, 3), language)


@functools.cache
def classifier() -> IntentClassifier:
    """The process's classifier, trained from ``data/messages.csv`` on first use."""
    return IntentClassifier(load_messages())


def detect(text: str, default_language: str = "tr") -> Detection:
    """The intent and language of ``text`` (``default_language`` when too short to tell)."""
    return classifier().detect(text, default_language)
