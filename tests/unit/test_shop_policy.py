"""The shops file's policy section (cart_recovery.shop_policy): validation with clear errors, the
example file in step with the dbt seed, the simulator's shops with complete policies."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from cart_recovery.errors import ConfigurationError
from cart_recovery.shops import load_shops
from cart_recovery.simulator.data import default_shops, shop_policy

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "shops.example.yaml"

SHOP = {
    "id": "a",
    "platform": "shopify",
    "domain": "a.myshopify.com",
    "api_base_url": "https://a.myshopify.com",
    "country": "TR",
    "timezone": "Europe/Istanbul",
    "currency": "TRY",
    "language": "tr",
    "conn_id": "shop_a",
}
POLICY = {
    "shipping": {"cost": 50, "free_over": 1000, "days_min": 1, "days_max": 3},
    "returns": {"days": 14, "free": True, "refund_days": 7},
    "payment": {"methods": ["credit_card"]},
    "support": {"days": "mon-fri", "opens": "09:00", "closes": "18:00"},
}


def _load(tmp_path: Path, policy: dict | None) -> list:
    entry = {**SHOP, **({"policy": policy} if policy is not None else {})}
    path = tmp_path / "shops.yaml"
    path.write_text(yaml.safe_dump({"shops": [entry]}))
    return load_shops(path)


def test_policy_is_optional_and_loads(tmp_path):
    assert _load(tmp_path, None)[0].policy is None
    policy = _load(tmp_path, POLICY)[0].policy
    assert policy.shipping.free_over == Decimal("1000") and policy.payment.installments_max == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"shipping": {**POLICY["shipping"], "days_max": 0}}, "days_max .0. is below days_min .1."),
        ({"shipping": {**POLICY["shipping"], "dispatch_cutoff": "2pm"}}, "24-hour HH:MM"),
        ({"shipping": {**POLICY["shipping"], "cost": -1}}, "greater than or equal to 0"),
        ({"payment": {"methods": ["bitcoin"]}}, "credit_card"),
        ({"support": {**POLICY["support"], "closes": "08:00"}}, "closes .08:00. before it opens"),
        ({"support": {**POLICY["support"], "days": "weekdays"}}, "mon-fri"),
        ({"returns": {"days": 14}}, "free"),
        ({"size_charts": {"apparel": {"rows": [{"size": "M"}, {"size": "M"}]}}}, "size.s. M more than once"),
        ({"shiping": {}}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_policy_says_what_is_wrong(tmp_path, change, message):
    with pytest.raises(ConfigurationError, match=message):
        _load(tmp_path, {**POLICY, **change})


def test_example_shops_have_policies():
    """(free_over is also the models' free-shipping threshold: ops.shops copies it, no seed.)"""
    for shop in load_shops(EXAMPLE):
        assert shop.policy is not None, shop.id
        assert shop.policy.size_charts, shop.id
        assert shop.policy.shipping.free_over is not None, shop.id


def test_simulator_shops_file_carries_complete_policies(tmp_path):
    from cart_recovery.simulator import run_simulator

    with run_simulator(carts_per_shop=1) as sim:
        path = tmp_path / "shops.yaml"
        path.write_text(sim.shops_yaml())
    shops = load_shops(path)
    assert {shop.id for shop in shops} == {s.id for s in default_shops(seed=1)}
    for shop in shops:
        policy = shop.policy
        assert policy is not None, shop.id
        assert policy == shop_policy(next(s for s in default_shops(seed=1) if s.id == shop.id))
        assert policy.company is not None and policy.guest_checkout is not None and policy.support.email
        assert policy.size_charts["apparel"].rows and policy.shipping.free_over and policy.shipping.carrier
