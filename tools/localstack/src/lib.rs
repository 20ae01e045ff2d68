//! What the local stack tool shares with the tests and suites that run beside it: where
//! the salesflow checkout is.

use std::path::{Path, PathBuf};

/// The file that marks a checkout (or the salesflow image's /app): `schemas` needs only
/// `schemas/`, `up` also the poms and templates of `compose/`.
pub const ROOT_MARKER: &str = "schemas/kafka/topics.toml";

/// The salesflow checkout at or above `start`.
pub fn find_root(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|dir| dir.join(ROOT_MARKER).is_file())
        .map(Path::to_path_buf)
}
