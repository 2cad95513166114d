"""The coupon code pool: codes an operator creates in the shop's admin and loads here, for the
platforms whose coupon API is not known (Ideasoft, Ticimax; see shared/DOMAIN.md).

``ops.coupon_pool`` holds one row per code: its terms (``pct``, ``free_shipping``), its own
``expires_at`` as set in the shop, and, once used, the ``plan_key`` that claimed it. A plan row
claims one free code whose terms are exactly the plan's and whose expiry lies inside the window
the caller allows: no later than ``latest_expiry`` (48 hours by default, always before the next
sale: a code that outlives the next sale is never sent) and late enough to be of use (at least
``min_validity``, 12 hours, or half the time to ``latest_expiry`` when that is shorter). Of those
it takes the one that expires last, so the customer gets the longest time. Pool codes cannot be
bound to one customer's email: the operator makes each single use in the shop's admin.

Claims are safe under concurrency: ``for update skip locked`` gives two dispatchers two different
codes, and the unique ``plan_key`` makes a retry of the same plan row get back the code it
claimed before. Codes are never released: a code claimed for a send that then failed is spent.

CLI (``cart-recovery coupons``):

    cart-recovery coupons load --shop ege-ideasoft codes.csv
    cart-recovery coupons status [--shop ege-ideasoft]

The CSV has a header and the columns ``code,pct,free_shipping,expires_at``, e.g.
``YAZ10-8KX2,10,false,2025-12-01T23:59:00+03:00``. Every row is checked (a code without spaces,
a percentage 0-100 with at most two decimals, true/false, an expiry with its UTC offset and in the
future, no code twice in the file or already in the pool, case-insensitively); one bad row
rejects the whole file, and the error lists each problem with its line number.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extras

from cart_recovery.dispatch.coupons import CouponError, reusable
from cart_recovery.dispatch.message import Coupon
from cart_recovery.errors import CartRecoveryError, ConfigurationError

COLUMNS = ("code", "pct", "free_shipping", "expires_at")
MIN_VALIDITY = timedelta(hours=12)
MAX_CODE_LENGTH = 64
MAX_PROBLEMS_LISTED = 50
_TRUE = {"true", "yes", "1", "y", "t"}
_FALSE = {"false", "no", "0", "n", "f", ""}
_CENT = Decimal("0.01")


def _load_hint(shop_id: str) -> str:
    return f"load codes with `cart-recovery coupons load --shop {shop_id} FILE.csv`"


@contextlib.contextmanager
def _connection(database: Any) -> Iterator[tuple[Any, bool]]:
    """(connection, ours): a URL is opened here and closed after; a connection is the caller's."""
    if isinstance(database, str):
        conn = psycopg2.connect(database)
        try:
            yield conn, True
        finally:
            conn.close()
    else:
        yield database, False


_CLAIMED = """
    select shop_id, code, pct, free_shipping, expires_at from ops.coupon_pool where plan_key = %s
"""
_CLAIM = """
    update ops.coupon_pool as pool
       set plan_key = %(plan_key)s, claimed_at = %(now)s
     where (pool.shop_id, pool.code) = (
            select shop_id, code
              from ops.coupon_pool
             where shop_id = %(shop_id)s
               and plan_key is null
               and pct = %(pct)s
               and free_shipping = %(free_shipping)s
               and expires_at >= %(earliest)s
               and expires_at <= %(latest)s
             order by expires_at desc, code
             limit 1
               for update skip locked
           )
    returning pool.code, pool.pct, pool.free_shipping, pool.expires_at
"""
_FREE = """
    select count(*),
           count(*) filter (where pct = %(pct)s and free_shipping = %(free_shipping)s),
           min(expires_at) filter (where pct = %(pct)s and free_shipping = %(free_shipping)s),
           max(expires_at) filter (where pct = %(pct)s and free_shipping = %(free_shipping)s)
      from ops.coupon_pool
     where shop_id = %(shop_id)s and plan_key is null and expires_at > %(now)s
"""


