//! Hostile input at the HTTP APIs, against the real pipelines: a corpus of bad requests
//! (each gets the right 4xx with a message naming what is wrong, and nothing reaches
//! Kafka); generated mutations of valid orders (only the valid ones are kept); slow
//! clients (cut off, while others are served); Query API parameters that try to change
//! the query; API keys per API; TLS. The process is healthy afterwards.

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.
#![allow(clippy::cast_possible_truncation)] // Indices below small lengths.

use salesflow_testkit as support;

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_salesflow-e2e");

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::sales::{Rng, Sales, order};
use support::{Host, read_all};

/// A valid order as JSON (from the tests' deterministic generator).
fn valid(rng: &mut Rng, n: usize) -> Value {
    let cart = support::sales::cart(n, rng);
    let mut o = order(n, &cart, rng, n).json;
    // Strings for amounts, so that mutations below start from one shape.
    for field in ["amount", "discounts", "tax_amount", "subtotal"] {
        if let Some(number) = o[field].as_f64() {
            o[field] = json!(format!("{number}"));
        }
    }
    o
}

fn with(mut o: Value, field: &str, value: Value) -> Vec<u8> {
    o[field] = value;
    serde_json::to_vec(&o).unwrap()
}

fn without(mut o: Value, field: &str) -> Vec<u8> {
    o.as_object_mut().unwrap().remove(field);
    serde_json::to_vec(&o).unwrap()
}

/// A bad request: what it is, path, content type, body, the status and the words the
/// answer's message must hold.
type Case = (
    &'static str,
    &'static str,
    &'static str,
    Vec<u8>,
    u16,
    &'static str,
);

