//! The read models: the documents the projections index and the Query API returns.
//! Their shape is the index templates' (`schemas/elasticsearch/index-templates/`), whose
//! mappings are strict: a field here that is not there is refused by Elasticsearch.

use std::fmt;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Serialize, Serializer};
use uuid::Uuid;

use crate::cart::{Cart, Item};

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

/// What both read models hold of a cart: its identity, owner, addresses, totals (money as
/// exact decimal strings) and order count.
#[derive(Serialize)]
struct Head<'a> {
    cart_id: Uuid,
    version: u64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    user_id: &'a str,
    shipping_address: &'a str,
    billing_address: &'a str,
    shipping_method: &'a str,
    currency: &'a str,
    #[serde(serialize_with = "exact")]
    tax_amount: Decimal,
    #[serde(serialize_with = "exact")]
    subtotal: Decimal,
    #[serde(serialize_with = "exact")]
    discounts: Decimal,
    order_count: usize,
}

impl<'a> Head<'a> {
    fn of(cart: &'a Cart) -> Self {
        Self {
            cart_id: cart.cart_id,
            version: cart.version,
            created_at: cart.created_at,
            updated_at: cart.updated_at,
            user_id: &cart.user_id,
            shipping_address: &cart.shipping_address,
            billing_address: &cart.billing_address,
            shipping_method: &cart.shipping_method,
            currency: &cart.currency,
            tax_amount: cart.tax_amount,
            subtotal: cart.subtotal,
            discounts: cart.discounts,
            order_count: cart.items.len(),
        }
    }
}

/// The detailed read model of the note: the cart with every item. Serialized straight
/// from the cart (no intermediate `serde_json::Value`: building that tree was most of
/// the projections' CPU per changed cart).
#[derive(Serialize)]
pub struct Detailed<'a> {
    #[serde(flatten)]
    head: Head<'a>,
    payment_method: &'a str,
    #[serde(serialize_with = "items")]
    items: &'a [Item],
}

/// One item of the detailed model.
#[derive(Serialize)]
struct ItemDoc<'a> {
    order_id: Uuid,
    product_name: &'a str,
    product_info: &'a str,
    quantity: u32,
    #[serde(serialize_with = "exact")]
    amount: Decimal,
    #[serde(serialize_with = "exact")]
    discounts: Decimal,
    #[serde(serialize_with = "exact")]
    tax_amount: Decimal,
    #[serde(serialize_with = "exact")]
    subtotal: Decimal,
    seller_info: &'a str,
    created_at: DateTime<Utc>,
}

/// Money as its exact decimal string (what `Decimal`'s `Display` writes).
#[allow(clippy::trivially_copy_pass_by_ref)] // serde's `serialize_with` passes a reference
fn exact<S: Serializer>(amount: &Decimal, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(amount)
}

fn items<S: Serializer>(items: &&[Item], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(items.iter().map(|i| ItemDoc {
        order_id: i.order_id,
        product_name: &i.product_name,
        product_info: &i.product_info,
        quantity: i.quantity,
        amount: i.amount,
        discounts: i.discounts,
        tax_amount: i.tax_amount,
        subtotal: i.subtotal,
        seller_info: &i.seller_info,
        created_at: i.created_at,
    }))
}

/// The detailed document of a cart.
pub fn detailed(cart: &Cart) -> Detailed<'_> {
    Detailed {
        head: Head::of(cart),
        payment_method: &cart.payment_method,
        items: &cart.items,
    }
}

/// The summary read model of the note, for search: the money fields both as exact
/// decimal strings (what is returned and summed) and as ten-thousandths (what is
/// filtered and sorted on).
#[derive(Serialize)]
pub struct Summary<'a> {
    #[serde(flatten)]
    head: Head<'a>,
    #[serde(serialize_with = "products")]
    products: &'a [Item],
    tax_amount_units: Option<u64>,
    subtotal_units: Option<u64>,
    discounts_units: Option<u64>,
}

/// The items' product names, joined by "; ".
fn products<S: Serializer>(items: &&[Item], s: S) -> Result<S::Ok, S::Error> {
    struct Joined<'a>(&'a [Item]);
    impl fmt::Display for Joined<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            for (n, item) in self.0.iter().enumerate() {
                if n > 0 {
                    f.write_str("; ")?;
                }
                f.write_str(&item.product_name)?;
            }
            Ok(())
        }
    }
    s.collect_str(&Joined(items))
}

/// The summary document of a cart.
pub fn summary(cart: &Cart) -> Summary<'_> {
    Summary {
        head: Head::of(cart),
        products: &cart.items,
        tax_amount_units: units(cart.tax_amount),
        subtotal_units: units(cart.subtotal),
        discounts_units: units(cart.discounts),
    }
}

/// A cart's detailed and summary documents, as the bytes an index request carries, each
/// in an allocation of its own length.
///
/// `serde_json::to_vec` grows its vector by doubling, so a document kept as it comes
/// holds up to twice its length (a 10 KiB detailed document of a 29-order cart sits in
/// 16 KiB), and the projections keep thousands of them queued and in bulk requests.
/// Written into a buffer kept per thread and copied out at their length, they hold what
/// they weigh, for one copy instead of the doublings' several.
pub fn documents(cart: &Cart) -> serde_json::Result<(Vec<u8>, Vec<u8>)> {
    SCRATCH.with_borrow_mut(|scratch| {
        Ok((
            at_length(scratch, &detailed(cart))?,
            at_length(scratch, &summary(cart))?,
        ))
    })
}

