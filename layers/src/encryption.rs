//! The encryption layer: XChaCha20-Poly1305 (RustCrypto) at rest.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chacha20poly1305::aead::common::Generate;
use chacha20poly1305::aead::inout::InOutBuf;
use chacha20poly1305::{AeadInOut, KeyInit, Tag, XChaCha20Poly1305, XNonce};
use laminar_state_api::{StateBackend, StateBackendError};
use zeroize::Zeroizing;

/// The first four bytes of an encrypted partial.
pub const ENCRYPTION_MAGIC: [u8; 4] = [0xFF, 0x00, b'L', b'e'];

const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 4 + 1 + 4 + NONCE_LEN;

/// The bytes encryption adds to a payload: the 33-byte header and the
/// 16-byte tag. The backend inside should accept
/// `max_payload_len + ENCRYPTION_OVERHEAD`.
pub const ENCRYPTION_OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// Names a key in the header of each partial it encrypted.
pub type KeyId = u32;

/// A 256-bit key. Never shown by `Debug`, zeroed when dropped.
#[derive(Clone)]
pub struct EncryptionKey(Zeroizing<[u8; 32]>);

impl EncryptionKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// A key from 64 hexadecimal digits (surrounding whitespace ignored).
    /// The error never repeats the input.
    pub fn from_hex(hex: &str) -> Result<Self, String> {
        let hex = hex.trim().as_bytes();
        if hex.len() != 64 {
            return Err(format!(
                "an encryption key is 64 hexadecimal digits (32 bytes), not {} characters",
                hex.len()
            ));
        }
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        };
        let mut key = Zeroizing::new([0u8; 32]);
        for (i, pair) in hex.chunks(2).enumerate() {
            match (digit(pair[0]), digit(pair[1])) {
                (Some(high), Some(low)) => key[i] = high << 4 | low,
                _ => return Err("an encryption key holds a non-hexadecimal character".into()),
            }
        }
        Ok(Self(key))
    }

    /// A fresh random key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, StateBackendError> {
        let bytes = <[u8; 32]>::try_generate().map_err(|e| {
            StateBackendError::Io(format!("the operating system's CSPRNG failed: {e}"))
        })?;
        Ok(Self::from_bytes(bytes))
    }
}

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EncryptionKey(<redacted>)")
    }
}

/// The keys an [`EncryptionLayer`] uses: one active key that encrypts
/// every write, and any number of older ones that still decrypt what they
/// encrypted. `Debug` shows the key ids only.
#[derive(Clone)]
pub struct Keyring {
    active: KeyId,
    ciphers: BTreeMap<KeyId, XChaCha20Poly1305>,
}

impl Keyring {
    /// A keyring that encrypts with `key`, named `id`.
    pub fn new(id: KeyId, key: EncryptionKey) -> Self {
        let mut ciphers = BTreeMap::new();
        ciphers.insert(id, XChaCha20Poly1305::new(&(*key.0).into()));
        Self {
            active: id,
            ciphers,
        }
    }

    /// Also decrypt partials encrypted with `key`, named `id` (a key
    /// rotated out). The active key stays; an id already present is
    /// replaced, unless it is the active one.
    pub fn with_key(mut self, id: KeyId, key: EncryptionKey) -> Self {
        if id != self.active {
            self.ciphers
                .insert(id, XChaCha20Poly1305::new(&(*key.0).into()));
        }
        self
    }

    /// The id of the key new partials are encrypted with.
    pub fn active(&self) -> KeyId {
        self.active
    }

    /// The ids of every key, active or not.
    pub fn ids(&self) -> Vec<KeyId> {
        self.ciphers.keys().copied().collect()
    }
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("active", &self.active)
            .field("ids", &self.ids())
            .finish()
    }
}

fn associated_data(header: &[u8], vnode: u32, epoch: u64) -> [u8; 9 + 4 + 8] {
    let mut ad = [0u8; 21];
    ad[..9].copy_from_slice(&header[..9]);
    ad[9..13].copy_from_slice(&vnode.to_le_bytes());
    ad[13..].copy_from_slice(&epoch.to_le_bytes());
    ad
}

