//! Durations in settings: humantime text (`"5s"`, `"2m 30s"`, `"1h"`) of at most
//! [`MAX`], for `#[serde(with = "salesflow_plugin_api::duration")]` (and
//! [`option`] for an `Option<Duration>`).
//!
//! A setting's duration ends up added to a clock reading (a deadline, the next commit),
//! and a sum past what the clock holds panics: `request_timeout = "500000000000y"` parsed
//! fine and then panicked every request. A bound where the file is read turns that into
//! the key's own error, and nothing starts.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

/// The longest duration a setting may give: a year.
pub const MAX: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// A duration from its text, or why not.
///
/// # Errors
///
/// Text that is not a humantime duration, or one longer than [`MAX`].
pub fn parse(text: &str) -> Result<Duration, String> {
    let duration = humantime_serde::re::humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration like \"5s\" or \"2m 30s\": {e}"))?;
    if duration > MAX {
        return Err(format!(
            "{text:?} is longer than the longest a setting may give ({} days)",
            MAX.as_secs() / (24 * 60 * 60)
        ));
    }
    Ok(duration)
}

/// Deserializes a duration from its text (see [`parse`]).
///
/// # Errors
///
/// Not a string, or not a duration of at most [`MAX`].
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse(&text).map_err(D::Error::custom)
}

/// Serializes a duration as its humantime text (`"5s"`).
///
/// # Errors
///
/// The serializer's own.
pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    humantime_serde::serialize(duration, serializer)
}

/// The same for an optional duration (absent or a duration's text).
pub mod option {
    use super::{Deserialize, Deserializer, Duration, Serializer, parse};
    use serde::de::Error as _;

    /// Serializes an optional duration as its humantime text, or nothing.
    ///
    /// # Errors
    ///
    /// The serializer's own.
    pub fn serialize<S: Serializer>(
        duration: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        humantime_serde::serialize(duration, serializer)
    }

    /// Deserializes an optional duration from its text.
    ///
    /// # Errors
    ///
    /// Not a string, or not a duration of at most [`super::MAX`].
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| parse(&text).map_err(D::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Settings {
        #[serde(with = "super")]
        timeout: Duration,
        #[serde(default, with = "super::option")]
        stall: Option<Duration>,
    }

    fn read(text: &str) -> Result<Settings, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn durations_read_as_humantime_up_to_a_year() {
        let s = read("timeout = \"2m 30s\"").unwrap();
        assert_eq!(s.timeout, Duration::from_secs(150));
        assert_eq!(s.stall, None);
        let s = read("timeout = \"365d\"\nstall = \"1s\"").unwrap();
        assert_eq!(s.timeout, MAX);
        assert_eq!(s.stall, Some(Duration::from_secs(1)));
    }

    #[test]
    fn too_long_or_not_a_duration_is_refused_with_the_key() {
        for (text, says) in [
            ("timeout = \"366d\"", "longer than the longest"),
            ("timeout = \"500000000000y\"", "longer than the longest"),
            ("timeout = \"5 parsecs\"", "is not a duration"),
            ("timeout = 5", "timeout"),
            (
                "timeout = \"1s\"\nstall = \"2y\"",
                "longer than the longest",
            ),
        ] {
            let error = read(text).err().unwrap_or_default();
            assert!(error.contains(says), "{text}: {error}");
        }
    }
}
