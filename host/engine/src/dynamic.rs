//! Run-time plugins: shared libraries speaking the C ABI of `salesflow-plugin-abi`, each
//! holding stages and sinks.
//!
//! Loading reads the declaration's magic number and ABI version before calling anything:
//! another major version, or a newer minor version than the host's, is refused with a
//! message naming both. Libraries are never unloaded (their function pointers must stay
//! valid for the life of the process).
//!
//! Every call into a plugin runs on a blocking thread (`spawn_blocking`), never on an
//! async worker, so a slow plugin stalls only its own lane. A call that fails — an error,
//! or a panic (after which the instance is destroyed and made afresh) — is tried
//! [`ATTEMPTS`] times. Then, when the component's `failed` output is read, the batch is
//! taken apart: each event alone; the events that still fail become dead letters with the
//! reason (a stage), or are refused for good and dead-lettered by the host (a sink), and
//! the rest flow. When nobody reads `failed`, the batch fails back to its source.
//!
//! A stage may hold events across calls (a window): the host acknowledges input to its
//! sources only once the stage says it holds nothing, so what a crashed or panicked
//! instance held is delivered again. Events dead-lettered once are remembered by origin
//! so that a redelivery cannot dead-letter them twice nor loop on them.

#![allow(unsafe_code)] // The FFI boundary; each unsafe block says why it holds.

use std::collections::{HashSet, VecDeque};
use std::ffi::{CStr, c_void};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use salesflow_plugin_abi::{
    ABI_MAGIC, ABI_MINOR, ABI_VERSION, ByteSlice, EventRef, FreeBufferFn, KIND_SINK, KIND_STAGE,
    LibraryDeclaration, MetricKind, OwnedBuffer, PluginEntry, ReportFn, STATUS_ERROR, STATUS_OK,
    STATUS_PANIC, STATUS_REFUSED, SYMBOL, StageResult, TICK_FLUSH, TICK_TIMER, decode_refusals,
    decode_stage_result, encode_events,
};
use salesflow_plugin_api::bytes::Bytes;
use salesflow_plugin_api::{
    AckSet, Batch, BuildContext, Component, ComponentKind, ConfigError, Event, Origin, Plugin,
    PluginError, Sink, SinkFactory, Stage, StageFactory, Status, WriteFuture, async_trait,
    schemars, toml,
};
use tokio::time::Instant;
use tracing::{error, warn};

/// How many times a failing call is made before its batch is taken apart.
pub const ATTEMPTS: u32 = 3;

/// The pause before the second attempt; doubled before each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// How many dead-lettered origins a component remembers.
const QUARANTINE: usize = 100_000;

/// The named output every run-time stage has, besides those it declares: the events it
/// failed on after its attempts, as dead letters.
pub const FAILED: &str = "failed";

/// Whether a plugin built for ABI `plugin` (major, minor) can be loaded by a host of ABI
/// `host`; if not, why.
pub fn check_version(plugin: (u32, u32), host: (u32, u32)) -> Result<(), String> {
    let shown = |(major, minor): (u32, u32)| {
        if major < 2 {
            format!("{major}")
        } else {
            format!("{major}.{minor}")
        }
    };
    if plugin.0 != host.0 {
        return Err(format!(
            "built for plugin ABI version {}, but this host speaks version {}; rebuild it \
             against salesflow-plugin-abi with ABI_VERSION {}",
            shown(plugin),
            shown(host),
            host.0
        ));
    }
    if plugin.1 > host.1 {
        return Err(format!(
            "built for plugin ABI version {}, newer than this host's {} (a host loads its own \
             major version up to its own minor version); upgrade salesflow, or build the \
             plugin against salesflow-plugin-abi {}",
            shown(plugin),
            shown(host),
            shown(host)
        ));
    }
    Ok(())
}

/// Libraries loaded so far, by digest (their declarations' addresses): a library loaded
/// again unchanged, at a reload, is not mapped a second time.
static LOADED: Mutex<Vec<(String, usize)>> = Mutex::new(Vec::new());

