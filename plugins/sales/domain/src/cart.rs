//! The cart aggregate: its rules, its events, and its state rebuilt from them.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::order::Order;

/// Most orders a cart keeps; past it, orders are refused (a cart's read model holds every
/// order, and a document must stay bounded).
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

/// A cart's version and what it adds up to after one of its events. Every event adds one
/// order, so `order_count` equals `version`; both are kept for readers of `cart-events`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartTotals {
    pub version: u64,
    pub order_count: u64,
    pub tax_amount: Decimal,
    pub subtotal: Decimal,
    pub discounts: Decimal,
    /// When its first order was placed.
    pub created_at: DateTime<Utc>,
    /// When its latest order was placed.
    pub updated_at: DateTime<Utc>,
}

impl CartTotals {
    /// The totals after a cart's first event.
    pub fn first(event: &CartEvent) -> Self {
        let order = &event.order;
        Self {
            version: event.seq,
            order_count: 1,
            tax_amount: order.tax_amount,
            subtotal: order.subtotal,
            discounts: order.discounts,
            created_at: order.created_at,
            updated_at: order.created_at,
        }
    }

    /// The totals after the next event.
    #[must_use]
    pub fn then(&self, event: &CartEvent) -> Self {
        let order = &event.order;
        Self {
            version: event.seq,
            order_count: self.order_count + 1,
            tax_amount: self.tax_amount + order.tax_amount,
            subtotal: self.subtotal + order.subtotal,
            discounts: self.discounts + order.discounts,
            created_at: self.created_at.min(order.created_at),
            updated_at: self.updated_at.max(order.created_at),
        }
    }
}

/// One record of `cart-events`: an accepted order's event (published again when the order
/// is redelivered), with the cart's version and totals after it. Its size does not depend
/// on how many orders the cart holds: projections fold the events into the read models.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartUpdated {
    pub event: CartEvent,
    pub cart: CartTotals,
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

impl Item {
    fn of(event: &CartEvent) -> Self {
        let order = &event.order;
        Self {
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
        }
    }
}

/// A cart: its orders, and what they add up to. `version` is its last event's `seq`.
/// This is what the read models show; projections fold events into it.
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

/// Why an event cannot be folded into a cart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FoldError {
    /// The event is not the cart's next one (a gap, or an older event).
    NotNext { version: u64, seq: u64 },
    /// The event belongs to another cart.
    OtherCart,
}

impl Cart {
    /// A cart holding its first event.
    pub fn new(event: &CartEvent) -> Self {
        let order = &event.order;
        Self {
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
            items: vec![Item::of(event)],
        }
    }

    /// Folds the cart's next event (`seq` = version + 1) into it.
    pub fn apply(&mut self, event: &CartEvent) -> Result<(), FoldError> {
        if event.cart_id != self.cart_id {
            return Err(FoldError::OtherCart);
        }
        if event.seq != self.version + 1 {
            return Err(FoldError::NotNext {
                version: self.version,
                seq: event.seq,
            });
        }
        let order = &event.order;
        self.version = event.seq;
        self.created_at = self.created_at.min(order.created_at);
        self.updated_at = self.updated_at.max(order.created_at);
        // The latest order says how the cart is paid, shipped and billed.
        self.payment_method.clone_from(&order.payment_method);
        self.shipping_address.clone_from(&order.shipping_address);
        self.billing_address.clone_from(&order.billing_address);
        self.shipping_method.clone_from(&order.shipping_method);
        self.tax_amount += order.tax_amount;
        self.subtotal += order.subtotal;
        self.discounts += order.discounts;
        self.items.push(Item::of(event));
        Ok(())
    }

