//! Realistic, seeded orders: carts with skewed popularity (Zipf), several orders each,
//! one currency and user per cart, exact decimal amounts.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Zipf};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::profile::Data;

/// The products orders are for.
pub const PRODUCTS: [&str; 12] = [
    "trail running shoes",
    "wool socks",
    "rain jacket",
    "water bottle",
    "head torch",
    "camping stove",
    "sleeping bag",
    "map case",
    "walking poles",
    "sun hat",
    "first aid kit",
    "thermal mug",
];
const PAYMENT: [&str; 3] = ["card", "paypal", "invoice"];
const SHIPPING: [&str; 3] = ["standard", "express", "pickup"];

#[derive(Clone, Debug)]
pub struct Cart {
    pub id: Uuid,
    pub user: String,
    pub currency: String,
    pub shipping_address: String,
    pub billing_address: String,
    pub payment: &'static str,
    pub shipping: &'static str,
}

impl Cart {
    /// The `n`-th cart of a run: its addresses, payment and shipping follow from `n`.
    pub fn new(n: usize, id: Uuid, user: String, currency: String) -> Self {
        Self {
            id,
            user,
            currency,
            shipping_address: format!(
                "{} Harbour Road, {}",
                n + 1,
                ["Leeds", "Porto", "Graz", "Lyon"][n % 4]
            ),
            billing_address: format!(
                "{} Mill Lane, {}",
                n + 1,
                ["York", "Braga", "Linz", "Nice"][n % 4]
            ),
            payment: PAYMENT[n % PAYMENT.len()],
            shipping: SHIPPING[n % SHIPPING.len()],
        }
    }
}

/// What one order buys, with its amounts: the subtotal is `amount × quantity −
/// discounts + tax`, so a cart's totals are exact sums a test can check.
#[derive(Clone, Debug)]
pub struct Line<'a> {
    pub product: &'a str,
    pub info: &'a str,
    pub quantity: u32,
    pub amount: Decimal,
    pub discounts: Decimal,
    pub tax: Decimal,
}

impl Line<'_> {
    pub fn subtotal(&self) -> Decimal {
        self.amount * Decimal::from(self.quantity) - self.discounts + self.tax
    }
}

/// The one order builder of the load generator, the tests and the benchmark: the JSON an
/// order of `cart` is posted (or produced) as. `money_as_numbers` writes the amounts as
/// JSON numbers instead of strings (both are read exactly).
pub fn order_body(
    cart: &Cart,
    order_id: Uuid,
    line: &Line<'_>,
    created_at: &str,
    money_as_numbers: bool,
) -> Value {
    let money = |d: Decimal| -> Value {
        if money_as_numbers {
            serde_json::from_str(&d.to_string()).unwrap_or_else(|_| json!(d.to_string()))
        } else {
            json!(d.to_string())
        }
    };
    json!({
        "order_id": order_id,
        "cart_id": cart.id,
        "user_id": cart.user,
        "product_name": line.product,
        "product_info": line.info,
        "quantity": line.quantity,
        "payment_method": cart.payment,
        "shipping_address": cart.shipping_address,
        "billing_address": cart.billing_address,
        "amount": money(line.amount),
        "discounts": money(line.discounts),
        "tax_amount": money(line.tax),
        "subtotal": money(line.subtotal()),
        "shipping_method": cart.shipping,
        "currency": cart.currency,
        "seller_info": "Acme Outdoor",
        "created_at": created_at,
    })
}

/// An order to send, and what it is.
#[derive(Clone, Debug)]
pub struct GeneratedOrder {
    pub order_id: Uuid,
    pub cart: usize,
    pub body: Value,
    /// Made invalid on purpose: the API must refuse it.
    pub invalid: bool,
}

pub struct Generator {
    rng: StdRng,
    zipf: Zipf<f64>,
    pub carts: Vec<Cart>,
    settings: Data,
    sent: u64,
    /// Orders generated per cart, to stay under `max_orders_per_cart`.
    per_cart: Vec<u32>,
    /// The cart each shopper (by popularity rank) currently fills: a full one is
    /// replaced by a new cart of the same shopper, so no cart outgrows the limit however
    /// long the run.
    slots: Vec<usize>,
}

