//! `GET /carts`: search over the summaries, filtered by user, time, product and
//! subtotal, sorted by time or subtotal, a page at a time; `GET /carts/totals`: each
//! currency's exact totals over the carts a filter selects.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use elasticsearch::http::Method;
use rust_decimal::Decimal;
use salesflow_plugin_api::axum::Json;
use salesflow_plugin_api::axum::extract::{RawQuery, State};
use salesflow_plugin_api::axum::http::StatusCode;
use salesflow_plugin_api::axum::response::{IntoResponse, Response};
use salesflow_sales::read_model::units;
use serde_json::{Number, Value, json};

use crate::{Api, problem, unavailable};

/// How a search's hits are ordered (then by cart id, for a stable order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sort {
    /// `-created_at`, the default: newest first.
    NewestFirst,
    /// `created_at`.
    OldestFirst,
    /// `-subtotal`: largest subtotal first.
    LargestFirst,
    /// `subtotal`.
    SmallestFirst,
}

impl Sort {
    const NAMES: [(&'static str, Sort); 4] = [
        ("-created_at", Sort::NewestFirst),
        ("created_at", Sort::OldestFirst),
        ("-subtotal", Sort::LargestFirst),
        ("subtotal", Sort::SmallestFirst),
    ];

    fn parse(raw: &str) -> Result<Self, String> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == raw)
            .map(|(_, s)| *s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::NAMES.iter().map(|(n, _)| *n).collect();
                format!("sort: {raw:?} is not one of {}", names.join(", "))
            })
    }

    /// The Elasticsearch field and order.
    fn field(self) -> (&'static str, &'static str) {
        match self {
            Sort::NewestFirst => ("created_at", "desc"),
            Sort::OldestFirst => ("created_at", "asc"),
            Sort::LargestFirst => ("subtotal_units", "desc"),
            Sort::SmallestFirst => ("subtotal_units", "asc"),
        }
    }
}

/// A validated search.
#[derive(Debug, PartialEq)]
pub struct Search {
    pub user_id: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub product: Option<String>,
    /// Subtotal bounds, inclusive, in ten-thousandths.
    pub min_subtotal: Option<u64>,
    pub max_subtotal: Option<u64>,
    pub sort: Sort,
    pub size: u32,
    /// The sort values of the last hit of the previous page.
    pub after: Option<(Number, String)>,
}

const PARAMETERS: [&str; 9] = [
    "user_id",
    "from",
    "to",
    "product",
    "min_subtotal",
    "max_subtotal",
    "sort",
    "size",
    "after",
];

/// What `GET /carts/totals` takes: the filters, no paging.
const TOTALS_PARAMETERS: [&str; 5] = ["user_id", "from", "to", "min_subtotal", "max_subtotal"];

/// The largest amount a filter takes: a cart's subtotal stays below 10^15.
const MAX_AMOUNT_DIGITS: usize = 15;

/// Parses the query string; `Err` names the bad parameter and why.
pub fn parse(query: Option<&str>, default_size: u32, max_size: u32) -> Result<Search, String> {
    parse_with(query, &PARAMETERS, default_size, max_size)
}

/// Parses the totals' query string: the search's filters only.
pub fn parse_totals(query: Option<&str>) -> Result<Search, String> {
    parse_with(query, &TOTALS_PARAMETERS, 1, 1)
}

