"""
### recovery_stage_2

Sends stage 2 of the recovery sequence: the follow-up (4 hours, the stage-2 coupon where
the segment allows it).
The timing, the channel, the template and the coupon come from `marts.recovery_plan`
(dbt; analysts change them in the policy seeds).

- **Schedule:** `@continuous`, one run at a time. Each run's `wait_for_due` is a deferrable
  sensor: its trigger (`DuePlanTrigger` in `plugins/`) sleeps until the stage's next plan row
  falls due, re-reading the plan at least every 10 s, so a new `cart_transform` build (the Asset
  `cart-recovery://warehouse/marts/recovery_plan`) is seen at once and no worker slot is held
  while waiting. With nothing due for an hour the run ends as skipped and the next one waits.
- **send_due** moves the due rows into `ops.recovery_outbox`, claims them (exactly once, even with
  two dispatchers or a retried task), checks the send-time guards against live data (an order
  since the cart, consent, a newer cart, an open conversation, the frequency cap, quiet hours,
  holdout), creates the coupon through the shop, sends over WhatsApp or email and records the
  answer. Its XCom and log line count the run's messages by outcome and reason.
- **Pause** this Airflow DAG to hold stage 2: due rows wait in the plan and are sent (or expire,
  6 hours past due) when it is unpaused.
- **Replay:** trigger with the param `as_of` to send what was due at that moment.

See docs/dispatch.md for the outbox states and the guards.
"""

from cart_recovery.dispatch.stage_dag import build_stage_dag

dag = build_stage_dag(2, doc_md=__doc__)
