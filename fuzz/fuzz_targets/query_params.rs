//! Any query string of GET /carts: parsed or refused, and a parsed search builds a query
//! whose parameters are values only.
#![no_main]

use libfuzzer_sys::fuzz_target;
use salesflow_sales_query_api::search::{parse, query};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(search) = parse(Some(raw), 20, 100) {
        let q = query(&search);
        assert!(q.get("script").is_none() && q.get("aggs").is_none());
        if let Some(user) = &search.user_id {
            assert_eq!(q["query"]["bool"]["filter"][0]["term"]["user_id"], user.as_str());
        }
    }
});
