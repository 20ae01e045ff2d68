//! The boundary between the salesflow host and plugins loaded at run time.
//!
//! A run-time plugin library is a shared library (`cdylib`) that exports one static,
//! [`SYMBOL`] (`SALESFLOW_PLUGIN`), a [`LibraryDeclaration`] listing its plugins: stages
//! (with state across batches, a timer, a flush at shutdown and named outputs) and sinks
//! (which write somewhere and say when it is durable). The host reads the declaration's
//! first three fields — [`ABI_MAGIC`], the major and the minor ABI version — before it
//! calls anything. It refuses a library built for another major version, naming both, and
//! one built for a newer minor version than its own; it accepts older minor versions
//! (a minor version only appends fields the host then knows to be absent). Those three
//! fields keep their place in every future version.
//!
//! Calls move whole batches: one call per batch, never per event. A batch crosses as one
//! byte buffer (see [`encode_events`]). Every exported function catches panics and returns
//! [`STATUS_PANIC`] with the message, so a panic never unwinds into the host. Buffers are
//! freed by the side that allocated them. The host calls a plugin off its async workers
//! (on a blocking thread), so a slow call never stalls the rest of the process, and one
//! instance's calls never overlap.
//!
//! Writing a plugin: implement [`DynStage`] or [`DynSink`] and export them with
//! [`export_plugins!`] (or [`export_stage!`] for a library of one stage):
//!
//! ```
//! use salesflow_plugin_abi::{DynEvent, DynStage, export_plugins};
//!
//! /// Drops events whose payload is empty; sends those over 1 KiB to `large`.
//! struct Sort;
//!
//! impl DynStage for Sort {
//!     fn new(_config_json: &str) -> Result<Self, String> {
//!         Ok(Sort)
//!     }
//!     fn process(&mut self, events: Vec<DynEvent>) -> Result<Vec<DynEvent>, String> {
//!         Ok(events
//!             .into_iter()
//!             .filter(|e| !e.payload.is_empty())
//!             .map(|mut e| {
//!                 if e.payload.len() > 1024 {
//!                     e.output = Some("large".into());
//!                 }
//!                 e
//!             })
//!             .collect())
//!     }
//! }
//!
//! export_plugins! {
//!     stage(Sort, "sort", "Drops empty events; large ones go to `large`", outputs = ["large"]),
//! }
//! # fn main() {}
//! ```
//!
//! [`testing`] runs a plugin through this same boundary in a unit test, without a host.

#![allow(unsafe_code)] // This crate is the FFI boundary; every unsafe block says why it holds.

mod codec;
pub mod testing;

use std::ffi::{c_char, c_void};
use std::time::Duration;

pub use codec::{
    DecodeError, DynEvent, EventRef, StageResult, decode_events, decode_refusals,
    decode_stage_result, encode_events, encode_refusals, encode_stage_result,
};

/// "SALESFLW" in ASCII: marks a salesflow plugin declaration.
pub const ABI_MAGIC: u64 = u64::from_be_bytes(*b"SALESFLW");

/// The major version of this ABI: a change to what a host of one version can read of a
/// library of another (a field moved or retyped, a function's meaning changed, the batch
/// encoding changed) increments it. Version 1 held one stage and no minor version.
pub const ABI_VERSION: u32 = 2;

/// The minor version: fields appended to the end of [`LibraryDeclaration`] or
/// [`PluginEntry`] increment it; a host reads them only from libraries that declare them.
pub const ABI_MINOR: u32 = 1;

/// The name of the exported static, NUL-terminated.
pub const SYMBOL: &[u8] = b"SALESFLOW_PLUGIN\0";

/// The call succeeded.
pub const STATUS_OK: i32 = 0;
/// The plugin reported an error; the buffer holds its message (UTF-8). The host may try
/// the same input again.
pub const STATUS_ERROR: i32 = 1;
/// The plugin panicked; the buffer holds the panic message (UTF-8). The host destroys the
/// instance and makes a new one.
pub const STATUS_PANIC: i32 = 2;
/// A sink refuses some events for good; the buffer holds them (see [`encode_refusals`]),
/// and the others were written.
pub const STATUS_REFUSED: i32 = 3;

