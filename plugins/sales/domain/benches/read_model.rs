//! What the projections spend on one changed cart's documents: the detailed and summary
//! read models of a cart of 20 orders (the benchmark's carts hold about that many by the
//! end of its sustained phase), serialized to the bytes the bulk request carries.
//! `cargo bench -p salesflow-sales --bench read_model`; compare builds with
//! `-- --save-baseline NAME` and `-- --baseline NAME`.

use std::hint::black_box;

use chrono::{TimeZone, Utc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use salesflow_sales::cart::{Cart, CartEvent};
use salesflow_sales::{OrderValidator, read_model};
use uuid::Uuid;

const ORDERS: u64 = 20;

fn cart() -> Cart {
    let validator = OrderValidator::new();
    let cart_id = Uuid::from_u128(0x3f1c_2a9e_6b1d_4b8e_9a77_2d5e_8c1f_0a11);
    let event = |seq: u64| {
        let body = format!(
            r#"{{"order_id":"{}","cart_id":"{cart_id}","user_id":"user-17","product_name":"Trail running shoes","product_info":"size 42, lot {seq}","quantity":2,"payment_method":"card","shipping_address":"1 Main St, Springfield","billing_address":"1 Main St, Springfield","amount":"119.90","discounts":"10.00","tax_amount":"21.98","subtotal":"131.88","shipping_method":"standard","currency":"EUR","seller_info":"Acme Sports","created_at":"2026-11-26T10:15:00Z"}}"#,
            Uuid::from_u128(u128::from(seq))
        );
        CartEvent {
            cart_id,
            seq,
            recorded_at: Utc
                .timestamp_opt(1_764_150_900, 0)
                .single()
                .expect("a time"),
            order: validator
                .decode(body.as_bytes())
                .expect("the bench's order is valid"),
        }
    };
    let mut cart = Cart::new(&event(1));
    for seq in 2..=ORDERS {
        cart.apply(&event(seq)).expect("the next event");
    }
    cart
}

fn documents(c: &mut Criterion) {
    let cart = cart();
    let mut group = c.benchmark_group("read_model");
    group.throughput(Throughput::Elements(1));
    group.bench_function("detailed_and_summary_20_orders", |b| {
        b.iter(|| read_model::documents(black_box(&cart)).expect("both documents"));
    });
    group.finish();
}

criterion_group!(benches, documents);
criterion_main!(benches);
