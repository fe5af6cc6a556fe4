//! The compression layer: LZ4 (lz4_flex, pure Rust) behind a header.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use laminar_state_api::{StateBackend, StateBackendError};

/// The first four bytes of a compression frame.
pub const COMPRESSION_MAGIC: [u8; 4] = [0xFF, 0x00, b'L', b'z'];

/// The length of a compression frame's header: the most the layer adds to
/// a payload.
pub const COMPRESSION_HEADER_LEN: usize = 17;

const STORED: u8 = 0;
const LZ4: u8 = 1;

/// LZ4 cannot expand a body by more than about 255 times, so a header that
/// claims more is damaged (and is refused before any allocation).
const MAX_LZ4_RATIO: u64 = 256;

/// A [`StateBackend`] that compresses partials with LZ4 (lz4_flex, pure
/// Rust) on their way into the backend inside, behind a self-describing
/// header, and decompresses them on their way out.
///
/// # The stored format
///
/// A partial is stored either **as is** (the caller's bytes, unchanged) or
/// as a **frame**:
///
/// | bytes | field |
/// |---|---|
/// | 0..4 | [`COMPRESSION_MAGIC`]: `FF 00 4C 7A` (`0xFF`, `0x00`, `L`, `z`) |
/// | 4 | algorithm: `0` stored (the body is the payload), `1` LZ4 block |
/// | 5..13 | the payload's length, `u64` little-endian |
/// | 13..17 | CRC-32 (IEEE) of the payload, little-endian |
/// | 17.. | the body |
///
/// The rule that tells them apart: **a stored partial is a frame if and only
/// if it starts with the four magic bytes.** So:
///
/// - a payload is compressed when it is at least `min_size` bytes and its
///   frame is smaller than itself; otherwise it is stored as is
///   (incompressible data costs nothing), unless it starts with the magic
///   bytes itself, in which case it is stored in a frame of algorithm `0`
///   (17 bytes more) so it cannot be mistaken for one;
/// - a partial written **without** the layer reads through it unchanged,
///   unless its first four bytes are `FF 00 4C 7A`. Such a payload is read
///   as a frame, and fails with a `Serialization` error (its CRC-32 and
///   length will not match) rather than being returned altered. `0xFF`
///   starts no UTF-8 text, JSON or protobuf message, and a length-prefixed
///   encoding (bincode) would need a length of about 2^30 or more, so
///   plain payloads of the usual formats never start so; a store written
///   before the layer with payloads of other formats can be checked for the
///   prefix before switching the layer on;
/// - a damaged frame (a flipped bit anywhere) fails its length or CRC-32
///   check and is a `Serialization` error, never wrong bytes.
///
/// # The payload limit
///
/// The backend's limit applies to the payload the caller passed, before
/// compression: a payload over it is refused with `Serialization` even if
/// it would compress below it, so an engine's partials do not fit or fail
/// by how well they happen to compress. The stored bytes can exceed the
/// payload by at most [`COMPRESSION_HEADER_LEN`] bytes, so the backend
/// inside should accept `max_payload_len + COMPRESSION_HEADER_LEN`.
pub struct CompressionLayer<B: ?Sized = dyn StateBackend> {
    inner: Arc<B>,
    max_payload_len: Option<usize>,
    min_size: usize,
}

impl<B: ?Sized> CompressionLayer<B> {
    /// Payloads shorter than this are not worth compressing (default 64).
    pub const DEFAULT_MIN_SIZE: usize = 64;

    /// Compress the partials of `inner`. `max_payload_len` is the largest
    /// payload the caller may pass (the backend's limit; `None`: no check
    /// here, the backend inside checks what is stored).
    pub fn new(inner: Arc<B>, max_payload_len: Option<usize>) -> Self {
        Self {
            inner,
            max_payload_len,
            min_size: Self::DEFAULT_MIN_SIZE,
        }
    }

    /// Store payloads shorter than `min_size` as is, uncompressed.
    pub fn with_min_size(mut self, min_size: usize) -> Self {
        self.min_size = min_size;
        self
    }