/// [`PluginEntry::kind`] of a stage.
pub const KIND_STAGE: u32 = 1;
/// [`PluginEntry::kind`] of a sink.
pub const KIND_SINK: u32 = 2;

/// [`TickFn`]'s `reason`: the time the plugin asked for has come.
pub const TICK_TIMER: u32 = 0;
/// [`TickFn`]'s `reason`: the input has ended (shutdown); emit or write what is held.
pub const TICK_FLUSH: u32 = 1;

/// Bytes lent by the caller for the duration of a call.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ByteSlice {
    pub ptr: *const u8,
    pub len: usize,
}

impl ByteSlice {
    pub fn from_slice(bytes: &[u8]) -> Self {
        Self {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        }
    }

    /// # Safety
    /// `ptr` must point to `len` readable bytes that outlive the returned slice.
    pub unsafe fn as_slice<'a>(self) -> &'a [u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: the caller guarantees ptr/len describe a live allocation.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// Bytes allocated by the plugin and handed to the host, which returns them through
/// [`LibraryDeclaration::free_buffer`] (each side frees with its own allocator).
#[repr(C)]
pub struct OwnedBuffer {
    pub ptr: *mut u8,
    pub len: usize,
    pub cap: usize,
}

impl OwnedBuffer {
    pub const EMPTY: OwnedBuffer = OwnedBuffer {
        ptr: std::ptr::null_mut(),
        len: 0,
        cap: 0,
    };

    pub fn from_vec(bytes: Vec<u8>) -> Self {
        let mut bytes = std::mem::ManuallyDrop::new(bytes);
        Self {
            ptr: bytes.as_mut_ptr(),
            len: bytes.len(),
            cap: bytes.capacity(),
        }
    }

    /// # Safety
    /// The buffer must come from [`OwnedBuffer::from_vec`] in this same library.
    pub unsafe fn into_vec(self) -> Vec<u8> {
        if self.ptr.is_null() {
            return Vec::new();
        }
        // SAFETY: ptr/len/cap come from a Vec<u8> of this allocator (from_vec).
        unsafe { Vec::from_raw_parts(self.ptr, self.len, self.cap) }
    }

    /// # Safety
    /// `ptr`/`len` must describe a live buffer (or be null).
    pub unsafe fn as_slice(&self) -> &[u8] {
        if self.ptr.is_null() {
            return &[];
        }
        // SAFETY: the caller guarantees the buffer is live.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// Creates an instance from its settings, as JSON. On success writes the instance to
/// `instance`; on failure writes a message to `error`. Must not do I/O that can wait
/// (`salesflow check` creates and drops an instance to validate the settings).
pub type CreateFn = unsafe extern "C" fn(
    config_json: ByteSlice,
    instance: *mut *mut c_void,
    error: *mut OwnedBuffer,
) -> i32;
/// A stage: processes one encoded batch and writes a [`StageResult`] (or a message) to
/// `output`. A sink: writes one encoded batch; `output` gets nothing, a message, or the
/// refusals ([`STATUS_REFUSED`]).
pub type CallFn =
    unsafe extern "C" fn(instance: *mut c_void, input: ByteSlice, output: *mut OwnedBuffer) -> i32;
/// A stage's timer ([`TICK_TIMER`]) or flush ([`TICK_FLUSH`]): writes a [`StageResult`].
/// A sink's flush: writes nothing, or a message.
pub type TickFn =
    unsafe extern "C" fn(instance: *mut c_void, reason: u32, output: *mut OwnedBuffer) -> i32;
/// Drops an instance.
pub type DestroyFn = unsafe extern "C" fn(instance: *mut c_void);
/// Frees a buffer the plugin handed out.
pub type FreeBufferFn = unsafe extern "C" fn(buffer: OwnedBuffer);
/// Since minor version 1: an instance's own metrics and health, written to `output` (see
/// [`encode_report`]). The host calls it after each call, on the same thread, never
/// overlapping the instance's other calls.
pub type ReportFn = unsafe extern "C" fn(instance: *mut c_void, output: *mut OwnedBuffer) -> i32;

/// One plugin of a library.
#[repr(C)]
pub struct PluginEntry {
    /// [`KIND_STAGE`] or [`KIND_SINK`].
    pub kind: u32,
    /// The type name (`type = "..."` in pipeline.toml), NUL-terminated.
    pub name: *const c_char,
    /// One line saying what it does, NUL-terminated.
    pub summary: *const c_char,
    /// A stage's named outputs, comma-separated, NUL-terminated (empty: none).
    pub outputs: *const c_char,
    pub create: CreateFn,
    pub call: CallFn,
    pub tick: TickFn,
    pub destroy: DestroyFn,
}

/// What a plugin library exports as `SALESFLOW_PLUGIN`.
#[repr(C)]
pub struct LibraryDeclaration {
    /// Always [`ABI_MAGIC`]. Stable position.
    pub magic: u64,
    /// The [`ABI_VERSION`] the library was built against. Stable position.
    pub abi_version: u32,
    /// The [`ABI_MINOR`] it was built against. Stable position.
    pub abi_minor: u32,
    pub plugins: *const PluginEntry,
    pub plugin_count: usize,
    pub free_buffer: FreeBufferFn,
    /// Since minor version 1 (a host reads it only from libraries that declare it).
    pub report: ReportFn,
}

/// Whether a metric only grows (a counter) or goes up and down (a gauge).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
}

/// One of a plugin instance's own metrics. The host shows it in `/metrics` as
/// `salesflow_plugin_<name>` (a counter with `_total`), labelled with the pipeline, the
/// component and the lane, beside the built-in components' metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    pub kind: MetricKind,
    /// Lower-case letters, digits and `_`, starting with a letter.
    pub name: String,
    /// One line: what it counts or measures.
    pub help: String,
    pub value: f64,
}

impl Metric {
    /// A count that only grows (events seen, windows closed).
    pub fn counter(name: &str, help: &str, value: u64) -> Self {
        #[allow(clippy::cast_precision_loss)] // Exact up to 2^53.
        let value = value as f64;
        Self {
            kind: MetricKind::Counter,
            name: name.to_owned(),
            help: help.to_owned(),
            value,
        }
    }

    /// A level that goes up and down (events held, open windows).
    pub fn gauge(name: &str, help: &str, value: f64) -> Self {
        Self {
            kind: MetricKind::Gauge,
            name: name.to_owned(),
            help: help.to_owned(),
            value,
        }
    }
}

/// What [`ReportFn`] says of an instance.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub metrics: Vec<Metric>,
    /// `Some(why)` when the instance says it cannot do its work.
    pub unhealthy: Option<String>,
}

/// A report as [`ReportFn`] writes it: one line per metric, `counter|gauge NAME VALUE
/// HELP`, and `unhealthy MESSAGE` when the instance is not healthy (line breaks in help and
/// messages become spaces).
pub fn encode_report(report: &Report) -> Vec<u8> {
    use std::fmt::Write as _;
    let one_line = |s: &str| s.replace(['\n', '\r'], " ");
    let mut out = String::new();
    for m in &report.metrics {
        let kind = match m.kind {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
        };
        let _ = writeln!(
            out,
            "{kind} {} {} {}",
            one_line(&m.name),
            m.value,
            one_line(&m.help)
        );
    }
    if let Some(why) = &report.unhealthy {
        let _ = writeln!(out, "unhealthy {}", one_line(why));
    }
    out.into_bytes()
}

/// Reads what [`encode_report`] wrote; a line it cannot read is an error naming it.
pub fn decode_report(bytes: &[u8]) -> Result<Report, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("report is not UTF-8: {e}"))?;
    let mut report = Report::default();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let kind = match word {
            "counter" => MetricKind::Counter,
            "gauge" => MetricKind::Gauge,
            "unhealthy" => {
                report.unhealthy = Some(rest.to_owned());
                continue;
            }
            _ => return Err(format!("report line {line:?}: unknown kind {word:?}")),
        };
        let mut parts = rest.splitn(3, ' ');
        let name = parts.next().unwrap_or_default();
        let value = parts
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| format!("report line {line:?}: no number after the name"))?;
        report.metrics.push(Metric {
            kind,
            name: name.to_owned(),
            help: parts.next().unwrap_or_default().to_owned(),
            value,
        });
    }
    Ok(report)
}

