//! Framing: `[format: u8][crc32 of the body: u32 LE][body]`, so damage is
//! reported, never returned as data.

use laminar_state_api::StateBackendError;

pub(crate) const FRAME_FORMAT: u8 = 1;
pub(crate) const FRAME_HEADER: usize = 5;

pub(crate) fn frame_into(slot: &mut [u8], body: &[u8]) {
    slot[0] = FRAME_FORMAT;
    slot[1..FRAME_HEADER].copy_from_slice(&crc32fast::hash(body).to_le_bytes());
    slot[FRAME_HEADER..].copy_from_slice(body);
}

pub(crate) fn unframe<'a>(
    frame: &'a [u8],
    what: &impl Fn() -> String,
) -> Result<&'a [u8], StateBackendError> {
    let damaged =
        |why: &str| StateBackendError::Serialization(format!("{} is damaged: {why}", what()));
    if frame.len() < FRAME_HEADER {
        return Err(damaged("shorter than its header"));
    }
    if frame[0] != FRAME_FORMAT {
        return Err(damaged(&format!("unknown frame format {}", frame[0])));
    }
    let body = &frame[FRAME_HEADER..];
    let stored = u32::from_le_bytes([frame[1], frame[2], frame[3], frame[4]]);
    if crc32fast::hash(body) != stored {
        return Err(damaged("checksum mismatch"));
    }
    Ok(body)
}
