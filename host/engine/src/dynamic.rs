//! Run-time stage plugins: shared libraries speaking the C ABI of `salesflow-plugin-abi`.
//!
//! Loading reads the declaration's magic number and ABI version before calling anything
//! and refuses a mismatch, naming both versions. Libraries are never unloaded (their
//! function pointers must stay valid for the life of the process).

#![allow(unsafe_code)] // The FFI boundary; each unsafe block says why it holds.

use std::ffi::{CStr, c_void};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use salesflow_plugin_abi::{
    ABI_MAGIC, ABI_VERSION, ByteSlice, EventRef, OwnedBuffer, PluginDeclaration, STATUS_ERROR,
    STATUS_OK, STATUS_PANIC, SYMBOL, decode_events, encode_events,
};
use salesflow_plugin_api::bytes::Bytes;
use salesflow_plugin_api::{
    Batch, BuildContext, Component, ComponentKind, ConfigError, Event, Plugin, PluginError, Stage,
    StageFactory, Status, async_trait, schemars, toml,
};

/// A stage plugin loaded from a shared library.
pub struct DynamicPlugin {
    decl: &'static PluginDeclaration,
    name: &'static str,
    summary: &'static str,
    path: PathBuf,
}

impl DynamicPlugin {
    pub fn load(path: &Path) -> Result<Self, String> {
        let shown = path.display();
        // SAFETY: loading runs the library's initialisers. The plugins folder is part of
        // the operator's configuration, trusted like the host binary itself.
        let library = unsafe { libloading::Library::new(path) }
            .map_err(|e| format!("{shown}: cannot load: {e}"))?;
        // SAFETY: a data symbol: the Symbol's value is the static's address.
        let pointer: *const PluginDeclaration = unsafe {
            *library
                .get::<*const PluginDeclaration>(SYMBOL)
                .map_err(|_| {
                    format!("{shown}: not a salesflow plugin (no SALESFLOW_PLUGIN symbol)")
                })?
        };
        if pointer.is_null() {
            return Err(format!("{shown}: SALESFLOW_PLUGIN is null"));
        }
        // SAFETY: every ABI version starts the declaration with `magic: u64` then
        // `abi_version: u32` (repr(C): offsets 0 and 8). Only those are read before the
        // version is known to match.
        let (magic, version) = unsafe {
            (
                pointer.cast::<u64>().read_unaligned(),
                pointer.cast::<u8>().add(8).cast::<u32>().read_unaligned(),
            )
        };
        if magic != ABI_MAGIC {
            return Err(format!(
                "{shown}: not a salesflow plugin (wrong magic number)"
            ));
        }
        if version != ABI_VERSION {
            return Err(format!(
                "{shown}: built for plugin ABI version {version}, but this host speaks \
                 version {ABI_VERSION}; rebuild it against salesflow-plugin-abi with \
                 ABI_VERSION {ABI_VERSION}"
            ));
        }
        // SAFETY: the version matches, so the layout is ours; the library is leaked below,
        // so the static lives for the rest of the process.
        let decl: &'static PluginDeclaration = unsafe { &*pointer };
        std::mem::forget(library);
        // SAFETY: the ABI requires NUL-terminated static strings.
        let (name, summary) = unsafe {
            (
                c_str(decl.name).ok_or_else(|| format!("{shown}: its name is not UTF-8"))?,
                c_str(decl.summary).unwrap_or(""),
            )
        };
        if !salesflow_plugin_api::is_name(name) {
            return Err(format!(
                "{shown}: plugin name {name:?} is not {}",
                salesflow_plugin_api::NAME_RULE
            ));
        }
        Ok(Self {
            decl,
            name,
            summary,
            path: path.to_path_buf(),
        })
    }

    /// Creates an instance; the settings cross as JSON.
    fn create(&self, settings: &toml::Table) -> Result<Instance, String> {
        let json = serde_json::to_vec(settings).map_err(|e| e.to_string())?;
        let mut instance: *mut c_void = std::ptr::null_mut();
        let mut error = OwnedBuffer::EMPTY;
        // SAFETY: the declaration's functions follow the ABI; the buffers are valid for
        // the call.
        let status = unsafe {
            (self.decl.create)(
                ByteSlice::from_slice(&json),
                &raw mut instance,
                &raw mut error,
            )
        };
        let message = self.take(error);
        match status {
            STATUS_OK if !instance.is_null() => Ok(Instance {
                decl: self.decl,
                pointer: instance,
            }),
            STATUS_OK => Err("the plugin returned no instance".into()),
            STATUS_PANIC => Err(format!("the plugin panicked: {message}")),
            _ => Err(message),
        }
    }

    fn take(&self, buffer: OwnedBuffer) -> String {
        // SAFETY: the buffer was filled by the plugin and is freed by it right after.
        let text = String::from_utf8_lossy(unsafe { buffer.as_slice() }).into_owned();
        // SAFETY: returned to the allocator that made it.
        unsafe { (self.decl.free_buffer)(buffer) };
        text
    }
}

/// # Safety
/// `ptr` must be null or a NUL-terminated string that lives for the process.
unsafe fn c_str(ptr: *const std::ffi::c_char) -> Option<&'static str> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: per the function contract.
    unsafe { CStr::from_ptr(ptr) }.to_str().ok()
}

