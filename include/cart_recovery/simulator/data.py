"""Seeded, platform-neutral shop data: shops, customers, products, carts and orders.

Everything derives from one seed and one reference time, so two runs with the same arguments
produce the same records byte for byte. The fake APIs render these records in each platform's
own wire format (see ``shopify_api.py`` and friends).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from faker import Faker

from cart_recovery.shop_policy import ShopPolicy
from cart_recovery.shops import Platform

# A fixed default, so that the data (and therefore every test) does not depend on the clock.
DEFAULT_REFERENCE_TIME = datetime(2025, 11, 24, 12, 0, tzinfo=UTC)

_APPAREL = [
    # (Turkish title, English title, base price in TRY)
    ("Keten Gömlek", "Linen Shirt", Decimal("749.90")),
    ("Pamuklu Tişört", "Cotton T-Shirt", Decimal("299.90")),
    ("Yün Kazak", "Wool Sweater", Decimal("1199.00")),
    ("Kot Pantolon", "Denim Jeans", Decimal("899.50")),
    ("Yazlık Elbise", "Summer Dress", Decimal("999.00")),
    ("Deri Ceket", "Leather Jacket", Decimal("3499.00")),
]
_HOME = [
    ("Seramik Kupa", "Ceramic Mug", Decimal("189.90")),
    ("Bambu Havlu Seti", "Bamboo Towel Set", Decimal("649.00")),
    ("Bakır Cezve", "Copper Coffee Pot", Decimal("459.00")),
    ("El Dokuma Kilim", "Hand-woven Kilim", Decimal("2799.00")),
]
_SIZES = ["S", "M", "L", "XL"]
_USD_PER_TRY = Decimal("0.029")


@dataclass(frozen=True)
class SimulatedShop:
    """A shop served by the simulator, with the credentials its fake API accepts."""

    id: str
    platform: Platform
    domain: str
    language: str
    currency: str
    timezone: str
    country: str  # ISO 3166-1 alpha-2: where the shop's customers' phone numbers are from
    api_key: str  # Shopify access token, WooCommerce consumer key, Ticimax UyeKodu, Ideasoft client id
    api_secret: str  # WooCommerce consumer secret, Ideasoft client secret (unused elsewhere)
    webhook_secret: str

    @property
    def conn_id(self) -> str:
        return f"sim_{self.id.replace('-', '_')}"


@dataclass
class Variant:
    id: int
    title: str
    price: Decimal
    inventory_quantity: int


@dataclass
class Product:
    id: int
    title: str
    product_type: str  # apparel | home
    variants: list[Variant]
    size_chart: dict | None
    created_at: datetime
    updated_at: datetime


@dataclass
class Customer:
    id: int
    first_name: str
    last_name: str
    email: str
    phone: str | None
    locale: str
    email_consent: bool
    whatsapp_consent: bool
    created_at: datetime
    updated_at: datetime


@dataclass
class LineItem:
    product: Product
    variant: Variant
    quantity: int

    @property
    def price(self) -> Decimal:
        return self.variant.price


@dataclass
class Cart:
    id: int
    token: str
    customer: Customer | None  # None: a guest who left an email/phone only
    email: str | None
    phone: str | None
    currency: str
    items: list[LineItem]
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None = None
    total_override: Decimal | None = None  # set by a deliberate defect

    @property
    def total(self) -> Decimal:
        if self.total_override is not None:
            return self.total_override
        return sum((i.price * i.quantity for i in self.items), Decimal("0.00"))


@dataclass
class Order:
    id: int
    customer: Customer | None
    email: str | None
    phone: str | None
    cart: Cart | None
    currency: str
    total: Decimal
    coupon_code: str | None
    created_at: datetime
    updated_at: datetime


@dataclass
class ShopData:
    shop: SimulatedShop
    products: list[Product] = field(default_factory=list)
    customers: list[Customer] = field(default_factory=list)
    carts: list[Cart] = field(default_factory=list)
    orders: list[Order] = field(default_factory=list)


_ISTANBUL = "Europe/Istanbul"
# id, platform, domain, language, currency, time zone, country
DEFAULT_SHOPS = (
    ("anatolia-shopify", Platform.SHOPIFY, "anatolia-linen.myshopify.com", "tr", "TRY", _ISTANBUL, "TR"),
    ("hudson-woo", Platform.WOOCOMMERCE, "shop.hudson-goods.example", "en", "USD", "America/New_York", "US"),
    ("kapadokya-ticimax", Platform.TICIMAX, "www.kapadokya-moda.example", "tr", "TRY", _ISTANBUL, "TR"),
    ("ege-ideasoft", Platform.IDEASOFT, "egebutik.myideasoft.com", "tr", "TRY", _ISTANBUL, "TR"),
)


def _secret(seed: int, *parts: str) -> str:
    return hashlib.sha256(":".join((str(seed), *parts)).encode()).hexdigest()[:32]


def default_shops(seed: int) -> list[SimulatedShop]:
    shops = []
    for shop_id, platform, domain, language, currency, tz, country in DEFAULT_SHOPS:
        key = _secret(seed, shop_id, "key")
        if platform is Platform.SHOPIFY:
            key = f"shpat_{key}"
        elif platform is Platform.WOOCOMMERCE:
            key = f"ck_{key}"
        shops.append(
            SimulatedShop(
                id=shop_id,
                platform=platform,
                domain=domain,
                language=language,
                currency=currency,
                timezone=tz,
                country=country,
                api_key=key,
                api_secret=("cs_" if platform is Platform.WOOCOMMERCE else "")
                + _secret(seed, shop_id, "secret"),
                webhook_secret=_secret(seed, shop_id, "webhook"),
            )
        )
    return shops


# The simulated shops' policies (the shops file's ``policy:``): complete, so that the assistant can
# answer every intent for them. Amounts in the shop's currency.
_POLICY_VALUES = {
    "anatolia-shopify": ("Yurtiçi Kargo", "89.90", "1500.00", 1, 3, "14:00", 14, True, 6, "500.00"),
    "hudson-woo": ("UPS Ground", "6.95", "50.00", 3, 5, "12:00", 30, False, 4, "35.00"),
    "kapadokya-ticimax": ("Aras Kargo", "69.00", "1000.00", 2, 5, None, 14, False, 9, "1000.00"),
    "ege-ideasoft": ("MNG Kargo", "59.90", "750.00", 1, 4, "15:00", 15, True, 3, None),
}


def shop_policy(shop: SimulatedShop) -> ShopPolicy:
    """The complete policy of a simulated shop, with a size chart for its apparel."""
    (
        carrier,
        cost,
        free_over,
        days_min,
        days_max,
        cutoff,
        return_days,
        free_returns,
        installments,
        min_total,
    ) = _POLICY_VALUES[shop.id]
    turkish = shop.language == "tr"
    methods = (
        ["credit_card", "debit_card", "bank_transfer"] if turkish else ["credit_card", "paypal", "apple_pay"]
    )
    rows = [
        {
            "size": size,
            "chest": 90 + 6 * n,
            "waist": 76 + 6 * n,
            "length": 68 + 2 * n,
            "height_min": 160 + 7 * n,
            "height_max": 171 + 7 * n,
            "weight_min": 50 + 12 * n,
            "weight_max": 63 + 12 * n,
        }
        for n, size in enumerate(_SIZES)
    ]
    domain = shop.domain.removeprefix("www.")
    return ShopPolicy.model_validate(
        {
            "shipping": {
                "carrier": carrier,
                "cost": cost,
                "free_over": free_over,
                "days_min": days_min,
                "days_max": days_max,
                "dispatch_cutoff": cutoff,
                "international": not turkish,
            },
            "returns": {"days": return_days, "free": free_returns, "refund_days": 7},
            "payment": {
                "methods": methods,
                "installments_max": installments,
                "installments_min_total": min_total,
            },
            "support": {
                "days": "mon-sat" if turkish else "mon-fri",
                "opens": "09:00",
                "closes": "18:00",
                "phone": "+90 850 555 00 00" if turkish else "+1 212 555 0100",
                "email": f"support@{domain}",
            },
            "company": {
                "legal_name": shop.id.split("-")[0].title()
                + (" Tekstil Ltd. Şti." if turkish else " Goods LLC"),
                "address": "Bağdat Caddesi 1, İstanbul" if turkish else "100 Hudson St, New York, NY 10013",
                "reviews_url": f"https://{domain}/reviews",
            },
            "guest_checkout": shop.platform is not Platform.TICIMAX,
            "size_charts": {"apparel": {"unit": "cm", "rows": rows}},
        }
    )


def _phone(rng: random.Random, locale: str) -> str:
    if locale == "tr":
        return f"+905{rng.choice('0345')}{rng.randint(0, 9)}{rng.randint(1000000, 9999999)}"
    return f"+1{rng.randint(201, 989)}{rng.randint(200, 999)}{rng.randint(1000, 9999)}"


def _size_chart(rng: random.Random, language: str) -> dict:
    chest = rng.choice([88, 90, 92])
    return {
        "unit": "cm",
        "title": "Beden Tablosu" if language == "tr" else "Size Chart",
        "rows": [
            {"size": size, "chest": chest + 6 * n, "waist": chest - 14 + 6 * n, "length": 68 + 2 * n}
            for n, size in enumerate(_SIZES)
        ],
    }


def _convert(amount: Decimal, currency: str) -> Decimal:
    value = amount * _USD_PER_TRY if currency == "USD" else amount
    return value.quantize(Decimal("0.01"))


def generate_shop(
    shop: SimulatedShop,
    *,
    seed: int,
    carts: int,
    reference_time: datetime = DEFAULT_REFERENCE_TIME,
    defects: int = 0,
) -> ShopData:
    """Generate one shop's records; ``defects`` carts carry a deliberately invalid field."""
    rng = random.Random(f"{seed}:{shop.id}")
    fakers = {"tr": Faker("tr_TR"), "en": Faker("en_US")}
    for n, fake in enumerate(fakers.values()):
        fake.seed_instance(rng.randint(0, 2**31) + n)
    data = ShopData(shop=shop)
    window_start = reference_time - timedelta(days=3)

    def moment(start: datetime = window_start, end: datetime = reference_time) -> datetime:
        span = int((end - start).total_seconds())
        return start + timedelta(seconds=rng.randint(0, max(span, 0)))

    # Products: every title in the shop's language, apparel with sizes and a size chart.
    next_variant = 40_000_000_000 + rng.randint(0, 1_000_000) * 100
    for n, (tr_title, en_title, price) in enumerate(_APPAREL + _HOME):
        apparel = n < len(_APPAREL)
        title = tr_title if shop.language == "tr" else en_title
        price = _convert(price, shop.currency)
        variants = []
        for size in _SIZES if apparel else ["Default Title"]:
            next_variant += 1
            variants.append(Variant(next_variant, size, price, rng.randint(0, 40)))
        created = moment(reference_time - timedelta(days=90), window_start)
        data.products.append(
            Product(
                id=8_000_000_000 + 1000 * (n + 1) + rng.randint(0, 999),
                title=title,
                product_type="apparel" if apparel else "home",
                variants=variants,
                size_chart=_size_chart(rng, shop.language) if apparel else None,
                created_at=created,
                updated_at=moment(created, window_start),
            )
        )

    # Customers: mostly in the shop's language, some in the other one.
    for n in range(max(1, int(carts * 0.8))):
        locale = shop.language if rng.random() < 0.8 else ("en" if shop.language == "tr" else "tr")
        fake = fakers[locale]
        first, last = fake.first_name(), fake.last_name()
        created = moment(reference_time - timedelta(days=400), window_start)
        user = f"{first}.{last}".replace("İ", "I").replace("I", "ı").lower().replace(" ", "")
        user = user.translate(str.maketrans("çğıöşüâîû", "cgiosuaiu"))
        data.customers.append(
            Customer(
                id=7_000_000_000 + 1000 * (n + 1) + rng.randint(0, 999),
                first_name=first,
                last_name=last,
                email=f"{user}{rng.randint(1, 99)}@{fake.free_email_domain()}",
                phone=_phone(rng, locale) if rng.random() < 0.85 else None,
                locale=locale,
                email_consent=rng.random() < 0.7,
                whatsapp_consent=rng.random() < 0.6,
                created_at=created,
                updated_at=moment(created, window_start) if rng.random() < 0.5 else created,
            )
        )

    # Carts, a third of which end in an order.
    for n in range(carts):
        customer = rng.choice(data.customers) if rng.random() < 0.9 else None
        items = []
        for product in rng.sample(data.products, rng.randint(1, 3)):
            items.append(LineItem(product, rng.choice(product.variants), rng.randint(1, 2)))
        created = moment()
        updated = min(created + timedelta(minutes=rng.randint(0, 90)), reference_time)
        guest_locale = shop.language
        cart = Cart(
            id=30_000_000_000 + 1000 * (n + 1) + rng.randint(0, 999),
            token=hashlib.md5(f"{seed}:{shop.id}:cart:{n}".encode()).hexdigest(),
            customer=customer,
            email=customer.email if customer else fakers[guest_locale].free_email(),
            phone=customer.phone if customer else _phone(rng, guest_locale),
            currency=shop.currency,
            items=items,
            created_at=created,
            updated_at=updated,
        )
        if rng.random() < 0.33:
            ordered = min(updated + timedelta(minutes=rng.randint(5, 600)), reference_time)
            cart.completed_at = ordered
            data.orders.append(
                Order(
                    id=6_000_000_000 + 1000 * (n + 1) + rng.randint(0, 999),
                    customer=customer,
                    email=cart.email,
                    phone=cart.phone,
                    cart=cart,
                    currency=shop.currency,
                    total=cart.total,
                    coupon_code=rng.choice([None, None, f"GERI{rng.randint(1000, 9999)}"]),
                    created_at=ordered,
                    updated_at=ordered,
                )
            )
        data.carts.append(cart)

    for n, cart in enumerate(data.carts[:defects]):
        data.carts[n] = _with_defect(cart, n)
    return data


_DEFECTS = ("currency", "negative_total", "phone", "email")


def _with_defect(cart: Cart, n: int) -> Cart:
    """A cart with one invalid field, the kind of bad input validation must quarantine."""
    kind = _DEFECTS[n % len(_DEFECTS)]
    if kind == "currency":
        return replace(cart, currency="TL")
    if kind == "negative_total":
        return replace(cart, total_override=Decimal("-15.00"))
    customer = replace(cart.customer) if cart.customer else None
    if kind == "phone":
        # too short to be a number of any country (a national number such as 0532 123 45 67 is
        # fine: it is read in the shop's country)
        if customer:
            customer.phone = "0532 12"
        return replace(cart, phone="0532 12", customer=customer)
    if customer:
        customer.email = "ayse.yilmaz@"
    return replace(cart, email="ayse.yilmaz@", customer=customer)


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 with an explicit offset, the way Shopify and Ideasoft send times."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else None


def iso_gmt(moment: datetime | None) -> str | None:
    """WooCommerce's ``*_gmt`` fields: UTC without an offset."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat() if moment else None
