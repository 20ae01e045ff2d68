//! Resolving the servers' jars from Maven Central.
//!
//! `compose/servers/pom.xml` has one module per JVM server; `dependency:build-classpath`
//! writes each module's runtime classpath to `.stack/classpath/<server>.cp`. Maven keeps
//! the jars in its own repository (`~/.m2`), outside the checkout, so a fresh clone on a
//! machine that resolved them once starts without downloading anything.

use std::path::Path;
use std::process::Command;
use std::time::SystemTime;

use anyhow::{Context, Result, bail};

use crate::layout::Layout;
use crate::servers::ServerKind;

const POMS: [&str; 4] = [
    "compose/servers/pom.xml",
    "compose/servers/kafka/pom.xml",
    "compose/servers/cassandra/pom.xml",
    "compose/servers/opensearch/pom.xml",
];

/// Runs Maven when a classpath file is missing, older than a pom, or names a jar that is
/// no longer in the Maven repository.
pub fn ensure_classpaths(layout: &Layout) -> Result<()> {
    let newest_pom = POMS
        .iter()
        .filter_map(|pom| modified(&layout.root.join(pom)))
        .max()
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let fresh = ServerKind::ALL
        .iter()
        .filter(|k| k.is_java())
        .all(|&kind| is_fresh(&layout.classpath_file(kind), newest_pom));
    if fresh {
        return Ok(());
    }

    println!("resolving the servers' jars with Maven (compose/servers/pom.xml)");
    let output = Command::new("mvn")
        .arg("-B")
        .arg("-q")
        .arg("-f")
        .arg(layout.root.join("compose/servers/pom.xml"))
        .arg("dependency:build-classpath")
        .arg(format!(
            "-Dstack.cp.dir={}",
            layout.classpath_dir().display()
        ))
        .output()
        .context("running mvn (is Maven installed? apt-get install maven)")?;
    if !output.status.success() {
        bail!(
            "mvn could not resolve the servers' jars ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    for kind in ServerKind::ALL.iter().filter(|k| k.is_java()) {
        let file = layout.classpath_file(*kind);
        if !is_fresh(&file, SystemTime::UNIX_EPOCH) {
            bail!("mvn ran but {} is missing or incomplete", file.display());
        }
    }
    Ok(())
}

/// The classpath of a JVM server, as resolved by [`ensure_classpaths`].
pub fn classpath(layout: &Layout, kind: ServerKind) -> Result<String> {
    let file = layout.classpath_file(kind);
    let cp =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    Ok(cp.trim().to_owned())
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn is_fresh(cp_file: &Path, newer_than: SystemTime) -> bool {
    let Some(written) = modified(cp_file) else {
        return false;
    };
    if written < newer_than {
        return false;
    }
    let Ok(cp) = std::fs::read_to_string(cp_file) else {
        return false;
    };
    !cp.trim().is_empty() && cp.trim().split(':').all(|jar| Path::new(jar).is_file())
}
