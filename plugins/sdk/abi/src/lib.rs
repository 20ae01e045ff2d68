//! The boundary between the salesflow host and stage plugins loaded at run time.
//!
//! A run-time plugin is a shared library (`cdylib`) that exports one static,
//! [`SYMBOL`] (`SALESFLOW_PLUGIN`), a [`PluginDeclaration`]. The host reads its first two
//! fields — [`ABI_MAGIC`] and the ABI version — before it calls anything, and refuses a
//! library whose version differs from its own, naming both. Those two fields keep their
//! place in every future version; everything after them may change with the version.
//!
//! Calls move whole batches: one call per batch, never per event. A batch crosses as one
//! byte buffer in the format of [`encode_events`] / [`decode_events`]. Every exported
//! function catches panics and returns [`STATUS_PANIC`] with the message, so a panic never
//! unwinds into the host. Buffers are freed by the side that allocated them.
//!
//! Writing a plugin: implement [`DynStage`] and export it with [`export_stage!`]:
//!
//! ```
//! use salesflow_plugin_abi::{DynEvent, DynStage, export_stage};
//!
//! /// Drops events whose payload is empty.
//! struct DropEmpty;
//!
//! impl DynStage for DropEmpty {
//!     fn new(_config_json: &str) -> Result<Self, String> {
//!         Ok(DropEmpty)
//!     }
//!     fn process(&mut self, events: Vec<DynEvent>) -> Result<Vec<DynEvent>, String> {
//!         Ok(events.into_iter().filter(|e| !e.payload.is_empty()).collect())
//!     }
//! }
//!
//! export_stage!(DropEmpty, "drop-empty", "Drops events with an empty payload");
//! # fn main() {}
//! ```

#![allow(unsafe_code)] // This crate is the FFI boundary; every unsafe block says why it holds.

use std::ffi::{c_char, c_void};

/// "SALESFLW" in ASCII: marks a salesflow plugin declaration.
pub const ABI_MAGIC: u64 = u64::from_be_bytes(*b"SALESFLW");

/// The version of this ABI. Any change to [`PluginDeclaration`] after its first two fields,
/// to the function signatures, or to the batch encoding, increments it.
pub const ABI_VERSION: u32 = 1;

/// The name of the exported static, NUL-terminated.
pub const SYMBOL: &[u8] = b"SALESFLOW_PLUGIN\0";

/// The call succeeded.
pub const STATUS_OK: i32 = 0;
/// The plugin reported an error; the buffer holds its message (UTF-8).
pub const STATUS_ERROR: i32 = 1;
/// The plugin panicked; the buffer holds the panic message (UTF-8).
pub const STATUS_PANIC: i32 = 2;

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
/// [`PluginDeclaration::free_buffer`] (each side frees with its own allocator).
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

/// Creates a stage instance from its settings, as JSON. On success writes the instance to
/// `instance`; on failure writes a message to `error`.
pub type CreateFn = unsafe extern "C" fn(
    config_json: ByteSlice,
    instance: *mut *mut c_void,
    error: *mut OwnedBuffer,
) -> i32;
/// Processes one encoded batch; writes the encoded output batch (or a message) to `output`.
pub type ProcessFn =
    unsafe extern "C" fn(instance: *mut c_void, input: ByteSlice, output: *mut OwnedBuffer) -> i32;
/// Drops an instance.
pub type DestroyFn = unsafe extern "C" fn(instance: *mut c_void);
/// Frees a buffer the plugin handed out.
pub type FreeBufferFn = unsafe extern "C" fn(buffer: OwnedBuffer);

/// What a plugin library exports as `SALESFLOW_PLUGIN`.
#[repr(C)]
pub struct PluginDeclaration {
    /// Always [`ABI_MAGIC`]. Stable position.
    pub magic: u64,
    /// The [`ABI_VERSION`] the plugin was built against. Stable position.
    pub abi_version: u32,
    /// The plugin's type name (`type = "..."` in pipeline.toml), NUL-terminated.
    pub name: *const c_char,
    /// One line saying what the stage does, NUL-terminated.
    pub summary: *const c_char,
    pub create: CreateFn,
    pub process: ProcessFn,
    pub destroy: DestroyFn,
    pub free_buffer: FreeBufferFn,
}

// SAFETY: the declaration is immutable static data (pointers to static strings and
// functions); sharing it between threads is sound.
unsafe impl Sync for PluginDeclaration {}

/// One event as it crosses the boundary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DynEvent {
    /// The position of the input event this one came from, when the plugin passes an event
    /// through or derives it from one; the host uses it to keep the event's origin (topic,
    /// partition, offset). `None` for events the plugin makes up.
    pub input_index: Option<u32>,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub timestamp_ms: Option<i64>,
}

/// A malformed batch buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed batch buffer: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

const HAS_KEY: u8 = 1;
const HAS_TIMESTAMP: u8 = 2;
const HAS_INDEX: u8 = 4;

