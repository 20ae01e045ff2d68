//! The sales domain of salesflow: orders (validated against the shipped JSON Schema,
//! money as exact decimals), the cart aggregate and its rules, cart events, and the read
//! models built from carts.

pub mod cart;
pub mod order;
pub mod read_model;

pub use cart::{
    BUCKET_SIZE, Cart, CartEvent, CartState, CartTotals, CartUpdated, Decision, FoldError, Item,
    MAX_ORDERS_PER_CART, Refusal, bucket_of,
};
pub use order::{MAX_QUANTITY, MONEY_FIELDS, ORDER_SCHEMA, Order, OrderValidator};
