"""Dispatch: fire the recovery stages on time, exactly once, over WhatsApp or email.

- ``message``: what a message is made of (the context templates read, a channel's result);
- ``outbox``: ``ops.recovery_outbox``, claimed before the send so only its claimer sends;
- ``guards``: the send-time checks against live data (raw and ops, not the last dbt build);
- ``dispatcher``: a due batch through the guards, coupons, rendering and the channels;
- ``whatsapp``, ``email``, ``templates``: the channels and their message templates;
- ``coupons``: unique, single-use, expiring codes through the shop's API or the code pool;
- ``links``: the signed click and unsubscribe links served by the webhook service.

docs/dispatch.md describes the flow and the states.
"""
