//! The order: the 17 fields of the original note, validated against
//! `schemas/order.schema.json` (the single source the API validates against and the docs
//! show), with money as exact decimals.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

/// The order schema, as shipped in `schemas/order.schema.json`.
pub const ORDER_SCHEMA: &str = include_str!("../../../../schemas/order.schema.json");

/// Fields holding money: exact decimals.
pub const MONEY_FIELDS: [&str; 4] = ["amount", "discounts", "tax_amount", "subtotal"];

/// One order, as placed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub order_id: Uuid,
    pub cart_id: Uuid,
    pub user_id: String,
    pub product_name: String,
    pub product_info: String,
    pub quantity: u32,
    pub payment_method: String,
    pub shipping_address: String,
    pub billing_address: String,
    pub amount: Decimal,
    pub discounts: Decimal,
    pub tax_amount: Decimal,
    pub subtotal: Decimal,
    pub shipping_method: String,
    pub currency: String,
    pub seller_info: String,
    pub created_at: DateTime<Utc>,
}

/// Validates order payloads against the schema, then reads them exactly.
pub struct OrderValidator {
    validator: jsonschema::Validator,
}

impl OrderValidator {
    /// The validator of the shipped order schema.
    pub fn new() -> Self {
        Self::from_schema(ORDER_SCHEMA).expect("the shipped order schema compiles")
    }

    /// A validator of another schema text (whose valid documents must still be orders).
    pub fn from_schema(schema: &str) -> Result<Self, String> {
        let schema: serde_json::Value =
            serde_json::from_str(schema).map_err(|e| format!("the schema is not JSON: {e}"))?;
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .map_err(|e| format!("the schema is not a valid JSON Schema: {e}"))?;
        Ok(Self { validator })
    }

    /// Every way `value` breaks the schema (`field: why`), sorted; empty when it holds.
    fn schema_problems(&self, value: &serde_json::Value) -> Vec<String> {
        if self.validator.is_valid(value) {
            return Vec::new();
        }
        let mut problems: Vec<String> = Vec::new();
        for error in self.validator.iter_errors(value) {
            let path = error.instance_path().to_string();
            let field = path.trim_start_matches('/').to_owned();
            let message = if MONEY_FIELDS.contains(&field.as_str()) {
                "must be a decimal that is not negative, as a string like \"19.99\" (or a JSON \
                 number), with at most 12 integer and 4 fraction digits"
                    .to_owned()
            } else {
                error.to_string()
            };
            let field = if field.is_empty() {
                "(order)".to_owned()
            } else {
                field
            };
            problems.push(format!("{field}: {message}"));
        }
        problems.sort();
        problems.dedup();
        problems
    }

    /// Checks an order without keeping it: its cart id, or every problem with it. The
    /// same decoder as [`OrderValidator::decode`], so the API accepts exactly what the
    /// domain reads.
    pub fn check(&self, payload: &[u8]) -> Result<Uuid, Vec<String>> {
        self.decode(payload).map(|order| order.cart_id)
    }

    /// The one decoder of an order: the schema's checks first (every failing field named),
    /// then each field read strictly from its JSON text, with no defaults: ids and time
    /// parsed as the order keeps them, a quantity that is a whole number (`2`, or as JSON
    /// Schema's `integer` also takes it `2.0` or `2e0`; never `"2"` or `2.5`), money from
    /// its digits (a number's exponent applied exactly, never through a float). A
    /// repeated field is refused.
    pub fn decode(&self, payload: &[u8]) -> Result<Order, Vec<String>> {
        let value: serde_json::Value = serde_json::from_slice(payload)
            .map_err(|e| vec![format!("(body): not valid JSON: {e}")])?;
        let problems = self.schema_problems(&value);
        if !problems.is_empty() {
            return Err(problems);
        }
        let wire: Wire<'_> = serde_json::from_slice(payload).map_err(|e| vec![wire_problem(&e)])?;
        wire.into_order()
    }
}

