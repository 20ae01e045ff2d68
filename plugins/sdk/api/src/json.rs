//! Small JSON helpers for plugins that look into payloads without building them.

use std::borrow::Cow;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};

/// The value of a top-level field of a JSON object, as the bytes of a message key: a
/// string's contents, or a number's text. Other fields are skipped without being built.
pub fn top_level_field(payload: &[u8], field: &str) -> Option<String> {
    struct Seed<'f>(&'f str);
    struct Found(Option<String>);

    impl<'de> DeserializeSeed<'de> for Seed<'_> {
        type Value = Found;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Found, D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for Seed<'_> {
        type Value = Found;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found, A::Error> {
            let mut found = None;
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                if found.is_none() && key == self.0 {
                    let value: serde_json::Value = map.next_value()?;
                    found = match value {
                        serde_json::Value::String(s) => Some(s),
                        serde_json::Value::Number(n) => Some(n.to_string()),
                        _ => None,
                    };
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(Found(found))
        }
    }

    let mut deserializer = serde_json::Deserializer::from_slice(payload);
    Seed(field).deserialize(&mut deserializer).ok()?.0
}
