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