/// An order as written: strings as strings, numbers as their JSON text. Unknown and
/// repeated fields are refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire<'a> {
    order_id: String,
    cart_id: String,
    user_id: String,
    product_name: String,
    product_info: String,
    #[serde(borrow)]
    quantity: &'a RawValue,
    payment_method: String,
    shipping_address: String,
    billing_address: String,
    #[serde(borrow)]
    amount: &'a RawValue,
    #[serde(borrow)]
    discounts: &'a RawValue,
    #[serde(borrow)]
    tax_amount: &'a RawValue,
    #[serde(borrow)]
    subtotal: &'a RawValue,
    shipping_method: String,
    currency: String,
    seller_info: String,
    created_at: String,
}

/// A problem serde found reading the order's fields, named by field where it says one.
fn wire_problem(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let field = text
        .split('`')
        .nth(1)
        .filter(|_| text.starts_with("duplicate field") || text.starts_with("unknown field"));
    match field {
        Some(field) => format!("{field}: {text}"),
        None => format!("(order): {text}"),
    }
}

impl Wire<'_> {
    fn into_order(self) -> Result<Order, Vec<String>> {
        let mut problems = Vec::new();
        let mut uuid = |name: &str, text: &str| {
            Uuid::try_parse(text)
                .map_err(|e| problems.push(format!("{name}: not a UUID: {e}")))
                .ok()
        };
        let order_id = uuid("order_id", &self.order_id);
        let cart_id = uuid("cart_id", &self.cart_id);
        // The schema's `date-time` format is looser than the parser (it took
        // "202=-11-26T10:15:00Z"): the parser decides.
        let created_at = DateTime::parse_from_rfc3339(&self.created_at)
            .map(|d| d.with_timezone(&Utc))
            .map_err(|e| {
                problems.push(format!(
                    "created_at: not an RFC 3339 date-time like \"2026-11-26T10:15:00Z\": {e}"
                ));
            })
            .ok();
        let quantity = whole_number(self.quantity.get())
            .map_err(|why| problems.push(format!("quantity: {why}")))
            .ok();
        let mut money = |name: &str, raw: &RawValue| {
            exact_decimal(raw.get())
                .map_err(|why| problems.push(format!("{name}: {why}")))
                .ok()
        };
        let amount = money("amount", self.amount);
        let discounts = money("discounts", self.discounts);
        let tax_amount = money("tax_amount", self.tax_amount);
        let subtotal = money("subtotal", self.subtotal);
        let (
            Some(order_id),
            Some(cart_id),
            Some(created_at),
            Some(quantity),
            Some(amount),
            Some(discounts),
            Some(tax_amount),
            Some(subtotal),
        ) = (
            order_id, cart_id, created_at, quantity, amount, discounts, tax_amount, subtotal,
        )
        else {
            problems.sort();
            return Err(problems);
        };
        Ok(Order {
            order_id,
            cart_id,
            user_id: self.user_id,
            product_name: self.product_name,
            product_info: self.product_info,
            quantity,
            payment_method: self.payment_method,
            shipping_address: self.shipping_address,
            billing_address: self.billing_address,
            amount,
            discounts,
            tax_amount,
            subtotal,
            shipping_method: self.shipping_method,
            currency: self.currency,
            seller_info: self.seller_info,
            created_at,
        })
    }
}

/// A quantity from its JSON text: a number whose exact value is whole (`2`, `2.0`, `2e0`:
/// what JSON Schema's `integer` takes), 1 to [`MAX_QUANTITY`]. The value is read from the
/// digits, never through a float.
fn whole_number(raw: &str) -> Result<u32, String> {
    let value =
        json_number(raw).ok_or_else(|| format!("must be a whole number, like 2 (got {raw})"))?;
    if !value.fract().is_zero() {
        return Err(format!("must be a whole number, like 2 (got {raw})"));
    }
    match value.to_u32() {
        Some(n) if (1..=MAX_QUANTITY).contains(&n) => Ok(n),
        _ => Err(format!("must be between 1 and {MAX_QUANTITY} (got {raw})")),
    }
}

