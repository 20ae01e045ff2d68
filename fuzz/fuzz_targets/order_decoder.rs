//! Any bytes on the `orders` topic or in a POST body: the decoder answers, never panics,
//! and its fast check agrees with the full read.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use salesflow_sales::OrderValidator;

static VALIDATOR: LazyLock<OrderValidator> = LazyLock::new(OrderValidator::new);

fuzz_target!(|data: &[u8]| {
    let full = VALIDATOR.validate(data);
    let fast = VALIDATOR.check(data);
    assert_eq!(full.is_ok(), fast.is_ok());
    if let Ok(order) = full {
        assert!((1..=10_000).contains(&order.quantity));
        assert_eq!(Some(order.cart_id), fast.ok());
    }
});
