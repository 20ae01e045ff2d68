//! The cart aggregate: its rules, its events, and its state rebuilt from them.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::order::Order;

/// Most orders a cart keeps; past it, orders are refused (a cart's update carries the
/// whole cart, and a Kafka message and a document must stay bounded).
pub const MAX_ORDERS_PER_CART: usize = 1000;

/// Events of a cart live in buckets of this many, so that no Cassandra partition grows
/// without bound.
pub const BUCKET_SIZE: u64 = 1000;

/// An accepted order, as the event store keeps it: the cart's `seq`-th event (from 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartEvent {
    pub cart_id: Uuid,
    pub seq: u64,
    pub recorded_at: DateTime<Utc>,
    pub order: Order,
}

impl CartEvent {
    pub fn bucket(&self) -> i32 {
        bucket_of(self.seq)
    }
}

/// The bucket of an event number.
pub fn bucket_of(seq: u64) -> i32 {
    i32::try_from(seq / BUCKET_SIZE).unwrap_or(i32::MAX)
}

/// What the domain worker publishes on `cart-events` for every accepted order (and again
/// for a redelivered one): the event, and the cart as it stands after it. Of several
/// updates of one cart in one batch only the last carries the cart (the others have no
/// `cart` field): a later record of the same partition always brings it, and a hot
/// cart's orders do not each copy the whole cart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartUpdated {
    pub event: CartEvent,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cart: Option<Cart>,
}

/// A `CartUpdated` by reference: encodes the same JSON without copying the cart.
#[derive(Debug, Serialize)]
pub struct CartUpdatedRef<'a> {
    pub event: &'a CartEvent,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cart: Option<&'a Cart>,
}

/// One line of a cart: an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub order_id: Uuid,
    pub seq: u64,
    pub product_name: String,
    pub product_info: String,
    pub quantity: u32,
    pub amount: Decimal,
    pub discounts: Decimal,
    pub tax_amount: Decimal,
    pub subtotal: Decimal,
    pub seller_info: String,
    pub created_at: DateTime<Utc>,
}

/// A cart: its orders, and what they add up to. `version` is its last event's `seq`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cart {
    pub cart_id: Uuid,
    pub version: u64,
    pub user_id: String,
    pub currency: String,
    /// When its first order was placed.
    pub created_at: DateTime<Utc>,
    /// When its latest order was placed.
    pub updated_at: DateTime<Utc>,
    pub payment_method: String,
    pub shipping_address: String,
    pub billing_address: String,
    pub shipping_method: String,
    /// Exact sums over the orders.
    pub tax_amount: Decimal,
    pub subtotal: Decimal,
    pub discounts: Decimal,
    pub items: Vec<Item>,
}

/// Why an order cannot join its cart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    CurrencyMismatch { cart: String, order: String },
    UserMismatch { cart: String, order: String },
    CartFull,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::CurrencyMismatch { cart, order } => {
                write!(f, "currency: the cart is in {cart}, the order in {order}")
            }
            Refusal::UserMismatch { cart, order } => {
                write!(
                    f,
                    "user_id: the cart belongs to {cart:?}, the order to {order:?}"
                )
            }
            Refusal::CartFull => write!(
                f,
                "cart_id: the cart already holds {MAX_ORDERS_PER_CART} orders"
            ),
        }
    }
}

/// What applying an order to a cart did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// A new event, the cart's next.
    Accepted(CartEvent),
    /// The order id is already in the cart: nothing new (its stored event is returned,
    /// to be published again).
    Duplicate(CartEvent),
    Refused(Refusal),
}

/// A cart's state while the domain worker owns it: the cart, and its orders' events by
/// order id (for duplicates).
#[derive(Clone, Debug, Default)]
pub struct CartState {
    pub cart: Option<Cart>,
    events: HashMap<Uuid, CartEvent>,
}

impl CartState {
    /// Rebuilds a cart from its events, in order.
    pub fn from_events(events: impl IntoIterator<Item = CartEvent>) -> Self {
        let mut state = Self::default();
        for event in events {
            state.apply(event);
        }
        state
    }

    pub fn version(&self) -> u64 {
        self.cart.as_ref().map_or(0, |c| c.version)
    }

    /// The rules of a cart: a repeated order id changes nothing; a cart keeps one currency
    /// and one user, and at most [`MAX_ORDERS_PER_CART`] orders.
    pub fn decide(&self, order: &Order, now: DateTime<Utc>) -> Decision {
        if let Some(existing) = self.events.get(&order.order_id) {
            return Decision::Duplicate(existing.clone());
        }
        if let Some(cart) = &self.cart {
            if cart.currency != order.currency {
                return Decision::Refused(Refusal::CurrencyMismatch {
                    cart: cart.currency.clone(),
                    order: order.currency.clone(),
                });
            }
            if cart.user_id != order.user_id {
                return Decision::Refused(Refusal::UserMismatch {
                    cart: cart.user_id.clone(),
                    order: order.user_id.clone(),
                });
            }
            if cart.items.len() >= MAX_ORDERS_PER_CART {
                return Decision::Refused(Refusal::CartFull);
            }
        }
        Decision::Accepted(CartEvent {
            cart_id: order.cart_id,
            seq: self.version() + 1,
            recorded_at: now,
            order: order.clone(),
        })
    }

