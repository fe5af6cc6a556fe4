//! Framing: every object carries a kind, a format byte and a CRC-32, so
//! damaged or foreign bytes are an error, never data; and the fence's
//! encoding in the fence object's metadata.

use bytes::{BufMut, Bytes, BytesMut};
use laminar_state_api::StateBackendError;

/// The first byte of every object this crate writes.
pub(crate) const MAGIC: u8 = b'L';
/// The frame format.
pub(crate) const FORMAT: u8 = 1;
/// The format of commit markers that record the prune count their gate
/// read (see `prunes`); markers of [`FORMAT`] name only their committer.
pub(crate) const MARKER_FORMAT: u8 = 2;
pub(crate) const HEADER: usize = 7;

/// What an object holds; part of its frame, so an object read as the wrong
/// kind is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Partial = b'P' as isize,
    Marker = b'M' as isize,
    Fence = b'F' as isize,
    Snapshot = b'S' as isize,
    Prunes = b'R' as isize,
}

pub(crate) fn frame(kind: Kind, body: &[u8]) -> Bytes {
    frame_as(kind, FORMAT, body)
}

/// [`frame`] in another format of `kind`.
pub(crate) fn frame_as(kind: Kind, format: u8, body: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(HEADER + body.len());
    framed.put_u8(MAGIC);
    framed.put_u8(kind as u8);
    framed.put_u8(format);
    framed.put_u32_le(crc32fast::hash(body));
    framed.put_slice(body);
    framed.freeze()
}

pub(crate) fn unframe(kind: Kind, key: &str, framed: Bytes) -> Result<Bytes, StateBackendError> {
    unframe_as(kind, &[FORMAT], key, framed).map(|(_, body)| body)
}

/// [`unframe`] accepting any of `formats`; the format found, and the body.
pub(crate) fn unframe_as(
    kind: Kind,
    formats: &[u8],
    key: &str,
    framed: Bytes,
) -> Result<(u8, Bytes), StateBackendError> {
    let bad = |why: &str| {
        StateBackendError::Serialization(format!("object {key:?} is not a valid {kind:?}: {why}"))
    };
    if framed.len() < HEADER || framed[0] != MAGIC {
        return Err(bad("no laminar-state frame"));
    }
    if framed[1] != kind as u8 {
        return Err(bad("it holds another kind of object"));
    }
    let format = framed[2];
    if !formats.contains(&format) {
        return Err(bad(&format!("unknown format {format}")));
    }
    let crc = u32::from_le_bytes([framed[3], framed[4], framed[5], framed[6]]);
    let body = framed.slice(HEADER..);
    if crc32fast::hash(&body) != crc {
        return Err(bad("it fails its checksum"));
    }
    Ok((format, body))
}

/// The metadata key (`x-amz-meta-laminar-fence`) of the fence object.
pub(crate) const FENCE_METADATA: &str = "laminar-fence";

/// The fence and the fence before it, with a CRC-32 of both: the fence
/// object's metadata (and, framed, its body, for people reading the bucket).
pub(crate) fn render_fence(value: u64, previous: u64) -> String {
    let fields = format!("{value} {previous}");
    format!("{fields} {:08x}", crc32fast::hash(fields.as_bytes()))
}

pub(crate) fn parse_fence(text: &str) -> Option<(u64, u64)> {
    let (fields, crc) = text.rsplit_once(' ')?;
    if u32::from_str_radix(crc, 16).ok()? != crc32fast::hash(fields.as_bytes()) {
        return None;
    }
    let (value, previous) = fields.split_once(' ')?;
    Some((value.parse().ok()?, previous.parse().ok()?))
}

pub(crate) fn utf8(key: &str, body: &[u8]) -> Result<String, StateBackendError> {
    String::from_utf8(body.to_vec())
        .map_err(|_| StateBackendError::Serialization(format!("object {key:?} is not UTF-8")))
}
