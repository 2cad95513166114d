"""``assistant_intents``: how well the offline assistant understands customers, and how fast it answers.

On the held-apart ``test`` rows of ``assistant/data/messages.csv`` (the classifier is trained on the
``train`` rows only): accuracy per intent and overall, language accuracy (messages of two words or
more; one word gets the shop's language by design), and the misses. STOP is measured on every row,
since no STOP is learned (``consent.is_stop_message`` decides): recall over the ``stop`` rows and
the number of other messages taken as STOP. Reply latency: :func:`assistant.replies.reply` for
each test message, with the example shops and a cart, after the one-off training (timed apart).
Targets (issue 12): overall >= 90%, STOP recall 100%, no false STOP.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

from cart_recovery import settings
from cart_recovery.bench.results import write_result

log = logging.getLogger(__name__)

TARGET_ACCURACY = 0.90


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    rank = max(1, round(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def main(*, rounds: int = 5, quick: bool = False) -> dict[str, Any]:
    from cart_recovery.assistant import intents
    from cart_recovery.assistant.replies import Cart, CartLine, reply
    from cart_recovery.dispatch.consent import is_stop_message
    from cart_recovery.shops import load_shops

    messages = intents.load_messages()
    test = [m for m in messages if m.split == "test"]
    started = time.perf_counter()
    classifier = intents.classifier()
    training_s = time.perf_counter() - started

    correct: Counter[str] = Counter()
    total: Counter[str] = Counter()
    misses = []
    language_right = language_total = 0
    for message in test:
        detection = classifier.detect(message.text, default_language=message.language)
        total[message.intent] += 1
        if detection.intent == message.intent:
            correct[message.intent] += 1
        else:
            misses.append({"text": message.text, "expected": message.intent, "got": detection.intent})
        if len(message.text.split()) >= 2:
            wrong_default = "en" if message.language == "tr" else "tr"
            language_total += 1
            language_right += classifier.language(message.text, wrong_default) == message.language

    stops = [m for m in messages if m.intent == "stop"]
    ordinary = [m for m in messages if m.intent != "stop"]
    stop_found = sum(is_stop_message(m.text) for m in stops)
    false_stops = [m.text for m in ordinary if is_stop_message(m.text)]

    shops = {
        shop.id: shop for shop in load_shops(settings.Paths.from_env().home / "config" / "shops.example.yaml")
    }
    by_language = {"tr": shops["anatolia-shopify"], "en": shops["bosphorus-woo"]}
    carts = {
        "tr": Cart(
            "bench-tr",
            "TRY",
            Decimal("1249.80"),
            (CartLine("Keten Gömlek", "M", 1, Decimal("749.90"), "apparel"),),
        ),
        "en": Cart(
            "bench-en",
            "GBP",
            Decimal("38.00"),
            (CartLine("Wool Sweater", "L", 1, Decimal("38.00"), "apparel"),),
        ),
    }
    latencies = []
    for _ in range(1 if quick else rounds):
        for message in test:
            started = time.perf_counter()
            reply(by_language[message.language], message.text, carts[message.language])
            latencies.append((time.perf_counter() - started) * 1000)

    overall = sum(correct.values()) / len(test)
    result = {
        "messages": len(messages),
        "train_messages": len(messages) - len(test),
        "test_messages": len(test),
        "accuracy": round(overall, 4),
        "accuracy_target": TARGET_ACCURACY,
        "accuracy_per_intent": {
            intent: {
                "correct": correct[intent],
                "total": total[intent],
                "accuracy": round(correct[intent] / total[intent], 4),
            }
            for intent in intents.INTENTS
            if total[intent]
        },
        "language_accuracy": round(language_right / language_total, 4),
        "language_messages": language_total,
        "stop_recall": round(stop_found / len(stops), 4),
        "stop_messages": len(stops),
        "false_stops": len(false_stops),
        "false_stop_texts": false_stops,
        "ordinary_messages": len(ordinary),
        "misses": misses,
        "training_s": round(training_s, 2),
        "reply_latency_ms": {
            "replies": len(latencies),
            "p50": round(statistics.median(latencies), 2),
            "p95": round(_percentile(latencies, 95), 2),
            "max": round(max(latencies), 2),
        },
        "targets_met": overall >= TARGET_ACCURACY and stop_found == len(stops) and not false_stops,
    }
    path = write_result("assistant_intents", result, None, quick=quick)
    log.info(
        "assistant_intents: accuracy %.3f, STOP recall %.3f, false STOP %d -> %s",
        overall,
        stop_found / len(stops),
        len(false_stops),
        Path(path),
    )
    return result
