//! Runs a plugin in a unit test the way the host runs it — through the exported C
//! functions and the byte encoding, panics caught — without a host or any server.
//!
//! ```
//! use salesflow_plugin_abi::testing::StageHarness;
//! use salesflow_plugin_abi::{DynEvent, DynStage};
//!
//! struct Upper;
//! impl DynStage for Upper {
//!     fn new(_: &str) -> Result<Self, String> {
//!         Ok(Upper)
//!     }
//!     fn process(&mut self, events: Vec<DynEvent>) -> Result<Vec<DynEvent>, String> {
//!         Ok(events
//!             .into_iter()
//!             .map(|mut e| {
//!                 e.payload.make_ascii_uppercase();
//!                 e
//!             })
//!             .collect())
//!     }
//! }
//!
//! let mut stage = StageHarness::<Upper>::new("{}").unwrap();
//! let out = stage.process(&[DynEvent::new("hi")]).unwrap();
//! assert_eq!(out.events[0].payload, b"HI");
//! assert_eq!(out.events[0].input_index, Some(0));
//! ```

use std::ffi::c_void;
use std::marker::PhantomData;

use crate::{
    ByteSlice, DynEvent, DynSink, DynStage, OwnedBuffer, STATUS_ERROR, STATUS_OK, STATUS_PANIC,
    STATUS_REFUSED, StageResult, TICK_FLUSH, TICK_TIMER, decode_refusals, decode_stage_result,
    encode_events,
};

/// How a call through the boundary failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallError {
    /// The plugin returned an error.
    Error(String),
    /// The plugin panicked (the host would make a new instance).
    Panic(String),
    /// A sink refused these events for good (position, why).
    Refused(Vec<(usize, String)>),
    /// The plugin answered something the host cannot read.
    Malformed(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Error(m) => write!(f, "error: {m}"),
            CallError::Panic(m) => write!(f, "panicked: {m}"),
            CallError::Refused(r) => write!(f, "refused {} event(s)", r.len()),
            CallError::Malformed(m) => write!(f, "malformed answer: {m}"),
        }
    }
}

impl std::error::Error for CallError {}

fn take(buffer: OwnedBuffer) -> Vec<u8> {
    // SAFETY: made by `OwnedBuffer::from_vec` in this same crate (the test links it).
    unsafe { buffer.into_vec() }
}

fn outcome(status: i32, bytes: Vec<u8>) -> Result<Vec<u8>, CallError> {
    let text = || String::from_utf8_lossy(&bytes).into_owned();
    match status {
        STATUS_OK => Ok(bytes),
        STATUS_ERROR => Err(CallError::Error(text())),
        STATUS_PANIC => Err(CallError::Panic(text())),
        STATUS_REFUSED => Err(decode_refusals(&bytes)
            .map_or_else(|e| CallError::Malformed(e.to_string()), CallError::Refused)),
        other => Err(CallError::Malformed(format!("unknown status {other}"))),
    }
}

fn create(config_json: &str, create: crate::CreateFn) -> Result<*mut c_void, CallError> {
    let mut instance = std::ptr::null_mut();
    let mut error = OwnedBuffer::EMPTY;
    // SAFETY: valid slots and input for the call.
    let status = unsafe {
        create(
            ByteSlice::from_slice(config_json.as_bytes()),
            &raw mut instance,
            &raw mut error,
        )
    };
    outcome(status, take(error))?;
    Ok(instance)
}

/// An instance's report, read through the library's [`crate::report`] as the host does.
fn report(instance: *mut c_void) -> Result<crate::Report, CallError> {
    let mut output = OwnedBuffer::EMPTY;
    // SAFETY: the instance is live and ours; a valid slot for the output.
    let status = unsafe { crate::report(instance, &raw mut output) };
    let bytes = outcome(status, take(output))?;
    crate::decode_report(&bytes).map_err(CallError::Malformed)
}

fn encode_input(events: &[DynEvent]) -> Vec<u8> {
    encode_events(
        events.iter().enumerate().map(|(i, e)| {
            let mut view = crate::EventRef::from(e);
            view.input_index = u32::try_from(i).ok();
            view.output = None;
            view
        }),
        events.len(),
    )
}

