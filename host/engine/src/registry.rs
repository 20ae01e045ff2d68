//! The plugins and commands this host knows: the built-in ones, which the binary
//! registers (each plugin crate's `register`), and the run-time stage plugins found in the
//! plugins folder. The engine itself names none.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use salesflow_plugin_api::{Command, ComponentKind, Plugin, Registrar};

use crate::dynamic;

/// Type name and kind -> plugin; command name -> command.
#[derive(Clone, Default)]
pub struct Registry {
    plugins: BTreeMap<(ComponentKind, String), Arc<dyn Plugin>>,
    commands: BTreeMap<String, Arc<dyn Command>>,
}

impl Registrar for Registry {
    fn plugin(&mut self, plugin: Arc<dyn Plugin>) {
        self.add(plugin);
    }

    fn command(&mut self, command: Arc<dyn Command>) {
        self.commands.insert(command.name().to_owned(), command);
    }
}

impl Registry {
    /// The commands plugin crates added, by name.
    pub fn commands(&self) -> impl Iterator<Item = &Arc<dyn Command>> {
        self.commands.values()
    }

    pub fn command(&self, name: &str) -> Option<&Arc<dyn Command>> {
        self.commands.get(name)
    }

    /// Adds a plugin; a later one with the same kind and name replaces the earlier.
    pub fn add(&mut self, plugin: Arc<dyn Plugin>) {
        self.plugins
            .insert((plugin.kind(), plugin.name().to_owned()), plugin);
    }

    /// Loads every shared library of `dir`: each holds run-time stages and sinks. A
    /// library that is not a salesflow plugin, or of an ABI version this host cannot load,
    /// is an error naming it; so is a plugin whose kind and name another already has.
    pub fn load_dir(&mut self, dir: &Path) -> Result<Vec<String>, String> {
        let entries =
            std::fs::read_dir(dir).map_err(|e| format!("plugins folder {}: {e}", dir.display()))?;
        let mut paths: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == std::env::consts::DLL_EXTENSION)
            })
            .collect();
        paths.sort();
        let mut loaded = Vec::new();
        for path in paths {
            let (plugins, digest) = dynamic::load(&path)?;
            for plugin in plugins {
                loaded.push(format!(
                    "{} {} ({}, sha256 {digest})",
                    plugin.kind(),
                    plugin.name(),
                    path.display()
                ));
                let plugin: Arc<dyn Plugin> = Arc::new(plugin);
                if self.get(plugin.kind(), plugin.name()).is_some() {
                    return Err(format!(
                        "{}: a {} plugin named {:?} exists already",
                        path.display(),
                        plugin.kind(),
                        plugin.name()
                    ));
                }
                self.add(plugin);
            }
        }
        Ok(loaded)
    }

    pub fn get(&self, kind: ComponentKind, name: &str) -> Option<&Arc<dyn Plugin>> {
        self.plugins.get(&(kind, name.to_owned()))
    }

    /// The type names of a kind, for "unknown type" messages.
    pub fn names(&self, kind: ComponentKind) -> Vec<&str> {
        self.plugins
            .keys()
            .filter(|(k, _)| *k == kind)
            .map(|(_, n)| n.as_str())
            .collect()
    }

    /// Every shared section any plugin reads (`kafka`, ...).
    pub fn shared_sections(&self) -> Vec<&'static str> {
        let mut sections: Vec<_> = self
            .plugins
            .values()
            .flat_map(|p| {
                p.shared_section()
                    .into_iter()
                    .chain(p.nested_shared_sections().iter().copied())
            })
            .collect();
        sections.sort_unstable();
        sections.dedup();
        sections
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Plugin>> {
        self.plugins.values()
    }
}
