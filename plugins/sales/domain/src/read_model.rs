//! The read models: the documents the projections index and the Query API returns.
//! Their shape is the index templates' (`schemas/elasticsearch/index-templates/`), whose
//! mappings are strict: a field here that is not there is refused by Elasticsearch.

use serde_json::{Value, json};

use crate::cart::Cart;

/// The alias queries read the detailed model from (and projections write to).
pub const DETAILED: &str = "carts-detailed";
/// The alias of the summary model.
pub const SUMMARY: &str = "carts-summary";

/// The detailed read model of the note: the cart with every item.
pub fn detailed(cart: &Cart) -> Value {
    json!({
        "cart_id": cart.cart_id,
        "version": cart.version,
        "created_at": cart.created_at,
        "updated_at": cart.updated_at,
        "user_id": cart.user_id,
        "payment_method": cart.payment_method,
        "shipping_address": cart.shipping_address,
        "billing_address": cart.billing_address,
        "shipping_method": cart.shipping_method,
        "currency": cart.currency,
        "tax_amount": cart.tax_amount.to_string(),
        "subtotal": cart.subtotal.to_string(),
        "discounts": cart.discounts.to_string(),
        "order_count": cart.items.len(),
        "items": cart.items.iter().map(|i| json!({
            "order_id": i.order_id,
            "product_name": i.product_name,
            "product_info": i.product_info,
            "quantity": i.quantity,
            "amount": i.amount.to_string(),
            "discounts": i.discounts.to_string(),
            "tax_amount": i.tax_amount.to_string(),
            "subtotal": i.subtotal.to_string(),
            "seller_info": i.seller_info,
            "created_at": i.created_at,
        })).collect::<Vec<_>>(),
    })
}

/// The summary read model of the note, for search.
pub fn summary(cart: &Cart) -> Value {
    let products: Vec<&str> = cart.items.iter().map(|i| i.product_name.as_str()).collect();
    json!({
        "cart_id": cart.cart_id,
        "version": cart.version,
        "created_at": cart.created_at,
        "updated_at": cart.updated_at,
        "user_id": cart.user_id,
        "products": products.join("; "),
        "shipping_address": cart.shipping_address,
        "billing_address": cart.billing_address,
        "shipping_method": cart.shipping_method,
        "currency": cart.currency,
        "tax_amount": cart.tax_amount.to_string(),
        "subtotal": cart.subtotal.to_string(),
    })
}