/// A JSON number's exact value from its text (`-`, digits, an optional fraction and
/// exponent, as JSON writes numbers); `None` for anything else or a value beyond what a
/// decimal holds.
fn json_number(raw: &str) -> Option<Decimal> {
    let (mantissa, exponent) = match raw.find(['e', 'E']) {
        Some(at) => (&raw[..at], Some(&raw[at + 1..])),
        None => (raw, None),
    };
    let digits = mantissa.strip_prefix('-').unwrap_or(mantissa);
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, "0"));
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(whole) || !all_digits(fraction) {
        return None;
    }
    match exponent {
        None => Decimal::from_str(mantissa).ok(),
        Some(e) => {
            let unsigned = e.strip_prefix(['+', '-']).unwrap_or(e);
            if !all_digits(unsigned) {
                return None;
            }
            Decimal::from_scientific(raw).ok()
        }
    }
}

/// The most units one order may hold (the schema's maximum).
pub const MAX_QUANTITY: u32 = 10_000;

impl Default for OrderValidator {
    fn default() -> Self {
        Self::new()
    }
}

/// A decimal from its JSON text, exactly: a string's contents as written (digits, at most
/// one point, no exponent: the schema's pattern), or a number's value from its digits and
/// exponent. At most 4 fraction digits (a number's trailing zeros do not count), not
/// negative.
fn exact_decimal(raw: &str) -> Result<Decimal, String> {
    let d = if raw.starts_with('"') {
        let text = serde_json::from_str::<String>(raw).map_err(|e| format!("not a string: {e}"))?;
        if text.contains(['e', 'E']) {
            return Err("write decimals without an exponent".into());
        }
        // Digits, at most one point between digits, an optional minus: nothing else that
        // `Decimal::from_str` would also take (underscores, a plus sign, spaces).
        let digits = text.strip_prefix('-').unwrap_or(&text);
        let (whole, fraction) = digits.split_once('.').unwrap_or((digits, "0"));
        if whole.is_empty()
            || fraction.is_empty()
            || !whole
                .bytes()
                .chain(fraction.bytes())
                .all(|b| b.is_ascii_digit())
        {
            return Err(format!("not a decimal: {text:?}"));
        }
        Decimal::from_str(&text).map_err(|e| format!("not a decimal: {e}"))?
    } else {
        json_number(raw)
            .ok_or_else(|| format!("not a decimal: {raw}"))?
            .normalize()
    };
    if d.is_sign_negative() && !d.is_zero() {
        return Err("must not be negative".into());
    }
    if d.scale() > 4 {
        return Err("at most 4 fraction digits".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> serde_json::Value {
        serde_json::json!({
            "order_id": "7c9e6679-7425-40de-944b-e07fc1f90ae7",
            "cart_id": "3f1c2a9e-6b1d-4b8e-9a77-2d5e8c1f0a11",
            "user_id": "user-17",
            "product_name": "Trail running shoes",
            "product_info": "size 42, blue",
            "quantity": 2,
            "payment_method": "card",
            "shipping_address": "1 Main St, Springfield",
            "billing_address": "1 Main St, Springfield",
            "amount": "119.90",
            "discounts": "10.00",
            "tax_amount": 21.98,
            "subtotal": "131.88",
            "shipping_method": "standard",
            "currency": "EUR",
            "seller_info": "Acme Sports",
            "created_at": "2026-11-26T10:15:00Z"
        })
    }

    #[test]
    fn a_valid_order_reads_exactly() {
        let order = OrderValidator::new()
            .decode(sample().to_string().as_bytes())
            .unwrap();
        assert_eq!(order.amount.to_string(), "119.90");
        assert_eq!(
            order.tax_amount.to_string(),
            "21.98",
            "a JSON number, read from its digits"
        );
        assert_eq!(order.quantity, 2);
        assert_eq!(order.currency, "EUR");
    }

    #[test]
    fn a_number_past_f64_is_refused_saying_so() {
        // The HTTP source passes it on (JSON's grammar has no range); the decoder refuses.
        let body = sample()
            .to_string()
            .replace(r#""tax_amount":21.98"#, r#""tax_amount":1e400"#);
        assert!(body.contains("1e400"), "{body}");
        let problems = OrderValidator::new().decode(body.as_bytes()).unwrap_err();
        assert!(
            problems.iter().any(|p| p.contains("number out of range")),
            "{problems:?}"
        );
    }

    #[test]
    fn every_invalid_field_is_named() {
        let mut o = sample();
        o["quantity"] = serde_json::json!(0);
        o["currency"] = serde_json::json!("EURO");
        o["order_id"] = serde_json::json!("not-a-uuid");
        o["amount"] = serde_json::json!("-5");
        o["created_at"] = serde_json::json!("yesterday");
        o.as_object_mut().unwrap().remove("seller_info");
        o["extra"] = serde_json::json!(1);
        let problems = OrderValidator::new()
            .decode(o.to_string().as_bytes())
            .unwrap_err();
        let fields: Vec<&str> = problems
            .iter()
            .map(|p| p.split(':').next().unwrap())
            .collect();
        for field in [
            "quantity",
            "currency",
            "order_id",
            "amount",
            "created_at",
            "(order)",
        ] {
            assert!(fields.contains(&field), "{field} not named in {problems:?}");
        }
        assert!(
            problems.iter().any(|p| p.contains("seller_info")),
            "{problems:?}"
        );
        assert!(problems.iter().any(|p| p.contains("extra")), "{problems:?}");
    }

    /// Found by `cargo fuzz` (the `order_decoder` target): the schema's date-time format let a year
    /// with a non-digit through, so the API's check accepted an order the domain refused.
    #[test]
    fn check_and_validate_refuse_a_time_only_the_schema_accepts() {
        let v = OrderValidator::new();
        for created_at in ["202=-11-26T10:15:00Z", "2026-02-30T10:15:00Z"] {
            let mut o = sample();
            o["created_at"] = serde_json::json!(created_at);
            let bytes = o.to_string().into_bytes();
            let checked = v.check(&bytes).unwrap_err();
            let decoded = v.decode(&bytes).unwrap_err();
            assert_eq!(checked, decoded);
            assert!(
                checked.len() == 1 && checked[0].starts_with("created_at:"),
                "{created_at}: {checked:?}"
            );
        }
    }

    /// `"quantity": 2.0` was stored as 0: the schema's `integer` takes an integral float,
    /// and the domain read it with a default. A quantity is a whole number, read from its
    /// digits: what JSON Schema's `integer` takes is read as that number.
    #[test]
    fn a_quantity_is_a_whole_number() {
        let v = OrderValidator::new();
        for (good, n) in [
            ("2.0", 2),
            ("1e1", 10),
            ("1E0", 1),
            ("2.50e1", 25),
            ("1e4", 10_000),
        ] {
            let text = sample()
                .to_string()
                .replace("\"quantity\":2", &format!("\"quantity\":{good}"));
            assert_eq!(v.decode(text.as_bytes()).unwrap().quantity, n, "{good}");
        }
        for bad in ["\"2\"", "2.5", "-1", "0", "10001", "1e5", "2.5e0", "1e-1"] {
            let text = sample()
                .to_string()
                .replace("\"quantity\":2", &format!("\"quantity\":{bad}"));
            assert!(text.contains(bad));
            let problems = v.decode(text.as_bytes()).unwrap_err();
            assert!(
                !problems.is_empty() && problems.iter().all(|p| p.starts_with("quantity:")),
                "{bad}: {problems:?}"
            );
            assert_eq!(v.check(text.as_bytes()).unwrap_err(), problems);
        }
        let text = sample()
            .to_string()
            .replace("\"quantity\":2", "\"quantity\":10000");
        assert_eq!(v.decode(text.as_bytes()).unwrap().quantity, 10_000);
    }

    #[test]
    fn a_repeated_field_is_refused_naming_it() {
        let text = sample().to_string().replacen('{', "{\"quantity\":3,", 1);
        let problems = OrderValidator::new().decode(text.as_bytes()).unwrap_err();
        assert!(
            problems.len() == 1 && problems[0].starts_with("quantity: duplicate field"),
            "{problems:?}"
        );
    }

    #[test]
    fn money_in_an_escaped_string_reads_as_its_text() {
        let text = sample()
            .to_string()
            .replace("\"amount\":\"119.90\"", "\"amount\":\"\\u0031\\u0039.90\"");
        assert!(text.contains("u0031"), "{text}");
        let order = OrderValidator::new().decode(text.as_bytes()).unwrap();
        assert_eq!(order.amount.to_string(), "19.90");
    }

    #[test]
    fn text_written_with_escapes_reads_as_its_text() {
        // Another producer may escape any character of a string: the order keeps the
        // text it stands for, and `check` reads the same cart as `decode`.
        let v = OrderValidator::new();
        let text = sample()
            .to_string()
            .replace(
                "\"product_name\":\"Trail running shoes\"",
                r#""product_name":"Caf\u00e9 \"Noir\"\n""#,
            )
            .replace("\"cart_id\":\"3f1c", "\"cart_id\":\"\\u0033f1c");
        assert!(
            text.contains("u00e9") && text.contains("u0033f1c"),
            "{text}"
        );
        let order = v.decode(text.as_bytes()).unwrap();
        assert_eq!(order.product_name, "Caf\u{e9} \"Noir\"\n");
        let cart = Uuid::parse_str("3f1c2a9e-6b1d-4b8e-9a77-2d5e8c1f0a11").unwrap();
        assert_eq!(order.cart_id, cart);
        assert_eq!(v.check(text.as_bytes()), Ok(cart));
        let plain = v.decode(sample().to_string().as_bytes()).unwrap();
        assert_eq!(plain.product_name, "Trail running shoes");
        assert_eq!(plain.cart_id, cart);
    }

    #[test]
    fn money_must_be_exact() {
        // A number is read from its digits and exponent, exactly, trailing zeros aside.
        for (good, exact) in [
            ("1e3", "1000"),
            ("1.5E+3", "1500"),
            ("12.50000", "12.5"),
            ("123456789.0123e-4", "12345.67890123"),
            ("0.1", "0.1"),
            // `multipleOf: 0.0001` holds for every four-place number, even those a
            // binary float cannot divide evenly.
            ("0.0003", "0.0003"),
            ("0.0007", "0.0007"),
            ("123.4567", "123.4567"),
            ("1.1e-3", "0.0011"),
            ("999999999999.9999", "999999999999.9999"),
        ] {
            let text = sample()
                .to_string()
                .replace("\"amount\":\"119.90\"", &format!("\"amount\":{good}"));
            match OrderValidator::new().decode(text.as_bytes()) {
                Ok(order) => assert_eq!(order.amount.to_string(), exact, "{good}"),
                Err(problems) => assert!(
                    exact.split_once('.').is_some_and(|(_, f)| f.len() > 4)
                        && problems.iter().all(|p| p.starts_with("amount:")),
                    "{good}: {problems:?}"
                ),
            }
        }
        for bad in [
            "\"1e3\"",
            "1e-5",
            "1.23456",
            "1.398705840172001e-143",
            "0.00030000000000000003",
            "\"1.23456\"",
            "\"abc\"",
            "-1",
            "\"12.3.4\"",
        ] {
            let text = sample()
                .to_string()
                .replace("\"amount\":\"119.90\"", &format!("\"amount\":{bad}"));
            assert!(text.contains(bad));
            let problems = OrderValidator::new().decode(text.as_bytes()).unwrap_err();
            assert!(
                problems.iter().all(|p| p.starts_with("amount:")),
                "{bad}: {problems:?}"
            );
        }
    }

    #[test]
    fn malformed_json_is_named() {
        let problems = OrderValidator::new().decode(b"{\"order_id\":").unwrap_err();
        assert!(
            problems[0].starts_with("(body): not valid JSON"),
            "{problems:?}"
        );
    }
}

/// Property tests of the decoder on hostile input: arbitrary bytes, arbitrary JSON, and
/// valid orders with fields replaced by arbitrary values. 3 x 2000 generated cases.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            ".{0,40}".prop_map(Value::from),
            "[0-9]{1,20}(\\.[0-9]{0,8})?".prop_map(Value::from),
            "-?[0-9]{1,3}(e[0-9]{1,3})?".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::btree_map(".{0,12}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    const FIELDS: [&str; 17] = [
        "order_id",
        "cart_id",
        "user_id",
        "product_name",
        "product_info",
        "quantity",
        "payment_method",
        "shipping_address",
        "billing_address",
        "amount",
        "discounts",
        "tax_amount",
        "subtotal",
        "shipping_method",
        "currency",
        "seller_info",
        "created_at",
    ];

    /// What every accepted order satisfies, whatever it was built from.
    fn sound(order: &Order) {
        assert!((1..=10_000).contains(&order.quantity));
        for m in [
            order.amount,
            order.discounts,
            order.tax_amount,
            order.subtotal,
        ] {
            assert!(!m.is_sign_negative() || m.is_zero());
            assert!(m.scale() <= 4);
        }
        assert_eq!(order.currency.len(), 3);
        assert!(order.currency.chars().all(|c| c.is_ascii_uppercase()));
        assert!(!order.user_id.is_empty() && order.user_id.chars().count() <= 128);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_are_refused_with_reasons_never_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let v = OrderValidator::new();
            match v.decode(&bytes) {
                Ok(order) => sound(&order),
                Err(reasons) => prop_assert!(!reasons.is_empty() && reasons.iter().all(|r| !r.is_empty())),
            }
            prop_assert_eq!(v.check(&bytes).is_ok(), v.decode(&bytes).is_ok());
        }

        #[test]
        fn arbitrary_json_is_refused_with_reasons(value in any_json()) {
            let v = OrderValidator::new();
            let bytes = serde_json::to_vec(&value).unwrap();
            match v.decode(&bytes) {
                Ok(order) => sound(&order),
                Err(reasons) => prop_assert!(!reasons.is_empty()),
            }
        }

        #[test]
        fn a_replaced_field_is_accepted_soundly_or_named(field in 0..FIELDS.len(), value in any_json(), remove in any::<bool>()) {
            let v = OrderValidator::new();
            let mut order = super::tests::sample();
            let name = FIELDS[field];
            if remove {
                order.as_object_mut().unwrap().remove(name);
            } else {
                order[name] = value;
            }
            let bytes = serde_json::to_vec(&order).unwrap();
            match v.decode(&bytes) {
                Ok(accepted) => sound(&accepted),
                Err(reasons) => prop_assert!(
                    reasons.iter().any(|r| r.contains(name)),
                    "{} not named in {:?}", name, reasons
                ),
            }
            prop_assert_eq!(v.check(&bytes).is_ok(), v.decode(&bytes).is_ok());
        }
    }
}

/// The `OpenAPI` document carries the order schema inline (clients and tools read one
/// file); it must be this schema, word for word, or the document and the server drift.
#[cfg(test)]
mod contract {
    #[test]
    fn the_openapi_document_holds_the_order_schema_the_server_validates_with() {
        let openapi: serde_json::Value =
            serde_json::from_str(include_str!("../../../../schemas/openapi.json")).unwrap();
        let mut schema: serde_json::Value = serde_json::from_str(super::ORDER_SCHEMA).unwrap();
        let object = schema.as_object_mut().unwrap();
        object.remove("$schema");
        object.remove("$id");
        assert_eq!(
            openapi["components"]["schemas"]["Order"], schema,
            "schemas/openapi.json's components.schemas.Order differs from schemas/order.schema.json \
             (copy the latter, without $schema and $id)"
        );
    }
}
