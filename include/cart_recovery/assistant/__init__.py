"""The conversation assistant: answers a customer's WhatsApp message from the shop's own data.

- ``intents.py``: intent (size_fit, shipping, returns_trust, discount, account, payment_problem,
  product_question, stop, human, other) and language (tr, en) of a message; STOP by
  ``dispatch.consent.is_stop_message`` alone, the rest by a scikit-learn classifier trained on
  ``data/messages.csv`` plus keyword cues (``rules.py``);
- ``replies.py``: the reply text (``templates/replies.yaml``) and the actions it asks for;
- ``carts.py``: the cart a conversation is about, from ``marts.abandoned_carts``;
- ``command.py``: ``cart-recovery assistant reply``.

Not wired yet (issue 12): the webhook-side reply path, storing turns in ``ops``, the
``conversations`` mart, coupons within the segment policy and the LLM backend.
"""