    /// A cart rebuilt from its events, in order from seq 1 (None when there are none, or
    /// they do not start at 1 and follow each other).
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a CartEvent>) -> Option<Self> {
        let mut events = events.into_iter();
        let first = events.next().filter(|e| e.seq == 1)?;
        let mut cart = Self::new(first);
        for event in events {
            cart.apply(event).ok()?;
        }
        Some(cart)
    }

    /// Its version and totals.
    pub fn totals(&self) -> CartTotals {
        CartTotals {
            version: self.version,
            order_count: self.items.len() as u64,
            tax_amount: self.tax_amount,
            subtotal: self.subtotal,
            discounts: self.discounts,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }

    /// Roughly the memory it holds, for caches bounded in bytes: what it and its items
    /// have allocated, spare capacity included (the items' vector grows by doubling).
    pub fn approximate_bytes(&self) -> usize {
        let text = self.user_id.capacity()
            + self.currency.capacity()
            + self.payment_method.capacity()
            + self.shipping_address.capacity()
            + self.billing_address.capacity()
            + self.shipping_method.capacity();
        let items: usize = self
            .items
            .iter()
            .map(|i| {
                i.product_name.capacity() + i.product_info.capacity() + i.seller_info.capacity()
            })
            .sum();
        std::mem::size_of::<Self>()
            + text
            + self.items.capacity() * std::mem::size_of::<Item>()
            + items
    }
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

/// What applying an order to a cart did. (Returned once per order and taken apart at
/// once: boxing the event would cost an allocation per accepted order for nothing.)
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum Decision {
    /// A new event, the cart's next.
    Accepted(CartEvent),
    /// The order id is already in the cart: nothing new. Its event is the cart's `seq`-th
    /// (to be published again), with the cart's totals after it.
    Duplicate {
        seq: u64,
        totals: CartTotals,
    },
    Refused(Refusal),
}

/// What the domain worker keeps of a cart to decide its orders: who owns it, its currency,
/// its totals, and for every order id the totals after its event (so that a repeated
/// order is answered without the cart's history). A few dozen bytes per order, whatever
/// the orders hold.
#[derive(Clone, Debug, Default)]
pub struct CartState {
    head: Option<Head>,
    orders: HashMap<Uuid, CartTotals>,
}

#[derive(Clone, Debug)]
struct Head {
    user_id: String,
    currency: String,
    totals: CartTotals,
}

impl CartState {
    /// Rebuilds a cart's state from its events, in order.
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a CartEvent>) -> Self {
        let mut state = Self::default();
        for event in events {
            state.apply(event);
        }
        state
    }

    pub fn version(&self) -> u64 {
        self.head.as_ref().map_or(0, |h| h.totals.version)
    }

    /// The cart's totals now (None for a cart without orders).
    pub fn totals(&self) -> Option<&CartTotals> {
        self.head.as_ref().map(|h| &h.totals)
    }

    /// The rules of a cart: a repeated order id changes nothing; a cart keeps one currency
    /// and one user, and at most [`MAX_ORDERS_PER_CART`] orders.
    pub fn decide(&self, order: &Order, now: DateTime<Utc>) -> Decision {
        if let Some(totals) = self.orders.get(&order.order_id) {
            return Decision::Duplicate {
                seq: totals.version,
                totals: totals.clone(),
            };
        }
        if let Some(head) = &self.head {
            if head.currency != order.currency {
                return Decision::Refused(Refusal::CurrencyMismatch {
                    cart: head.currency.clone(),
                    order: order.currency.clone(),
                });
            }
            if head.user_id != order.user_id {
                return Decision::Refused(Refusal::UserMismatch {
                    cart: head.user_id.clone(),
                    order: order.user_id.clone(),
                });
            }
            if self.orders.len() >= MAX_ORDERS_PER_CART {
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

    /// Applies an event (the next one, in order); returns the totals after it.
    pub fn apply(&mut self, event: &CartEvent) -> CartTotals {
        let totals = match &mut self.head {
            None => {
                let totals = CartTotals::first(event);
                self.head = Some(Head {
                    user_id: event.order.user_id.clone(),
                    currency: event.order.currency.clone(),
                    totals: totals.clone(),
                });
                totals
            }
            Some(head) => {
                head.totals = head.totals.then(event);
                head.totals.clone()
            }
        };
        self.orders.insert(event.order.order_id, totals.clone());
        totals
    }

    /// Roughly the memory it holds, for caches bounded in bytes.
    pub fn approximate_bytes(&self) -> usize {
        let per_order = std::mem::size_of::<(Uuid, CartTotals)>() + 16;
        std::mem::size_of::<Self>()
            + self
                .head
                .as_ref()
                .map_or(0, |h| h.user_id.len() + h.currency.len())
            + self.orders.capacity() * per_order
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
                state.apply(&e);
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
        let after_first = CartTotals::first(&first);
        assert_eq!(
            state.decide(&order(cart, 1, "EUR", "10.00"), Utc::now()),
            Decision::Duplicate {
                seq: 1,
                totals: after_first.clone()
            }
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
        // A repeated first order still answers with the totals after it, not the cart's.
        assert_eq!(
            state.decide(&order(cart, 1, "EUR", "10.00"), Utc::now()),
            Decision::Duplicate {
                seq: 1,
                totals: after_first
            }
        );
        assert_eq!(state.totals().unwrap().subtotal.to_string(), "10.05");
    }

    #[test]
    fn a_cart_takes_only_its_next_event() {
        let cart = Uuid::from_u128(6);
        let mut state = CartState::default();
        let events: Vec<CartEvent> = (1..=3)
            .map(|n| accept(&mut state, &order(cart, n, "EUR", "1.00")))
            .collect();
        let mut folded = Cart::new(&events[0]);
        assert_eq!(
            folded.apply(&events[2]),
            Err(FoldError::NotNext { version: 1, seq: 3 })
        );
        assert_eq!(
            folded.apply(&events[0]),
            Err(FoldError::NotNext { version: 1, seq: 1 })
        );
        folded.apply(&events[1]).unwrap();
        folded.apply(&events[2]).unwrap();
        assert_eq!(folded.totals(), state.totals().unwrap().clone());
        assert_eq!(Cart::from_events(&events[1..]), None, "does not start at 1");
        let mut other = events[1].clone();
        other.cart_id = Uuid::from_u128(7);
        assert_eq!(folded.apply(&other), Err(FoldError::OtherCart));
    }

    /// A `cart-events` record is one event and fixed-size totals: the same size for a
    /// cart's first order and its thousandth.
    #[test]
    fn an_update_does_not_grow_with_the_cart() {
        let cart = Uuid::from_u128(5);
        let mut state = CartState::default();
        let mut sizes = Vec::new();
        for n in 0..1000 {
            let event = accept(&mut state, &order(cart, 1000 + n, "EUR", "10.00"));
            let update = CartUpdated {
                cart: state.totals().unwrap().clone(),
                event,
            };
            let bytes = serde_json::to_vec(&update).unwrap();
            let back: CartUpdated = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(back, update);
            sizes.push(bytes.len());
        }
        let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
        assert!(max - min < 16, "sizes from {min} to {max}");
    }

    proptest! {
        /// Totals are exact sums, however many orders and amounts; a cart rebuilt from its
        /// events equals the cart folded live, and both agree with the domain's totals.
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
            let totals = live.totals().unwrap().clone();
            prop_assert_eq!(totals.subtotal, expected);
            prop_assert_eq!(totals.tax_amount, Decimal::new(10, 2) * Decimal::from(cents.len()));
            prop_assert_eq!(totals.version, cents.len() as u64);
            let mut folded = Cart::new(&events[0]);
            for e in &events[1..] {
                folded.apply(e).unwrap();
            }
            let rebuilt = Cart::from_events(&events).unwrap();
            prop_assert_eq!(&rebuilt, &folded);
            prop_assert_eq!(rebuilt.totals(), totals);
            let rebuilt_state = CartState::from_events(&events);
            prop_assert_eq!(rebuilt_state.totals().unwrap(), live.totals().unwrap());
        }
    }
}
