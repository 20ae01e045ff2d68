"""Our stores, read the way other readers will: the event store with the DataStax Python
driver for Cassandra, the read models with opensearch-py. Orders go in through the
Command API of a running salesflow (`SALESFLOW_URL`, all four pipelines on the local
stack; `scripts/foreign-clients` starts it); each test then waits, with a deadline, for
what they must become in each store and checks it as a reader that never saw our code
would: column types, exact decimals, versions, one event per order."""

import json
import os
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import DCAwareRoundRobinPolicy
from opensearchpy import OpenSearch

SALESFLOW = os.environ.get("SALESFLOW_URL", "http://127.0.0.1:18090")
DEADLINE_S = 60


@pytest.fixture(scope="module")
def cassandra():
    cluster = Cluster(
        ["127.0.0.1"],
        port=9042,
        protocol_version=5,
        execution_profiles={
            EXEC_PROFILE_DEFAULT: ExecutionProfile(
                load_balancing_policy=DCAwareRoundRobinPolicy()
            )
        },
    )
    session = cluster.connect("salesflow")
    yield session
    cluster.shutdown()


@pytest.fixture(scope="module")
def opensearch():
    client = OpenSearch(hosts=[{"host": "127.0.0.1", "port": 9200}], use_ssl=False)
    yield client
    client.close()


def order(cart, user, created_at, **money):
    body = {
        "order_id": str(uuid.uuid4()),
        "cart_id": str(cart),
        "user_id": user,
        "product_name": "Trail running shoes",
        "product_info": "size 42",
        "quantity": 2,
        "payment_method": "card",
        "shipping_address": "1 Main St",
        "billing_address": "1 Main St",
        "shipping_method": "standard",
        "currency": "EUR",
        "seller_info": "Acme Sports",
        "created_at": created_at,
        "amount": "119.90",
        "discounts": "10.00",
        "tax_amount": "21.98",
        "subtotal": "131.88",
    }
    body.update(money)
    return body


