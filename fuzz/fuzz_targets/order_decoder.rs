//! Any bytes on the `orders` topic or in a POST body: the one decoder answers, never
//! panics, and what it accepts is sound and reads back the same once stored (the domain
//! stores the decoded order as JSON in the event store).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use salesflow_sales::OrderValidator;

static VALIDATOR: LazyLock<OrderValidator> = LazyLock::new(OrderValidator::new);

fuzz_target!(|data: &[u8]| {
    let decoded = VALIDATOR.decode(data);
    assert_eq!(decoded.is_ok(), VALIDATOR.check(data).is_ok());
    match decoded {
        Ok(order) => {
            assert!((1..=10_000).contains(&order.quantity));
            let stored = serde_json::to_vec(&order).expect("an order encodes");
            let again = VALIDATOR.decode(&stored).expect("a stored order decodes");
            assert_eq!(again, order);
        }
        Err(problems) => assert!(!problems.is_empty() && problems.iter().all(|p| !p.is_empty())),
    }
});
