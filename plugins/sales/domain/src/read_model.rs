//! The read models: the documents the projections index and the Query API returns.
//! Their shape is the index templates' (`schemas/elasticsearch/index-templates/`), whose
//! mappings are strict: a field here that is not there is refused by Elasticsearch.

use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::cart::Cart;

/// Every amount stops at the fourth decimal place: the indices' numeric money fields
/// hold ten-thousandths.
pub const UNITS_PER_ONE: u64 = 10_000;

/// An amount in ten-thousandths, exactly, for the summary's `*_units` fields (Elasticsearch
/// `unsigned_long`: range filters and sorting on exact whole numbers; a cart's total is
/// below 10^15, so 10^19 ten-thousandths fit). `None` for an amount that has more than
/// four decimal places or is negative, which validation never lets through.
pub fn units(amount: Decimal) -> Option<u64> {
    if amount.is_sign_negative() || amount.scale() > 4 {
        return None;
    }
    let mut scaled = amount;
    scaled.rescale(4);
    u64::try_from(scaled.mantissa()).ok()
}

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

/// The summary read model of the note, for search: the money fields both as exact
/// decimal strings (what is returned and summed) and as ten-thousandths (what is
/// filtered and sorted on).
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
        "discounts": cart.discounts.to_string(),
        "tax_amount_units": units(cart.tax_amount),
        "subtotal_units": units(cart.subtotal),
        "discounts_units": units(cart.discounts),
        "order_count": cart.items.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_exact_ten_thousandths() {
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        assert_eq!(units(d("0")), Some(0));
        assert_eq!(units(d("19.99")), Some(199_900));
        assert_eq!(units(d("0.0001")), Some(1));
        // The largest cart: 1000 orders at the largest subtotal, past 2^53 and i64.
        assert_eq!(
            units(d("999999999999.9999") * Decimal::from(1000)),
            Some(9_999_999_999_999_999_000)
        );
        assert_eq!(units(d("1.00001")), None);
        assert_eq!(units(d("-1")), None);
    }
}