/// The plugins of one library, and the library's digest (the first 8 bytes of its SHA-256,
/// in hex). The library is loaded from a private copy removed once it is mapped, never
/// from the plugins folder itself: a library replaced in the folder, even overwritten in
/// place, is loaded afresh at the next reload, and the one running is never changed under
/// it. Libraries are never unloaded, so each changed version loaded stays mapped.
pub fn load(path: &Path) -> Result<(Vec<DynamicPlugin>, String), String> {
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|e| format!("{shown}: cannot read: {e}"))?;
    let digest =
        Sha256::digest(&bytes)[..8]
            .iter()
            .fold(String::with_capacity(16), |mut hex, b| {
                use std::fmt::Write as _;
                let _ = write!(hex, "{b:02x}");
                hex
            });
    let mut loaded = LOADED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let known = loaded.iter().find(|(d, _)| *d == digest).map(|(_, a)| *a);
    let declaration: &'static LibraryDeclaration = if let Some(address) = known {
        // SAFETY: an address stored below, of a declaration in a library never unloaded.
        unsafe { &*(address as *const LibraryDeclaration) }
    } else {
        let declaration = open(path, &bytes)?;
        loaded.push((digest.clone(), std::ptr::from_ref(declaration) as usize));
        declaration
    };
    drop(loaded);
    if declaration.plugins.is_null() || declaration.plugin_count == 0 {
        return Err(format!("{shown}: the library declares no plugins"));
    }
    // SAFETY: the declaration's `plugins` points to `plugin_count` static entries.
    let entries: &'static [PluginEntry] =
        unsafe { std::slice::from_raw_parts(declaration.plugins, declaration.plugin_count) };
    // A library of minor version 0 has no report function (its declaration ends before).
    let report = (declaration.abi_minor >= 1).then_some(declaration.report);
    let plugins = entries
        .iter()
        .map(|entry| DynamicPlugin::new(entry, declaration.free_buffer, report, path))
        .collect::<Result<_, _>>()?;
    Ok((plugins, digest))
}

/// Maps a private copy of the library (`bytes`, read from `path`) and checks its
/// declaration's magic number and ABI version.
fn open(path: &Path, bytes: &[u8]) -> Result<&'static LibraryDeclaration, String> {
    let shown = path.display();
    let folder = tempfile::Builder::new()
        .prefix("salesflow-plugin-")
        .tempdir()
        .map_err(|e| format!("{shown}: cannot make a private copy: {e}"))?;
    let copy = folder.path().join(
        path.file_name()
            .unwrap_or_else(|| std::ffi::OsStr::new("plugin")),
    );
    std::fs::write(&copy, bytes)
        .map_err(|e| format!("{shown}: cannot make a private copy: {e}"))?;
    // SAFETY: loading runs the library's initialisers. The plugins folder is part of the
    // operator's configuration, trusted like the host binary itself.
    let library = unsafe { libloading::Library::new(&copy) }
        .map_err(|e| format!("{shown}: cannot load: {e}"))?;
    // The mapping outlives the file.
    drop(folder);
    // SAFETY: a data symbol: the Symbol's value is the static's address.
    let pointer: *const LibraryDeclaration = unsafe {
        *library
            .get::<*const LibraryDeclaration>(SYMBOL)
            .map_err(|_| format!("{shown}: not a salesflow plugin (no SALESFLOW_PLUGIN symbol)"))?
    };
    if pointer.is_null() {
        return Err(format!("{shown}: SALESFLOW_PLUGIN is null"));
    }
    // SAFETY: every ABI version starts the declaration with `magic: u64` then the major
    // version, a `u32` (repr(C): offsets 0 and 8); from version 2 on the minor version
    // follows at 12. Only those are read before the version is known to match.
    let (magic, major) = unsafe {
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
    let minor = if major >= 2 {
        // SAFETY: as above: the minor version's place from version 2 on.
        unsafe { pointer.cast::<u8>().add(12).cast::<u32>().read_unaligned() }
    } else {
        0
    };
    check_version((major, minor), (ABI_VERSION, ABI_MINOR)).map_err(|e| format!("{shown}: {e}"))?;
    // SAFETY: the version is ours, so the layout is; the library is leaked below, so the
    // static lives for the rest of the process.
    let declaration: &'static LibraryDeclaration = unsafe { &*pointer };
    std::mem::forget(library);
    Ok(declaration)
}

/// One stage or sink of a plugin library.
#[derive(Clone)]
pub struct DynamicPlugin {
    entry: &'static PluginEntry,
    free_buffer: FreeBufferFn,
    /// The library's report function (ABI 2.1 and later).
    report: Option<ReportFn>,
    kind: ComponentKind,
    name: &'static str,
    summary: &'static str,
    /// The named outputs: a stage's declared ones and [`FAILED`].
    outputs: &'static [&'static str],
    path: PathBuf,
}