    /// Applies an event (the next one, in order).
    pub fn apply(&mut self, event: CartEvent) {
        let order = &event.order;
        let item = Item {
            order_id: order.order_id,
            seq: event.seq,
            product_name: order.product_name.clone(),
            product_info: order.product_info.clone(),
            quantity: order.quantity,
            amount: order.amount,
            discounts: order.discounts,
            tax_amount: order.tax_amount,
            subtotal: order.subtotal,
            seller_info: order.seller_info.clone(),
            created_at: order.created_at,
        };
        match &mut self.cart {
            None => {
                self.cart = Some(Cart {
                    cart_id: event.cart_id,
                    version: event.seq,
                    user_id: order.user_id.clone(),
                    currency: order.currency.clone(),
                    created_at: order.created_at,
                    updated_at: order.created_at,
                    payment_method: order.payment_method.clone(),
                    shipping_address: order.shipping_address.clone(),
                    billing_address: order.billing_address.clone(),
                    shipping_method: order.shipping_method.clone(),
                    tax_amount: order.tax_amount,
                    subtotal: order.subtotal,
                    discounts: order.discounts,
                    items: vec![item],
                });
            }
            Some(cart) => {
                cart.version = event.seq;
                cart.created_at = cart.created_at.min(order.created_at);
                cart.updated_at = cart.updated_at.max(order.created_at);
                // The latest order says how the cart is paid, shipped and billed.
                cart.payment_method.clone_from(&order.payment_method);
                cart.shipping_address.clone_from(&order.shipping_address);
                cart.billing_address.clone_from(&order.billing_address);
                cart.shipping_method.clone_from(&order.shipping_method);
                cart.tax_amount += order.tax_amount;
                cart.subtotal += order.subtotal;
                cart.discounts += order.discounts;
                cart.items.push(item);
            }
        }
        self.events.insert(order.order_id, event);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn order(cart: Uuid, n: u32, currency: &str, amount: &str) -> Order {
        Order {
            order_id: Uuid::from_u128(u128::from(n) + 1),
            cart_id: cart,
            user_id: "u1".into(),
            product_name: format!("product {n}"),
            product_info: String::new(),
            quantity: 1,
            payment_method: "card".into(),
            shipping_address: "a".into(),
            billing_address: "b".into(),
            amount: amount.parse().unwrap(),
            discounts: Decimal::ZERO,
            tax_amount: "0.10".parse().unwrap(),
            subtotal: amount.parse().unwrap(),
            shipping_method: "standard".into(),
            currency: currency.into(),
            seller_info: "s".into(),
            created_at: DateTime::from_timestamp(1_800_000_000 + i64::from(n), 0).unwrap(),
        }
    }

    fn accept(state: &mut CartState, o: &Order) -> CartEvent {
        match state.decide(o, Utc::now()) {
            Decision::Accepted(e) => {
                state.apply(e.clone());
                e
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rules_of_a_cart() {
        let cart = Uuid::from_u128(99);
        let mut state = CartState::default();
        let first = accept(&mut state, &order(cart, 1, "EUR", "10.00"));
        assert_eq!(first.seq, 1);
        assert_eq!(
            state.decide(&order(cart, 1, "EUR", "10.00"), Utc::now()),
            Decision::Duplicate(first)
        );
        assert!(matches!(
            state.decide(&order(cart, 2, "USD", "1"), Utc::now()),
            Decision::Refused(Refusal::CurrencyMismatch { .. })
        ));
        let mut other_user = order(cart, 3, "EUR", "1");
        other_user.user_id = "u2".into();
        assert!(matches!(
            state.decide(&other_user, Utc::now()),
            Decision::Refused(Refusal::UserMismatch { .. })
        ));
        assert_eq!(accept(&mut state, &order(cart, 4, "EUR", "0.05")).seq, 2);
    }

    #[test]
    fn an_update_carries_the_cart_or_leaves_the_field_out() {
        let cart = Uuid::from_u128(5);
        let mut state = CartState::default();
        let event = accept(&mut state, &order(cart, 1, "EUR", "10.00"));
        let full = serde_json::to_vec(&CartUpdatedRef {
            event: &event,
            cart: state.cart.as_ref(),
        })
        .unwrap();
        let back: CartUpdated = serde_json::from_slice(&full).unwrap();
        assert_eq!(back.cart, state.cart);
        assert_eq!(back.event, event);
        let bare = serde_json::to_value(CartUpdatedRef {
            event: &event,
            cart: None,
        })
        .unwrap();
        assert!(bare.get("cart").is_none(), "{bare}");
        let back: CartUpdated = serde_json::from_value(bare).unwrap();
        assert_eq!((back.event, back.cart), (event, None));
    }

    proptest! {
        /// Totals are exact sums, however many orders and amounts; a cart rebuilt from its
        /// events equals the cart built live.
        #[test]
        fn totals_are_exact_sums_and_rebuilds_agree(cents in proptest::collection::vec(0u64..100_000_000, 1..60)) {
            let cart = Uuid::from_u128(7);
            let mut live = CartState::default();
            let mut events = Vec::new();
            let mut expected = Decimal::ZERO;
            for (i, c) in cents.iter().enumerate() {
                let amount = Decimal::new(i64::try_from(*c).unwrap(), 2);
                expected += amount;
                let o = order(cart, u32::try_from(i).unwrap(), "EUR", &amount.to_string());
                events.push(accept(&mut live, &o));
            }
            let built = live.cart.clone().unwrap();
            prop_assert_eq!(built.subtotal, expected);
            prop_assert_eq!(built.tax_amount, Decimal::new(10, 2) * Decimal::from(cents.len()));
            prop_assert_eq!(built.version, cents.len() as u64);
            let rebuilt = CartState::from_events(events).cart.unwrap();
            prop_assert_eq!(rebuilt, built);
        }
    }
}