/// A stage instance driven through the boundary.
pub struct StageHarness<T: DynStage> {
    instance: *mut c_void,
    _stage: PhantomData<T>,
}

impl<T: DynStage> StageHarness<T> {
    /// Creates an instance from settings given as JSON.
    pub fn new(config_json: &str) -> Result<Self, CallError> {
        Ok(Self {
            instance: create(config_json, crate::stage_create::<T>)?,
            _stage: PhantomData,
        })
    }

    fn result(status: i32, output: OwnedBuffer) -> Result<StageResult, CallError> {
        let bytes = outcome(status, take(output))?;
        decode_stage_result(&bytes).map_err(|e| CallError::Malformed(e.to_string()))
    }

    /// One batch, as the host hands it over: each event's `input_index` is its position.
    pub fn process(&mut self, events: &[DynEvent]) -> Result<StageResult, CallError> {
        let input = encode_input(events);
        let mut output = OwnedBuffer::EMPTY;
        // SAFETY: the instance is live and ours; buffers valid for the call.
        let status = unsafe {
            crate::stage_call::<T>(
                self.instance,
                ByteSlice::from_slice(&input),
                &raw mut output,
            )
        };
        Self::result(status, output)
    }

    /// The stage's timer fires.
    pub fn timer(&mut self) -> Result<StageResult, CallError> {
        self.tick(TICK_TIMER)
    }

    /// The input ends (shutdown).
    pub fn flush(&mut self) -> Result<StageResult, CallError> {
        self.tick(TICK_FLUSH)
    }

    /// The stage's metrics and health, as the host reads them after each call.
    pub fn report(&mut self) -> Result<crate::Report, CallError> {
        report(self.instance)
    }

    fn tick(&mut self, reason: u32) -> Result<StageResult, CallError> {
        let mut output = OwnedBuffer::EMPTY;
        // SAFETY: as in `process`.
        let status = unsafe { crate::stage_tick::<T>(self.instance, reason, &raw mut output) };
        Self::result(status, output)
    }
}

impl<T: DynStage> Drop for StageHarness<T> {
    fn drop(&mut self) {
        // SAFETY: made by `stage_create::<T>`, destroyed once.
        unsafe { crate::destroy::<T>(self.instance) };
    }
}

/// A sink instance driven through the boundary.
pub struct SinkHarness<T: DynSink> {
    instance: *mut c_void,
    _sink: PhantomData<T>,
}

impl<T: DynSink> SinkHarness<T> {
    /// Creates an instance from settings given as JSON.
    pub fn new(config_json: &str) -> Result<Self, CallError> {
        Ok(Self {
            instance: create(config_json, crate::sink_create::<T>)?,
            _sink: PhantomData,
        })
    }

    /// Writes one batch.
    pub fn write(&mut self, events: &[DynEvent]) -> Result<(), CallError> {
        let input = encode_input(events);
        let mut output = OwnedBuffer::EMPTY;
        // SAFETY: the instance is live and ours; buffers valid for the call.
        let status = unsafe {
            crate::sink_call::<T>(
                self.instance,
                ByteSlice::from_slice(&input),
                &raw mut output,
            )
        };
        outcome(status, take(output)).map(drop)
    }

    /// The sink's metrics and health, as the host reads them after each call.
    pub fn report(&mut self) -> Result<crate::Report, CallError> {
        report(self.instance)
    }

    /// Shutdown: the sink's flush.
    pub fn flush(&mut self) -> Result<(), CallError> {
        let mut output = OwnedBuffer::EMPTY;
        // SAFETY: as in `write`.
        let status = unsafe { crate::sink_tick::<T>(self.instance, TICK_FLUSH, &raw mut output) };
        outcome(status, take(output)).map(drop)
    }
}

impl<T: DynSink> Drop for SinkHarness<T> {
    fn drop(&mut self) {
        // SAFETY: made by `sink_create::<T>`, destroyed once.
        unsafe { crate::destroy::<T>(self.instance) };
    }
}