// SAFETY: the declaration is immutable static data (pointers to static strings, entries
// and functions); sharing it between threads is sound.
unsafe impl Sync for LibraryDeclaration {}
// SAFETY: as above.
unsafe impl Sync for PluginEntry {}

/// A stage implemented in a plugin library. One instance serves one lane of the host:
/// its calls never overlap, and it sees its lane's batches in order.
///
/// A stage may keep events across calls (a window, a batch): it then says so with
/// [`DynStage::holds_events`], and the host acknowledges the input to its sources only
/// once the stage holds nothing — so a crash never loses what it held.
pub trait DynStage: Sized + Send + 'static {
    /// Builds the stage from its settings in pipeline.toml (the component's table minus
    /// `type` and `inputs`), given as JSON.
    fn new(config_json: &str) -> Result<Self, String>;
    /// Transforms one batch. Events passed through keep their `input_index`; an event
    /// with `output` set goes to that named output.
    fn process(&mut self, events: Vec<DynEvent>) -> Result<Vec<DynEvent>, String>;
    /// Whether the stage holds input events for a later call. Asked after every call.
    fn holds_events(&self) -> bool {
        false
    }
    /// When the host should call [`DynStage::on_timer`], from now. Asked after every
    /// call; `None`: no timer.
    fn next_timer(&self) -> Option<Duration> {
        None
    }
    /// The time asked for by [`DynStage::next_timer`] has come.
    fn on_timer(&mut self) -> Result<Vec<DynEvent>, String> {
        Ok(Vec::new())
    }
    /// The input has ended (shutdown): emit whatever is held.
    fn flush(&mut self) -> Result<Vec<DynEvent>, String> {
        self.on_timer()
    }
    /// This instance's own metrics (see [`Metric`]), read by the host after every call.
    fn metrics(&self) -> Vec<Metric> {
        Vec::new()
    }
    /// Whether this instance can do its work. An `Err` shows in `/health/ready` as the
    /// component's `plugin` check until a later call reports `Ok`.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Why a sink's write did not (wholly) succeed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkError {
    /// Nothing of the batch is known to be written; trying again may help (a server down,
    /// a timeout). The host retries, then fails the batch back to its sources.
    Retry(String),
    /// These events (by position in the write, each with why) can never be written; the
    /// others were. They become dead letters when the sink's `failed` output is read.
    Refused(Vec<(usize, String)>),
}