def claim(
    database: Any,
    *,
    shop_id: str,
    plan_key: str,
    pct: Decimal,
    free_shipping: bool,
    latest_expiry: datetime,
    now: datetime,
    min_validity: timedelta = MIN_VALIDITY,
) -> Coupon:
    """Claim a free code of ``shop_id`` for ``plan_key`` (or return the one it claimed before).

    ``database`` is a URL (the claim commits at once) or an open psycopg2 connection (the claim
    runs inside a savepoint of the caller's transaction, which the caller commits).
    Raises CouponError when no code fits, saying what the pool holds.
    """
    earliest = min(now + min_validity, now + (latest_expiry - now) / 2)
    params = {
        "shop_id": shop_id,
        "plan_key": plan_key,
        "pct": Decimal(pct).quantize(_CENT),
        "free_shipping": free_shipping,
        "now": now,
        "earliest": earliest,
        "latest": latest_expiry,
    }
    try:
        with _connection(database) as (conn, ours):
            try:
                row = _claim(conn, params)
            except BaseException:
                if ours:
                    conn.rollback()
                raise
            if ours:
                conn.commit()
    except psycopg2.Error as exc:
        raise CouponError(f"the coupon pool could not be read for shop {shop_id}: {exc}".strip()) from exc
    if row is None:
        raise _no_code(database, params)
    row, reused = row
    if row[0] != shop_id:
        raise CouponError(
            f"plan row {plan_key} already holds pool code {row[1]} of shop {row[0]}, not {shop_id}"
        )
    coupon = Coupon(code=row[1], pct=row[2], free_shipping=row[3], expires_at=row[4])
    if reused:  # a retry of the plan row: its code, if it still fits
        return reusable(coupon, params["pct"], free_shipping, coupon.code, shop_id, now)
    return coupon


def _claim(conn, params: dict) -> tuple[tuple, bool] | None:
    """((shop_id, code, pct, free_shipping, expires_at), claimed before) of the plan row's code;
    None when no code fits.

    Inside a savepoint, so that a caller's transaction survives a lost race (or any error here)."""
    with conn.cursor() as cur:
        cur.execute("savepoint coupon_claim")
        try:
            cur.execute(_CLAIMED, (params["plan_key"],))
            row = cur.fetchone()
            if row is not None:
                row = (row, True)
            else:
                cur.execute(_CLAIM, params)
                claimed = cur.fetchone()
                row = ((params["shop_id"], *claimed), False) if claimed else None
        except psycopg2.errors.UniqueViolation:
            # A concurrent claim for the same plan row committed first: return what it claimed.
            cur.execute("rollback to savepoint coupon_claim")
            cur.execute(_CLAIMED, (params["plan_key"],))
            row = (cur.fetchone(), True)
        except psycopg2.Error:
            with contextlib.suppress(psycopg2.Error):
                cur.execute("rollback to savepoint coupon_claim")
            raise
        cur.execute("release savepoint coupon_claim")
    return row


def _no_code(database: Any, params: dict):
    with _connection(database) as (conn, ours), conn.cursor() as cur:
        cur.execute(_FREE, params)
        free, matching, soonest, latest = cur.fetchone()
        if ours:
            conn.rollback()
    shop_id = params["shop_id"]
    if not free:
        return CouponError(f"coupon pool for shop {shop_id} is empty: {_load_hint(shop_id)}")
    terms = f"{params['pct']}% off" + (" + free shipping" if params["free_shipping"] else "")
    window = f"expiring between {params['earliest'].isoformat()} and {params['latest'].isoformat()}"
    held = (
        f"{matching} with these terms expire from {soonest.isoformat()} to {latest.isoformat()}"
        if matching
        else "none with these terms"
    )
    return CouponError(
        f"coupon pool for shop {shop_id} has no free code for {terms} {window} "
        f"({free} free codes in all, {held}): {_load_hint(shop_id)}"
    )


# -- loading ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolCode:
    line: int
    code: str
    pct: Decimal
    free_shipping: bool
    expires_at: datetime


class PoolFileError(CartRecoveryError):
    """The file was not loaded; ``problems`` are ``line N: what is wrong`` texts."""

    def __init__(self, source: str, problems: list[str]) -> None:
        listed = problems[:MAX_PROBLEMS_LISTED]
        more = f"\n  ... and {len(problems) - len(listed)} more" if len(problems) > len(listed) else ""
        super().__init__(
            f"{source}: nothing loaded, {len(problems)} problem(s):\n  " + "\n  ".join(listed) + more
        )
        self.problems = problems