fn parse_with(
    query: Option<&str>,
    known: &[&str],
    default_size: u32,
    max_size: u32,
) -> Result<Search, String> {
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(key).map_err(|e| format!("a parameter name is not valid: {e}"))?;
        if key.is_empty() {
            return Err("a parameter name is not valid: it is empty (write name=value)".into());
        }
        if !known.contains(&key.as_str()) {
            return Err(format!(
                "{key}: unknown parameter; known: {}",
                known.join(", ")
            ));
        }
        let value = decode(value).map_err(|e| format!("{key}: {e}"))?;
        if values.insert(key.clone(), value).is_some() {
            return Err(format!("{key}: given more than once"));
        }
    }
    let text = |name: &str, max: usize| -> Result<Option<String>, String> {
        match values.get(name) {
            None => Ok(None),
            Some(v) if v.is_empty() => Err(format!("{name}: must not be empty")),
            Some(v) if v.chars().count() > max => Err(format!("{name}: at most {max} characters")),
            Some(v) if v.chars().any(char::is_control) => {
                Err(format!("{name}: control characters are not allowed"))
            }
            Some(v) => Ok(Some(v.clone())),
        }
    };
    let time = |name: &str| -> Result<Option<DateTime<Utc>>, String> {
        values
            .get(name)
            .map(|v| {
                // chrono also takes a space between date and time, which RFC 3339's
                // `date-time` (the schema's format) does not.
                if v.as_bytes().get(10) == Some(&b' ') {
                    return Err(format!(
                        "{name}: not an RFC 3339 time (a space where the T goes), \
                         e.g. 2026-11-26T00:00:00Z"
                    ));
                }
                DateTime::parse_from_rfc3339(v)
                    .map(|d| d.with_timezone(&Utc))
                    .map_err(|e| {
                        format!("{name}: not an RFC 3339 time ({e}), e.g. 2026-11-26T00:00:00Z")
                    })
            })
            .transpose()
    };
    let amount = |name: &str| -> Result<Option<u64>, String> {
        values
            .get(name)
            .map(|v| amount_units(v).map_err(|why| format!("{name}: {why}")))
            .transpose()
    };
    let size = match values.get("size") {
        None => default_size,
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=max_size).contains(&n) => n,
            _ => return Err(format!("size: must be a whole number from 1 to {max_size}")),
        },
    };
    let sort = values
        .get("sort")
        .map_or(Ok(Sort::NewestFirst), |v| Sort::parse(v))?;
    let after = values
        .get("after")
        .map(|v| decode_cursor(v, sort))
        .transpose()?;
    let search = Search {
        user_id: text("user_id", 128)?,
        from: time("from")?,
        to: time("to")?,
        product: text("product", 200)?,
        min_subtotal: amount("min_subtotal")?,
        max_subtotal: amount("max_subtotal")?,
        sort,
        size,
        after,
    };
    // `from` after `to` (or `min_subtotal` above `max_subtotal`) is an empty range: it
    // selects no cart, as Elasticsearch's range does.
    Ok(search)
}

/// A filter's amount: a decimal written as the orders' amounts are (no sign, no
/// exponent, at most 4 decimal places), in ten-thousandths.
fn amount_units(raw: &str) -> Result<u64, String> {
    let (whole, fraction) = raw.split_once('.').unwrap_or((raw, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole)
        || (whole.len() > 1 && whole.starts_with('0'))
        || (raw.contains('.') && !digits(fraction))
        || fraction.len() > 4
        || whole.len() > MAX_AMOUNT_DIGITS
    {
        return Err(format!(
            "{raw:?} is not an amount: write a decimal such as 19.99 (at most {MAX_AMOUNT_DIGITS} \
             whole digits and 4 decimal places, no sign, exponent or leading zero)"
        ));
    }
    raw.parse::<Decimal>()
        .ok()
        .and_then(units)
        .ok_or_else(|| format!("{raw:?} is not an amount"))
}

fn decode(raw: &str) -> Result<String, String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or("a bad percent-escape")?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "not UTF-8".to_owned())
}

/// The cursor: the last hit's sort value and cart id, `<value>_<cart id>` (the pattern
/// the `OpenAPI` document gives). It continues the sort of the search it came from; with
/// another sort it starts after that value in that order.
pub fn encode_cursor(value: &Number, cart_id: &str) -> String {
    format!("{value}_{cart_id}")
}

/// Reads a cursor; its value is brought into the range of `sort`'s field (a time in
/// milliseconds, or ten-thousandths that are never negative), so that any cursor the
/// pattern allows is a valid place to continue from.
/// A UUID in the one form the API writes and its schema's `uuid` format allows: 36
/// characters, hyphenated (`Uuid::try_parse` also takes the simple, braced and URN forms).
pub fn hyphenated_uuid(raw: &str) -> Option<uuid::Uuid> {
    (raw.len() == 36)
        .then(|| uuid::Uuid::try_parse(raw).ok())
        .flatten()
}