#[async_trait]
impl Plugin for DynamicPlugin {
    fn kind(&self) -> ComponentKind {
        ComponentKind::Stage
    }

    fn name(&self) -> &'static str {
        self.name
    }

    fn summary(&self) -> &'static str {
        self.summary
    }

    fn settings_schema(&self) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "description": format!("Run-time plugin from {}: its settings go to it as JSON", self.path.display()),
        })
    }

    /// A plugin instance is created and dropped: its constructor is the validation (the
    /// ABI contract forbids I/O in it).
    fn validate(&self, settings: &toml::Table) -> Result<(), ConfigError> {
        self.create(settings)
            .map(drop)
            .map_err(|e| ConfigError::at(&[], e))
    }

    async fn build(
        &self,
        settings: toml::Table,
        _ctx: &mut BuildContext<'_>,
    ) -> Result<Component, PluginError> {
        // Fail at build, not in the first lane.
        drop(
            self.create(&settings)
                .map_err(|e| PluginError::context(self.name, e))?,
        );
        Ok(Component::Stage(Arc::new(Factory {
            plugin: DynamicPlugin {
                decl: self.decl,
                name: self.name,
                summary: self.summary,
                path: self.path.clone(),
            },
            settings,
        })))
    }
}

struct Factory {
    plugin: DynamicPlugin,
    settings: toml::Table,
}

impl StageFactory for Factory {
    fn create(&self, _lane: usize) -> Result<Box<dyn Stage>, PluginError> {
        let instance = self
            .plugin
            .create(&self.settings)
            .map_err(|e| PluginError::context(self.plugin.name, e))?;
        Ok(Box::new(DynamicStage {
            name: self.plugin.name,
            instance,
        }))
    }
}

struct Instance {
    decl: &'static PluginDeclaration,
    pointer: *mut c_void,
}

// SAFETY: the ABI requires stage instances to be Send (`DynStage: Send`); the host uses
// one from one task at a time.
unsafe impl Send for Instance {}

impl Drop for Instance {
    fn drop(&mut self) {
        // SAFETY: made by this declaration's `create`, destroyed once.
        unsafe { (self.decl.destroy)(self.pointer) };
    }
}

struct DynamicStage {
    name: &'static str,
    instance: Instance,
}

impl DynamicStage {
    fn call(&mut self, events: &[Event]) -> Result<Vec<Event>, PluginError> {
        let encoded = encode_events(
            events.iter().enumerate().map(|(i, e)| EventRef {
                input_index: u32::try_from(i).ok(),
                key: e.key.as_deref(),
                payload: &e.payload,
                headers: Box::new(e.headers.iter().map(|(n, v)| (n.as_str(), v.as_ref()))),
                timestamp_ms: e.timestamp_ms,
            }),
            events.len(),
        );
        let mut output = OwnedBuffer::EMPTY;
        let decl = self.instance.decl;
        // SAFETY: the instance is live and used by this task only; buffers are valid.
        let status = unsafe {
            (decl.process)(
                self.instance.pointer,
                ByteSlice::from_slice(&encoded),
                &raw mut output,
            )
        };
        // SAFETY: filled by the plugin; copied, then returned to the plugin's allocator.
        let bytes = unsafe { output.as_slice() }.to_vec();
        // SAFETY: as above.
        unsafe { (decl.free_buffer)(output) };
        match status {
            STATUS_OK => {}
            STATUS_ERROR => {
                return Err(PluginError::new(format!(
                    "stage plugin {}: {}",
                    self.name,
                    String::from_utf8_lossy(&bytes)
                )));
            }
            STATUS_PANIC => {
                return Err(PluginError::new(format!(
                    "stage plugin {} panicked: {}",
                    self.name,
                    String::from_utf8_lossy(&bytes)
                )));
            }
            other => {
                return Err(PluginError::new(format!(
                    "stage plugin {} returned unknown status {other}",
                    self.name
                )));
            }
        }
        let decoded = decode_events(&bytes)
            .map_err(|e| PluginError::context(format!("stage plugin {}", self.name), e))?;
        Ok(decoded
            .into_iter()
            .map(|d| Event {
                origin: d
                    .input_index
                    .and_then(|i| events.get(i as usize))
                    .map(|e| e.origin.clone())
                    .unwrap_or_default(),
                key: d.key.map(Bytes::from),
                payload: Bytes::from(d.payload),
                headers: d
                    .headers
                    .into_iter()
                    .map(|(n, v)| (n, Bytes::from(v)))
                    .collect(),
                timestamp_ms: d.timestamp_ms,
            })
            .collect())
    }
}

#[async_trait]
impl Stage for DynamicStage {
    async fn process(&mut self, batch: Batch, out: &mut Vec<Batch>) -> Result<(), PluginError> {
        let Batch {
            events, acks, lane, ..
        } = batch;
        // On error the claims are dropped unfinished: the batch counts as failed.
        let events = self.call(&events)?;
        if events.is_empty() {
            // Deliberately filtered out: handled.
            acks.finish(&Status::Delivered);
        } else {
            out.push(Batch::new(events, acks, lane));
        }
        Ok(())
    }
}