impl Keyring {
    /// The stored form of `payload` for `(vnode, epoch)`.
    pub(crate) fn seal(
        &self,
        vnode: u32,
        epoch: u64,
        payload: &[u8],
    ) -> Result<Bytes, StateBackendError> {
        let cipher = &self.ciphers[&self.active];
        let nonce = XNonce::try_generate().map_err(|e| {
            StateBackendError::Io(format!(
                "cannot encrypt the partial of vnode {vnode} epoch {epoch}: the operating \
                 system's CSPRNG failed: {e}"
            ))
        })?;
        let mut frame = Vec::with_capacity(ENCRYPTION_OVERHEAD + payload.len());
        frame.extend_from_slice(&ENCRYPTION_MAGIC);
        frame.push(VERSION);
        frame.extend_from_slice(&self.active.to_le_bytes());
        frame.extend_from_slice(&nonce);
        frame.extend_from_slice(payload);
        let ad = associated_data(&frame, vnode, epoch);
        let tag = cipher
            .encrypt_inout_detached(&nonce, &ad, InOutBuf::from(&mut frame[HEADER_LEN..]))
            .map_err(|_| {
                StateBackendError::Serialization(format!(
                    "the partial of vnode {vnode} epoch {epoch} is too long to encrypt"
                ))
            })?;
        frame.extend_from_slice(&tag);
        Ok(Bytes::from(frame))
    }

    /// The payload stored as `stored` for `(vnode, epoch)`.
    pub(crate) fn open(
        &self,
        vnode: u32,
        epoch: u64,
        stored: &[u8],
    ) -> Result<Bytes, StateBackendError> {
        let refuse = |why: String| {
            StateBackendError::Serialization(format!(
                "the partial of vnode {vnode} epoch {epoch} {why}"
            ))
        };
        if !stored.starts_with(&ENCRYPTION_MAGIC) {
            return Err(refuse(
                "is not encrypted (no encryption header): written without the encryption \
                 layer, or damaged"
                    .into(),
            ));
        }
        if stored.len() < ENCRYPTION_OVERHEAD {
            return Err(refuse(format!(
                "is {} bytes, shorter than an encrypted partial's {ENCRYPTION_OVERHEAD}",
                stored.len()
            )));
        }
        if stored[4] != VERSION {
            return Err(refuse(format!(
                "has encryption format version {}, this build reads {VERSION}",
                stored[4]
            )));
        }
        let id = KeyId::from_le_bytes(stored[5..9].try_into().expect("4 bytes"));
        let Some(cipher) = self.ciphers.get(&id) else {
            return Err(refuse(format!(
                "is encrypted with key id {id}, which the keyring (ids {:?}) lacks",
                self.ids()
            )));
        };
        let nonce = XNonce::try_from(&stored[9..HEADER_LEN]).expect("24 bytes");
        let (body, tag) = stored[HEADER_LEN..].split_at(stored.len() - HEADER_LEN - TAG_LEN);
        let tag = Tag::try_from(tag).expect("16 bytes");
        let ad = associated_data(stored, vnode, epoch);
        let mut plain = body.to_vec();
        cipher
            .decrypt_inout_detached(&nonce, &ad, InOutBuf::from(&mut plain[..]), &tag)
            .map_err(|_| {
                refuse(format!(
                    "fails authentication under key id {id}: damaged, written for another \
                     (vnode, epoch), or encrypted with another key of that id"
                ))
            })?;
        Ok(Bytes::from(plain))
    }
}