def _row(line: int, values: dict[str, str], now: datetime, problems: list[str]) -> PoolCode | None:
    before = len(problems)
    code = (values.get("code") or "").strip()
    if not code:
        problems.append(f"line {line}: code is empty")
    elif len(code) > MAX_CODE_LENGTH or any(ch.isspace() or not ch.isprintable() for ch in code):
        problems.append(
            f"line {line}: code {code!r} has spaces or control characters, or is over 64 characters"
        )
    raw_pct = (values.get("pct") or "").strip()
    pct = Decimal("0")
    try:
        pct = Decimal(raw_pct)
        if not pct.is_finite() or not 0 <= pct <= 100 or pct != pct.quantize(_CENT):
            problems.append(f"line {line}: pct {raw_pct!r} must be 0-100 with at most two decimals")
    except InvalidOperation:
        problems.append(f"line {line}: pct {raw_pct!r} is not a number")
    raw_free = (values.get("free_shipping") or "").strip().lower()
    free_shipping = raw_free in _TRUE
    if raw_free not in _TRUE | _FALSE:
        problems.append(f"line {line}: free_shipping {raw_free!r} is not true or false")
    if pct == 0 and not free_shipping and len(problems) == before:
        problems.append(f"line {line}: the code gives nothing (pct 0 and no free shipping)")
    raw_expiry = (values.get("expires_at") or "").strip()
    expires_at = now
    try:
        expires_at = datetime.fromisoformat(raw_expiry.replace("Z", "+00:00"))
        if expires_at.tzinfo is None:
            problems.append(
                f"line {line}: expires_at {raw_expiry!r} has no UTC offset "
                "(write e.g. 2025-12-01T23:59:00+03:00)"
            )
        elif expires_at <= now:
            problems.append(f"line {line}: expires_at {raw_expiry} is in the past")
    except ValueError:
        problems.append(f"line {line}: expires_at {raw_expiry!r} is not an ISO 8601 time")
    if len(problems) > before:
        return None
    return PoolCode(line, code, pct.quantize(_CENT), free_shipping, expires_at.astimezone(UTC))


def parse_csv(lines: Iterable[str], *, now: datetime, source: str = "the file") -> list[PoolCode]:
    """Every row of a pool CSV, checked; PoolFileError listing all problems when any row is bad."""
    reader = csv.DictReader(lines)
    header = [name.strip().lower() for name in reader.fieldnames or []]
    if sorted(header) != sorted(COLUMNS):
        raise PoolFileError(
            source, [f"line 1: the header must be {','.join(COLUMNS)} (got {','.join(header) or 'nothing'})"]
        )
    reader.fieldnames = header
    problems: list[str] = []
    codes: list[PoolCode] = []
    first_line: dict[str, int] = {}
    for values in reader:
        line = reader.line_num
        if None in values:  # more cells than columns
            problems.append(f"line {line}: {len(values[None]) + len(COLUMNS)} cells, expected {len(COLUMNS)}")
            continue
        code = _row(line, values, now, problems)
        if code is None:
            continue
        key = code.code.casefold()
        if key in first_line:
            problems.append(f"line {line}: code {code.code} repeats line {first_line[key]}")
            continue
        first_line[key] = line
        codes.append(code)
    if not codes and not problems:
        problems.append("the file has no codes")
    if problems:
        raise PoolFileError(source, problems)
    return codes


def load(
    database_url: str, shop_id: str, codes: list[PoolCode], *, now: datetime, source: str = "the file"
) -> int:
    """Insert ``codes`` for ``shop_id`` in one transaction: all of them, or none (PoolFileError
    naming the codes already in the pool, case-insensitively)."""
    with _connection(database_url) as (conn, _ours):
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "select code, loaded_at from ops.coupon_pool "
                    "where shop_id = %s and lower(code) = any(%s)",
                    (shop_id, [c.code.lower() for c in codes]),
                )
                present = {code.casefold(): loaded_at for code, loaded_at in cur.fetchall()}
                clashes = [
                    f"line {c.line}: code {c.code} is already in the pool of {shop_id} "
                    f"(loaded {present[c.code.casefold()].isoformat()})"
                    for c in codes
                    if c.code.casefold() in present
                ]
                if clashes:
                    raise PoolFileError(source, clashes)
                psycopg2.extras.execute_values(
                    cur,
                    "insert into ops.coupon_pool (shop_id, code, pct, free_shipping, expires_at, loaded_at) "
                    "values %s",
                    [(shop_id, c.code, c.pct, c.free_shipping, c.expires_at, now) for c in codes],
                )
            conn.commit()
        except psycopg2.errors.UniqueViolation as exc:
            conn.rollback()
            raise PoolFileError(
                source, [f"a concurrent load added the same codes ({exc.diag.message_detail})"]
            ) from exc
        except BaseException:
            conn.rollback()
            raise
    return len(codes)