thread_local! {
    /// The buffer [`documents`] writes into; its capacity stays between calls.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// What a thread's scratch buffer may keep between documents: a cart far larger than
/// most gives its buffer back rather than holding it for good.
const SCRATCH_KEEP: usize = 1 << 20;

/// `value` as JSON in a vector of exactly its length, written through `scratch`.
fn at_length<T: Serialize>(scratch: &mut Vec<u8>, value: &T) -> serde_json::Result<Vec<u8>> {
    scratch.clear();
    let written = serde_json::to_writer(&mut *scratch, value).map(|()| scratch.as_slice().to_vec());
    if scratch.capacity() > SCRATCH_KEEP {
        *scratch = Vec::new();
    }
    written
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::cart::CartEvent;
    use crate::order::Order;

    fn event(seq: u64, product: &str, amount: &str) -> CartEvent {
        let at = DateTime::from_timestamp(1_800_000_000 + i64::try_from(seq).unwrap(), 0).unwrap();
        CartEvent {
            cart_id: Uuid::from_u128(7),
            seq,
            recorded_at: at,
            order: Order {
                order_id: Uuid::from_u128(u128::from(seq)),
                cart_id: Uuid::from_u128(7),
                user_id: "user \"7\"".into(),
                product_name: product.into(),
                product_info: format!("lot {seq}"),
                quantity: 2,
                payment_method: "card".into(),
                shipping_address: "1 Main St".into(),
                billing_address: "2 Side St".into(),
                amount: amount.parse().unwrap(),
                discounts: "1.5".parse().unwrap(),
                tax_amount: "0.1234".parse().unwrap(),
                subtotal: amount.parse().unwrap(),
                shipping_method: "standard".into(),
                currency: "EUR".into(),
                seller_info: "Acme".into(),
                created_at: at,
            },
        }
    }

    #[test]
    fn documents_are_held_at_their_length_whatever_came_before() {
        // A large cart first, so the thread's buffer is larger than the next documents.
        let mut big = Cart::new(&event(1, "shoes", "10.00"));
        for seq in 2..=40 {
            big.apply(&event(seq, &"x".repeat(500), "1")).unwrap();
        }
        let small = Cart::new(&event(1, "socks", "0.5"));
        for cart in [&big, &small, &big] {
            let (detailed_doc, summary_doc) = documents(cart).unwrap();
            assert_eq!(detailed_doc, serde_json::to_vec(&detailed(cart)).unwrap());
            assert_eq!(summary_doc, serde_json::to_vec(&summary(cart)).unwrap());
            assert_eq!(detailed_doc.capacity(), detailed_doc.len());
            assert_eq!(summary_doc.capacity(), summary_doc.len());
        }
    }

    /// Every field, its name and its JSON type, as the index templates map them.
    #[test]
    fn documents_hold_every_field_of_the_cart() {
        let mut cart = Cart::new(&event(1, "shoes", "10.00"));
        cart.apply(&event(2, "socks; red", "0.5")).unwrap();
        let item = |seq: u64, product: &str, amount: &str| {
            json!({
                "order_id": Uuid::from_u128(u128::from(seq)).to_string(),
                "product_name": product,
                "product_info": format!("lot {seq}"),
                "quantity": 2,
                "amount": amount,
                "discounts": "1.5",
                "tax_amount": "0.1234",
                "subtotal": amount,
                "seller_info": "Acme",
                "created_at": format!("2027-01-15T08:00:0{seq}Z"),
            })
        };
        let common = json!({
            "cart_id": "00000000-0000-0000-0000-000000000007",
            "version": 2,
            "created_at": "2027-01-15T08:00:01Z",
            "updated_at": "2027-01-15T08:00:02Z",
            "user_id": "user \"7\"",
            "shipping_address": "1 Main St",
            "billing_address": "2 Side St",
            "shipping_method": "standard",
            "currency": "EUR",
            "tax_amount": "0.2468",
            "subtotal": "10.50",
            "discounts": "3.0",
            "order_count": 2,
        });
        let mut detailed = common.clone();
        detailed["payment_method"] = json!("card");
        detailed["items"] = json!([item(1, "shoes", "10.00"), item(2, "socks; red", "0.5")]);
        let mut summary = common;
        summary["products"] = json!("shoes; socks; red");
        summary["tax_amount_units"] = json!(2468);
        summary["subtotal_units"] = json!(105_000);
        summary["discounts_units"] = json!(30_000);
        assert_eq!(
            serde_json::to_value(super::detailed(&cart)).unwrap(),
            detailed
        );
        assert_eq!(
            serde_json::to_value(super::summary(&cart)).unwrap(),
            summary
        );
        // The bytes the projections index read back as the same document.
        let bytes = serde_json::to_vec(&super::detailed(&cart)).unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap(),
            detailed
        );
    }

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