/// The order ids on `topic`, once every id in `expected` is there.
fn order_ids_on(topic: &str, expected: &BTreeSet<String>) -> BTreeSet<String> {
    let records = read_all(topic, Duration::from_secs(60), |records| {
        let seen: BTreeSet<String> = records
            .iter()
            .filter_map(|r| r.payload["order_id"].as_str().map(str::to_owned))
            .collect();
        expected.is_subset(&seen)
    });
    records
        .iter()
        .map(|r| {
            r.payload["order_id"]
                .as_str()
                .unwrap_or("<no order id>")
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_4xx_and_nothing_of_them_reaches_kafka() {
    let sales = Sales::new(BIN).await;
    let host = sales.start(&["command-api"]);
    let base = format!("http://{}", host.address());
    let client = reqwest::Client::new();
    support::ready(&client, &base).await;
    let mut rng = Rng::new(11);
    let good = valid(&mut rng, 1);

    let deep_array = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let mut deep_field = good.clone();
    let mut nested = json!("leaf");
    for _ in 0..200 {
        nested = json!({ "a": nested });
    }
    deep_field["product_info"] = nested;
    let mut invalid_utf8 = serde_json::to_vec(&good).unwrap();
    let at = invalid_utf8.windows(5).position(|w| w == b"Acme ").unwrap();
    invalid_utf8[at] = 0xff;
    let ten_mb = {
        let mut o = good.clone();
        o["product_info"] = json!("x".repeat(10 * 1024 * 1024));
        serde_json::to_vec(&o).unwrap()
    };
    let (first, mut bad, last) = (valid(&mut rng, 2), valid(&mut rng, 3), valid(&mut rng, 4));
    bad["quantity"] = json!(-1);
    let three_one_bad = serde_json::to_vec(&json!([first, bad, last])).unwrap();
    let too_many = serde_json::to_vec(&vec![good.clone(); 1001]).unwrap();

    // (what, path, content type, body, status, words the message must hold)
    let corpus: Vec<Case> = vec![
        (
            "malformed JSON",
            "/orders",
            "application/json",
            br#"{"order_id": "#.to_vec(),
            400,
            "JSON",
        ),
        (
            "trailing garbage",
            "/orders",
            "application/json",
            [serde_json::to_vec(&good).unwrap(), b"}}".to_vec()].concat(),
            400,
            "JSON",
        ),
        (
            "empty body",
            "/orders",
            "application/json",
            Vec::new(),
            400,
            "",
        ),
        (
            "a JSON string",
            "/orders",
            "application/json",
            br#""order""#.to_vec(),
            400,
            "",
        ),
        (
            "a JSON null",
            "/orders",
            "application/json",
            b"null".to_vec(),
            400,
            "",
        ),
        (
            "an array on the single route",
            "/orders",
            "application/json",
            serde_json::to_vec(&json!([good])).unwrap(),
            400,
            "",
        ),
        (
            "quantity as a word",
            "/orders",
            "application/json",
            with(good.clone(), "quantity", json!("two")),
            400,
            "quantity",
        ),
        (
            "quantity negative",
            "/orders",
            "application/json",
            with(good.clone(), "quantity", json!(-3)),
            400,
            "quantity",
        ),
        (
            "quantity zero",
            "/orders",
            "application/json",
            with(good.clone(), "quantity", json!(0)),
            400,
            "quantity",
        ),
        (
            "quantity absurd",
            "/orders",
            "application/json",
            with(good.clone(), "quantity", json!(1_000_000_000_000_u64)),
            400,
            "quantity",
        ),
        (
            "quantity fractional",
            "/orders",
            "application/json",
            with(good.clone(), "quantity", json!(1.5)),
            400,
            "quantity",
        ),
        (
            "quantity fractional, written with an exponent",
            "/orders",
            "application/json",
            String::from_utf8(with(good.clone(), "quantity", json!(7)))
                .unwrap()
                .replace("\"quantity\":7", "\"quantity\":2.5e0")
                .into_bytes(),
            400,
            "quantity",
        ),
        (
            "quantity as a string of digits",
            "/orders",
            "application/json",
            with(good.clone(), "quantity", json!("2")),
            400,
            "quantity",
        ),
        (
            "amount negative",
            "/orders",
            "application/json",
            with(good.clone(), "amount", json!("-5.00")),
            400,
            "amount",
        ),
        (
            "amount absurd",
            "/orders",
            "application/json",
            with(good.clone(), "amount", json!("99999999999999999999999999")),
            400,
            "amount",
        ),
        (
            "amount huge number",
            "/orders",
            "application/json",
            with(good.clone(), "amount", json!(1e300)),
            400,
            "amount",
        ),
        (
            "amount as an object",
            "/orders",
            "application/json",
            with(good.clone(), "amount", json!({"$gt": 0})),
            400,
            "amount",
        ),
        (
            "amount with 9 decimals",
            "/orders",
            "application/json",
            with(good.clone(), "amount", json!("1.123456789")),
            400,
            "amount",
        ),
        (
            "tax exponent",
            "/orders",
            "application/json",
            with(good.clone(), "tax_amount", json!("1e5")),
            400,
            "tax_amount",
        ),
        (
            "order_id not a UUID",
            "/orders",
            "application/json",
            with(good.clone(), "order_id", json!("1; DROP TABLE carts")),
            400,
            "order_id",
        ),
        (
            "cart_id not a UUID",
            "/orders",
            "application/json",
            with(good.clone(), "cart_id", json!("../../etc/passwd")),
            400,
            "cart_id",
        ),
        (
            "currency unknown",
            "/orders",
            "application/json",
            with(good.clone(), "currency", json!("EURO")),
            400,
            "currency",
        ),
        (
            "currency lower case",
            "/orders",
            "application/json",
            with(good.clone(), "currency", json!("eur")),
            400,
            "currency",
        ),
        (
            "created_at not a time",
            "/orders",
            "application/json",
            with(good.clone(), "created_at", json!("yesterday")),
            400,
            "created_at",
        ),
        (
            "user_id missing",
            "/orders",
            "application/json",
            without(good.clone(), "user_id"),
            400,
            "user_id",
        ),
        (
            "cart_id missing",
            "/orders",
            "application/json",
            without(good.clone(), "cart_id"),
            400,
            "cart_id",
        ),
        (
            "unknown field",
            "/orders",
            "application/json",
            with(good.clone(), "admin", json!(true)),
            400,
            "admin",
        ),
        (
            "product_name too long",
            "/orders",
            "application/json",
            with(good.clone(), "product_name", json!("p".repeat(300))),
            400,
            "product_name",
        ),
        (
            "product_name 1 MB",
            "/orders",
            "application/json",
            with(good.clone(), "product_name", json!("p".repeat(1 << 20))),
            413,
            "larger than",
        ),
        (
            "product_name empty",
            "/orders",
            "application/json",
            with(good.clone(), "product_name", json!("")),
            400,
            "product_name",
        ),
        (
            "deeply nested field",
            "/orders",
            "application/json",
            serde_json::to_vec(&deep_field).unwrap(),
            400,
            "recursion limit",
        ),
        (
            "deeply nested array",
            "/orders/batch",
            "application/json",
            deep_array.into_bytes(),
            400,
            "",
        ),
        (
            "invalid UTF-8",
            "/orders",
            "application/json",
            invalid_utf8,
            400,
            "",
        ),
        (
            "10 MB body",
            "/orders",
            "application/json",
            ten_mb,
            413,
            "larger than",
        ),
        (
            "wrong content type",
            "/orders",
            "text/plain",
            serde_json::to_vec(&good).unwrap(),
            415,
            "Content-Type",
        ),
        (
            "one bad order in a batch",
            "/orders/batch",
            "application/json",
            three_one_bad,
            400,
            "nothing of this request was kept",
        ),
        (
            "too many orders in a batch",
            "/orders/batch",
            "application/json",
            too_many,
            413,
            "at most",
        ),
        (
            "NDJSON with a broken line",
            "/orders/batch",
            "application/x-ndjson",
            [serde_json::to_vec(&good).unwrap(), b"\n{broken\n".to_vec()].concat(),
            400,
            "",
        ),
    ];
    let mut failures = Vec::new();
    for (what, path, content_type, body, status, words) in &corpus {
        let (got, text) = if body.len() > 1 << 20 {
            // The server answers 413 and closes while the client is still sending; a
            // client must read while it writes to see the answer.
            let address = host.address();
            let (path, content_type, body) = ((*path).to_owned(), *content_type, body.clone());
            tokio::task::spawn_blocking(move || oversized(&address, &path, content_type, &body))
                .await
                .unwrap()
        } else {
            let response = client
                .post(format!("{base}{path}"))
                .header("content-type", *content_type)
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let got = response.status().as_u16();
            (got, response.text().await.unwrap())
        };
        let message: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let readable = message["error"].as_str().is_some_and(|e| !e.is_empty());
        if got != *status || !text.contains(words) || !readable {
            failures.push(format!(
                "{what}: expected {status} naming {words:?}, got {got} {text:.300}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    println!("{} bad requests answered as expected", corpus.len());

    // Other methods and paths.
    let r = client.get(format!("{base}/orders")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let r = client.post(format!("{base}/nothing")).send().await.unwrap();
    assert_eq!(r.status(), 404);

    // The server keeps serving: a valid order is accepted, and it alone is on the topic.
    let r = client
        .post(format!("{base}/orders"))
        .json(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let expected: BTreeSet<String> = [good["order_id"].as_str().unwrap().to_owned()].into();
    assert_eq!(order_ids_on(&sales.orders, &expected), expected);
    let live = client
        .get(format!("{base}/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let (status, log) = host.stop(Duration::from_secs(30));
    assert!(status.success(), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

/// Small deterministic mutations of valid orders: each is answered 202 or 400 (never
/// 5xx), and exactly the accepted ones are on the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_mutations_keep_exactly_the_valid_orders() {
    const CASES: usize = 600;
    let sales = Sales::new(BIN).await;
    let host = sales.start(&["command-api"]);
    let base = format!("http://{}", host.address());
    let client = reqwest::Client::new();
    support::ready(&client, &base).await;
    let mut rng = Rng::new(20_261_126);
    let fields = [
        "order_id",
        "cart_id",
        "user_id",
        "product_name",
        "product_info",
        "quantity",
        "payment_method",
        "shipping_address",
        "billing_address",
        "amount",
        "discounts",
        "tax_amount",
        "subtotal",
        "shipping_method",
        "currency",
        "seller_info",
        "created_at",
    ];
    let values = [
        json!(null),
        json!(true),
        json!(0),
        json!(-1),
        json!(1),
        json!(10_000),
        json!(10_001),
        json!(1.5),
        json!(1e308),
        json!(""),
        json!(" "),
        json!("0"),
        json!("1.0000"),
        json!("1.00000"),
        json!("-0"),
        json!("NaN"),
        json!("Infinity"),
        json!("EUR"),
        json!("XXX"),
        json!("2026-11-26T10:00:00Z"),
        json!("2026-13-40T99:00:00Z"),
        json!("00000000-0000-0000-0000-000000000000"),
        json!("\u{0}\u{1f}"),
        json!("\u{202e}ǝpoɔıun"),
        json!([]),
        json!({}),
        json!(["a"]),
        json!({"$ne": null}),
    ];
    let (mut accepted, mut refused) = (BTreeSet::new(), 0);
    for n in 0..CASES {
        let mut o = valid(&mut rng, 100 + n);
        let id = format!(
            "{:08x}-0000-4000-8000-{:012x}",
            n,
            rng.next() & 0xffff_ffff_ffff
        );
        o["order_id"] = json!(id);
        let mutations = 1 + rng.below(2);
        for _ in 0..mutations {
            let field = fields[rng.below(fields.len() as u64) as usize];
            if rng.below(5) == 0 {
                o.as_object_mut().unwrap().remove(field);
            } else {
                o[field] = values[rng.below(values.len() as u64) as usize].clone();
            }
        }
        let response = client
            .post(format!("{base}/orders"))
            .json(&o)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        match status {
            202 => {
                accepted.insert(o["order_id"].as_str().unwrap().to_owned());
            }
            400 => {
                refused += 1;
                assert!(
                    body["error"].as_str().is_some_and(|e| !e.is_empty()),
                    "a 400 without a message for {o}: {body}"
                );
            }
            other => panic!("{other} for {o}: {body}"),
        }
    }
    println!(
        "{CASES} generated requests: {} accepted, {refused} refused with 400",
        accepted.len()
    );
    assert!(refused > CASES / 2, "most mutations make an order invalid");
    assert_eq!(order_ids_on(&sales.orders, &accepted), accepted);
    let live = client
        .get(format!("{base}/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let (status, log) = host.stop(Duration::from_secs(30));
    assert!(status.success(), "{log}");
}

/// Clients that trickle a request's head are cut off after `header_read_timeout`; one
/// that never finishes its body is answered 408 after `request_timeout`; meanwhile
/// everyone else is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_while_others_are_served() {
    let sales = Sales::new(BIN).await;
    let mut args = sales.overrides();
    args.extend(
        [
            "--set",
            "server.header_read_timeout=1s",
            "--set",
            "server.request_timeout=3s",
            "run",
            "--pipeline",
            "command-api",
        ]
        .map(str::to_owned),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let host = Host::start(std::path::Path::new(BIN), &Sales::config(), &args);
    let address = host.address();
    let base = format!("http://{address}");
    let client = reqwest::Client::new();
    support::ready(&client, &base).await;

    // 100 connections that send half a request head and then nothing.
    let mut slow: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut s = TcpStream::connect(&address).unwrap();
            s.write_all(b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Ty")
                .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        })
        .collect();
    // One that sends its head and part of the body.
    let mut slow_body = TcpStream::connect(&address).unwrap();
    slow_body
        .write_all(
            b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"order_id\":",
        )
        .unwrap();
    slow_body
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();

    // Others are served meanwhile.
    let mut rng = Rng::new(5);
    let started = Instant::now();
    for n in 0..20 {
        let r = client
            .post(format!("{base}/orders"))
            .json(&valid(&mut rng, n))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    println!(
        "20 orders accepted in {:.2} s beside 101 slow clients",
        started.elapsed().as_secs_f64()
    );

    // The slow heads are closed by the server (EOF, or a 408 before it).
    let cut = tokio::task::spawn_blocking(move || {
        slow.iter_mut()
            .map(|s| {
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf);
                let text = String::from_utf8_lossy(&buf).into_owned();
                text.is_empty() || text.starts_with("HTTP/1.1 408")
            })
            .filter(|closed| *closed)
            .count()
    })
    .await
    .unwrap();
    assert_eq!(cut, 100, "every trickling client is cut off");
    let mut answer = String::new();
    let _ = slow_body.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:.200}");

    let live = client
        .get(format!("{base}/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    drop(host);
}

/// Query parameters only ever appear as values in the Elasticsearch query and as bound
/// values in CQL: no parameter changes what is searched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_parameters_cannot_change_the_query() {
    let sales = Sales::new(BIN).await;
    let host = sales.start(&[]);
    let base = format!("http://{}", host.address());
    let client = reqwest::Client::new();
    support::ready(&client, &base).await;
    let mut rng = support::sales::fresh_rng("query parameters");
    let a = valid(&mut rng, 1);
    let b = valid(&mut rng, 2);
    for o in [&a, &b] {
        let r = client
            .post(format!("{base}/orders"))
            .json(o)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    // Both carts are searchable.
    let user_a = a["user_id"].as_str().unwrap().to_owned();
    let user_b = b["user_id"].as_str().unwrap().to_owned();
    let search = |query: String| {
        let client = client.clone();
        let base = base.clone();
        async move {
            let r = client
                .get(format!("{base}/carts?{query}"))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (sa, ra) = search(format!("user_id={user_a}")).await;
        let (sb, rb) = search(format!("user_id={user_b}")).await;
        let found = |r: &Value| r["items"].as_array().map_or(0, Vec::len);
        if sa == 200 && sb == 200 && found(&ra) == 1 && found(&rb) == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "carts never searchable: {ra} {rb}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let hostile_users = [
        format!("{user_a}\" OR \"1\"=\"1"),
        "*".to_owned(),
        format!("{user_a}*"),
        "{\"match_all\":{}}".to_owned(),
        format!("{user_a}\"}}}},{{\"match_all\":{{}}}}"),
        format!("{user_a}' OR '1'='1"),
        "_all".to_owned(),
    ];
    for user in &hostile_users {
        let encoded: String = url_encode(user);
        let (status, body) = search(format!("user_id={encoded}")).await;
        assert_eq!(status, 200, "{user}: {body}");
        assert_eq!(
            body["items"].as_array().map(Vec::len),
            Some(0),
            "user_id {user:?} must match no one: {body}"
        );
    }
    for (query, words) in [
        ("size=100000", "size"),
        ("size=-1", "size"),
        ("size=1e3", "size"),
        ("from=yesterday", "from"),
        ("after=eyJtYXRjaF9hbGwiOnt9fQ", "after"),
        ("user_id=a&user_id=b", "user_id"),
        ("sort=user_id", "is not one of"),
        ("sort=%7B%22_script%22%3A%7B%7D%7D", "is not one of"),
        ("min_subtotal=1%22%7D%7D", "min_subtotal"),
        ("order=user_id", "unknown parameter"),
        ("user_id=%ff", "user_id"),
        ("user_id=%0a", "control characters"),
    ] {
        let (status, body) = search(query.to_owned()).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.to_string().contains(words), "{query}: {body}");
    }
    for path in [
        "/carts/1;DROP%20TABLE%20cart_events",
        "/carts/'%20OR%20'1'='1/events",
        "/carts/..%2F..%2Fetc%2Fpasswd/summary",
        "/carts/00000000-0000-0000-0000-00000000000g",
    ] {
        let r = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 400, "{path}");
    }
    drop(host);
}

/// POSTs a large body over a raw connection, reading the answer while writing.
fn oversized(address: &str, path: &str, content_type: &str, body: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = stream.try_clone().unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let body = body.to_vec();
    let writer = std::thread::spawn(move || {
        // The server may close before the body is sent: that is its answer, not an error.
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(&body);
    });
    let mut answer = Vec::new();
    let _ = reader.read_to_end(&mut answer);
    let _ = writer.join();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Methods nobody uses and paths nobody serves cannot add metric series: they are counted
/// under `other`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_methods_and_paths_add_no_metric_series() {
    let sales = Sales::new(BIN).await;
    let host = sales.start(&["command-api"]);
    let base = format!("http://{}", host.address());
    let client = reqwest::Client::new();
    support::ready(&client, &base).await;
    let series = || async {
        let text = support::get_text(&client, format!("{base}/metrics")).await;
        text.lines()
            .filter(|l| l.starts_with("salesflow_http_"))
            .map(|l| l.rsplit_once(' ').map_or(l, |(name, _)| name).to_owned())
            .collect::<BTreeSet<String>>()
    };
    let mut rng = Rng::new(5);
    let mut method = || {
        let len = 3 + rng.below(10) as usize;
        let name: String = (0..len)
            .map(|_| char::from(b'A' + u8::try_from(rng.below(26)).unwrap()))
            .collect();
        reqwest::Method::from_bytes(name.as_bytes()).unwrap()
    };
    let paths = ["/orders", "/orders/batch", "/nowhere", "/metrics"];
    // One of each kind first (and a scrape): those series exist from then on.
    series().await;
    for path in paths {
        let _ = client
            .request(method(), format!("{base}{path}"))
            .send()
            .await
            .unwrap();
    }
    let before = series().await;
    for i in 0..1000 {
        let path = if i % 5 == 4 {
            format!("/made-up/{i}")
        } else {
            paths[i % 4].to_owned()
        };
        let status = client
            .request(method(), format!("{base}{path}"))
            .send()
            .await
            .unwrap()
            .status();
        assert!(status.is_client_error(), "{path}: {status}");
    }
    let after = series().await;
    let added: Vec<&String> = after.difference(&before).collect();
    assert!(
        added.is_empty(),
        "1000 invented methods added series: {added:?}"
    );
    assert!(
        before.iter().any(|s| s.contains("method=\"other\"")),
        "{before:?}"
    );
    let (status, log) = host.stop(Duration::from_secs(30));
    assert!(status.success(), "{log}");
}

/// The Query API alone, with `set` (one `--set`), Cassandra's request timeout at 1 s and
/// `Retry-After: 7`.
fn query_api_with(tag: &str, set: &str) -> Host {
    let mut args = Sales::named(BIN, tag).overrides();
    for set in [
        set,
        "cassandra.request_timeout=1s",
        "pipelines.query-api.sources.api.retry_after_secs=7",
    ] {
        args.extend(["--set".to_owned(), set.to_owned()]);
    }
    args.extend(["run", "--pipeline", "query-api"].map(str::to_owned));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Host::start(std::path::Path::new(BIN), &Sales::config(), &args)
}

/// A 503 of [`query_api_with`]: `Retry-After: 7`, and an error naming `store`.
async fn assert_unavailable(r: reqwest::Response, path: &str, store: &str) {
    assert_eq!(r.status(), 503, "{path}");
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("7"),
        "{path}: {:?}",
        r.headers()
    );
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains(store)),
        "{path}: {body}"
    );
}

/// When the stores behind the Query API cannot answer, every query route says so with 503
/// and the `Retry-After` its API document promises; the process stays up and live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_answer_503_with_retry_after_while_the_read_models_are_down() {
    // A port nothing listens on: Elasticsearch is down for this process.
    let nowhere = support::free_address().unwrap();
    let host = query_api_with("nowhere", &format!("elasticsearch.url=http://{nowhere}"));
    let base = format!("http://{}", host.address());
    let client = reqwest::Client::new();
    let cart = uuid::Uuid::new_v4();
    for path in [
        format!("/carts/{cart}"),
        format!("/carts/{cart}/summary"),
        "/carts?user_id=someone".to_owned(),
        "/carts/totals?user_id=someone".to_owned(),
    ] {
        let r = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_unavailable(r, &path, "read models").await;
    }
    let live = client
        .get(format!("{base}/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let ready = client
        .get(format!("{base}/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "ready while Elasticsearch is down");
    drop(host);
}

/// The Query API starts while Cassandra does not answer; a cart's events are then 503
/// with `Retry-After` within the store's request timeout (not the store's minutes of
/// retries, nor the server's 408), and the read models still answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_answer_503_with_retry_after_while_the_event_store_is_down() {
    // A port nothing listens on: Cassandra is down for this process, from its start.
    let nowhere = support::free_address().unwrap();
    let host = query_api_with("no-store", &format!("cassandra.nodes=[\"{nowhere}\"]"));
    let base = format!("http://{}", host.address());
    let client = reqwest::Client::new();
    let cart = uuid::Uuid::new_v4();
    let path = format!("/carts/{cart}/events");
    let r = client.get(format!("{base}{path}")).send().await.unwrap();
    assert_unavailable(r, &path, "event store").await;
    let r = client
        .get(format!("{base}/carts/{cart}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the read models answer without Cassandra");
    // Readiness answers from its last round of checks (one at start, then every 2 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = client
            .get(format!("{base}/health/ready"))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 503, "ready while Cassandra is down");
        let ready = ready.text().await.unwrap();
        if ready.contains("connecting to Cassandra at") {
            break;
        }
        assert!(Instant::now() < deadline, "{ready}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(host);
}