/// A sink implemented in a plugin library: writes batches somewhere durable. One instance
/// serves one lane; its calls never overlap.
pub trait DynSink: Sized + Send + 'static {
    /// Builds the sink from its settings, as JSON (as [`DynStage::new`]).
    fn new(config_json: &str) -> Result<Self, String>;
    /// Writes the events; returns once they are durable (the host then acknowledges them
    /// to their sources).
    fn write(&mut self, events: Vec<DynEvent>) -> Result<(), SinkError>;
    /// Shutdown: push out anything buffered.
    fn flush(&mut self) -> Result<(), String> {
        Ok(())
    }
    /// This instance's own metrics (as [`DynStage::metrics`]).
    fn metrics(&self) -> Vec<Metric> {
        Vec::new()
    }
    /// Whether this instance can do its work (as [`DynStage::health`]).
    fn health(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Runs `f`, turning a panic into [`STATUS_PANIC`] with its message in `out`.
///
/// # Safety
/// `out` must be null or point to a writable `OwnedBuffer` slot.
#[doc(hidden)]
pub unsafe fn guard(
    out: *mut OwnedBuffer,
    f: impl FnOnce() -> Result<Vec<u8>, (i32, Vec<u8>)>,
) -> i32 {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    let (status, bytes) = match result {
        Ok(Ok(bytes)) => (STATUS_OK, bytes),
        Ok(Err((status, bytes))) => (status, bytes),
        Err(panic) => (STATUS_PANIC, panic_message(panic.as_ref()).into_bytes()),
    };
    if !out.is_null() {
        // SAFETY: per the function contract.
        unsafe { out.write(OwnedBuffer::from_vec(bytes)) };
    }
    status
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

fn error(message: String) -> (i32, Vec<u8>) {
    (STATUS_ERROR, message.into_bytes())
}

/// What an instance pointer points to: its report function first (so that the one
/// [`report`] of the library can find it whatever the plugin's type), then the plugin.
#[repr(C)]
struct Instance<T> {
    report: unsafe fn(*const c_void) -> Vec<u8>,
    inner: T,
}

/// The plugin inside an instance pointer.
///
/// # Safety
/// `instance` must come from `create_with::<T>` and be live; no other reference to it may
/// be in use.
unsafe fn inner<'a, T>(instance: *mut c_void) -> &'a mut T {
    // SAFETY: per the function contract.
    unsafe { &mut (*instance.cast::<Instance<T>>()).inner }
}

/// # Safety
/// `instance` must be an `Instance<T>` of a stage `T`.
unsafe fn stage_report<T: DynStage>(instance: *const c_void) -> Vec<u8> {
    // SAFETY: per the function contract.
    let stage = unsafe { &(*instance.cast::<Instance<T>>()).inner };
    encode_report(&Report {
        metrics: stage.metrics(),
        unhealthy: stage.health().err(),
    })
}

/// # Safety
/// `instance` must be an `Instance<T>` of a sink `T`.
unsafe fn sink_report<T: DynSink>(instance: *const c_void) -> Vec<u8> {
    // SAFETY: per the function contract.
    let sink = unsafe { &(*instance.cast::<Instance<T>>()).inner };
    encode_report(&Report {
        metrics: sink.metrics(),
        unhealthy: sink.health().err(),
    })
}

/// [`ReportFn`] of every plugin of the library.
///
/// # Safety
/// Called by the host per the ABI, with an instance made by this library.
#[doc(hidden)]
pub unsafe extern "C" fn report(instance: *mut c_void, output: *mut OwnedBuffer) -> i32 {
    let call = || {
        // SAFETY: every instance this library makes is an `Instance<T>`, whose first field
        // (repr(C)) is its report function.
        let report = unsafe { *instance.cast::<unsafe fn(*const c_void) -> Vec<u8>>() };
        // SAFETY: that function reads the instance it was stored in.
        Ok(unsafe { report(instance) })
    };
    // SAFETY: the host passes a writable slot for the output.
    unsafe { guard(output, call) }
}

/// # Safety
/// The host's side of [`CreateFn`].
unsafe fn create_with<T>(
    config: ByteSlice,
    instance: *mut *mut c_void,
    out: *mut OwnedBuffer,
    new: fn(&str) -> Result<T, String>,
    report: unsafe fn(*const c_void) -> Vec<u8>,
) -> i32 {
    let call = || {
        // SAFETY: the host lends the config bytes for this call.
        let bytes = unsafe { config.as_slice() };
        let json = std::str::from_utf8(bytes).map_err(|e| error(e.to_string()))?;
        let made = new(json).map_err(error)?;
        let made = Box::new(Instance {
            report,
            inner: made,
        });
        // SAFETY: the host passes a valid slot for the instance pointer.
        unsafe { instance.write(Box::into_raw(made).cast::<c_void>()) };
        Ok(Vec::new())
    };
    // SAFETY: the host passes a writable slot for the message.
    unsafe { guard(out, call) }
}

fn stage_result<T: DynStage>(stage: &T, events: Vec<DynEvent>) -> Vec<u8> {
    encode_stage_result(&StageResult {
        events,
        holding: stage.holds_events(),
        timer: stage.next_timer(),
    })
}

/// [`CreateFn`] of a stage `T`.
///
/// # Safety
/// Called by the host per the ABI.
#[doc(hidden)]
pub unsafe extern "C" fn stage_create<T: DynStage>(
    config: ByteSlice,
    instance: *mut *mut c_void,
    error: *mut OwnedBuffer,
) -> i32 {
    // SAFETY: per the ABI.
    unsafe { create_with::<T>(config, instance, error, T::new, stage_report::<T>) }
}

/// [`CallFn`] of a stage `T`.
///
/// # Safety
/// Called by the host per the ABI, with an instance made by [`stage_create::<T>`].
#[doc(hidden)]
pub unsafe extern "C" fn stage_call<T: DynStage>(
    instance: *mut c_void,
    input: ByteSlice,
    output: *mut OwnedBuffer,
) -> i32 {
    let call = || {
        // SAFETY: `instance` comes from `stage_create::<T>`; its calls never overlap.
        let stage = unsafe { inner::<T>(instance) };
        // SAFETY: the host lends the input bytes for this call.
        let events =
            decode_events(unsafe { input.as_slice() }).map_err(|e| error(e.to_string()))?;
        let out = stage.process(events).map_err(error)?;
        Ok(stage_result(stage, out))
    };
    // SAFETY: the host passes a writable slot for the output.
    unsafe { guard(output, call) }
}

/// [`TickFn`] of a stage `T`.
///
/// # Safety
/// As [`stage_call`].
#[doc(hidden)]
pub unsafe extern "C" fn stage_tick<T: DynStage>(
    instance: *mut c_void,
    reason: u32,
    output: *mut OwnedBuffer,
) -> i32 {
    let call = || {
        // SAFETY: as in `stage_call`.
        let stage = unsafe { inner::<T>(instance) };
        let out = if reason == TICK_FLUSH {
            stage.flush()
        } else {
            stage.on_timer()
        }
        .map_err(error)?;
        Ok(stage_result(stage, out))
    };
    // SAFETY: the host passes a writable slot for the output.
    unsafe { guard(output, call) }
}

/// [`CreateFn`] of a sink `T`.
///
/// # Safety
/// Called by the host per the ABI.
#[doc(hidden)]
pub unsafe extern "C" fn sink_create<T: DynSink>(
    config: ByteSlice,
    instance: *mut *mut c_void,
    error: *mut OwnedBuffer,
) -> i32 {
    // SAFETY: per the ABI.
    unsafe { create_with::<T>(config, instance, error, T::new, sink_report::<T>) }
}

/// [`CallFn`] of a sink `T`.
///
/// # Safety
/// Called by the host per the ABI, with an instance made by [`sink_create::<T>`].
#[doc(hidden)]
pub unsafe extern "C" fn sink_call<T: DynSink>(
    instance: *mut c_void,
    input: ByteSlice,
    output: *mut OwnedBuffer,
) -> i32 {
    let call = || {
        // SAFETY: `instance` comes from `sink_create::<T>`; its calls never overlap.
        let sink = unsafe { inner::<T>(instance) };
        // SAFETY: the host lends the input bytes for this call.
        let events =
            decode_events(unsafe { input.as_slice() }).map_err(|e| error(e.to_string()))?;
        match sink.write(events) {
            Ok(()) => Ok(Vec::new()),
            Err(SinkError::Retry(message)) => Err(error(message)),
            Err(SinkError::Refused(refused)) => Err((STATUS_REFUSED, encode_refusals(&refused))),
        }
    };
    // SAFETY: the host passes a writable slot for the output.
    unsafe { guard(output, call) }
}

/// [`TickFn`] of a sink `T`: its flush.
///
/// # Safety
/// As [`sink_call`].
#[doc(hidden)]
pub unsafe extern "C" fn sink_tick<T: DynSink>(
    instance: *mut c_void,
    reason: u32,
    output: *mut OwnedBuffer,
) -> i32 {
    let call = || {
        // SAFETY: as in `sink_call`.
        let sink = unsafe { inner::<T>(instance) };
        if reason == TICK_FLUSH {
            sink.flush().map_err(error)?;
        }
        Ok(Vec::new())
    };
    // SAFETY: the host passes a writable slot for the output.
    unsafe { guard(output, call) }
}

/// [`DestroyFn`] of `T`.
///
/// # Safety
/// Called by the host once per instance made by this library's create function for `T`.
#[doc(hidden)]
pub unsafe extern "C" fn destroy<T>(instance: *mut c_void) {
    if !instance.is_null() {
        let _ = std::panic::catch_unwind(|| {
            // SAFETY: `instance` is a `Box<Instance<T>>` from `create_with`, destroyed once.
            drop(unsafe { Box::from_raw(instance.cast::<Instance<T>>()) });
        });
    }
}

/// [`FreeBufferFn`]: every buffer this library hands out.
///
/// # Safety
/// `buffer` must come from [`OwnedBuffer::from_vec`] in this library.
#[doc(hidden)]
pub unsafe extern "C" fn free_buffer(buffer: OwnedBuffer) {
    // SAFETY: per the function contract.
    drop(unsafe { buffer.into_vec() });
}

/// Exports this library's plugins as `SALESFLOW_PLUGIN`: each a `stage(TYPE, "name",
/// "summary")` (optionally `, outputs = ["a", "b"]`) or a `sink(TYPE, "name",
/// "summary")`.
#[macro_export]
macro_rules! export_plugins {
    ($($kind:ident ($ty:ty, $name:literal, $summary:literal $(, outputs = [$($out:literal),* $(,)?])? )),+ $(,)?) => {
        $crate::export_plugins!(@abi ($crate::ABI_VERSION, $crate::ABI_MINOR);
            $($kind ($ty, $name, $summary $(, outputs = [$($out),*])?)),+);
    };
    // Declares other ABI versions: only for tests of the host's version check.
    (@abi ($major:expr, $minor:expr); $($kind:ident ($ty:ty, $name:literal, $summary:literal $(, outputs = [$($out:literal),* $(,)?])? )),+ $(,)?) => {
        const __SALESFLOW_PLUGINS: &[$crate::PluginEntry] = &[
            $($crate::export_plugins!(@entry $kind, $ty, $name, $summary, [$($($out),*)?])),+
        ];
        #[unsafe(no_mangle)]
        pub static SALESFLOW_PLUGIN: $crate::LibraryDeclaration = $crate::LibraryDeclaration {
            magic: $crate::ABI_MAGIC,
            abi_version: $major,
            abi_minor: $minor,
            plugins: __SALESFLOW_PLUGINS.as_ptr(),
            plugin_count: __SALESFLOW_PLUGINS.len(),
            free_buffer: $crate::free_buffer,
            report: $crate::report,
        };
    };
    (@entry stage, $ty:ty, $name:literal, $summary:literal, [$($out:literal),*]) => {
        $crate::PluginEntry {
            kind: $crate::KIND_STAGE,
            name: concat!($name, "\0").as_ptr().cast(),
            summary: concat!($summary, "\0").as_ptr().cast(),
            outputs: $crate::export_plugins!(@outputs [$($out),*]),
            create: $crate::stage_create::<$ty>,
            call: $crate::stage_call::<$ty>,
            tick: $crate::stage_tick::<$ty>,
            destroy: $crate::destroy::<$ty>,
        }
    };
    (@entry sink, $ty:ty, $name:literal, $summary:literal, []) => {
        $crate::PluginEntry {
            kind: $crate::KIND_SINK,
            name: concat!($name, "\0").as_ptr().cast(),
            summary: concat!($summary, "\0").as_ptr().cast(),
            outputs: "\0".as_ptr().cast(),
            create: $crate::sink_create::<$ty>,
            call: $crate::sink_call::<$ty>,
            tick: $crate::sink_tick::<$ty>,
            destroy: $crate::destroy::<$ty>,
        }
    };
    (@outputs []) => { "\0".as_ptr().cast() };
    (@outputs [$first:literal $(, $rest:literal)*]) => {
        concat!($first $(, ",", $rest)*, "\0").as_ptr().cast()
    };
}

/// Exports a library of one [`DynStage`]: `export_stage!(TYPE, "name", "summary")`.
#[macro_export]
macro_rules! export_stage {
    ($stage:ty, $name:literal, $summary:literal) => {
        $crate::export_plugins!(stage($stage, $name, $summary));
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_turns_a_panic_into_a_status() {
        let mut out = OwnedBuffer::EMPTY;
        // SAFETY: a valid slot.
        let status = unsafe { guard(&raw mut out, || panic!("boom")) };
        assert_eq!(status, STATUS_PANIC);
        // SAFETY: made by from_vec in this library.
        assert_eq!(unsafe { out.into_vec() }, b"boom");
    }

    #[test]
    fn the_stable_header_keeps_its_offsets() {
        assert_eq!(std::mem::offset_of!(LibraryDeclaration, magic), 0);
        assert_eq!(std::mem::offset_of!(LibraryDeclaration, abi_version), 8);
        assert_eq!(std::mem::offset_of!(LibraryDeclaration, abi_minor), 12);
    }
}
