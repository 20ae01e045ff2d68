//! What reading one order costs: `check` (the Command API's validate stage: schema, then
//! every field read, only the cart id kept) and `decode` (the domain: the whole order).
//! `cargo bench -p salesflow-sales`; compare builds with `-- --save-baseline NAME` and
//! `-- --baseline NAME`.
//!
//! On the 2-core development machine both take 5-6 µs per order, about half of it in
//! parsing the `serde_json::Value` the schema validator reads, and about 0.6 µs in the
//! schema's checks themselves: under a tenth of the Command API's CPU per request.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use salesflow_sales::OrderValidator;

/// An order as the load generator writes it: money as strings, a plain quantity.
const ORDER: &[u8] = br#"{"order_id":"7c9e6679-7425-40de-944b-e07fc1f90ae7","cart_id":"3f1c2a9e-6b1d-4b8e-9a77-2d5e8c1f0a11","user_id":"user-17","product_name":"Trail running shoes","product_info":"size 42, blue","quantity":2,"payment_method":"card","shipping_address":"1 Main St, Springfield","billing_address":"1 Main St, Springfield","amount":"119.90","discounts":"10.00","tax_amount":"21.98","subtotal":"131.88","shipping_method":"standard","currency":"EUR","seller_info":"Acme Sports","created_at":"2026-11-26T10:15:00Z"}"#;

fn order(c: &mut Criterion) {
    let validator = OrderValidator::new();
    assert!(
        validator.decode(ORDER).is_ok(),
        "the bench's order is valid"
    );
    let mut group = c.benchmark_group("order");
    group.throughput(Throughput::Elements(1));
    group.bench_function("check", |b| {
        b.iter(|| validator.check(black_box(ORDER)));
    });
    group.bench_function("decode", |b| {
        b.iter(|| validator.decode(black_box(ORDER)));
    });
    group.finish();
}

criterion_group!(benches, order);
criterion_main!(benches);
