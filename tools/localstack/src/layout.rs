//! Where things are: the checkout (configs, poms, schemas) and the stack folder (data,
//! logs, pid files, resolved classpaths).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::node::{Node, Profile};
use crate::servers::ServerKind;

pub struct Layout {
    /// The salesflow checkout.
    pub root: PathBuf,
    /// The git-ignored folder that holds everything the stack writes.
    pub stack: PathBuf,
}

impl Layout {
    pub fn discover(root: Option<PathBuf>, stack: Option<PathBuf>) -> Result<Self> {
        let root = match root {
            Some(root) => root,
            None => find_root(&std::env::current_dir().context("reading the current folder")?)?,
        };
        let root = root
            .canonicalize()
            .with_context(|| format!("the checkout {} does not exist", root.display()))?;
        if !root.join(ROOT_MARKER).is_file() {
            bail!(
                "{} is not a salesflow checkout (no {ROOT_MARKER})",
                root.display()
            );
        }
        let stack = stack.unwrap_or_else(|| root.join(".stack"));
        std::fs::create_dir_all(&stack)
            .with_context(|| format!("creating the stack folder {}", stack.display()))?;
        let stack = stack.canonicalize()?;
        Ok(Self { root, stack })
    }

    /// Bytes an unprivileged writer may still use on the filesystem that holds the stack
    /// folder (where every server writes its data); `None` when it cannot be read.
    pub fn free_bytes(&self) -> Option<u64> {
        let stats = rustix::fs::statvfs(&self.stack).ok()?;
        Some(stats.f_bavail.saturating_mul(stats.f_frsize))
    }

    /// A warning when `free` bytes (from [`Layout::free_bytes`]) leave the stack folder's
    /// filesystem nearly full; `None` when they do not.
    pub fn low_disk_warning(&self, free: u64) -> Option<String> {
        low_disk_warning(&self.stack, free)
    }

    pub fn create_dirs(&self) -> Result<()> {
        for dir in [self.logs(), self.run(), self.classpath_dir()] {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(())
    }

    /// Data and generated configuration of one node: `.stack/kafka` for the single-node
    /// profile, `.stack/cluster/kafka-2` for the cluster one (their data never mix).
    pub fn server_dir(&self, node: Node) -> PathBuf {
        match node.profile {
            Profile::Single => self.stack.join(node.name()),
            Profile::Cluster => self.stack.join("cluster").join(node.name()),
        }
    }

    /// The profile `up` last started (`single` when none did).
    pub fn profile(&self) -> Profile {
        std::fs::read_to_string(self.profile_file())
            .ok()
            .and_then(|text| Profile::parse(&text))
            .unwrap_or(Profile::Single)
    }

    pub fn set_profile(&self, profile: Profile) -> Result<()> {
        let path = self.profile_file();
        std::fs::create_dir_all(self.run())
            .with_context(|| format!("creating {}", self.run().display()))?;
        std::fs::write(&path, format!("{profile}\n"))
            .with_context(|| format!("writing {}", path.display()))
    }

    fn profile_file(&self) -> PathBuf {
        self.run().join("profile")
    }

    pub fn logs(&self) -> PathBuf {
        self.stack.join("logs")
    }

    /// The log a server's stdout and stderr go to (and, for the JVMs, their own logger).
    pub fn log_file(&self, node: Node) -> PathBuf {
        self.logs().join(format!("{}.log", node.name()))
    }

    /// A JVM's stop-the-world pauses, one line each (`-Xlog:safepoint`); the one before
    /// it rotated out is this path with `.0` added.
    pub fn pauses_file(&self, node: Node) -> PathBuf {
        self.logs().join(format!("{}-pauses.log", node.name()))
    }

    pub fn run(&self) -> PathBuf {
        self.stack.join("run")
    }

    pub fn pid_file(&self, node: Node) -> PathBuf {
        self.run().join(format!("{}.pid", node.name()))
    }

    pub fn classpath_dir(&self) -> PathBuf {
        self.stack.join("classpath")
    }

    pub fn classpath_file(&self, kind: ServerKind) -> PathBuf {
        self.classpath_dir().join(format!("{kind}.cp"))
    }

    /// A file of the checkout's `compose/local/` (server configuration templates).
    pub fn template(&self, relative: &str) -> PathBuf {
        self.root.join("compose/local").join(relative)
    }

    pub fn schemas(&self) -> PathBuf {
        self.root.join("schemas")
    }
}

use salesflow_localstack::ROOT_MARKER;

fn find_root(start: &Path) -> Result<PathBuf> {
    salesflow_localstack::find_root(start).with_context(|| {
        format!(
            "no salesflow checkout at or above {} (looked for {ROOT_MARKER}); pass --root",
            start.display()
        )
    })
}

/// Below this much free space a run of the benchmark or the test suites can fill the disk:
/// one end-to-end benchmark run writes a few GiB of topics, tables and indices.
pub const LOW_DISK_BYTES: u64 = 4 << 30;

/// What the servers do when their disk fills: Kafka stops at its first failed write (its
/// log folder goes offline), and Cassandra and OpenSearch stop writing.
fn low_disk_warning(stack: &Path, free: u64) -> Option<String> {
    (free < LOW_DISK_BYTES).then(|| {
        format!(
            "warning: {} free on the filesystem of {} (under {}): the servers write their \
             data there, and a full disk stops Kafka at its next write and Cassandra and \
             OpenSearch with it. Free some space before a long run: build folders (`cargo \
             clean`, or their `incremental` folders), or the servers' data (`localstack \
             down`, then `localstack wipe kafka cassandra opensearch prometheus`).",
            gib(free),
            stack.display(),
            gib(LOW_DISK_BYTES)
        )
    })
}

/// Bytes as GiB, one decimal: `1.5 GiB`.
pub fn gib(bytes: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let gib = bytes as f64 / f64::from(1u32 << 30);
    format!("{gib:.1} GiB")
}

#[cfg(test)]
mod disk_tests {
    use super::*;

    #[test]
    fn a_nearly_full_disk_is_named_with_what_it_does() {
        let stack = Path::new("/w/.stack");
        assert_eq!(low_disk_warning(stack, LOW_DISK_BYTES), None);
        assert_eq!(low_disk_warning(stack, 100 << 30), None);
        let warning = low_disk_warning(stack, 3 << 29).unwrap();
        assert!(
            warning.starts_with(
                "warning: 1.5 GiB free on the filesystem of /w/.stack (under 4.0 GiB)"
            ),
            "{warning}"
        );
        assert!(warning.contains("stops Kafka"), "{warning}");
        assert!(warning.contains("localstack wipe"), "{warning}");
    }

    #[test]
    fn the_stack_folders_free_space_is_read() {
        let dir = std::env::temp_dir();
        let layout = Layout {
            root: dir.clone(),
            stack: dir,
        };
        assert!(layout.free_bytes().is_some_and(|b| b > 0));
    }
}