impl DynamicPlugin {
    fn new(
        entry: &'static PluginEntry,
        free_buffer: FreeBufferFn,
        report: Option<ReportFn>,
        path: &Path,
    ) -> Result<Self, String> {
        let shown = path.display();
        // SAFETY: the ABI requires NUL-terminated static strings.
        let (name, summary, outputs) = unsafe {
            (
                c_str(entry.name).ok_or_else(|| format!("{shown}: a plugin name is not UTF-8"))?,
                c_str(entry.summary).unwrap_or(""),
                c_str(entry.outputs).unwrap_or(""),
            )
        };
        if !salesflow_plugin_api::is_name(name) {
            return Err(format!(
                "{shown}: plugin name {name:?} is not {}",
                salesflow_plugin_api::NAME_RULE
            ));
        }
        let kind = match entry.kind {
            KIND_STAGE => ComponentKind::Stage,
            KIND_SINK => ComponentKind::Sink,
            other => return Err(format!("{shown}: plugin {name}: unknown kind {other}")),
        };
        let mut ports: Vec<&'static str> = outputs.split(',').filter(|p| !p.is_empty()).collect();
        if let Some(bad) = ports.iter().find(|p| !salesflow_plugin_api::is_name(p)) {
            return Err(format!(
                "{shown}: plugin {name}: output name {bad:?} is not {}",
                salesflow_plugin_api::NAME_RULE
            ));
        }
        if kind == ComponentKind::Sink {
            // A sink's only output is the host's `failed`, which the topology knows.
            ports.clear();
        } else if !ports.contains(&FAILED) {
            ports.push(FAILED);
        }
        Ok(Self {
            entry,
            free_buffer,
            report,
            kind,
            name,
            summary,
            outputs: Box::leak(ports.into_boxed_slice()),
            path: path.to_path_buf(),
        })
    }

    /// Creates an instance; the settings cross as JSON.
    fn create(&self, settings: &toml::Table) -> Result<Instance, String> {
        let json = serde_json::to_vec(settings).map_err(|e| e.to_string())?;
        let mut pointer: *mut c_void = std::ptr::null_mut();
        let mut error = OwnedBuffer::EMPTY;
        // SAFETY: the entry's functions follow the ABI; the buffers are valid for the call.
        let status = unsafe {
            (self.entry.create)(
                ByteSlice::from_slice(&json),
                &raw mut pointer,
                &raw mut error,
            )
        };
        let message = String::from_utf8_lossy(&take(self.free_buffer, error)).into_owned();
        match status {
            STATUS_OK if !pointer.is_null() => Ok(Instance {
                entry: self.entry,
                free_buffer: self.free_buffer,
                report: self.report,
                pointer,
            }),
            STATUS_OK => Err("the plugin returned no instance".into()),
            STATUS_PANIC => Err(format!("the plugin panicked: {message}")),
            _ => Err(message),
        }
    }
}

/// Copies a buffer the plugin filled, then returns it to the plugin's allocator.
fn take(free_buffer: FreeBufferFn, buffer: OwnedBuffer) -> Vec<u8> {
    // SAFETY: filled by the plugin and live until freed just below.
    let bytes = unsafe { buffer.as_slice() }.to_vec();
    // SAFETY: returned to the allocator that made it, once.
    unsafe { free_buffer(buffer) };
    bytes
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
        self.kind
    }

    fn name(&self) -> &'static str {
        self.name
    }

    fn summary(&self) -> &'static str {
        self.summary
    }

    fn outputs(&self) -> &'static [&'static str] {
        self.outputs
    }

    fn default_concurrency(&self) -> Option<usize> {
        // One instance per lane, whose calls never overlap.
        Some(1)
    }

    fn settings_schema(&self) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "description": format!("Run-time plugin from {}: its settings go to it as JSON", self.path.display()),
        })
    }

    /// A plugin instance is created and dropped: its constructor is the validation (the
    /// ABI contract forbids waiting I/O in it).
    fn validate(&self, settings: &toml::Table) -> Result<(), ConfigError> {
        self.create(settings)
            .map(drop)
            .map_err(|e| ConfigError::at(&[], e))
    }

    async fn build(
        &self,
        settings: toml::Table,
        ctx: &mut BuildContext<'_>,
    ) -> Result<Component, PluginError> {
        // Fail at build, not in the first lane.
        drop(
            self.create(&settings)
                .map_err(|e| PluginError::context(self.name, e))?,
        );
        let reports = Arc::new(Reports::default());
        if self.report.is_some() {
            ctx.metrics
                .register_collector(Box::new(ReportCollector(Arc::clone(&reports))));
            let lanes = Arc::clone(&reports);
            let check: salesflow_plugin_api::HealthFn = Arc::new(move || {
                let unhealthy = lanes.unhealthy();
                Box::pin(async move { unhealthy.map_or(Ok(()), Err) })
            });
            ctx.add_healthcheck("plugin", check);
        }
        let shared = Arc::new(Shared {
            plugin: self.clone(),
            settings,
            label: format!("{}/{}", ctx.pipeline, ctx.component),
            dead_letters: ctx.output_is_read(FAILED),
            quarantine: Mutex::new(Quarantine::default()),
            reports,
        });
        Ok(match self.kind {
            ComponentKind::Sink => Component::Sink(Arc::new(SinkMaker(shared))),
            _ => Component::Stage(Arc::new(StageMaker(shared))),
        })
    }
}