impl Generator {
    /// Carts and orders derived from `seed` and `run_id` (so that two runs of one profile
    /// use new carts, and a run can be reproduced by giving both).
    pub fn new(settings: &Data, seed: u64, run_id: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ run_id.rotate_left(17));
        let carts = (0..settings.carts)
            .map(|n| {
                Cart::new(
                    n,
                    Uuid::from_u64_pair(rng.random(), rng.random()),
                    format!("user-{run_id:x}-{n}"),
                    settings.currencies[n % settings.currencies.len()].clone(),
                )
            })
            .collect();
        let slots = (0..settings.carts).collect();
        #[allow(clippy::cast_precision_loss)]
        let zipf = Zipf::new(settings.carts as f64, settings.zipf_exponent.max(0.000_1))
            .expect("valid Zipf parameters");
        Self {
            rng,
            zipf,
            carts,
            per_cart: vec![0; settings.carts],
            slots,
            settings: settings.clone(),
            sent: 0,
        }
    }

    /// A cart, popular shoppers' more often. A cart that has `max_orders_per_cart`
    /// orders is done: its shopper starts a new cart (same user, currency and addresses),
    /// so a long run goes on over new carts instead of overfilling the popular ones.
    pub fn pick_cart(&mut self) -> usize {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let k = self.zipf.sample(&mut self.rng) as usize;
        let slot = k.saturating_sub(1).min(self.slots.len() - 1);
        let current = self.slots[slot];
        if self.per_cart[current] < self.settings.max_orders_per_cart {
            return current;
        }
        let next = Cart {
            id: Uuid::from_u64_pair(self.rng.random(), self.rng.random()),
            ..self.carts[current].clone()
        };
        self.carts.push(next);
        self.per_cart.push(0);
        self.slots[slot] = self.carts.len() - 1;
        self.slots[slot]
    }

    pub fn chance(&mut self, share: f64) -> bool {
        share > 0.0 && self.rng.random::<f64>() < share
    }

    pub fn below(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n.max(1))
    }

    fn money(&mut self, max_cents: i64) -> Decimal {
        Decimal::new(self.rng.random_range(0..max_cents), 2)
    }

    /// A new order for a cart chosen by popularity.
    pub fn order(&mut self) -> GeneratedOrder {
        let cart_index = self.pick_cart();
        self.order_for(cart_index)
    }

    pub fn order_for(&mut self, cart_index: usize) -> GeneratedOrder {
        self.sent += 1;
        self.per_cart[cart_index] += 1;
        let cart = self.carts[cart_index].clone();
        let quantity: u32 = self.rng.random_range(1..=5);
        let amount = self.money(50_000);
        let discounts = self.money(1_000).min(amount * Decimal::from(quantity));
        let tax = self.money(5_000);
        let order_id = Uuid::from_u64_pair(self.rng.random(), self.rng.random());
        let product = PRODUCTS[self.rng.random_range(0..PRODUCTS.len())];
        let invalid = self.chance(self.settings.invalid_share);
        let info = format!("lot {}", self.sent);
        let line = Line {
            product,
            info: &info,
            quantity,
            amount,
            discounts,
            tax,
        };
        let created_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut body = order_body(&cart, order_id, &line, &created_at, false);
        if invalid {
            match self.rng.random_range(0..4) {
                0 => body["quantity"] = json!(0),
                1 => body["currency"] = json!("XXX"),
                2 => body["amount"] = json!("-3.00"),
                _ => body["created_at"] = json!("yesterday"),
            }
        }
        GeneratedOrder {
            order_id,
            cart: cart_index,
            body,
            invalid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(carts: usize, max: u32) -> Data {
        Data {
            carts,
            max_orders_per_cart: max,
            ..Data::default()
        }
    }

    #[test]
    fn the_same_seed_and_run_give_the_same_orders() {
        let mut first = Generator::new(&settings(50, 50), 7, 99);
        let mut again = Generator::new(&settings(50, 50), 7, 99);
        let mut other = Generator::new(&settings(50, 50), 7, 100);
        for _ in 0..100 {
            let (one, two, three) = (first.order(), again.order(), other.order());
            assert_eq!(one.order_id, two.order_id);
            assert_eq!(one.cart, two.cart);
            assert_eq!(one.body["amount"], two.body["amount"]);
            assert_ne!(one.order_id, three.order_id, "another run, other orders");
        }
    }

    #[test]
    fn popular_carts_get_more_orders_but_never_more_than_the_limit() {
        let mut g = Generator::new(&settings(100, 30), 1, 1);
        let mut counts = vec![0u32; 100];
        for _ in 0..2000 {
            let cart = g.order().cart;
            if cart >= counts.len() {
                counts.resize(cart + 1, 0);
            }
            counts[cart] += 1;
        }
        assert!(counts.iter().all(|&n| n <= 30), "{counts:?}");
        // Zipf: the first carts fill up first, the last ones get the least.
        assert_eq!(counts[0], 30);
        let tail: u32 = counts[80..100].iter().sum();
        let head: u32 = counts[..20].iter().sum();
        assert!(head > tail, "head {head}, tail {tail}");
        // Full carts were followed by new ones of the same shoppers.
        assert!(g.carts.len() > 100, "{} carts", g.carts.len());
        assert_eq!(g.carts[100].user, g.carts[0].user);
    }

    #[test]
    fn a_run_longer_than_the_carts_hold_goes_on_over_new_carts() {
        // 10 carts of at most 5 orders hold 50; 1000 orders need at least 200 carts.
        let mut g = Generator::new(&settings(10, 5), 2, 2);
        let mut counts: std::collections::HashMap<Uuid, u32> = std::collections::HashMap::new();
        for _ in 0..1000 {
            let order = g.order();
            let cart = g.carts[order.cart].id;
            assert_eq!(order.body["cart_id"], json!(cart));
            *counts.entry(cart).or_default() += 1;
        }
        assert!(counts.values().all(|&n| n <= 5), "{counts:?}");
        assert!(counts.len() >= 200, "{} carts", counts.len());
    }

    #[test]
    fn orders_are_valid_unless_made_invalid() {
        let validator = salesflow_sales::OrderValidator::new();
        let mut g = Generator::new(
            &Data {
                invalid_share: 0.5,
                ..settings(10, 50)
            },
            3,
            3,
        );
        let (mut valid, mut invalid) = (0, 0);
        for _ in 0..200 {
            let order = g.order();
            let bytes = serde_json::to_vec(&order.body).unwrap();
            let ok = validator.check(&bytes).is_ok();
            assert_eq!(ok, !order.invalid, "{}", order.body);
            if ok { valid += 1 } else { invalid += 1 }
        }
        assert!(
            valid > 50 && invalid > 50,
            "{valid} valid, {invalid} invalid"
        );
    }
}