fn decode_cursor(raw: &str, sort: Sort) -> Result<(Number, String), String> {
    let bad = || {
        format!(
            "after: {raw:?} is not a cursor: write the `next` of a previous page \
             (<number>_<cart id>)"
        )
    };
    let (value, id) = raw.split_once('_').ok_or_else(bad)?;
    let digits = value.strip_prefix('-').unwrap_or(value);
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let id = hyphenated_uuid(id).ok_or_else(bad)?;
    let value: i128 = value.parse().map_err(|_| bad())?;
    let number = match sort {
        Sort::NewestFirst | Sort::OldestFirst => {
            Number::from(i64::try_from(value).unwrap_or(if value < 0 {
                i64::MIN
            } else {
                i64::MAX
            }))
        }
        Sort::LargestFirst | Sort::SmallestFirst => {
            Number::from(u64::try_from(value).unwrap_or(if value < 0 { 0 } else { u64::MAX }))
        }
    };
    Ok((number, id.hyphenated().to_string()))
}

/// The filters, as Elasticsearch `filter` and `must` clauses: parameters only ever appear
/// as JSON values.
fn clauses(search: &Search) -> (Vec<Value>, Vec<Value>) {
    let mut filter = Vec::new();
    if let Some(user) = &search.user_id {
        filter.push(json!({ "term": { "user_id": user } }));
    }
    if search.from.is_some() || search.to.is_some() {
        let mut range = serde_json::Map::new();
        if let Some(from) = search.from {
            range.insert("gte".into(), json!(from.to_rfc3339()));
        }
        if let Some(to) = search.to {
            range.insert("lte".into(), json!(to.to_rfc3339()));
        }
        filter.push(json!({ "range": { "created_at": range } }));
    }
    if search.min_subtotal.is_some() || search.max_subtotal.is_some() {
        let mut range = serde_json::Map::new();
        if let Some(min) = search.min_subtotal {
            range.insert("gte".into(), json!(min));
        }
        if let Some(max) = search.max_subtotal {
            range.insert("lte".into(), json!(max));
        }
        filter.push(json!({ "range": { "subtotal_units": range } }));
    }
    let mut must = Vec::new();
    if let Some(product) = &search.product {
        must.push(json!({ "match": { "products": { "query": product, "operator": "and" } } }));
    }
    (filter, must)
}

/// The Elasticsearch query of a search.
pub fn query(search: &Search) -> Value {
    let (filter, must) = clauses(search);
    let (field, order) = search.sort.field();
    let mut body = json!({
        "size": search.size,
        "query": { "bool": { "filter": filter, "must": must } },
        "sort": [ { field: order }, { "cart_id": "asc" } ],
        "track_total_hits": true,
    });
    if let Some((value, id)) = &search.after {
        body["search_after"] = json!([value, id]);
    }
    body
}

pub async fn search(State(api): State<Arc<Api>>, RawQuery(raw): RawQuery) -> Response {
    let search = match parse(
        raw.as_deref(),
        api.settings.default_page_size,
        api.settings.max_page_size,
    ) {
        Ok(s) => s,
        Err(e) => return problem(StatusCode::BAD_REQUEST, e),
    };
    let body = match read_models(&api, query(&search)).await {
        Ok(body) => body,
        Err(response) => return *response,
    };
    let hits = body["hits"]["hits"].as_array().cloned().unwrap_or_default();
    let next = if hits.len() == search.size as usize {
        hits.last().and_then(|h| {
            let sort = h["sort"].as_array()?;
            Some(encode_cursor(
                sort.first()?.as_number()?,
                sort.get(1)?.as_str()?,
            ))
        })
    } else {
        None
    };
    let items: Vec<Value> = hits.into_iter().map(|h| h["_source"].clone()).collect();
    Json(json!({
        "total": body["hits"]["total"]["value"],
        "items": items,
        "next": next,
    }))
    .into_response()
}