    /// The backend inside.
    pub fn inner(&self) -> &Arc<B> {
        &self.inner
    }
}

impl<B: ?Sized> std::fmt::Debug for CompressionLayer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompressionLayer")
            .field("max_payload_len", &self.max_payload_len)
            .field("min_size", &self.min_size)
            .finish_non_exhaustive()
    }
}

fn header(algorithm: u8, payload: &[u8], out: &mut [u8]) {
    out[..4].copy_from_slice(&COMPRESSION_MAGIC);
    out[4] = algorithm;
    out[5..13].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    out[13..17].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
}

/// The bytes to store for `payload`.
pub(crate) fn encode(payload: &Bytes, min_size: usize) -> Bytes {
    if payload.len() >= min_size {
        let bound = lz4_flex::block::get_maximum_output_size(payload.len());
        let mut frame = vec![0u8; COMPRESSION_HEADER_LEN + bound];
        if let Ok(written) =
            lz4_flex::block::compress_into(payload, &mut frame[COMPRESSION_HEADER_LEN..])
            && COMPRESSION_HEADER_LEN + written < payload.len()
        {
            frame.truncate(COMPRESSION_HEADER_LEN + written);
            header(LZ4, payload, &mut frame);
            return Bytes::from(frame);
        }
    }
    if payload.starts_with(&COMPRESSION_MAGIC) {
        let mut frame = vec![0u8; COMPRESSION_HEADER_LEN + payload.len()];
        header(STORED, payload, &mut frame);
        frame[COMPRESSION_HEADER_LEN..].copy_from_slice(payload);
        return Bytes::from(frame);
    }
    payload.clone()
}