/// Encodes events: `u32 count`, then per event `u8 flags`, `[u32 input index]`,
/// `[u32 len, key]`, `[i64 timestamp]`, `u32 len, payload`, `u16 header count`, and per
/// header `u16 len, name, u32 len, value`; integers little-endian.
pub fn encode_events<'a, I>(events: I, count: usize) -> Vec<u8>
where
    I: IntoIterator<Item = EventRef<'a>>,
{
    let mut out = Vec::with_capacity(4 + count * 64);
    out.extend_from_slice(&u32::try_from(count).unwrap_or(u32::MAX).to_le_bytes());
    for event in events {
        let mut flags = 0;
        if event.key.is_some() {
            flags |= HAS_KEY;
        }
        if event.timestamp_ms.is_some() {
            flags |= HAS_TIMESTAMP;
        }
        if event.input_index.is_some() {
            flags |= HAS_INDEX;
        }
        out.push(flags);
        if let Some(index) = event.input_index {
            out.extend_from_slice(&index.to_le_bytes());
        }
        if let Some(key) = event.key {
            put_bytes32(&mut out, key);
        }
        if let Some(ts) = event.timestamp_ms {
            out.extend_from_slice(&ts.to_le_bytes());
        }
        put_bytes32(&mut out, event.payload);
        let headers: Vec<_> = event.headers.collect();
        out.extend_from_slice(
            &u16::try_from(headers.len())
                .unwrap_or(u16::MAX)
                .to_le_bytes(),
        );
        for (name, value) in headers.into_iter().take(usize::from(u16::MAX)) {
            let name = &name.as_bytes()[..name.len().min(usize::from(u16::MAX))];
            out.extend_from_slice(&u16::try_from(name.len()).unwrap_or(u16::MAX).to_le_bytes());
            out.extend_from_slice(name);
            put_bytes32(&mut out, value);
        }
    }
    out
}

/// A borrowed view of an event for [`encode_events`].
pub struct EventRef<'a> {
    pub input_index: Option<u32>,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    pub headers: Box<dyn Iterator<Item = (&'a str, &'a [u8])> + 'a>,
    pub timestamp_ms: Option<i64>,
}

impl<'a> From<&'a DynEvent> for EventRef<'a> {
    fn from(e: &'a DynEvent) -> Self {
        EventRef {
            input_index: e.input_index,
            key: e.key.as_deref(),
            payload: &e.payload,
            headers: Box::new(e.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice()))),
            timestamp_ms: e.timestamp_ms,
        }
    }
}

fn put_bytes32(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = bytes.len().min(u32::MAX as usize);
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&bytes[..len]);
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| DecodeError(format!("needs {n} bytes at offset {}", self.at)))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(i64::from_le_bytes(a))
    }
    fn bytes32(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// Decodes a buffer written by [`encode_events`].
pub fn decode_events(bytes: &[u8]) -> Result<Vec<DynEvent>, DecodeError> {
    let mut r = Reader { bytes, at: 0 };
    let count = r.u32()? as usize;
    // Every event takes at least 7 bytes: a count larger than that is a lie.
    if count > bytes.len() / 7 + 1 {
        return Err(DecodeError(format!(
            "{count} events cannot fit in {} bytes",
            bytes.len()
        )));
    }
    let mut events = Vec::with_capacity(count);
    for _ in 0..count {
        let flags = r.u8()?;
        let input_index = if flags & HAS_INDEX != 0 {
            Some(r.u32()?)
        } else {
            None
        };
        let key = if flags & HAS_KEY != 0 {
            Some(r.bytes32()?.to_vec())
        } else {
            None
        };
        let timestamp_ms = if flags & HAS_TIMESTAMP != 0 {
            Some(r.i64()?)
        } else {
            None
        };
        let payload = r.bytes32()?.to_vec();
        let header_count = r.u16()?;
        let mut headers = Vec::with_capacity(usize::from(header_count));
        for _ in 0..header_count {
            let name_len = usize::from(r.u16()?);
            let name = std::str::from_utf8(r.take(name_len)?)
                .map_err(|_| DecodeError("header name is not UTF-8".into()))?
                .to_owned();
            headers.push((name, r.bytes32()?.to_vec()));
        }
        events.push(DynEvent {
            input_index,
            key,
            payload,
            headers,
            timestamp_ms,
        });
    }
    if r.at != bytes.len() {
        return Err(DecodeError(format!(
            "{} trailing bytes",
            bytes.len() - r.at
        )));
    }
    Ok(events)
}

/// A stage implemented in a plugin library. One instance serves one lane of the host: its
/// calls never overlap.
pub trait DynStage: Sized + Send + 'static {
    /// Builds the stage from its settings in pipeline.toml (the component's table minus
    /// `type` and `inputs`), given as JSON.
    fn new(config_json: &str) -> Result<Self, String>;
    /// Transforms one batch. Events passed through keep their `input_index`.
    fn process(&mut self, events: Vec<DynEvent>) -> Result<Vec<DynEvent>, String>;
}