/// One search request to the summaries; `Err` is the answer to give instead.
async fn read_models(api: &Api, body: Value) -> Result<Value, Box<Response>> {
    let path = format!("/{}/_search", api.settings.summary_alias);
    let down = || Box::new(unavailable(api, "the read models are"));
    match api.es.call(Method::Post, &path, Some(body)).await {
        Ok((200, body)) => Ok(body),
        Ok((status, body)) => {
            tracing::warn!(%status, %body, "search failed");
            Err(down())
        }
        Err(e) => {
            tracing::warn!(error = %e, "search failed");
            Err(down())
        }
    }
}

/// Sums each currency's money exactly: Elasticsearch's `sum` adds doubles (exact only
/// below 2^53, and a few large carts pass that in ten-thousandths), so the decimal
/// strings are added as `BigDecimal`s, per shard and then across shards. Summaries
/// indexed before `order_count` and `discounts` existed are counted as `outdated`.
const TOTALS_SCRIPT: [(&str, &str); 4] = [
    ("init_script", "state.t = new HashMap();"),
    (
        "map_script",
        "String c = doc['currency'].value; \
         List t = state.t.get(c); \
         if (t == null) { t = [0L, 0L, BigDecimal.ZERO, BigDecimal.ZERO, BigDecimal.ZERO, 0L]; state.t.put(c, t); } \
         t[0] = t[0] + 1; \
         if (doc['order_count'].size() == 0 || doc['discounts'].size() == 0) { t[5] = t[5] + 1; } \
         else { t[1] = t[1] + doc['order_count'].value; t[4] = t[4].add(new BigDecimal(doc['discounts'].value)); } \
         t[2] = t[2].add(new BigDecimal(doc['subtotal'].value)); \
         t[3] = t[3].add(new BigDecimal(doc['tax_amount'].value));",
    ),
    (
        "combine_script",
        "Map r = new HashMap(); \
         for (e in state.t.entrySet()) { List t = e.getValue(); \
           r.put(e.getKey(), [t[0], t[1], t[2].toPlainString(), t[3].toPlainString(), t[4].toPlainString(), t[5]]); } \
         return r;",
    ),
    (
        "reduce_script",
        "Map all = new TreeMap(); \
         for (s in states) { if (s == null) { continue; } \
           for (e in s.entrySet()) { List v = e.getValue(); List t = all.get(e.getKey()); \
             if (t == null) { t = [0L, 0L, BigDecimal.ZERO, BigDecimal.ZERO, BigDecimal.ZERO, 0L]; all.put(e.getKey(), t); } \
             t[0] = t[0] + ((Number) v[0]).longValue(); t[1] = t[1] + ((Number) v[1]).longValue(); \
             t[2] = t[2].add(new BigDecimal(v[2])); t[3] = t[3].add(new BigDecimal(v[3])); \
             t[4] = t[4].add(new BigDecimal(v[4])); t[5] = t[5] + ((Number) v[5]).longValue(); } } \
         List out = []; \
         for (e in all.entrySet()) { List t = e.getValue(); \
           out.add(['currency': e.getKey(), 'carts': t[0], 'orders': t[1], 'subtotal': t[2].toPlainString(), \
                    'tax_amount': t[3].toPlainString(), 'discounts': t[4].toPlainString(), 'outdated': t[5]]); } \
         return out;",
    ),
];

/// The Elasticsearch request of the totals: the search's filters, one scripted metric.
pub fn totals_query(search: &Search) -> Value {
    let (filter, must) = clauses(search);
    let mut metric = serde_json::Map::new();
    for (name, source) in TOTALS_SCRIPT {
        metric.insert(name.into(), json!({ "source": source, "lang": "painless" }));
    }
    json!({
        "size": 0,
        "track_total_hits": true,
        "query": { "bool": { "filter": filter, "must": must } },
        "aggs": { "totals": { "scripted_metric": metric } },
    })
}

