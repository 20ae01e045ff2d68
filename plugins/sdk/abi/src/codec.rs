//! The byte formats that cross the boundary: a batch of events, a stage's result (the
//! events plus what the stage holds and when it wants its timer), and a sink's refusals.
//! Integers are little-endian; every decoder refuses truncated, padded or inconsistent
//! buffers with a message.

use std::time::Duration;

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
    /// The named output an emitted event goes to (one the plugin declared, read in
    /// `pipeline.toml` as `inputs = ["component.NAME"]`); `None`: the main output.
    /// Always `None` on the way in.
    pub output: Option<String>,
}

impl DynEvent {
    /// An event with this payload, nothing else set.
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        Self {
            payload: payload.into(),
            ..Self::default()
        }
    }

    /// The value of a header, if present.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// A malformed buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed buffer: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

const HAS_KEY: u8 = 1;
const HAS_TIMESTAMP: u8 = 2;
const HAS_INDEX: u8 = 4;
const HAS_OUTPUT: u8 = 8;

/// A borrowed view of an event for [`encode_events`].
pub struct EventRef<'a> {
    pub input_index: Option<u32>,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    pub headers: Box<dyn Iterator<Item = (&'a str, &'a [u8])> + 'a>,
    pub timestamp_ms: Option<i64>,
    pub output: Option<&'a str>,
}

impl<'a> From<&'a DynEvent> for EventRef<'a> {
    fn from(e: &'a DynEvent) -> Self {
        EventRef {
            input_index: e.input_index,
            key: e.key.as_deref(),
            payload: &e.payload,
            headers: Box::new(e.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice()))),
            timestamp_ms: e.timestamp_ms,
            output: e.output.as_deref(),
        }
    }
}

/// Encodes events: `u32 count`, then per event `u8 flags`, `[u32 input index]`,
/// `[u32 len, key]`, `[i64 timestamp]`, `[u16 len, output name]`, `u32 len, payload`,
/// `u16 header count`, and per header `u16 len, name, u32 len, value`.
pub fn encode_events<'a, I>(events: I, count: usize) -> Vec<u8>
where
    I: IntoIterator<Item = EventRef<'a>>,
{
    let mut out = Vec::with_capacity(4 + count * 64);
    put_events(&mut out, events, count);
    out
}

fn put_events<'a, I>(out: &mut Vec<u8>, events: I, count: usize)
where
    I: IntoIterator<Item = EventRef<'a>>,
{
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
        if event.output.is_some() {
            flags |= HAS_OUTPUT;
        }
        out.push(flags);
        if let Some(index) = event.input_index {
            out.extend_from_slice(&index.to_le_bytes());
        }
        if let Some(key) = event.key {
            put_bytes32(out, key);
        }
        if let Some(ts) = event.timestamp_ms {
            out.extend_from_slice(&ts.to_le_bytes());
        }
        if let Some(output) = event.output {
            put_bytes16(out, output.as_bytes());
        }
        put_bytes32(out, event.payload);
        let headers: Vec<_> = event.headers.take(usize::from(u16::MAX)).collect();
        out.extend_from_slice(
            &u16::try_from(headers.len())
                .unwrap_or(u16::MAX)
                .to_le_bytes(),
        );
        for (name, value) in headers {
            put_bytes16(out, name.as_bytes());
            put_bytes32(out, value);
        }
    }
}

fn put_bytes16(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = bytes.len().min(usize::from(u16::MAX));
    out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_le_bytes());
    out.extend_from_slice(&bytes[..len]);
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
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn bytes16(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }
    fn bytes32(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn text16(&mut self, what: &str) -> Result<String, DecodeError> {
        std::str::from_utf8(self.bytes16()?)
            .map(str::to_owned)
            .map_err(|_| DecodeError(format!("{what} is not UTF-8")))
    }
    fn end(&self) -> Result<(), DecodeError> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(DecodeError(format!(
                "{} trailing bytes",
                self.bytes.len() - self.at
            )))
        }
    }
}

/// Decodes a buffer written by [`encode_events`].
pub fn decode_events(bytes: &[u8]) -> Result<Vec<DynEvent>, DecodeError> {
    let mut r = Reader { bytes, at: 0 };
    let events = read_events(&mut r)?;
    r.end()?;
    Ok(events)
}