/// A [`StateBackend`] that encrypts partials with XChaCha20-Poly1305
/// (RustCrypto) on their way into the backend inside and decrypts them on
/// their way out, the `(vnode, epoch)` of each partial bound as associated
/// data.
///
/// # The stored format
///
/// | bytes | field |
/// |---|---|
/// | 0..4 | [`ENCRYPTION_MAGIC`]: `FF 00 4C 65` (`0xFF`, `0x00`, `L`, `e`) |
/// | 4 | format version, `1` |
/// | 5..9 | the key id, `u32` little-endian |
/// | 9..33 | the nonce: 24 bytes from the operating system's CSPRNG, fresh for every write |
/// | 33.. | the ciphertext, then the 16-byte Poly1305 tag |
///
/// The associated data is the header's first 9 bytes (magic, version, key
/// id) followed by the vnode (`u32` little-endian) and the epoch (`u64`
/// little-endian). So a partial copied to another `(vnode, epoch)`, a
/// flipped bit anywhere (header, nonce, ciphertext or tag), a key id
/// rewritten, or a partial read with the wrong key fails authentication:
/// a `Serialization` error, never wrong bytes. A stored partial that is not
/// a frame at all (written without the layer, or damaged in its magic) is a
/// `Serialization` error too, unless plaintext reads are allowed for a
/// migration ([`EncryptionLayer::allow_plaintext_reads`]).
///
/// # Why XChaCha20-Poly1305
///
/// Its 192-bit nonce makes random nonces safe for any number of writes
/// under one key (a collision is as likely as guessing a 96-bit secret after
/// 2^48 writes), where AES-GCM's 96-bit nonce limits a key to about 2^32
/// random-nonce writes. It is constant-time in software on any CPU (AES-GCM
/// needs AES instructions to be), and it shares the `chacha20` crate and
/// the `getrandom` 0.4 / `rand_core` 0.10 stack already in the workspace
/// (through proptest's `rand`), so it adds no second random-number stack.
///
/// # Keys
///
/// Keys are 32 bytes supplied by the caller ([`EncryptionKey`]), each with a
/// [`KeyId`]. A [`Keyring`] encrypts with its active key and decrypts with
/// whichever key a partial names, so keys rotate without rewriting the
/// store. Keys never appear in `Debug` output, in errors or in logs, and
/// are zeroed when dropped.
pub struct EncryptionLayer<B: ?Sized = dyn StateBackend> {
    inner: Arc<B>,
    keyring: Arc<Keyring>,
    max_payload_len: Option<usize>,
    allow_plaintext: bool,
}

impl<B: ?Sized> EncryptionLayer<B> {
    /// Encrypt the partials of `inner` with `keyring`. `max_payload_len` is
    /// the largest payload the caller may pass (the backend's limit; `None`:
    /// no check here, the backend inside checks what is stored).
    pub fn new(inner: Arc<B>, keyring: Keyring, max_payload_len: Option<usize>) -> Self {
        Self {
            inner,
            keyring: Arc::new(keyring),
            max_payload_len,
            allow_plaintext: false,
        }
    }

    /// Return stored partials that have no encryption header as they are,
    /// instead of refusing them: for switching encryption on over a store
    /// written without it. Such partials are not authenticated, so damage
    /// to them (or to an encrypted partial's magic) goes undetected by this
    /// layer. Off by default.
    pub fn allow_plaintext_reads(mut self, allow: bool) -> Self {
        self.allow_plaintext = allow;
        self
    }

    /// The backend inside.
    pub fn inner(&self) -> &Arc<B> {
        &self.inner
    }

    /// The plaintext of the stored partial of `(vnode, epoch)`.
    fn open(&self, vnode: u32, epoch: u64, stored: Bytes) -> Result<Bytes, StateBackendError> {
        if self.allow_plaintext && !stored.starts_with(&ENCRYPTION_MAGIC) {
            Ok(stored)
        } else {
            self.keyring.open(vnode, epoch, &stored)
        }
    }
}