/// Runs `f`, turning a panic into [`STATUS_PANIC`] with its message in `out`.
///
/// # Safety
/// `out` must be null or point to a writable `OwnedBuffer` slot.
#[doc(hidden)]
pub unsafe fn guard(out: *mut OwnedBuffer, f: impl FnOnce() -> Result<Vec<u8>, String>) -> i32 {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    let (status, bytes) = match result {
        Ok(Ok(bytes)) => (STATUS_OK, bytes),
        Ok(Err(message)) => (STATUS_ERROR, message.into_bytes()),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            (STATUS_PANIC, message.into_bytes())
        }
    };
    if !out.is_null() {
        // SAFETY: per the function contract.
        unsafe { out.write(OwnedBuffer::from_vec(bytes)) };
    }
    status
}

/// Exports a [`DynStage`] as this library's `SALESFLOW_PLUGIN`.
#[macro_export]
macro_rules! export_stage {
    ($stage:ty, $name:literal, $summary:literal) => {
        $crate::export_stage!(@abi $crate::ABI_VERSION, $stage, $name, $summary);
    };
    // Declares another ABI version: only for tests of the host's version check.
    (@abi $version:expr, $stage:ty, $name:literal, $summary:literal) => {
        mod __salesflow_plugin_export {
            use super::*;
            use std::ffi::c_void;
            use $crate::{ByteSlice, DynStage, OwnedBuffer};

            unsafe extern "C" fn create(
                config: ByteSlice,
                instance: *mut *mut c_void,
                error: *mut OwnedBuffer,
            ) -> i32 {
                // SAFETY: the host passes a writable slot for the message.
                unsafe { $crate::guard(error, || {
                    // SAFETY: the host lends the config bytes for this call.
                    let bytes = unsafe { config.as_slice() };
                    let json = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
                    let stage = <$stage as DynStage>::new(json)?;
                    let boxed: Box<$stage> = Box::new(stage);
                    // SAFETY: the host passes a valid slot for the instance pointer.
                    unsafe { instance.write(Box::into_raw(boxed).cast::<c_void>()) };
                    Ok(Vec::new())
                }) }
            }

            unsafe extern "C" fn process(
                instance: *mut c_void,
                input: ByteSlice,
                output: *mut OwnedBuffer,
            ) -> i32 {
                // SAFETY: the host passes a writable slot for the output.
                unsafe { $crate::guard(output, || {
                    // SAFETY: `instance` comes from `create` and is used by one lane at a time.
                    let stage = unsafe { &mut *instance.cast::<$stage>() };
                    // SAFETY: the host lends the input bytes for this call.
                    let events = $crate::decode_events(unsafe { input.as_slice() })
                        .map_err(|e| e.to_string())?;
                    let out = stage.process(events)?;
                    Ok($crate::encode_events(out.iter().map(Into::into), out.len()))
                }) }
            }

            unsafe extern "C" fn destroy(instance: *mut c_void) {
                if !instance.is_null() {
                    let _ = std::panic::catch_unwind(|| {
                        // SAFETY: `instance` comes from `create` and is destroyed once.
                        drop(unsafe { Box::from_raw(instance.cast::<$stage>()) });
                    });
                }
            }

            unsafe extern "C" fn free_buffer(buffer: OwnedBuffer) {
                // SAFETY: every buffer handed out was made by OwnedBuffer::from_vec here.
                drop(unsafe { buffer.into_vec() });
            }

            #[unsafe(no_mangle)]
            pub static SALESFLOW_PLUGIN: $crate::PluginDeclaration = $crate::PluginDeclaration {
                magic: $crate::ABI_MAGIC,
                abi_version: $version,
                name: concat!($name, "\0").as_ptr().cast(),
                summary: concat!($summary, "\0").as_ptr().cast(),
                create,
                process,
                destroy,
                free_buffer,
            };
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<DynEvent> {
        vec![
            DynEvent {
                input_index: Some(0),
                key: Some(b"cart-1".to_vec()),
                payload: br#"{"a":1}"#.to_vec(),
                headers: vec![("h".into(), b"v".to_vec())],
                timestamp_ms: Some(1_700_000_000_000),
            },
            DynEvent::default(),
        ]
    }

    #[test]
    fn events_round_trip() {
        let events = sample();
        let bytes = encode_events(events.iter().map(Into::into), events.len());
        assert_eq!(decode_events(&bytes).unwrap(), events);
    }

    #[test]
    fn truncated_and_padded_buffers_are_refused() {
        let events = sample();
        let bytes = encode_events(events.iter().map(Into::into), events.len());
        for cut in 0..bytes.len() {
            assert!(decode_events(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut padded = bytes.clone();
        padded.push(0);
        assert!(decode_events(&padded).is_err());
        assert!(decode_events(&[0xff, 0xff, 0xff, 0x7f]).is_err());
    }

    #[test]
    fn guard_turns_a_panic_into_a_status() {
        let mut out = OwnedBuffer::EMPTY;
        // SAFETY: a valid slot.
        let status = unsafe { guard(&raw mut out, || panic!("boom")) };
        assert_eq!(status, STATUS_PANIC);
        // SAFETY: made by from_vec in this library.
        assert_eq!(unsafe { out.into_vec() }, b"boom");
    }
}