@dataclass(frozen=True)
class PoolStatus:
    shop_id: str
    pct: Decimal
    free_shipping: bool
    free: int  # unclaimed and not expired
    claimed: int
    expired: int  # never claimed, expired now
    soonest: datetime | None  # of the free codes
    latest: datetime | None


def status(database_url: str, *, now: datetime, shop_id: str | None = None) -> list[PoolStatus]:
    """Per shop and terms: free, claimed and lapsed codes, and when the free ones expire."""
    with _connection(database_url) as (conn, _ours), conn.cursor() as cur:
        cur.execute(
            """
            select shop_id, pct, free_shipping,
                   count(*) filter (where plan_key is null and expires_at > %(now)s),
                   count(*) filter (where plan_key is not null),
                   count(*) filter (where plan_key is null and expires_at <= %(now)s),
                   min(expires_at) filter (where plan_key is null and expires_at > %(now)s),
                   max(expires_at) filter (where plan_key is null and expires_at > %(now)s)
              from ops.coupon_pool
             where %(shop_id)s::text is null or shop_id = %(shop_id)s
             group by shop_id, pct, free_shipping
             order by shop_id, pct, free_shipping
            """,
            {"now": now, "shop_id": shop_id},
        )
        rows = [PoolStatus(*row) for row in cur.fetchall()]
        conn.rollback()
    return rows


# -- the command line ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    load_parser = actions.add_parser("load", help="load a CSV of codes (code,pct,free_shipping,expires_at)")
    load_parser.add_argument("--shop", required=True, help="the shop id from the shops file")
    load_parser.add_argument("file", type=Path, help="the CSV file")
    status_parser = actions.add_parser("status", help="free codes per shop and terms, and their expiry")
    status_parser.add_argument("--shop", default=None, help="one shop only")


def _pool_shop(shop_id: str) -> None:
    from cart_recovery.shops import Platform, load_shops

    shops = {shop.id: shop for shop in load_shops()}
    shop = shops.get(shop_id)
    if shop is None:
        raise ConfigurationError(f"no shop {shop_id!r} in the shops file (known: {', '.join(sorted(shops))})")
    if shop.platform not in (Platform.IDEASOFT, Platform.TICIMAX):
        raise ConfigurationError(
            f"shop {shop_id} is a {shop.platform} shop: its coupons are created through its API, "
            "not taken from the pool (the pool is for Ideasoft and Ticimax shops)"
        )


def run(args: argparse.Namespace, database_url: str, *, now: datetime, out=print) -> int:
    """``cart-recovery coupons load|status``; ``now`` is the caller's clock."""
    if args.action == "load":
        _pool_shop(args.shop)
        try:
            text = args.file.read_text(encoding="utf-8-sig")  # a spreadsheet's BOM is not part of the header
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"cannot read {args.file}: {exc}") from exc
        codes = parse_csv(io.StringIO(text, newline=""), now=now, source=str(args.file))
        count = load(database_url, args.shop, codes, now=now, source=str(args.file))
        out(f"loaded {count} codes into the pool of {args.shop}")
        return 0
    rows = status(database_url, now=now, shop_id=args.shop)
    if not rows:
        out("the coupon pool is empty" + (f" for {args.shop}" if args.shop else ""))
        return 0
    out(
        f"{'shop':<24} {'pct':>6} {'free ship':<9} {'free':>6} {'claimed':>7} {'lapsed':>6}  "
        "free codes expire"
    )
    for row in rows:
        span = f"{row.soonest:%Y-%m-%d %H:%M} .. {row.latest:%Y-%m-%d %H:%M} UTC" if row.soonest else "-"
        out(
            f"{row.shop_id:<24} {row.pct:>6} {'yes' if row.free_shipping else 'no':<9} "
            f"{row.free:>6} {row.claimed:>7} {row.expired:>6}  {span}"
        )
    return 0