impl<B: ?Sized> std::fmt::Debug for EncryptionLayer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptionLayer")
            .field("keyring", &self.keyring)
            .field("max_payload_len", &self.max_payload_len)
            .field("allow_plaintext", &self.allow_plaintext)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<B: StateBackend + ?Sized> laminar_state_api::ForwardingBackend for EncryptionLayer<B> {
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
        crate::check_caller_payload(vnode, bytes.len(), self.max_payload_len, "encryption")?;
        let stored = self.keyring.seal(vnode, epoch, &bytes)?;
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
        stored.map(|s| self.open(vnode, epoch, s)).transpose()
    }

    async fn read_partials(
        &self,
        epoch: u64,
        vnodes: &[u32],
    ) -> Result<Vec<Option<Bytes>>, StateBackendError> {
        let stored = self.inner.read_partials(epoch, vnodes).await?;
        crate::open_batch(epoch, vnodes, stored, |vnode, s| self.open(vnode, epoch, s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> EncryptionKey {
        EncryptionKey::from_bytes([byte; 32])
    }

    #[test]
    fn round_trip_with_fresh_nonces() {
        let ring = Keyring::new(7, key(1));
        let a = ring.seal(3, 9, b"partial").unwrap();
        let b = ring.seal(3, 9, b"partial").unwrap();
        assert_ne!(a, b, "a fresh nonce per write");
        assert_eq!(a.len(), ENCRYPTION_OVERHEAD + 7);
        assert_eq!(&a[5..9], &7u32.to_le_bytes());
        assert_eq!(ring.open(3, 9, &a).unwrap(), &b"partial"[..]);
        assert_eq!(ring.open(3, 9, &b).unwrap(), &b"partial"[..]);
        assert_eq!(ring.open(0, 0, &ring.seal(0, 0, b"").unwrap()).unwrap(), "");
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let ring = Keyring::new(1, key(1));
        let stored = ring.seal(2, 5, b"counters: 1, 2, 3").unwrap();
        for bit in 0..stored.len() * 8 {
            let mut damaged = stored.to_vec();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                matches!(
                    ring.open(2, 5, &damaged),
                    Err(StateBackendError::Serialization(_))
                ),
                "bit {bit}"
            );
        }
    }

    #[test]
    fn another_key_slot_or_key_is_refused() {
        let ring = Keyring::new(1, key(1));
        let stored = ring.seal(2, 5, b"x").unwrap();
        for (vnode, epoch) in [(3, 5), (2, 6), (2 + (1 << 16), 5)] {
            let err = ring.open(vnode, epoch, &stored).unwrap_err();
            assert!(
                matches!(&err, StateBackendError::Serialization(m) if m.contains("authentication")),
                "{err:?}"
            );
        }
        // The same id with another key: authentication fails.
        let wrong = Keyring::new(1, key(2));
        assert!(matches!(
            wrong.open(2, 5, &stored),
            Err(StateBackendError::Serialization(m)) if m.contains("key id 1")
        ));
        // An unknown id: named, with the ids the keyring has.
        let other = Keyring::new(2, key(1));
        assert!(matches!(
            other.open(2, 5, &stored),
            Err(StateBackendError::Serialization(m)) if m.contains("key id 1") && m.contains("[2]")
        ));
        // A rotated keyring reads both.
        let rotated = Keyring::new(2, key(2)).with_key(1, key(1));
        assert_eq!(rotated.open(2, 5, &stored).unwrap(), &b"x"[..]);
        let fresh = rotated.seal(2, 5, b"y").unwrap();
        assert_eq!(&fresh[5..9], &2u32.to_le_bytes());
    }

    #[test]
    fn keys_never_show() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let key = EncryptionKey::from_hex(hex).unwrap();
        assert_eq!(format!("{key:?}"), "EncryptionKey(<redacted>)");
        let ring = Keyring::new(4, key).with_key(5, EncryptionKey::generate().unwrap());
        let shown = format!("{ring:?} {ring:#?}");
        assert!(
            !shown.contains("0011") && !shown.contains("[0, 17"),
            "{shown}"
        );
        assert!(shown.contains('4') && shown.contains('5'));
        let err = EncryptionKey::from_hex(&hex.replace('f', "g")).unwrap_err();
        assert!(!err.contains("0011"), "{err}");
        assert!(EncryptionKey::from_hex("abc").is_err());
    }
}
