//! `GET /carts`: search over the summaries.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use elasticsearch::http::Method;
use salesflow_plugin_api::axum::Json;
use salesflow_plugin_api::axum::extract::{RawQuery, State};
use salesflow_plugin_api::axum::http::StatusCode;
use salesflow_plugin_api::axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::{Api, problem};

/// A validated search.
#[derive(Debug, PartialEq)]
pub struct Search {
    pub user_id: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub product: Option<String>,
    pub size: u32,
    /// The sort values of the last hit of the previous page.
    pub after: Option<(i64, String)>,
}

const PARAMETERS: [&str; 6] = ["user_id", "from", "to", "product", "size", "after"];

/// Parses the query string; `Err` names the bad parameter and why.
pub fn parse(query: Option<&str>, default_size: u32, max_size: u32) -> Result<Search, String> {
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
        if !PARAMETERS.contains(&key.as_str()) {
            return Err(format!(
                "{key}: unknown parameter; known: {}",
                PARAMETERS.join(", ")
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
                DateTime::parse_from_rfc3339(v)
                    .map(|d| d.with_timezone(&Utc))
                    .map_err(|e| {
                        format!("{name}: not an RFC 3339 time ({e}), e.g. 2026-11-26T00:00:00Z")
                    })
            })
            .transpose()
    };
    let size = match values.get("size") {
        None => default_size,
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=max_size).contains(&n) => n,
            _ => return Err(format!("size: must be a whole number from 1 to {max_size}")),
        },
    };
    let after = values.get("after").map(|v| decode_cursor(v)).transpose()?;
    let search = Search {
        user_id: text("user_id", 128)?,
        from: time("from")?,
        to: time("to")?,
        product: text("product", 200)?,
        size,
        after,
    };
    if let (Some(from), Some(to)) = (search.from, search.to)
        && from > to
    {
        return Err("from: must not be after to".into());
    }
    Ok(search)
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

/// The cursor: the last hit's sort values, as base64url JSON.
pub fn encode_cursor(created_at_ms: i64, cart_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(json!([created_at_ms, cart_id]).to_string())
}

fn decode_cursor(raw: &str) -> Result<(i64, String), String> {
    let bad = || "after: not a cursor from a previous page's `next`".to_owned();
    let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| bad())?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    match value.as_array().map(Vec::as_slice) {
        Some([Value::Number(ms), Value::String(id)]) if uuid::Uuid::parse_str(id).is_ok() => {
            Ok((ms.as_i64().ok_or_else(bad)?, id.clone()))
        }
        _ => Err(bad()),
    }
}

/// The Elasticsearch query: parameters only ever appear as JSON values.
pub fn query(search: &Search) -> Value {
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
    let mut must = Vec::new();
    if let Some(product) = &search.product {
        must.push(json!({ "match": { "products": { "query": product, "operator": "and" } } }));
    }
    let mut body = json!({
        "size": search.size,
        "query": { "bool": { "filter": filter, "must": must } },
        "sort": [ { "created_at": "desc" }, { "cart_id": "asc" } ],
        "track_total_hits": true,
    });
    if let Some((ms, id)) = &search.after {
        body["search_after"] = json!([ms, id]);
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
    let path = format!("/{}/_search", api.settings.summary_alias);
    let (status, body) = match api.es.call(Method::Post, &path, Some(query(&search))).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "search failed");
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "the read models are not available",
            );
        }
    };
    if status != 200 {
        tracing::warn!(%status, %body, "search failed");
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "the read models are not available",
        );
    }
    let hits = body["hits"]["hits"].as_array().cloned().unwrap_or_default();
    let next = if hits.len() == search.size as usize {
        hits.last().and_then(|h| {
            let sort = h["sort"].as_array()?;
            Some(encode_cursor(
                sort.first()?.as_i64()?,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_checked_by_name() {
        let s = parse(Some("user_id=u%201&product=red+shoes&size=5"), 20, 100).unwrap();
        assert_eq!(s.user_id.as_deref(), Some("u 1"));
        assert_eq!(s.product.as_deref(), Some("red shoes"));
        assert_eq!(s.size, 5);
        for (q, name) in [
            ("size=0", "size"),
            ("size=101", "size"),
            ("from=yesterday", "from"),
            ("colour=red", "colour"),
            ("after=zzz", "after"),
            ("user_id=", "user_id"),
            ("from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z", "from"),
            ("product=a&product=b", "product"),
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
    fn cursors_round_trip() {
        let id = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
        let c = encode_cursor(1_800_000_000_000, id);
        assert_eq!(
            decode_cursor(&c).unwrap(),
            (1_800_000_000_000, id.to_owned())
        );
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

    const SHAPE: [&str; 17] = [
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