pub async fn totals(State(api): State<Arc<Api>>, RawQuery(raw): RawQuery) -> Response {
    let search = match parse_totals(raw.as_deref()) {
        Ok(s) => s,
        Err(e) => return problem(StatusCode::BAD_REQUEST, e),
    };
    let body = match read_models(&api, totals_query(&search)).await {
        Ok(body) => body,
        Err(response) => return *response,
    };
    let currencies = body["aggregations"]["totals"]["value"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let outdated: u64 = currencies
        .iter()
        .filter_map(|c| c["outdated"].as_u64())
        .sum();
    if outdated > 0 {
        return problem(
            StatusCode::CONFLICT,
            format!(
                "{outdated} of the carts selected were indexed before totals could be \
                 computed: rebuild the read models with `salesflow replay`"
            ),
        );
    }
    let currencies: Vec<Value> = currencies
        .into_iter()
        .map(|mut c| {
            if let Some(object) = c.as_object_mut() {
                object.remove("outdated");
            }
            c
        })
        .collect();
    Json(json!({
        "carts": body["hits"]["total"]["value"],
        "currencies": currencies,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_checked_by_name() {
        let s = parse(Some("user_id=u%201&product=red+shoes&size=5"), 20, 100).unwrap();
        assert_eq!(s.user_id.as_deref(), Some("u 1"));
        assert_eq!(s.product.as_deref(), Some("red shoes"));
        assert_eq!(s.size, 5);
        let s = parse(
            Some("from=2026-11-26T00:00:00Z&to=2026-11-27t00:00:00z"),
            20,
            100,
        )
        .unwrap();
        assert!(s.from < s.to);
        for (q, name) in [
            ("size=0", "size"),
            ("size=101", "size"),
            ("from=yesterday", "from"),
            ("to=2026-11-26%2000:00:00Z", "to"),
            ("colour=red", "colour"),
            ("after=zzz", "after"),
            ("user_id=", "user_id"),
            ("product=a&product=b", "product"),
            ("sort=price", "sort"),
            ("min_subtotal=1e3", "min_subtotal"),
            ("max_subtotal=-1", "max_subtotal"),
        ] {
            let e = parse(Some(q), 20, 100).unwrap_err();
            assert!(e.starts_with(&format!("{name}:")), "{q}: {e}");
        }
    }

    #[test]
    fn parameters_stay_values_in_the_query() {
        let hostile = r#"x" } }, "script": { "source": "boom"#;
        let s = Search {
            user_id: Some(hostile.into()),
            from: None,
            to: None,
            product: Some(hostile.into()),
            min_subtotal: None,
            max_subtotal: None,
            sort: Sort::NewestFirst,
            size: 10,
            after: None,
        };
        let q = query(&s);
        assert_eq!(q["query"]["bool"]["filter"][0]["term"]["user_id"], hostile);
        assert_eq!(
            q["query"]["bool"]["must"][0]["match"]["products"]["query"],
            hostile
        );
        assert!(q.get("script").is_none());
    }

    #[test]
    fn cursors_round_trip_and_stay_in_their_fields_range() {
        let id = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
        let ms = Number::from(1_800_000_000_000_i64);
        let c = encode_cursor(&ms, id);
        assert_eq!(c, format!("1800000000000_{id}"));
        assert_eq!(
            decode_cursor(&c, Sort::NewestFirst).unwrap(),
            (ms, id.to_owned())
        );
        // Subtotals past i64, as the largest carts have.
        let big = Number::from(9_999_999_999_999_999_000_u64);
        let c = encode_cursor(&big, id);
        assert_eq!(
            decode_cursor(&c, Sort::LargestFirst).unwrap(),
            (big, id.to_owned())
        );
        // Whatever the pattern allows is a place to continue from.
        let before_1970 = format!("-5_{id}");
        assert_eq!(
            decode_cursor(&before_1970, Sort::LargestFirst).unwrap().0,
            Number::from(0_u64)
        );
        let huge = format!("-99999999999999999999_{id}");
        assert_eq!(
            decode_cursor(&huge, Sort::OldestFirst).unwrap().0,
            Number::from(i64::MIN)
        );
        for bad in [
            "",
            "_",
            "12",
            "12_",
            "x_7c9e6679-7425-40de-944b-e07fc1f90ae7",
            "1_2",
            // The UUID forms the schema's pattern does not allow.
            "1_7c9e6679742540de944be07fc1f90ae7",
            "1_{7c9e6679-7425-40de-944b-e07fc1f90ae7}",
            "1_urn:uuid:7c9e6679-7425-40de-944b-e07fc1f90ae7",
        ] {
            assert!(decode_cursor(bad, Sort::NewestFirst).is_err(), "{bad}");
        }
    }

    #[test]
    fn amounts_are_exact_ten_thousandths_or_refused() {
        assert_eq!(amount_units("0"), Ok(0));
        assert_eq!(amount_units("19.99"), Ok(199_900));
        assert_eq!(
            amount_units("999999999999999.9999"),
            Ok(9_999_999_999_999_999_999)
        );
        for bad in [
            "",
            "-1",
            "+1",
            "1e3",
            "1.",
            ".5",
            "1.00001",
            "1,5",
            "0x10",
            // The schema's pattern allows no leading zero (schemathesis sent 098241).
            "098241",
            "00",
            "01.5",
            "1000000000000000",
        ] {
            assert!(amount_units(bad).is_err(), "{bad}");
        }
        let s = parse(
            Some("min_subtotal=10&max_subtotal=20.5&sort=-subtotal"),
            20,
            100,
        )
        .unwrap();
        assert_eq!(
            (s.min_subtotal, s.max_subtotal),
            (Some(100_000), Some(205_000))
        );
        let q = query(&s);
        assert_eq!(
            q["query"]["bool"]["filter"][0]["range"]["subtotal_units"]["gte"],
            100_000
        );
        assert_eq!(q["sort"][0]["subtotal_units"], "desc");
        // An inverted range selects nothing; it is not an error.
        let s = parse(Some("min_subtotal=3&max_subtotal=2"), 20, 100).unwrap();
        assert_eq!(
            (s.min_subtotal, s.max_subtotal),
            (Some(30_000), Some(20_000))
        );
        let e = parse_totals(Some("size=3")).unwrap_err();
        assert!(e.starts_with("size:"), "{e}");
    }
}

/// Property tests: any query string is parsed or refused naming a parameter, and a
/// parsed search's values only ever appear as JSON values in a query of fixed shape.
/// 2 x 3000 generated cases.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// The keys of a JSON tree, at every depth: the query's shape.
    fn keys(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    out.push(k.clone());
                    keys(v, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| keys(v, out)),
            _ => {}
        }
    }

    const SHAPE: [&str; 18] = [
        "size",
        "query",
        "bool",
        "filter",
        "must",
        "term",
        "user_id",
        "range",
        "created_at",
        "gte",
        "lte",
        "match",
        "products",
        "operator",
        "sort",
        "cart_id",
        "track_total_hits",
        "subtotal_units",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn any_query_string_is_parsed_or_refused_by_name(raw in ".{0,120}") {
            match parse(Some(&raw), 20, 100) {
                Ok(s) => prop_assert!((1..=100).contains(&s.size)),
                Err(e) => prop_assert!(
                    PARAMETERS.iter().any(|p| e.starts_with(&format!("{p}:")))
                        || e.contains("unknown parameter")
                        || e.starts_with("a parameter name"),
                    "{}", e
                ),
            }
        }

        #[test]
        fn parameters_never_change_the_query_shape(user in ".{1,60}", product in ".{1,60}", size in 1u32..=100) {
            let encode = |t: &str| -> String {
                t.bytes().fold(String::new(), |mut out, b| {
                    let _ = std::fmt::Write::write_fmt(&mut out, format_args!("%{b:02X}"));
                    out
                })
            };
            let raw = format!("user_id={}&product={}&size={size}", encode(&user), encode(&product));
            let Ok(search) = parse(Some(&raw), 20, 100) else {
                // Control characters are refused; that is the other allowed outcome.
                prop_assert!(user.chars().chain(product.chars()).any(char::is_control));
                return Ok(());
            };
            let q = query(&search);
            let mut found = Vec::new();
            keys(&q, &mut found);
            prop_assert!(found.iter().all(|k| SHAPE.contains(&k.as_str())), "{:?}", found);
            prop_assert_eq!(&q["query"]["bool"]["filter"][0]["term"]["user_id"], &Value::from(user));
            prop_assert_eq!(&q["query"]["bool"]["must"][0]["match"]["products"]["query"], &Value::from(product));
        }
    }
}