/// What every lane of one component shares.
struct Shared {
    plugin: DynamicPlugin,
    settings: toml::Table,
    /// `pipeline/component`, for logs and dead letters.
    label: String,
    /// Whether another component reads this one's `failed` output.
    dead_letters: bool,
    quarantine: Mutex<Quarantine>,
    /// Each lane's last report (metrics and health).
    reports: Arc<Reports>,
}

/// The last report of each lane's instance.
#[derive(Debug, Default)]
struct Reports {
    lanes: Mutex<std::collections::BTreeMap<usize, salesflow_plugin_abi::Report>>,
}

impl Reports {
    fn lanes(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<usize, salesflow_plugin_abi::Report>>
    {
        self.lanes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn record(&self, lane: usize, report: salesflow_plugin_abi::Report) {
        self.lanes().insert(lane, report);
    }

    /// Why lanes say they cannot work, if any does.
    fn unhealthy(&self) -> Option<String> {
        let lanes = self.lanes();
        let why: Vec<String> = lanes
            .iter()
            .filter_map(|(lane, r)| r.unhealthy.as_ref().map(|w| format!("lane {lane}: {w}")))
            .collect();
        (!why.is_empty()).then(|| why.join("; "))
    }
}

/// A plugin's own metrics, as its instances last reported them: `salesflow_plugin_<name>`
/// with a `lane` label (the registry adds pipeline and component). A name that is not a
/// metric name, or that changes kind between lanes, is left out.
#[derive(Debug)]
struct ReportCollector(Arc<Reports>);

impl prometheus_client::collector::Collector for ReportCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        use prometheus_client::metrics::MetricType;
        type Series = (MetricKind, String, Vec<(usize, f64)>);
        let mut families: std::collections::BTreeMap<String, Series> =
            std::collections::BTreeMap::new();
        for (lane, report) in self.0.lanes().iter() {
            for metric in &report.metrics {
                if !is_metric_name(&metric.name) {
                    continue;
                }
                let family = families
                    .entry(metric.name.clone())
                    .or_insert_with(|| (metric.kind, metric.help.clone(), Vec::new()));
                if family.0 == metric.kind {
                    family.2.push((*lane, metric.value));
                }
            }
        }
        for (name, (kind, help, values)) in families {
            let name = format!("salesflow_plugin_{name}");
            let kind_of = match kind {
                MetricKind::Counter => MetricType::Counter,
                MetricKind::Gauge => MetricType::Gauge,
            };
            let mut family = encoder.encode_descriptor(&name, &help, None, kind_of)?;
            for (lane, value) in values {
                let labels = [("lane", lane.to_string())];
                let sample = family.encode_family(&labels)?;
                match kind {
                    MetricKind::Counter => {
                        prometheus_client::metrics::counter::ConstCounter::new(value.max(0.0))
                            .encode(sample)?;
                    }
                    MetricKind::Gauge => {
                        prometheus_client::metrics::gauge::ConstGauge::new(value).encode(sample)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Lower-case letters, digits and `_`, starting with a letter.
fn is_metric_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The origins of events this component dead-lettered, oldest first out.
#[derive(Default)]
struct Quarantine {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Quarantine {
    fn key(origin: &Origin) -> Option<String> {
        matches!(origin, Origin::Kafka { .. }).then(|| origin.describe())
    }

    fn insert(&mut self, origin: &Origin) {
        if let Some(key) = Self::key(origin) {
            if self.set.insert(key.clone()) {
                self.order.push_back(key);
            }
            while self.order.len() > QUARANTINE {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }

    fn contains(&self, origin: &Origin) -> bool {
        // Nothing dead-lettered yet (the usual case): no key to build per event.
        !self.set.is_empty() && Self::key(origin).is_some_and(|k| self.set.contains(&k))
    }
}

impl Shared {
    fn quarantine(&self) -> std::sync::MutexGuard<'_, Quarantine> {
        self.quarantine
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A live plugin instance.
struct Instance {
    entry: &'static PluginEntry,
    free_buffer: FreeBufferFn,
    report: Option<ReportFn>,
    pointer: *mut c_void,
}

// SAFETY: the ABI requires instances to be Send (`DynStage: Send`, `DynSink: Send`); the
// host uses one from one thread at a time.
unsafe impl Send for Instance {}

impl Drop for Instance {
    fn drop(&mut self) {
        // SAFETY: made by this entry's `create`, destroyed once.
        unsafe { (self.entry.destroy)(self.pointer) };
    }
}

impl Instance {
    /// `call` (a batch) or `tick` (a reason); the status and the bytes the plugin returned.
    fn invoke(&mut self, call: &Call) -> (i32, Vec<u8>) {
        let mut output = OwnedBuffer::EMPTY;
        // SAFETY: the instance is live and used by one thread at a time; the buffers are
        // valid for the call.
        let status = unsafe {
            match call {
                Call::Batch(input) => {
                    (self.entry.call)(self.pointer, ByteSlice::from_slice(input), &raw mut output)
                }
                Call::Tick(reason) => (self.entry.tick)(self.pointer, *reason, &raw mut output),
            }
        };
        (status, take(self.free_buffer, output))
    }

    /// The instance's metrics and health, when its library reports them.
    fn report(&mut self) -> Option<Result<salesflow_plugin_abi::Report, String>> {
        let report = self.report?;
        let mut output = OwnedBuffer::EMPTY;
        // SAFETY: as in `invoke`; the library declared the function (minor version 1+).
        let status = unsafe { report(self.pointer, &raw mut output) };
        let bytes = take(self.free_buffer, output);
        Some(if status == STATUS_OK {
            salesflow_plugin_abi::decode_report(&bytes)
        } else {
            Err(String::from_utf8_lossy(&bytes).into_owned())
        })
    }
}

enum Call {
    Batch(Vec<u8>),
    Tick(u32),
}

/// A call that did not succeed.
enum Failure {
    Error(String),
    Panic(String),
    Refused(Vec<(usize, String)>),
}

impl Failure {
    fn text(&self) -> String {
        match self {
            Failure::Error(m) => m.clone(),
            Failure::Panic(m) => format!("panicked: {m}"),
            Failure::Refused(r) => format!("refused {} event(s)", r.len()),
        }
    }
}

/// One lane's instance (made again after a panic).
struct Slot {
    lane: usize,
    instance: Mutex<Option<Instance>>,
}

impl Slot {
    fn new(lane: usize, instance: Instance) -> Arc<Self> {
        Arc::new(Self {
            lane,
            instance: Mutex::new(Some(instance)),
        })
    }
}

/// Runs one call on a blocking thread. A panic destroys the instance (made afresh by the
/// next call); so does a plugin that could not be made.
async fn run_call(shared: &Arc<Shared>, slot: &Arc<Slot>, call: Call) -> Result<Vec<u8>, Failure> {
    let (shared, slot) = (Arc::clone(shared), Arc::clone(slot));
    tokio::task::spawn_blocking(move || {
        let lane = slot.lane;
        let mut slot = slot
            .instance
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(
                shared
                    .plugin
                    .create(&shared.settings)
                    .map_err(|e| Failure::Error(format!("could not make the plugin: {e}")))?,
            );
        }
        let Some(instance) = slot.as_mut() else {
            return Err(Failure::Error("no instance".into()));
        };
        let (status, bytes) = instance.invoke(&call);
        if status != STATUS_PANIC {
            match instance.report() {
                Some(Ok(report)) => shared.reports.record(lane, report),
                Some(Err(e)) => warn!(component = %shared.label, error = %e, "the plugin's report could not be read"),
                None => {}
            }
        }
        let text = || String::from_utf8_lossy(&bytes).into_owned();
        match status {
            STATUS_OK => Ok(bytes),
            STATUS_ERROR => Err(Failure::Error(text())),
            STATUS_REFUSED => decode_refusals(&bytes)
                .map_err(|e| Failure::Error(e.to_string()))
                .and_then(|r| Err(Failure::Refused(r))),
            STATUS_PANIC => {
                *slot = None;
                Err(Failure::Panic(text()))
            }
            other => {
                *slot = None;
                Err(Failure::Panic(format!("unknown status {other}")))
            }
        }
    })
    .await
    .unwrap_or_else(|e| Err(Failure::Panic(format!("the call's thread failed: {e}"))))
}

fn encode(events: &[Event]) -> Vec<u8> {
    encode_events(
        events.iter().enumerate().map(|(i, e)| EventRef {
            input_index: u32::try_from(i).ok(),
            key: e.key.as_deref(),
            payload: &e.payload,
            headers: Box::new(e.headers.iter().map(|(n, v)| (n.as_str(), v.as_ref()))),
            timestamp_ms: e.timestamp_ms,
            output: None,
        }),
        events.len(),
    )
}

fn backoff(attempt: u32) -> Duration {
    FIRST_BACKOFF * 2u32.saturating_pow(attempt.saturating_sub(1))
}

struct StageMaker(Arc<Shared>);

impl StageFactory for StageMaker {
    fn create(&self, lane: usize) -> Result<Box<dyn Stage>, PluginError> {
        let instance = self
            .0
            .plugin
            .create(&self.0.settings)
            .map_err(|e| PluginError::context(self.0.plugin.name, e))?;
        Ok(Box::new(DynamicStage {
            shared: Arc::clone(&self.0),
            slot: Slot::new(lane, instance),
            pending: AckSet::none(),
            holding: false,
            timer: None,
            lane: 0,
        }))
    }
}

struct DynamicStage {
    shared: Arc<Shared>,
    slot: Arc<Slot>,
    /// The claims of input the plugin may still hold events of.
    pending: AckSet,
    /// Whether the plugin said, after its last call, that it holds events.
    holding: bool,
    timer: Option<Instant>,
    lane: u64,
}

/// Events a call emitted, grouped by output, in order.
type Emitted = Vec<(Option<&'static str>, Vec<Event>)>;

impl DynamicStage {
    /// One call; keeps the plugin's holding and timer. A panic loses what the instance
    /// held: those claims fail, so their sources deliver the events again.
    async fn call(&mut self, call: Call) -> Result<StageResult, Failure> {
        let result = run_call(&self.shared, &self.slot, call).await;
        match &result {
            Ok(bytes) => {
                let decoded = decode_stage_result(bytes)
                    .map_err(|e| Failure::Error(format!("its answer: {e}")))?;
                self.holding = decoded.holding;
                self.timer = decoded.timer.map(|d| Instant::now() + d);
                return Ok(decoded);
            }
            Err(Failure::Panic(_)) => self.lose_state(),
            Err(_) => {}
        }
        result.map(|_| StageResult::default())
    }

    fn lose_state(&mut self) {
        if self.holding {
            warn!(component = %self.shared.label, "the plugin panicked while holding events; they go back to their sources");
            std::mem::take(&mut self.pending).finish(&Status::Failed(format!(
                "{}: the plugin panicked while holding these events",
                self.shared.label
            )));
        }
        self.holding = false;
        self.timer = None;
    }

    /// Maps a call's events back to host events (origins from `inputs`), grouped by output.
    fn emitted(
        &self,
        events: Vec<salesflow_plugin_abi::DynEvent>,
        inputs: &[Event],
    ) -> Result<Emitted, String> {
        let mut groups: Emitted = Vec::new();
        for d in events {
            let output = match d.output.as_deref() {
                None => None,
                Some(name) => Some(
                    *self
                        .shared
                        .plugin
                        .outputs
                        .iter()
                        .find(|p| **p == name)
                        .ok_or_else(|| {
                            format!(
                                "emitted an event to output {name:?}, which it does not declare (its outputs: {})",
                                self.shared.plugin.outputs.join(", ")
                            )
                        })?,
                ),
            };
            let event = Event {
                origin: d
                    .input_index
                    .and_then(|i| inputs.get(i as usize))
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
            };
            match groups.last_mut() {
                Some((o, list)) if *o == output => list.push(event),
                _ => groups.push((output, vec![event])),
            }
        }
        Ok(groups)
    }

    /// Sends what a call emitted, carrying the pending claims (and `acks`, the input's):
    /// clones while the plugin still holds events, the claims themselves once it holds none.
    fn send(&mut self, groups: Emitted, acks: Option<AckSet>, out: &mut Vec<Batch>) {
        if let Some(acks) = acks {
            self.pending.extend(acks);
        }
        let count = groups.len();
        for (i, (output, events)) in groups.into_iter().enumerate() {
            let claims = if !self.holding && i + 1 == count {
                std::mem::take(&mut self.pending)
            } else {
                self.pending.clone()
            };
            let batch = Batch::new(events, claims, self.lane);
            out.push(match output {
                Some(name) => batch.to_output(name),
                None => batch,
            });
        }
        if !self.holding {
            // Deliberately dropped, or all sent above.
            std::mem::take(&mut self.pending).finish(&Status::Delivered);
        }
    }

    /// The batch failed every attempt: each event alone; those that still fail become
    /// dead letters.
    async fn take_apart(
        &mut self,
        events: Vec<Event>,
        acks: AckSet,
        out: &mut Vec<Batch>,
    ) -> Result<(), PluginError> {
        let label = self.shared.label.clone();
        let mut letters = Vec::new();
        let mut lost_held = false;
        for event in events {
            let one = std::slice::from_ref(&event);
            let was_holding = self.holding;
            match self.call(Call::Batch(encode(one))).await {
                Ok(result) => {
                    let groups = self
                        .emitted(result.events, one)
                        .map_err(|e| PluginError::new(format!("{label}: {e}")))?;
                    self.send(groups, Some(acks.clone()), out);
                }
                Err(failure) => {
                    if matches!(failure, Failure::Panic(_)) && was_holding {
                        lost_held = true;
                    }
                    let why = format!(
                        "stage plugin {}: {}",
                        self.shared.plugin.name,
                        failure.text()
                    );
                    self.shared.quarantine().insert(&event.origin);
                    letters.push(event.dead_letter(&why, &label));
                }
            }
        }
        if !letters.is_empty() {
            error!(component = %label, events = letters.len(), "the plugin failed on events alone after its attempts; they go to the dead letters");
            out.push(Batch::new(letters, acks.clone(), self.lane).to_output(FAILED));
        }
        if lost_held {
            // Events of this batch held by the lost instance: deliver the batch again
            // (its dead letters are remembered and not sent twice).
            acks.finish(&Status::Failed(format!(
                "{label}: the plugin panicked while holding events of this batch"
            )));
        } else {
            acks.finish(&Status::Delivered);
        }
        Ok(())
    }

    async fn tick(&mut self, reason: u32, out: &mut Vec<Batch>) -> Result<(), PluginError> {
        let label = self.shared.label.clone();
        match self.call(Call::Tick(reason)).await {
            Ok(result) => {
                let groups = self
                    .emitted(result.events, &[])
                    .map_err(|e| PluginError::new(format!("{label}: {e}")))?;
                self.send(groups, None, out);
                Ok(())
            }
            Err(failure) => {
                if matches!(failure, Failure::Error(_)) && self.holding {
                    // Keep what it holds; try the timer again shortly.
                    self.timer = Some(Instant::now() + Duration::from_secs(1));
                }
                Err(PluginError::new(format!(
                    "{label}: stage plugin {} {}: {}",
                    self.shared.plugin.name,
                    if reason == TICK_FLUSH {
                        "flush"
                    } else {
                        "timer"
                    },
                    failure.text()
                )))
            }
        }
    }
}

#[async_trait]
impl Stage for DynamicStage {
    async fn process(&mut self, batch: Batch, out: &mut Vec<Batch>) -> Result<(), PluginError> {
        let Batch {
            events, acks, lane, ..
        } = batch;
        self.lane = lane;
        let label = self.shared.label.clone();
        let events: Vec<Event> = {
            let quarantine = self.shared.quarantine();
            events
                .into_iter()
                .filter(|e| !quarantine.contains(&e.origin))
                .collect()
        };
        if events.is_empty() {
            acks.finish(&Status::Delivered);
            return Ok(());
        }
        let input = encode(&events);
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            match self.call(Call::Batch(input.clone())).await {
                Ok(result) => {
                    let groups = self
                        .emitted(result.events, &events)
                        .map_err(|e| PluginError::new(format!("{label}: {e}")))?;
                    self.send(groups, Some(acks), out);
                    return Ok(());
                }
                Err(failure) => {
                    last = failure.text();
                    warn!(component = %label, attempt, error = %last, "stage plugin call failed");
                    if attempt < ATTEMPTS {
                        tokio::time::sleep(backoff(attempt)).await;
                    }
                }
            }
        }
        if self.shared.dead_letters {
            return self.take_apart(events, acks, out).await;
        }
        // Nobody reads the dead letters: the batch fails back to its source (the claims
        // are dropped unfinished).
        Err(PluginError::new(format!(
            "stage plugin {}: {last} ({ATTEMPTS} attempts; read {label}.{FAILED} to dead-letter such events instead)",
            self.shared.plugin.name
        )))
    }

    fn deadline(&self) -> Option<Instant> {
        self.timer
    }

    async fn on_deadline(&mut self, out: &mut Vec<Batch>) -> Result<(), PluginError> {
        self.timer = None;
        self.tick(TICK_TIMER, out).await
    }

    async fn flush(&mut self, out: &mut Vec<Batch>) -> Result<(), PluginError> {
        let result = self.tick(TICK_FLUSH, out).await;
        if self.holding {
            std::mem::take(&mut self.pending).finish(&Status::Failed(format!(
                "{}: still held by the plugin at shutdown",
                self.shared.label
            )));
        }
        result
    }
}

struct SinkMaker(Arc<Shared>);

impl SinkFactory for SinkMaker {
    fn create(&self, lane: usize) -> Result<Box<dyn Sink>, PluginError> {
        let instance = self
            .0
            .plugin
            .create(&self.0.settings)
            .map_err(|e| PluginError::context(self.0.plugin.name, e))?;
        Ok(Box::new(DynamicSink {
            shared: Arc::clone(&self.0),
            slot: Slot::new(lane, instance),
        }))
    }
}

struct DynamicSink {
    shared: Arc<Shared>,
    slot: Arc<Slot>,
}

/// Writes a batch: [`ATTEMPTS`] tries; then, if the plugin panicked, each event alone,
/// those that still panic refused for good.
async fn write_batch(
    shared: Arc<Shared>,
    slot: Arc<Slot>,
    events: Arc<[Event]>,
) -> Result<(), PluginError> {
    let name = shared.plugin.name;
    let input = encode(&events);
    let mut panicked = false;
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        match run_call(&shared, &slot, Call::Batch(input.clone())).await {
            Ok(_) => return Ok(()),
            Err(Failure::Refused(refused)) => {
                return Err(PluginError::refused(
                    format!(
                        "sink plugin {name} refused {} event(s) for good",
                        refused.len()
                    ),
                    refused,
                ));
            }
            Err(failure) => {
                panicked |= matches!(failure, Failure::Panic(_));
                last = failure.text();
                warn!(component = %shared.label, attempt, error = %last, "sink plugin write failed");
                if attempt < ATTEMPTS {
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
    }
    if !panicked {
        return Err(PluginError::new(format!(
            "sink plugin {name}: {last} ({ATTEMPTS} attempts)"
        )));
    }
    let mut refused = Vec::new();
    for (position, event) in events.iter().enumerate() {
        match run_call(
            &shared,
            &slot,
            Call::Batch(encode(std::slice::from_ref(event))),
        )
        .await
        {
            Ok(_) => {}
            Err(Failure::Refused(reasons)) => {
                let why = reasons.into_iter().next().map(|(_, why)| why);
                refused.push((
                    position,
                    format!("sink plugin {name} refused it: {}", why.unwrap_or_default()),
                ));
            }
            Err(Failure::Panic(m)) => {
                refused.push((position, format!("sink plugin {name} panicked: {m}")));
            }
            Err(Failure::Error(m)) => {
                return Err(PluginError::new(format!("sink plugin {name}: {m}")));
            }
        }
    }
    if refused.is_empty() {
        return Ok(());
    }
    Err(PluginError::refused(
        format!(
            "sink plugin {name} panicked on {} event(s) alone",
            refused.len()
        ),
        refused,
    ))
}

#[async_trait]
impl Sink for DynamicSink {
    async fn write(&mut self, events: Arc<[Event]>) -> Result<WriteFuture, PluginError> {
        Ok(Box::pin(write_batch(
            Arc::clone(&self.shared),
            Arc::clone(&self.slot),
            events,
        )))
    }

    async fn flush(&mut self) -> Result<(), PluginError> {
        run_call(&self.shared, &self.slot, Call::Tick(TICK_FLUSH))
            .await
            .map(drop)
            .map_err(|f| {
                PluginError::new(format!(
                    "sink plugin {} flush: {}",
                    self.shared.plugin.name,
                    f.text()
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::check_version;

    #[test]
    fn another_major_version_is_refused_naming_both() {
        let e = check_version((1, 0), (2, 0)).unwrap_err();
        assert!(
            e.contains("built for plugin ABI version 1, but this host speaks version 2.0"),
            "{e}"
        );
        let e = check_version((3, 0), (2, 4)).unwrap_err();
        assert!(
            e.contains("version 3.0, but this host speaks version 2.4"),
            "{e}"
        );
    }

    #[test]
    fn older_minor_versions_load_and_newer_ones_do_not() {
        assert!(check_version((2, 0), (2, 0)).is_ok());
        assert!(check_version((2, 0), (2, 3)).is_ok());
        let e = check_version((2, 4), (2, 3)).unwrap_err();
        assert!(e.contains("2.4, newer than this host's 2.3"), "{e}");
    }
}