def post(body):
    """POSTs an order; the status and the parsed answer."""
    data = json.dumps(body).encode()
    request = urllib.request.Request(
        f"{SALESFLOW}/orders",
        data=data,
        headers={"content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read() or b"null")


def wait_for(what, probe):
    """`probe()` until it returns something truthy, for at most DEADLINE_S."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"not seen within {DEADLINE_S} s: {what}")
        time.sleep(0.2)


def events(cassandra, cart, count):
    rows = list(
        cassandra.execute(
            "SELECT cart_id, bucket, seq, order_id, created_at, recorded_at, event "
            "FROM cart_events WHERE cart_id = %s AND bucket = 0",
            (cart,),
        )
    )
    return rows if len(rows) >= count else None


def document(opensearch, alias, cart, version):
    found = opensearch.get(index=alias, id=str(cart), ignore=404)
    if found.get("found") and found.get("_version", 0) >= version:
        return found
    return None


def test_the_event_store_reads_as_typed_rows_with_exact_amounts(cassandra):
    cart, user = uuid.uuid4(), f"py-{uuid.uuid4()}"
    # The second amount is an integral JSON number written as a float (20.0), which a
    # reader must see as 20, not 0; the third has four decimal places.
    first = order(cart, user, "2026-11-26T10:15:00Z")
    second = order(cart, user, "2026-11-26T10:16:30.250Z", amount=20.0, subtotal=20.0,
                   tax_amount=0, discounts=0)
    third = order(cart, user, "2026-11-26T10:17:00+02:00", amount="0.0001",
                  subtotal="0.0001", tax_amount="0", discounts="0")
    # json.dumps writes 20.0 as a float-writing client does: `20.0`.
    assert '"amount": 20.0' in json.dumps(second)
    for body in (first, second, third):
        status, answer = post(body)
        assert status == 202, answer

    rows = wait_for(f"3 events of cart {cart}", lambda: events(cassandra, cart, 3))
    assert [r.seq for r in rows] == [1, 2, 3]
    assert all(r.cart_id == cart and r.bucket == 0 for r in rows)
    assert [str(r.order_id) for r in rows] == [b["order_id"] for b in (first, second, third)]
    assert all(isinstance(r.order_id, uuid.UUID) for r in rows)
    # `timestamp` columns: the driver gives naive UTC datetimes, to the millisecond.
    assert [r.created_at for r in rows] == [
        datetime(2026, 11, 26, 10, 15, 0),
        datetime(2026, 11, 26, 10, 16, 30, 250000),
        datetime(2026, 11, 26, 8, 17, 0),
    ]
    assert all(r.recorded_at <= datetime.now(timezone.utc).replace(tzinfo=None) for r in rows)
    # The `event` column is JSON text: the event's number and time, and the order as
    # accepted, its amounts exact decimal strings.
    stored = [json.loads(r.event) for r in rows]
    assert [(e["cart_id"], e["seq"]) for e in stored] == [(str(cart), n) for n in (1, 2, 3)]
    orders = [e["order"] for e in stored]
    assert [o["order_id"] for o in orders] == [b["order_id"] for b in (first, second, third)]
    assert all(isinstance(o[f], str) for o in orders for f in ("amount", "subtotal"))
    assert [Decimal(o["amount"]) for o in orders] == [
        Decimal("119.90"), Decimal("20"), Decimal("0.0001")
    ]
    assert [Decimal(o["subtotal"]) for o in orders] == [
        Decimal("131.88"), Decimal("20"), Decimal("0.0001")
    ]


def test_a_repeated_order_is_one_event(cassandra):
    cart, user = uuid.uuid4(), f"py-{uuid.uuid4()}"
    once = order(cart, user, "2026-11-26T11:00:00Z")
    for _ in range(3):
        status, answer = post(once)
        assert status == 202, answer
    last = order(cart, user, "2026-11-26T11:01:00Z")
    status, answer = post(last)
    assert status == 202, answer
    # The later order's event is there once the repeats before it were decided.
    rows = wait_for(f"2 events of cart {cart}", lambda: events(cassandra, cart, 2))
    assert [str(r.order_id) for r in rows] == [once["order_id"], last["order_id"]]


def test_the_read_models_read_with_opensearch_py(opensearch):
    cart, user = uuid.uuid4(), f"py-{uuid.uuid4()}"
    bodies = [
        order(cart, user, "2026-11-26T12:00:00Z", amount="0.10", subtotal="0.10",
              tax_amount="0.02", discounts="0"),
        order(cart, user, "2026-11-26T12:05:00Z", amount=0.2, subtotal=0.2,
              tax_amount="0.04", discounts="0.01"),
    ]
    for body in bodies:
        status, answer = post(body)
        assert status == 202, answer

    detailed = wait_for(f"cart {cart} at version 2 in carts-detailed",
                        lambda: document(opensearch, "carts-detailed", cart, 2))
    summary = wait_for(f"cart {cart} at version 2 in carts-summary",
                       lambda: document(opensearch, "carts-summary", cart, 2))
    for found in (detailed, summary):
        source = found["_source"]
        # The external version is the cart's: a reader can tell which is newer.
        assert found["_version"] == 2 and source["version"] == 2
        assert source["cart_id"] == str(cart) and source["user_id"] == user
        assert source["order_count"] == 2
        # 0.10 + 0.2 is 0.3 exactly, as strings; a float sum would be 0.30000000000000004.
        assert Decimal(source["subtotal"]) == Decimal("0.3")
        assert Decimal(source["tax_amount"]) == Decimal("0.06")
        assert Decimal(source["discounts"]) == Decimal("0.01")
    units = summary["_source"]
    assert (units["subtotal_units"], units["tax_amount_units"], units["discounts_units"]) == (
        3000, 600, 100,
    )

    # Searched as any OpenSearch user would: the summaries by user, by exact amount range.
    opensearch.indices.refresh(index="carts-summary")
    hits = opensearch.search(
        index="carts-summary",
        body={"query": {"bool": {"filter": [
            {"term": {"user_id": user}},
            {"range": {"subtotal_units": {"gte": 3000, "lte": 3000}}},
        ]}}},
    )["hits"]["hits"]
    assert [h["_id"] for h in hits] == [str(cart)]


def test_a_refused_order_reaches_neither_store(cassandra, opensearch):
    cart, user = uuid.uuid4(), f"py-{uuid.uuid4()}"
    bad = order(cart, user, "2026-11-26T13:00:00Z", quantity=2.5)
    status, answer = post(bad)
    assert status == 400, answer
    assert "quantity" in json.dumps(answer)
    good = order(uuid.uuid4(), user, "2026-11-26T13:01:00Z")
    status, answer = post(good)
    assert status == 202, answer
    # A 400 comes before Kafka, so nothing of the refused order may be written. Looked
    # for once an order posted after it is in both stores: a write, had there been one,
    # had as long to land.
    good_cart = uuid.UUID(good["cart_id"])
    wait_for("the later order's event", lambda: events(cassandra, good_cart, 1))
    wait_for("the later order's document",
             lambda: document(opensearch, "carts-detailed", good_cart, 1))
    assert events(cassandra, cart, 1) is None
    assert not opensearch.exists(index="carts-detailed", id=str(cart))