/// The payload stored as `stored` for `(vnode, epoch)`.
pub(crate) fn decode(stored: Bytes, vnode: u32, epoch: u64) -> Result<Bytes, StateBackendError> {
    if !stored.starts_with(&COMPRESSION_MAGIC) {
        return Ok(stored);
    }
    let damaged = |why: String| {
        StateBackendError::Serialization(format!(
            "the partial of vnode {vnode} epoch {epoch} starts with the compression magic but {why}"
        ))
    };
    if stored.len() < COMPRESSION_HEADER_LEN {
        return Err(damaged(format!(
            "is {} bytes, shorter than the {COMPRESSION_HEADER_LEN}-byte header",
            stored.len()
        )));
    }
    let algorithm = stored[4];
    let len = u64::from_le_bytes(stored[5..13].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(stored[13..17].try_into().expect("4 bytes"));
    let body = stored.slice(COMPRESSION_HEADER_LEN..);
    let payload = match algorithm {
        STORED if body.len() as u64 == len => body,
        STORED => {
            return Err(damaged(format!(
                "its header says {len} bytes and its body holds {}",
                body.len()
            )));
        }
        LZ4 => {
            if len > (body.len() as u64).saturating_mul(MAX_LZ4_RATIO) {
                return Err(damaged(format!(
                    "its header claims {len} bytes from a {}-byte LZ4 body",
                    body.len()
                )));
            }
            let mut out = vec![0u8; len as usize];
            match lz4_flex::block::decompress_into(&body, &mut out) {
                Ok(n) if n as u64 == len => Bytes::from(out),
                Ok(n) => {
                    return Err(damaged(format!(
                        "its LZ4 body decodes to {n} bytes, not the {len} of its header"
                    )));
                }
                Err(e) => return Err(damaged(format!("its LZ4 body does not decode: {e}"))),
            }
        }
        other => return Err(damaged(format!("names unknown algorithm {other}"))),
    };
    if crc32fast::hash(&payload) != crc {
        return Err(damaged("fails its CRC-32".to_owned()));
    }
    Ok(payload)
}

#[async_trait]
impl<B: StateBackend + ?Sized> laminar_state_api::ForwardingBackend for CompressionLayer<B> {
    type Inner = B;

    fn inner(&self) -> &Self::Inner {
        &self.inner
    }

    async fn write_partial(
        &self,
        vnode: u32,
        epoch: u64,
        assignment_version: u64,
        bytes: Bytes,
    ) -> Result<(), StateBackendError> {
        crate::check_caller_payload(vnode, bytes.len(), self.max_payload_len, "compression")?;
        let stored = encode(&bytes, self.min_size);
        self.inner
            .write_partial(vnode, epoch, assignment_version, stored)
            .await
    }

    async fn read_partial(
        &self,
        vnode: u32,
        epoch: u64,
    ) -> Result<Option<Bytes>, StateBackendError> {
        let stored = self.inner.read_partial(vnode, epoch).await?;
        stored.map(|s| decode(s, vnode, epoch)).transpose()
    }

    async fn read_partials(
        &self,
        epoch: u64,
        vnodes: &[u32],
    ) -> Result<Vec<Option<Bytes>>, StateBackendError> {
        let stored = self.inner.read_partials(epoch, vnodes).await?;
        crate::open_batch(epoch, vnodes, stored, |vnode, s| decode(s, vnode, epoch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(n: usize) -> Bytes {
        let mut out = Vec::new();
        for i in 0..n {
            let key = format!("user:{}:clicks", 100_000 + (i * 7919) % 900_000);
            out.extend_from_slice(&(key.len() as u64).to_le_bytes());
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(&((i * i) % 1000).to_le_bytes());
        }
        Bytes::from(out)
    }

    #[test]
    fn compressible_payloads_shrink_and_round_trip() {
        let payload = counters(500);
        let stored = encode(&payload, 64);
        assert!(stored.starts_with(&COMPRESSION_MAGIC));
        assert_eq!(stored[4], LZ4);
        assert!(stored.len() * 2 < payload.len(), "{}", stored.len());
        assert_eq!(decode(stored, 0, 0).unwrap(), payload);
    }

    #[test]
    fn incompressible_and_small_payloads_are_stored_as_is() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let random: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for payload in [
            Bytes::from(random),
            Bytes::from_static(b"tiny"),
            Bytes::new(),
        ] {
            let stored = encode(&payload, 64);
            assert_eq!(stored, payload, "stored as is");
            assert_eq!(decode(stored, 0, 0).unwrap(), payload);
        }
    }

    #[test]
    fn a_payload_that_starts_with_the_magic_is_framed() {
        for tail in [&b""[..], b"x", &[0u8; 100]] {
            let payload = Bytes::from([&COMPRESSION_MAGIC[..], tail].concat());
            let stored = encode(&payload, 64);
            assert!(stored.starts_with(&COMPRESSION_MAGIC));
            assert_ne!(stored, payload);
            assert_eq!(decode(stored, 0, 0).unwrap(), payload);
        }
    }

    #[test]
    fn a_flipped_bit_in_a_frame_is_an_error_never_wrong_bytes() {
        let payload = counters(40);
        let stored = encode(&payload, 64).to_vec();
        for bit in 0..stored.len() * 8 {
            let mut damaged = stored.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            match decode(Bytes::from(damaged), 1, 2) {
                // A flipped magic bit makes it a "plain" payload: it comes
                // back as the stored bytes, never as a wrong payload.
                Ok(bytes) if bit < 32 => assert_ne!(bytes, payload),
                // A flip that changes nothing (a match offset moved onto
                // identical bytes) decodes to the payload itself.
                Ok(bytes) => assert_eq!(bytes, payload, "bit {bit}: wrong bytes"),
                Err(StateBackendError::Serialization(message)) => {
                    assert!(message.contains("vnode 1 epoch 2"), "{message}")
                }
                Err(other) => panic!("bit {bit}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_lying_length_is_refused_before_allocating() {
        let mut stored = encode(&counters(40), 64).to_vec();
        stored[5..13].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            decode(Bytes::from(stored), 0, 0),
            Err(StateBackendError::Serialization(m)) if m.contains("claims")
        ));
    }
}