fn read_events(r: &mut Reader<'_>) -> Result<Vec<DynEvent>, DecodeError> {
    let count = r.u32()? as usize;
    // Every event takes at least 7 bytes: a count larger than that is a lie.
    if count > (r.bytes.len() - r.at) / 7 + 1 {
        return Err(DecodeError(format!(
            "{count} events cannot fit in {} bytes",
            r.bytes.len() - r.at
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
            Some(i64::from_le_bytes(r.u64()?.to_le_bytes()))
        } else {
            None
        };
        let output = if flags & HAS_OUTPUT != 0 {
            Some(r.text16("an output name")?)
        } else {
            None
        };
        let payload = r.bytes32()?.to_vec();
        let header_count = r.u16()?;
        let mut headers = Vec::with_capacity(usize::from(header_count));
        for _ in 0..header_count {
            let name = r.text16("a header name")?;
            headers.push((name, r.bytes32()?.to_vec()));
        }
        events.push(DynEvent {
            input_index,
            key,
            payload,
            headers,
            timestamp_ms,
            output,
        });
    }
    Ok(events)
}

/// What a stage call returns: the events it emits, whether it still holds input events
/// for later (their sources are acknowledged only once it holds none), and when it wants
/// its timer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StageResult {
    pub events: Vec<DynEvent>,
    pub holding: bool,
    pub timer: Option<Duration>,
}

const HOLDING: u8 = 1;
const TIMER: u8 = 2;

/// Encodes a [`StageResult`]: `u8 flags`, `[u64 timer in ms]`, then the events as
/// [`encode_events`] writes them.
pub fn encode_stage_result(result: &StageResult) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + result.events.len() * 64);
    let mut flags = 0;
    if result.holding {
        flags |= HOLDING;
    }
    if result.timer.is_some() {
        flags |= TIMER;
    }
    out.push(flags);
    if let Some(timer) = result.timer {
        let ms = u64::try_from(timer.as_millis()).unwrap_or(u64::MAX);
        out.extend_from_slice(&ms.to_le_bytes());
    }
    put_events(
        &mut out,
        result.events.iter().map(Into::into),
        result.events.len(),
    );
    out
}

/// Decodes a buffer written by [`encode_stage_result`].
pub fn decode_stage_result(bytes: &[u8]) -> Result<StageResult, DecodeError> {
    let mut r = Reader { bytes, at: 0 };
    let flags = r.u8()?;
    if flags & !(HOLDING | TIMER) != 0 {
        return Err(DecodeError(format!("unknown result flags {flags:#x}")));
    }
    let timer = if flags & TIMER != 0 {
        Some(Duration::from_millis(r.u64()?))
    } else {
        None
    };
    let events = read_events(&mut r)?;
    r.end()?;
    Ok(StageResult {
        events,
        holding: flags & HOLDING != 0,
        timer,
    })
}

/// Encodes a sink's refusals (events it can never write, by position, each with why):
/// `u32 count`, then per refusal `u32 position, u32 len, reason`.
pub fn encode_refusals(refused: &[(usize, String)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + refused.len() * 32);
    out.extend_from_slice(
        &u32::try_from(refused.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    for (position, why) in refused {
        out.extend_from_slice(&u32::try_from(*position).unwrap_or(u32::MAX).to_le_bytes());
        put_bytes32(&mut out, why.as_bytes());
    }
    out
}

/// Decodes a buffer written by [`encode_refusals`].
pub fn decode_refusals(bytes: &[u8]) -> Result<Vec<(usize, String)>, DecodeError> {
    let mut r = Reader { bytes, at: 0 };
    let count = r.u32()? as usize;
    if count > bytes.len() / 8 {
        return Err(DecodeError(format!(
            "{count} refusals cannot fit in {} bytes",
            bytes.len()
        )));
    }
    let mut refused = Vec::with_capacity(count);
    for _ in 0..count {
        let position = r.u32()? as usize;
        let why = String::from_utf8_lossy(r.bytes32()?).into_owned();
        refused.push((position, why));
    }
    r.end()?;
    Ok(refused)
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
                timestamp_ms: Some(-1_700_000_000_000),
                output: Some("rejected".into()),
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
    fn stage_results_round_trip_and_refuse_damage() {
        for result in [
            StageResult::default(),
            StageResult {
                events: sample(),
                holding: true,
                timer: Some(Duration::from_millis(250)),
            },
        ] {
            let bytes = encode_stage_result(&result);
            assert_eq!(decode_stage_result(&bytes).unwrap(), result);
            for cut in 0..bytes.len() {
                assert!(decode_stage_result(&bytes[..cut]).is_err(), "cut at {cut}");
            }
        }
        assert!(decode_stage_result(&[0x80, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn refusals_round_trip() {
        let refused = vec![(3, "too large".to_owned()), (7, String::new())];
        let bytes = encode_refusals(&refused);
        assert_eq!(decode_refusals(&bytes).unwrap(), refused);
        for cut in 0..bytes.len() {
            assert!(decode_refusals(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
