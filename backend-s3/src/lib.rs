//! A [`StateBackend`] on Amazon S3 or an S3-compatible object store, for
//! engines whose state must outlive any machine and be shared by a cluster.
//!
//! An object store has no transactions across keys, so every guarantee here
//! is built from the two atomic primitives S3 offers: a conditional create
//! (`If-None-Match: *`) and a compare-and-swap on one object (`If-Match`),
//! plus strongly consistent reads and listings.
//!
//! # Layout
//!
//! One store is one prefix `P/` in one bucket. Numbers are zero-padded
//! decimals (epochs, versions: 20 digits; vnodes: 10), so key order is
//! numeric order and a listing returns epochs in sequence. An epoch's
//! partials share one `/`-level, so stores that keep a directory tree
//! (SeaweedFS's filer) list an epoch as one directory, not one per vnode.
//!
//! | key | holds |
//! |---|---|
//! | `P/fence` | the fence `F` and the fence before it (in its metadata, so a HEAD reads them), replaced by compare-and-swap; created at 0 by the first connect |
//! | `P/snapshots/F` | written once per raise: the partials older than fence `F` that stay visible |
//! | `P/p/EPOCH/VNODE.PERIOD.STAMP` | one object per acknowledged write: the partial's bytes |
//! | `P/m/EPOCH` | the commit marker: the committer's instance id, created only if absent |
//! | `P/conditional-write-probe.STAMP` | for a moment at connect: the probe of conditional writes (see "What the store must do") |
//!
//! Every object is framed: a kind byte, a format byte and a CRC-32 of the
//! body, so damaged or foreign bytes are reported as
//! [`StateBackendError::Serialization`], never returned as data.
//!
//! # Why no fenced-out write is ever visible (P7)
//!
//! A write cannot check the fence and store its bytes in one atomic step:
//! S3's conditions apply to the object being written, not to another. So a
//! writer that checked the fence just before a raise can still land its
//! object just after it. This crate makes such a late object *invisible*
//! instead of trying to prevent it, and tells its writer exactly what
//! readers will see:
//!
//! 1. Partials are immutable. Every write creates a new object whose key
//!    carries its *period* (the fence the writer's store last read, never
//!    above the writer's version) and a stamp, so a late write can never
//!    destroy an earlier one, and the newest visible object of a
//!    `(vnode, epoch)` is the last one in key order: a later period first,
//!    then a later stamp.
//! 2. A raise from `F` to `V` swaps the fence object (`If-Match`), then
//!    lists the partials and writes `snapshots/V`: every object of a period
//!    below `V` that was visible under `F` when the listing was answered.
//!    Under fence `V`, an object of a period below `V` is visible if and
//!    only if `snapshots/V` names it (key and ETag); an object of period
//!    `V` or above always is.
//! 3. Snapshots are cumulative and never resurrect: `snapshots/V` names
//!    only objects visible under `F` (period at least `F`, or named by
//!    `snapshots/F`), so an object a snapshot leaves out is left out by
//!    every later one, and an object a snapshot names is named by every
//!    later one for as long as it exists. An object's visibility therefore
//!    never changes once it has landed (until its epoch is pruned): of
//!    period `P`, it is visible if and only
//!    if it landed before the swap past `P`, or after it but before the
//!    listing of the snapshot that was stored for that fence (concurrent
//!    builders race with `If-None-Match`; everyone uses the stored one).
//!    Every reader judges it that way, since its fence read follows its
//!    listing (below).
//! 4. After its object landed, a write reads the fence (a read that
//!    started after the landing). If the fence is at most the object's
//!    period, the write is acknowledged: it is visible now, and it landed
//!    before any later swap, so that raise's listing names it. If the fence
//!    `G` is above the period, the writer consults `snapshots/G` (building
//!    it if the raise did not get to, as readers do): if it names the
//!    object, the write took effect before the raise and is acknowledged,
//!    whatever the writer's version (it is visible, and stays so by 3);
//!    if not, the object is invisible for good by 3, so the write answers
//!    [`StateBackendError::StaleVersion`] when the writer's version is below
//!    `G`, or is written again in period `G` when it is not. Either way the
//!    object left behind is then deleted, but only as garbage collection:
//!    the answer is true whether or not that delete succeeds.
//!
//! A raise is acknowledged once its snapshot exists; until then any handle
//! that needs it builds it the same way (the first `If-None-Match` write
//! wins, so all agree), so a raiser that crashed mid-way blocks nobody. The
//! listing of the snapshot, not the swap, is therefore the moment the raise
//! takes effect for writes in flight: a write acknowledged before the raise
//! is named by it, a write whose object lands after it is refused (or
//! rewritten) and never visible, and a write whose object lands between the
//! swap and the listing is concurrent with the unacknowledged raise: it is
//! named, visible and acknowledged `Ok`, even if its writer's version is
//! below the new fence.
//!
//! A write whose writer died before any answer (or whose answer was lost:
//! a timeout, an [`StateBackendError::Io`]) was concurrent with the raise
//! and goes one way or the other, never both and never later: if its object
//! landed before the listing of the stored snapshot of the first fence above
//! its period (or no fence rose above its period), it counts as written
//! (read, counted by the gate, kept by every later snapshot); otherwise as
//! never written. Why: visibility is decided by the snapshot alone, never
//! by what the writer does or fails to do after landing its object, so a
//! writer's death cannot change it (3); either outcome is a valid order for
//! a write concurrent with the raise. Pruning its epoch removes the object.
//!
//! # Reads judge a listing under a later fence read
//!
//! `read_partial` and `epoch_complete` list the partials first and read the
//! fence after the listing was answered (a fence read that starts later;
//! concurrent operations of the store share it). Every listed object landed
//! before that read, so if the read shows fence `F`, no raise past `F` had
//! swapped the fence when the object landed, and judging it under `F` (and
//! the snapshot of `F`) is what every later snapshot agrees with (3). A
//! fence read answered before the listing would not do: an object landing
//! after a raise, in the older period, would be judged under the older
//! fence and shown. `read_partial` fetches the newest listed object while
//! the fence is read; if that object turns out invisible it fetches the
//! newest visible one.
//!
//! Within one period, writes to the same key are ordered by their stamps:
//! exact within a process, by the writers' clocks across machines. Fencing
//! is what orders different writers: a new leader raises the fence, and
//! its period sorts after every earlier one.
//!
//! # Sealing and the fence (P15 is not claimed)
//!
//! The commit gate refuses a handle told a version below the fence it reads
//! ([`StateBackendError::StaleVersion`]), but only as a best effort: that
//! takes a fence read and the marker's `If-None-Match` PUT, two requests on
//! two objects, and S3 cannot make one conditional on the other. A raise
//! acknowledged after the gate's fence read and before its marker PUT lands
//! cannot stop the seal (tested: `a_deposed_leader_can_seal_while_its_marker_is_in_flight`),
//! so `fenced_seal` is not claimed: a deposed leader whose gate read the
//! fence before the raise can still seal, until another instance seals the
//! epoch first. What holds is P9: one committer
//! per epoch, named by the marker, so the new leader's gate answers
//! [`StateBackendError::SplitBrainCommit`] naming the deposed leader, and
//! the deposed leader's writes are refused as ever (P7). An engine that
//! needs a deposed leader never to seal must stop the old leader before
//! the new one seals. The partials the seal counted are unaffected: they
//! were visible before the raise and stay so.
//!
//! # What the store must do
//!
//! Checked, not assumed; each failure is a typed error at connect or on
//! the operation that meets it:
//!
//! - Conditional writes: `If-None-Match: *` (create only) and `If-Match`
//!   (replace only that version), atomically. [`S3Store::connect`] probes
//!   them once per process for each endpoint and bucket, on an object of
//!   its own under the prefix (created, created again, replaced with a
//!   wrong ETag: both repeats must fail their condition; then deleted),
//!   and refuses a store that ignores either with
//!   [`StateBackendError::Io`] naming the header. A store that honours them
//!   only sometimes (racing them) cannot be detected by a probe. Tested
//!   against SeaweedFS; AWS S3 supports both since 2024.
//! - Ordered listings with `StartAfter`: directory buckets (S3 Express One
//!   Zone, names ending in `--x-s3`) list in no particular order and
//!   ignore `StartAfter`, which `latest_committed_epoch`, `sealed_epochs`
//!   and `prune_before` rely on: connect refuses them
//!   ([`StateBackendError::Io`]) before sending any request.
//! - No expiry of the fence or the snapshots: a lifecycle rule that
//!   deletes `P/fence` would turn fence `N` into "no fence". Connect
//!   creates the fence object (at 0) on a new store, so from then on a
//!   missing fence object is damage: every fence read that finds none, and
//!   a connect that finds snapshots but no fence, fail with
//!   [`StateBackendError::Serialization`] naming the fence object. (A rule
//!   that deleted the fence *and* every snapshot leaves nothing to detect
//!   it by.) Lifecycle rules may expire partials and markers only as
//!   `prune_before` would: whole epochs, oldest first.
//!
//! # Requests per operation
//!
//! What a user pays for. `L` = partials listed, `K` = objects deleted.
//!
//! | operation | requests | round trips |
//! |---|---|---|
//! | `write_partial` | 1 PUT + 1 fence HEAD, the HEAD shared by concurrent writes of the store; + 1 snapshot GET (cached) when the fence rose past the store's last read | 2 |
//! | `read_partial` | 1 LIST, then 1 fence HEAD (shared) and 1 GET at once; the LIST alone when nothing is listed; + 1 GET if the newest listed object is invisible | 2 |
//! | `epoch_complete`, any vnode count | ceil(L/1000) LIST, then 1 fence HEAD (shared), then 1 marker PUT; + 1 GET if the epoch was already sealed (and all again if that marker was pruned meanwhile) | 3 + |
//! | `prune_before` | ceil(K/1000) LIST + ceil(K/1000) DeleteObjects, for markers and for partials | pages |
//! | `latest_committed_epoch`, `sealed_epochs` | 1 LIST per 1000 markers | 1 |
//! | a fence raise | 1 HEAD + 1 PUT `If-Match` + ceil(all partials/1000) LIST + 1 snapshot PUT | 3 + pages |
//! | [`S3Store::connect`] | 1 HeadBucket + 1 fence HEAD; on a new store + 1 LIST + 1 fence PUT; once per process per endpoint and bucket, the probe: 3 PUT + 1 DELETE | 2 to 8 |
//!
//! A fence HEAD is shared: a write needs a fence read that *started after its
//! object landed*; all writes of the store waiting for one are answered by
//! the same HEAD, so many concurrent writers cost about one PUT each. After
//! a raise, a reader that meets objects older than the fence also fetches
//! the snapshot once (it is immutable and cached).
//!
//! # Limits
//!
//! - A raise lists every partial of the store and writes a snapshot of
//!   about 100 bytes per partial older than the new fence; raises happen on
//!   failover, and pruning keeps the store small.
//! - Every write is a new object; rewrites of a `(vnode, epoch)` (replays)
//!   keep their older objects until the epoch is pruned. Objects of refused
//!   writes whose clean-up failed stay (invisible) until then too.
//!
//! # Known limit: a seal racing a prune
//!
//! `prune_before(b)` deletes the markers below `b`, then the partials below
//! `b`; the gate lists an epoch's partials, reads the fence, then creates
//! the marker. Nothing orders a gate against a prune of its own epoch: if
//! the prune deletes the epoch's partials after the gate's listing and
//! before its marker PUT lands (the prune's marker pass having found no
//! marker yet), the gate answers `Ok(true)` and its marker outlives the
//! partials it counted, below the prune's bound: `latest_committed_epoch`
//! and `sealed_epochs` then name an epoch `read_partial` has no data for,
//! until a later prune removes the marker. This does not hold P11 for a
//! gate concurrent with a prune of its epoch. (A gate whose marker PUT met
//! 412 and whose marker was pruned before it could read it lists the
//! partials again, and answers `Ok(false)` once they are gone: it never
//! creates the marker again unchecked.) Engines prune only epochs below the
//! one they recover from, so they do not seal an epoch they are pruning.
//!
//! # Retries, timeouts and checksums
//!
//! The client retries throttling, 5xx answers, timeouts and broken
//! connections with exponential backoff ([`S3Config::max_attempts`],
//! [`S3Config::attempt_timeout`], [`S3Config::operation_timeout`]); what
//! still fails is [`StateBackendError::Io`] naming the operation. A request
//! retried after it landed is safe: a partial's key is unique to the write,
//! a repeated fence swap or marker creation answers 412, and the 412 is
//! resolved by reading the fence or the marker (whose committer may be this
//! very instance). Request checksums are sent only where S3 requires them
//! (AWS's default trailing checksums break several S3-compatible stores);
//! the frame's CRC-32 covers the stored bytes end to end.
//!
//! # Durability
//!
//! A write is acknowledged after S3 acknowledged the PUT, so it is as
//! durable as the bucket. The fence and the markers live in the bucket too:
//! every process that opens the prefix shares them.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    SharedCredentialsProvider,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use aws_smithy_http_client::tls;
use bytes::{BufMut, Bytes, BytesMut};
use laminar_state_api::{InputLimits, StateBackend, StateBackendError, seal_outcome};
use tokio::sync::oneshot;

/// The default largest partial: 64 MiB.
pub const DEFAULT_MAX_PAYLOAD_LEN: usize = 64 << 20;
/// The default number of attempts per request, the first included.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 4;
/// The default bound on one attempt of a request.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
/// The default bound on a request, all attempts and backoff included.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(60);
/// The default bound on opening a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Directory buckets (S3 Express One Zone) end their names with this.
const DIRECTORY_BUCKET_SUFFIX: &str = "--x-s3";

/// The endpoints and buckets (`"ENDPOINT BUCKET"`) whose conditional writes
/// this process has probed successfully.
static PROBED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Keys one LIST page or one DeleteObjects request carries at most (S3's
/// limit).
const PAGE: usize = 1000;
/// Times a write is redone in a newer period, or an operation restarted
/// after racing a prune or a raise, before giving up.
const MAX_RESTARTS: usize = 8;

// ---------------------------------------------------------------------------
// Key layout
// ---------------------------------------------------------------------------

/// The key names of one store.
#[derive(Debug, Clone)]
struct Layout {
    /// Empty, or ends with `/`.
    prefix: String,
}

impl Layout {
    fn new(prefix: &str) -> Self {
        let trimmed = prefix.trim_matches('/');
        let prefix = if trimmed.is_empty() {
            String::new()
        } else {
            format!("{trimmed}/")
        };
        Self { prefix }
    }

    fn fence(&self) -> String {
        format!("{}fence", self.prefix)
    }

    fn snapshot(&self, fence: u64) -> String {
        format!("{}snapshots/{fence:020}", self.prefix)
    }

    fn partials(&self) -> String {
        format!("{}p/", self.prefix)
    }

    /// Every partial of `epoch` starts with this; every key of an earlier
    /// epoch sorts before it.
    fn epoch_partials(&self, epoch: u64) -> String {
        format!("{}p/{epoch:020}/", self.prefix)
    }

    fn vnode_partials(&self, epoch: u64, vnode: u32) -> String {
        format!("{}p/{epoch:020}/{vnode:010}.", self.prefix)
    }

    fn partial(&self, epoch: u64, vnode: u32, period: u64) -> String {
        format!(
            "{}p/{epoch:020}/{vnode:010}.{period:020}.{}",
            self.prefix,
            stamp()
        )
    }

    fn markers(&self) -> String {
        format!("{}m/", self.prefix)
    }

    fn marker(&self, epoch: u64) -> String {
        format!("{}m/{epoch:020}", self.prefix)
    }

    /// `(epoch, vnode, period)` of a partial's key, `None` for a foreign key.
    fn parse_partial(&self, key: &str) -> Option<(u64, u32, u64)> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix("p/")?;
        let (epoch, name) = rest.split_once('/')?;
        let mut parts = name.split('.');
        let vnode = parts.next()?.parse().ok()?;
        let period = parts.next()?.parse().ok()?;
        parts.next()?;
        Some((epoch.parse().ok()?, vnode, period))
    }

    fn parse_marker(&self, key: &str) -> Result<u64, StateBackendError> {
        key.strip_prefix(&self.prefix)
            .and_then(|k| k.strip_prefix("m/"))
            .and_then(|e| e.parse().ok())
            .ok_or_else(|| {
                StateBackendError::Serialization(format!(
                    "{key:?} under the markers is not a marker key"
                ))
            })
    }
}

/// A write's place among the writes of one period: nanoseconds since the
/// Unix epoch, raised past the last stamp this process issued (so it is
/// unique and increasing here), then a per-process random suffix (so two
/// processes never share a key).
fn stamp() -> String {
    static LAST: AtomicU64 = AtomicU64::new(0);
    static NONCE: OnceLock<u64> = OnceLock::new();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let mut last = LAST.load(Ordering::Relaxed);
    let issued = loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => break next,
            Err(seen) => last = seen,
        }
    };
    let nonce = NONCE.get_or_init(|| {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.write_u64(now);
        hasher.finish()
    });
    format!("{issued:020}-{nonce:016x}")
}

// ---------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------

/// The first byte of every object this crate writes.
const MAGIC: u8 = b'L';
/// The frame format.
const FORMAT: u8 = 1;
const HEADER: usize = 7;

/// What an object holds; part of its frame, so an object read as the wrong
/// kind is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Partial = b'P' as isize,
    Marker = b'M' as isize,
    Fence = b'F' as isize,
    Snapshot = b'S' as isize,
}

fn frame(kind: Kind, body: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(HEADER + body.len());
    framed.put_u8(MAGIC);
    framed.put_u8(kind as u8);
    framed.put_u8(FORMAT);
    framed.put_u32_le(crc32fast::hash(body));
    framed.put_slice(body);
    framed.freeze()
}

fn unframe(kind: Kind, key: &str, framed: Bytes) -> Result<Bytes, StateBackendError> {
    let bad = |why: &str| {
        StateBackendError::Serialization(format!("object {key:?} is not a valid {kind:?}: {why}"))
    };
    if framed.len() < HEADER || framed[0] != MAGIC {
        return Err(bad("no laminar-state frame"));
    }
    if framed[1] != kind as u8 {
        return Err(bad("it holds another kind of object"));
    }
    if framed[2] != FORMAT {
        return Err(bad(&format!("unknown format {}", framed[2])));
    }
    let crc = u32::from_le_bytes([framed[3], framed[4], framed[5], framed[6]]);
    let body = framed.slice(HEADER..);
    if crc32fast::hash(&body) != crc {
        return Err(bad("it fails its checksum"));
    }
    Ok(body)
}

/// The metadata key (`x-amz-meta-laminar-fence`) of the fence object.
const FENCE_METADATA: &str = "laminar-fence";

/// The fence and the fence before it, with a CRC-32 of both: the fence
/// object's metadata (and, framed, its body, for people reading the bucket).
fn render_fence(value: u64, previous: u64) -> String {
    let fields = format!("{value} {previous}");
    format!("{fields} {:08x}", crc32fast::hash(fields.as_bytes()))
}

fn parse_fence(text: &str) -> Option<(u64, u64)> {
    let (fields, crc) = text.rsplit_once(' ')?;
    if u32::from_str_radix(crc, 16).ok()? != crc32fast::hash(fields.as_bytes()) {
        return None;
    }
    let (value, previous) = fields.split_once(' ')?;
    Some((value.parse().ok()?, previous.parse().ok()?))
}

fn utf8(key: &str, body: &[u8]) -> Result<String, StateBackendError> {
    String::from_utf8(body.to_vec())
        .map_err(|_| StateBackendError::Serialization(format!("object {key:?} is not UTF-8")))
}

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// Which bucket and prefix, how to reach them, and the request policy.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// The bucket; it must exist.
    pub bucket: String,
    /// Every key of the store starts with this prefix (`/`-terminated when
    /// not empty). Several stores share a bucket under different prefixes.
    pub prefix: String,
    /// An explicit endpoint, for S3-compatible stores
    /// (`http://127.0.0.1:8333`); `None` uses AWS's endpoint for the region.
    pub endpoint: Option<String>,
    /// The region. `None` with an `endpoint`: `us-east-1` (S3-compatible
    /// stores mostly ignore it, and the default chain's probe of the
    /// instance metadata service would only slow every connect). `None` on
    /// AWS: the default chain (environment, profile, instance metadata),
    /// else `us-east-1`.
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most
    /// S3-compatible stores need; AWS uses virtual-hosted style.
    pub force_path_style: bool,
    /// Static credentials `(access key id, secret access key)`. `None` uses
    /// AWS's default chain: environment, profile, web identity, container
    /// and instance metadata.
    pub credentials: Option<(String, String)>,
    /// Attempts per request, the first included (at least 1).
    pub max_attempts: u32,
    /// The bound on one attempt.
    pub attempt_timeout: Duration,
    /// The bound on one request, all attempts and backoff included.
    pub operation_timeout: Duration,
    /// The bound on opening a connection.
    pub connect_timeout: Duration,
    /// The largest partial, in bytes.
    pub max_payload_len: usize,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("force_path_style", &self.force_path_style)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|(id, _)| (id, "<secret>")),
            )
            .field("max_attempts", &self.max_attempts)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_payload_len", &self.max_payload_len)
            .finish()
    }
}

impl S3Config {
    /// Defaults for `bucket` and `prefix` on AWS.
    pub fn new(bucket: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            prefix: prefix.into(),
            endpoint: None,
            region: None,
            force_path_style: false,
            credentials: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_payload_len: DEFAULT_MAX_PAYLOAD_LEN,
        }
    }

    /// Parse `s3://BUCKET/PREFIX` with optional query settings:
    /// `endpoint=URL` (implies path-style unless `path_style=false`),
    /// `region=NAME`, `path_style=true|false`, `access_key_id=..` with
    /// `secret_access_key=..`, `max_attempts=N`, `attempt_timeout_ms=MS`,
    /// `timeout_ms=MS` (the whole request) and `max_payload_len=BYTES`.
    /// Values are percent-decoded.
    pub fn from_url(url: &str) -> Result<Self, StateBackendError> {
        let bad = |why: String| StateBackendError::Serialization(format!("bad s3 URL: {why}"));
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let path = base
            .strip_prefix("s3://")
            .ok_or_else(|| bad(format!("{base:?} does not start with s3://")))?;
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.is_empty() {
            return Err(bad("the bucket is missing (s3://BUCKET/PREFIX)".into()));
        }
        let mut config = Self::new(bucket, prefix);
        let (mut key_id, mut secret, mut path_style) = (None, None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(raw).ok_or_else(|| bad(format!("{key}: bad escape")))?;
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|_| bad(format!("{key}={value} is not a number")))
            };
            match key {
                "endpoint" => config.endpoint = Some(value.clone()),
                "region" => config.region = Some(value.clone()),
                "path_style" => {
                    path_style = Some(match value.as_str() {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => return Err(bad(format!("path_style={value} is not true or false"))),
                    })
                }
                "access_key_id" => key_id = Some(value.clone()),
                "secret_access_key" => secret = Some(value.clone()),
                "max_attempts" => {
                    config.max_attempts = u32::try_from(number()?)
                        .ok()
                        .filter(|&n| n >= 1)
                        .ok_or_else(|| bad("max_attempts must be 1 or more".into()))?;
                }
                "attempt_timeout_ms" => config.attempt_timeout = Duration::from_millis(number()?),
                "timeout_ms" => config.operation_timeout = Duration::from_millis(number()?),
                "max_payload_len" => {
                    config.max_payload_len = usize::try_from(number()?)
                        .map_err(|_| bad("max_payload_len is too large".into()))?;
                }
                other => return Err(bad(format!("unknown setting {other:?}"))),
            }
        }
        config.force_path_style = path_style.unwrap_or(config.endpoint.is_some());
        config.credentials = match (key_id, secret) {
            (Some(id), Some(secret)) => Some((id, secret)),
            (None, None) => None,
            _ => {
                return Err(bad("access_key_id and secret_access_key go together".into()));
            }
        };
        Ok(config)
    }
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

/// How a request failed, as far as the protocol cares.
enum Failure {
    /// 412 (or 404 for `If-Match` on a missing key, as AWS answers; or 409,
    /// AWS's answer to a conditional write racing another): the condition
    /// did not hold. The message is for a caller that expected no
    /// condition to fail.
    Precondition(String),
    /// 404: no such key (with the message, likewise).
    Missing(String),
    /// Anything else, already worded for the caller.
    Error(StateBackendError),
}

impl From<Failure> for StateBackendError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Error(e) => e,
            Failure::Precondition(message) | Failure::Missing(message) => {
                StateBackendError::Io(message)
            }
        }
    }
}

fn classify<E>(what: &str, key: &str, error: SdkError<E>) -> Failure
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
{
    let status = error.raw_response().map(|r| r.status().as_u16());
    let message = format!(
        "s3 {what} {key:?}: {}{}",
        DisplayErrorContext(&error),
        match error.code() {
            Some("SlowDown" | "ServiceUnavailable") => " (the store is throttling)",
            Some("QuotaExceeded" | "EntityTooLarge") =>
                " (the store is full or the object too large)",
            _ => "",
        }
    );
    match status {
        Some(412 | 409) => Failure::Precondition(message),
        Some(404) if error.code() != Some("NoSuchBucket") => Failure::Missing(message),
        _ => Failure::Error(StateBackendError::Io(message)),
    }
}

/// The condition of a PUT.
enum Condition<'a> {
    None,
    /// `If-None-Match: *`: create only.
    Absent,
    /// `If-Match: ETAG`: replace only this version.
    Matches(&'a str),
}

/// A listed object.
#[derive(Debug, Clone)]
struct Listed {
    key: String,
    etag: String,
}

/// One page of a listing.
struct Page {
    objects: Vec<Listed>,
    next: Option<String>,
}

/// The fence as stored: its value, the value before it (whose snapshot the
/// next one builds on), and the ETag to swap it against.
#[derive(Debug, Clone, Default)]
struct FenceState {
    value: u64,
    previous: u64,
    etag: Option<String>,
}

/// The partials of periods below one fence that stay visible: key (below
/// the prefix) to ETag.
#[derive(Debug, Default)]
struct Snapshot {
    visible: HashMap<String, String>,
}

impl Snapshot {
    /// Whether an object of `period` (key below the prefix `relative`, ETag
    /// `etag`) is visible under fence `fence`, whose snapshot is `snapshot`:
    /// the current period always is, an older one only if named.
    fn shows(
        snapshot: Option<&Snapshot>,
        fence: u64,
        period: u64,
        relative: &str,
        etag: &str,
    ) -> bool {
        period >= fence
            || snapshot.is_some_and(|s| s.visible.get(relative).is_some_and(|e| e == etag))
    }

    fn parse(key: &str, body: &[u8]) -> Result<Self, StateBackendError> {
        let text = utf8(key, body)?;
        let mut visible = HashMap::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let (object, etag) = line.split_once(' ').ok_or_else(|| {
                StateBackendError::Serialization(format!("snapshot {key:?} has a bad line"))
            })?;
            visible.insert(object.to_owned(), etag.to_owned());
        }
        Ok(Self { visible })
    }

    fn render(&self) -> Vec<u8> {
        let mut entries: Vec<_> = self.visible.iter().collect();
        entries.sort();
        let mut text = String::new();
        for (object, etag) in entries {
            text.push_str(object);
            text.push(' ');
            text.push_str(etag);
            text.push('\n');
        }
        text.into_bytes()
    }
}

// ---------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------

/// One prefix in one bucket, with its client: shared by the handles opened
/// from it (they share connections, fence reads and snapshots).
#[derive(Clone)]
pub struct S3Store {
    shared: Arc<Shared>,
}

struct Shared {
    client: Client,
    bucket: String,
    layout: Layout,
    max_payload_len: usize,
    /// The highest fence value read from the bucket.
    seen: AtomicU64,
    /// Callers waiting for the next fence read (see [`Shared::fresh_fence`]).
    fence_reads: Mutex<FenceReads>,
    /// Snapshots by fence value; immutable once written.
    snapshots: Mutex<HashMap<u64, Arc<Snapshot>>>,
}

#[derive(Default)]
struct FenceReads {
    running: bool,
    waiting: Vec<oneshot::Sender<Result<FenceState, StateBackendError>>>,
}

/// The error again, for answering every caller that shared one request.
fn copy_error(error: &StateBackendError) -> StateBackendError {
    match error {
        StateBackendError::Serialization(m) => StateBackendError::Serialization(m.clone()),
        other => StateBackendError::Io(other.to_string()),
    }
}

impl S3Store {
    /// Build the client from `config` and check what the backend relies on
    /// (see "What the store must do" in the crate docs): the bucket answers
    /// and is not a directory bucket; the store honours `If-None-Match: *`
    /// and `If-Match` (probed once per process for each endpoint and
    /// bucket); the fence object exists, or the store is new (no snapshots)
    /// and the fence object is created. Each failed check is a
    /// [`StateBackendError::Io`] naming what is missing, or a
    /// [`StateBackendError::Serialization`] for a damaged fence history.
    ///
    /// The HTTP client is hyper with rustls (ring): the workspace's one TLS
    /// stack.
    pub async fn connect(config: &S3Config) -> Result<Self, StateBackendError> {
        if config.bucket.ends_with(DIRECTORY_BUCKET_SUFFIX) {
            return Err(StateBackendError::Io(format!(
                "s3 bucket {:?} is a directory bucket (S3 Express One Zone, name ending in \
                 {DIRECTORY_BUCKET_SUFFIX:?}): its listings are not in key order and ignore \
                 StartAfter, which the commit markers' queries and prune rely on; use a general \
                 purpose bucket",
                config.bucket
            )));
        }
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let retry = aws_sdk_s3::config::retry::RetryConfig::standard()
            .with_max_attempts(config.max_attempts.max(1))
            .with_initial_backoff(Duration::from_millis(50))
            .with_max_backoff(Duration::from_secs(2));
        let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
            .connect_timeout(config.connect_timeout)
            .operation_attempt_timeout(config.attempt_timeout)
            .operation_timeout(config.operation_timeout)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .retry_config(retry)
            .timeout_config(timeouts);
        let region = config
            .region
            .clone()
            .or_else(|| config.endpoint.as_ref().map(|_| "us-east-1".to_owned()));
        if let Some(region) = region {
            loader = loader.region(Region::new(region));
        }
        if let Some((id, secret)) = &config.credentials {
            loader = loader.credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                id,
                secret,
                None,
                None,
                "laminar-state-config",
            )));
        }
        let sdk = loader.load().await;
        let mut s3 = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(config.force_path_style)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if sdk.region().is_none() {
            s3 = s3.region(Region::from_static("us-east-1"));
        }
        if let Some(endpoint) = &config.endpoint {
            s3 = s3.endpoint_url(endpoint);
        }
        let client = Client::from_conf(s3.build());
        let store = Self {
            shared: Arc::new(Shared {
                client,
                bucket: config.bucket.clone(),
                layout: Layout::new(&config.prefix),
                max_payload_len: config.max_payload_len,
                seen: AtomicU64::new(0),
                fence_reads: Mutex::new(FenceReads::default()),
                snapshots: Mutex::new(HashMap::new()),
            }),
        };
        store
            .shared
            .client
            .head_bucket()
            .bucket(&config.bucket)
            .send()
            .await
            .map_err(|e| {
                StateBackendError::Io(format!(
                    "s3 bucket {:?} at {}: {}",
                    config.bucket,
                    config.endpoint.as_deref().unwrap_or("AWS"),
                    DisplayErrorContext(&e)
                ))
            })?;
        let probed = format!(
            "{} {}",
            config.endpoint.as_deref().unwrap_or("AWS"),
            config.bucket
        );
        if !PROBED.lock().expect("probe cache lock").contains(&probed) {
            store.shared.probe_conditions().await?;
            PROBED.lock().expect("probe cache lock").insert(probed);
        }
        store.shared.check_fence().await?;
        Ok(store)
    }

    /// A handle on this store for `instance_id`, serving vnodes
    /// `0..vnode_capacity`.
    pub fn handle(&self, instance_id: impl Into<String>, vnode_capacity: u32) -> S3Backend {
        S3Backend {
            store: self.clone(),
            instance_id: instance_id.into(),
            limits: InputLimits::new(vnode_capacity, self.shared.max_payload_len),
            told: AtomicU64::new(0),
            carried: AtomicU64::new(0),
        }
    }

    /// The S3 client, for tools that inspect the bucket (benchmarks, tests
    /// that damage objects).
    pub fn client(&self) -> &Client {
        &self.shared.client
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.shared.bucket
    }

    /// The key prefix of this store (empty, or ending with `/`).
    pub fn prefix(&self) -> &str {
        &self.shared.layout.prefix
    }
}

impl Shared {
    async fn put(
        &self,
        what: &str,
        key: &str,
        body: Bytes,
        condition: Condition<'_>,
    ) -> Result<Option<String>, Failure> {
        self.put_with_fence(what, key, body, condition, None).await
    }

    /// A PUT that may also carry the fence metadata (see [`FENCE_METADATA`]);
    /// the stored object's ETag, if the store answered one.
    async fn put_with_fence(
        &self,
        what: &str,
        key: &str,
        body: Bytes,
        condition: Condition<'_>,
        fence: Option<String>,
    ) -> Result<Option<String>, Failure> {
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .set_metadata(fence.map(|f| HashMap::from([(FENCE_METADATA.to_owned(), f)])))
            .body(ByteStream::from(body));
        let request = match condition {
            Condition::None => request,
            Condition::Absent => request.if_none_match("*"),
            Condition::Matches(etag) => request.if_match(etag),
        };
        request
            .send()
            .await
            .map(|out| out.e_tag().map(str::to_owned))
            .map_err(|e| classify(what, key, e))
    }

    /// The object's bytes and ETag.
    async fn get(&self, what: &str, key: &str) -> Result<(Bytes, Option<String>), Failure> {
        let object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify(what, key, e))?;
        let etag = object.e_tag().map(str::to_owned);
        let body = object.body.collect().await.map_err(|e| {
            Failure::Error(StateBackendError::Io(format!(
                "s3 {what} {key:?}: reading the body failed: {e}"
            )))
        })?;
        Ok((body.into_bytes(), etag))
    }

    async fn list_page(
        &self,
        what: &str,
        prefix: &str,
        start_after: Option<&str>,
        token: Option<String>,
    ) -> Result<Page, StateBackendError> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .max_keys(PAGE as i32)
            .set_start_after(start_after.map(str::to_owned))
            .set_continuation_token(token)
            .send()
            .await
            .map_err(|e| StateBackendError::from(classify(what, prefix, e)))?;
        let objects = out
            .contents()
            .iter()
            .filter_map(|o| {
                Some(Listed {
                    key: o.key()?.to_owned(),
                    etag: o.e_tag().unwrap_or_default().to_owned(),
                })
            })
            .collect();
        let next = if out.is_truncated() == Some(true) {
            out.next_continuation_token().map(str::to_owned)
        } else {
            None
        };
        Ok(Page { objects, next })
    }

    /// Every object under `prefix` (after `start_after`), in key order.
    async fn list(
        &self,
        what: &str,
        prefix: &str,
        start_after: Option<&str>,
    ) -> Result<Vec<Listed>, StateBackendError> {
        let mut all = Vec::new();
        let mut token = None;
        loop {
            let page = self.list_page(what, prefix, start_after, token).await?;
            all.extend(page.objects);
            match page.next {
                Some(next) => token = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// Delete `keys` (at most [`PAGE`]) in one request.
    async fn delete_batch(&self, what: &str, keys: Vec<String>) -> Result<(), StateBackendError> {
        if keys.is_empty() {
            return Ok(());
        }
        let objects = keys
            .into_iter()
            .map(|key| ObjectIdentifier::builder().key(key).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StateBackendError::Io(format!("s3 {what}: {e}")))?;
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(|e| StateBackendError::Io(format!("s3 {what}: {e}")))?;
        let out = self
            .client
            .delete_objects()
            .bucket(&self.bucket)
            .delete(delete)
            .send()
            .await
            .map_err(|e| StateBackendError::from(classify(what, "DeleteObjects", e)))?;
        match out.errors().first() {
            None => Ok(()),
            Some(failed) => Err(StateBackendError::Io(format!(
                "s3 {what}: deleting {:?} failed: {} {}",
                failed.key().unwrap_or_default(),
                failed.code().unwrap_or_default(),
                failed.message().unwrap_or_default()
            ))),
        }
    }

    // --- the fence ---------------------------------------------------------

    /// The fence as stored now: one HEAD, since the values travel in the
    /// object's metadata (a HEAD skips the data read a GET makes, which is
    /// most of a small GET's time on SeaweedFS).
    async fn read_fence(&self) -> Result<FenceState, StateBackendError> {
        let key = self.layout.fence();
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| classify("fence read", &key, e));
        let state = match head {
            Ok(object) => {
                let text = object
                    .metadata()
                    .and_then(|m| m.get(FENCE_METADATA))
                    .ok_or_else(|| {
                        StateBackendError::Serialization(format!(
                            "the fence object {key:?} has no {FENCE_METADATA} metadata"
                        ))
                    })?;
                let (value, previous) = parse_fence(text).ok_or_else(|| {
                    StateBackendError::Serialization(format!(
                        "the fence object {key:?} holds {text:?}, not a valid fence"
                    ))
                })?;
                FenceState {
                    value,
                    previous,
                    etag: object.e_tag().map(str::to_owned),
                }
            }
            // Connecting made sure it exists (see `check_fence`): gone
            // since, it was deleted, and the fence it held is unknown.
            Err(Failure::Missing(_)) => return Err(self.fence_missing("")),
            Err(other) => return Err(other.into()),
        };
        self.seen.fetch_max(state.value, Ordering::AcqRel);
        Ok(state)
    }

    fn fence_missing(&self, why: &str) -> StateBackendError {
        StateBackendError::Serialization(format!(
            "the fence object {:?} is missing{why}: it exists from the first connect on, so it \
             was deleted (a lifecycle rule or a clean-up?) and the fence it held is unknown; \
             refusing to treat it as fence 0",
            self.layout.fence()
        ))
    }

    /// At connect: the fence object exists, or the store is new (no
    /// snapshot was ever written) and the fence object is created at 0, so
    /// that from then on a missing fence object is known damage. A missing
    /// fence with snapshots is damage now. The value read is not recorded:
    /// a handle learns the fence from its operations.
    async fn check_fence(&self) -> Result<(), StateBackendError> {
        let key = self.layout.fence();
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| classify("fence check", &key, e))
        {
            Ok(_) => return Ok(()),
            Err(Failure::Missing(_)) => {}
            Err(other) => return Err(other.into()),
        }
        let snapshots = format!("{}snapshots/", self.layout.prefix);
        let page = self
            .list_page("fence check", &snapshots, None, None)
            .await?;
        if let Some(first) = page.objects.first() {
            return Err(self.fence_missing(&format!(" while snapshot {:?} exists", first.key)));
        }
        let fence = render_fence(0, 0);
        match self
            .put_with_fence(
                "fence creation",
                &key,
                frame(Kind::Fence, fence.as_bytes()),
                Condition::Absent,
                Some(fence),
            )
            .await
        {
            // Created, or another process created it first.
            Ok(_) | Err(Failure::Precondition(_)) => Ok(()),
            Err(other) => Err(other.into()),
        }
    }

    /// Check that the store honours conditional writes, on a probe object
    /// of its own (deleted afterwards): a second `If-None-Match: *` create
    /// and an `If-Match` with a wrong ETag must both fail their condition.
    async fn probe_conditions(&self) -> Result<(), StateBackendError> {
        let key = format!("{}conditional-write-probe.{}", self.layout.prefix, stamp());
        let body = || Bytes::from_static(b"laminar-state probe");
        let outcome = async {
            match self
                .put("conditional write probe", &key, body(), Condition::Absent)
                .await
            {
                // Created; a 412 can only be this very PUT, retried after
                // it landed (the key is unique to this probe).
                Ok(_) | Err(Failure::Precondition(_)) => {}
                Err(other) => return Err(other.into()),
            }
            let checks = [
                (
                    Condition::Absent,
                    "If-None-Match: * (a second create of the same key succeeded)",
                ),
                (
                    Condition::Matches("\"00000000000000000000000000000000\""),
                    "If-Match (a replace with a wrong ETag succeeded)",
                ),
            ];
            for (condition, missing) in checks {
                match self
                    .put("conditional write probe", &key, body(), condition)
                    .await
                {
                    Err(Failure::Precondition(_)) => {}
                    Ok(_) => {
                        return Err(StateBackendError::Io(format!(
                            "s3 bucket {:?}: the store ignores {missing}; the fence and the \
                             commit markers need conditional writes, refusing to run on it",
                            self.bucket
                        )));
                    }
                    Err(
                        Failure::Missing(message) | Failure::Error(StateBackendError::Io(message)),
                    ) => {
                        return Err(StateBackendError::Io(format!(
                            "s3 bucket {:?}: probing {missing}: {message}; the fence and the \
                             commit markers need conditional writes",
                            self.bucket
                        )));
                    }
                    Err(Failure::Error(other)) => return Err(other),
                }
            }
            Ok(())
        }
        .await;
        // Deleted whatever happened; a probe object left behind is inert.
        self.discard(&key).await;
        outcome
    }

    /// The fence, read by a request that started after this call: what a
    /// write needs after its object landed. Callers that arrive while a read
    /// is in flight share the next one, so concurrent writers cost one HEAD
    /// per round rather than one each.
    async fn fresh_fence(self: &Arc<Self>) -> Result<FenceState, StateBackendError> {
        let (answer, result) = oneshot::channel();
        let start = {
            let mut reads = self.fence_reads.lock().expect("fence reads lock");
            reads.waiting.push(answer);
            !std::mem::replace(&mut reads.running, true)
        };
        if start {
            // A task, not this caller, runs the rounds: the caller may be
            // cancelled, the others still need their answer.
            let shared = Arc::clone(self);
            tokio::spawn(async move {
                loop {
                    let waiting = {
                        let mut reads = shared.fence_reads.lock().expect("fence reads lock");
                        if reads.waiting.is_empty() {
                            reads.running = false;
                            return;
                        }
                        std::mem::take(&mut reads.waiting)
                    };
                    let state = shared.read_fence().await;
                    for waiter in waiting {
                        let _ = waiter.send(match &state {
                            Ok(state) => Ok(state.clone()),
                            Err(e) => Err(copy_error(e)),
                        });
                    }
                }
            });
        }
        result
            .await
            .map_err(|_| StateBackendError::Io("s3: the fence reader stopped".into()))?
    }

    /// Make the stored fence at least `version`, with its snapshot written.
    async fn raise(self: &Arc<Self>, version: u64) -> Result<(), StateBackendError> {
        let key = self.layout.fence();
        for _ in 0..MAX_RESTARTS * 4 {
            let state = self.read_fence().await?;
            // The snapshot of the fence in force must exist before the fence
            // moves on: the next snapshot builds on it.
            self.snapshot(&state).await?;
            if state.value >= version {
                return Ok(());
            }
            let fence = render_fence(version, state.value);
            let condition = match &state.etag {
                Some(etag) => Condition::Matches(etag),
                None => Condition::Absent,
            };
            match self
                .put_with_fence(
                    "fence raise",
                    &key,
                    frame(Kind::Fence, fence.as_bytes()),
                    condition,
                    Some(fence.clone()),
                )
                .await
            {
                Ok(_) => {
                    self.seen.fetch_max(version, Ordering::AcqRel);
                    let raised = FenceState {
                        value: version,
                        previous: state.value,
                        etag: None,
                    };
                    self.snapshot(&raised).await?;
                    return Ok(());
                }
                // Another raise won the swap, or this one landed on an
                // earlier attempt: read the fence again.
                Err(Failure::Precondition(_) | Failure::Missing(_)) => continue,
                Err(Failure::Error(e)) => return Err(e),
            }
        }
        Err(StateBackendError::Io(format!(
            "s3 fence raise to {version}: the fence kept changing under this raise"
        )))
    }

    /// The snapshot of `fence` (`None` for fence 0, which hides nothing),
    /// building it if the raise that set the fence did not get to.
    async fn snapshot(
        &self,
        fence: &FenceState,
    ) -> Result<Option<Arc<Snapshot>>, StateBackendError> {
        if fence.value == 0 {
            return Ok(None);
        }
        if let Some(stored) = self.stored_snapshot(fence.value).await? {
            return Ok(Some(stored));
        }
        // Build it: everything listed now (after the swap) of an older
        // period that was visible under the fence before.
        let before = if fence.previous == 0 {
            None
        } else {
            Some(self.stored_snapshot(fence.previous).await?.ok_or_else(|| {
                StateBackendError::Serialization(format!(
                    "snapshot {:?} is missing: the fence history is damaged",
                    self.layout.snapshot(fence.previous)
                ))
            })?)
        };
        let key = self.layout.snapshot(fence.value);
        let mut snapshot = Snapshot::default();
        for object in self.list("snapshot", &self.layout.partials(), None).await? {
            let Some((_, _, period)) = self.layout.parse_partial(&object.key) else {
                continue;
            };
            let relative = &object.key[self.layout.prefix.len()..];
            let was_visible = Snapshot::shows(
                before.as_deref(),
                fence.previous,
                period,
                relative,
                &object.etag,
            );
            if period < fence.value && was_visible {
                snapshot
                    .visible
                    .insert(relative.to_owned(), object.etag.clone());
            }
        }
        let framed = frame(Kind::Snapshot, &snapshot.render());
        match self
            .put("snapshot write", &key, framed, Condition::Absent)
            .await
        {
            Ok(_) => {
                let snapshot = Arc::new(snapshot);
                self.cache_snapshot(fence.value, Arc::clone(&snapshot));
                Ok(Some(snapshot))
            }
            // Another handle wrote it first: everyone uses that one.
            Err(Failure::Precondition(_)) => {
                let (framed, _) = self.get("snapshot read", &key).await?;
                self.keep_snapshot(fence.value, &key, framed).map(Some)
            }
            Err(other) => Err(other.into()),
        }
    }

    /// The snapshot of `fence` if it was written: from the cache, else
    /// from the bucket.
    async fn stored_snapshot(
        &self,
        fence: u64,
    ) -> Result<Option<Arc<Snapshot>>, StateBackendError> {
        let cached = self
            .snapshots
            .lock()
            .expect("snapshot cache lock")
            .get(&fence)
            .cloned();
        if cached.is_some() {
            return Ok(cached);
        }
        let key = self.layout.snapshot(fence);
        match self.get("snapshot read", &key).await {
            Ok((framed, _)) => self.keep_snapshot(fence, &key, framed).map(Some),
            Err(Failure::Missing(_)) => Ok(None),
            Err(other) => Err(other.into()),
        }
    }

    fn keep_snapshot(
        &self,
        fence: u64,
        key: &str,
        framed: Bytes,
    ) -> Result<Arc<Snapshot>, StateBackendError> {
        let snapshot = Arc::new(Snapshot::parse(
            key,
            &unframe(Kind::Snapshot, key, framed)?,
        )?);
        self.cache_snapshot(fence, Arc::clone(&snapshot));
        Ok(snapshot)
    }

    fn cache_snapshot(&self, fence: u64, snapshot: Arc<Snapshot>) {
        let mut cache = self.snapshots.lock().expect("snapshot cache lock");
        // Only the newest fences are ever asked for again.
        if cache.len() >= 4
            && let Some(&oldest) = cache.keys().min()
        {
            cache.remove(&oldest);
        }
        cache.insert(fence, snapshot);
    }

    /// Whether the snapshot of `fence` (built if the raise did not get to
    /// it) names the partial `key` with ETag `etag` (the key alone when the
    /// store answered no ETag: keys are unique to a write, and a retried PUT
    /// stores the same bytes).
    async fn names(
        &self,
        fence: &FenceState,
        key: &str,
        etag: Option<&str>,
    ) -> Result<bool, StateBackendError> {
        let Some(snapshot) = self.snapshot(fence).await? else {
            return Ok(false);
        };
        let relative = &key[self.layout.prefix.len()..];
        Ok(snapshot.visible.get(relative).is_some_and(|named| {
            etag.is_none_or(|etag| named.trim_matches('"') == etag.trim_matches('"'))
        }))
    }

    /// Delete an invisible object: garbage collection, best effort (an
    /// object left behind stays invisible; prune removes it with its epoch).
    async fn discard(&self, key: &str) {
        let _ = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
    }

    /// The listed partials that are visible under `fence`, by vnode, each
    /// vnode's newest last.
    async fn visible(
        &self,
        listed: Vec<Listed>,
        fence: &FenceState,
    ) -> Result<HashMap<u32, Vec<Listed>>, StateBackendError> {
        let mut parsed = Vec::with_capacity(listed.len());
        let mut older = false;
        for object in listed {
            if let Some((_, vnode, period)) = self.layout.parse_partial(&object.key) {
                older |= period < fence.value;
                parsed.push((vnode, period, object));
            }
        }
        let snapshot = if older {
            self.snapshot(fence).await?
        } else {
            None
        };
        let mut visible: HashMap<u32, Vec<Listed>> = HashMap::new();
        for (vnode, period, object) in parsed {
            let relative = &object.key[self.layout.prefix.len()..];
            if Snapshot::shows(
                snapshot.as_deref(),
                fence.value,
                period,
                relative,
                &object.etag,
            ) {
                visible.entry(vnode).or_default().push(object);
            }
        }
        Ok(visible)
    }
}

// ---------------------------------------------------------------------------
// The handle
// ---------------------------------------------------------------------------

/// A handle on an [`S3Store`], with its own instance id.
pub struct S3Backend {
    store: S3Store,
    instance_id: String,
    limits: InputLimits,
    /// The highest version this handle was told.
    told: AtomicU64,
    /// The highest version this handle has made durable in the bucket.
    carried: AtomicU64,
}

impl std::fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Backend")
            .field("bucket", &self.store.shared.bucket)
            .field("prefix", &self.store.shared.layout.prefix)
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

impl S3Backend {
    /// Connect with `config` and return a handle.
    pub async fn connect(
        config: &S3Config,
        instance_id: impl Into<String>,
        vnode_capacity: u32,
    ) -> Result<Self, StateBackendError> {
        Ok(S3Store::connect(config)
            .await?
            .handle(instance_id, vnode_capacity))
    }

    /// The store this handle uses.
    pub fn store(&self) -> &S3Store {
        &self.store
    }

    /// Carry a raise made on this handle to the bucket before its next write
    /// or seal, as the contract requires.
    async fn carry_fence(&self) -> Result<(), StateBackendError> {
        let told = self.told.load(Ordering::Acquire);
        if told > self.carried.load(Ordering::Acquire) {
            self.store.shared.raise(told).await?;
            self.carried.fetch_max(told, Ordering::AcqRel);
        }
        Ok(())
    }

    fn stale(caller: u64, authoritative: u64) -> StateBackendError {
        StateBackendError::StaleVersion {
            caller,
            authoritative,
        }
    }
}

#[async_trait]
impl StateBackend for S3Backend {
    async fn write_partial(
        &self,
        vnode: u32,
        epoch: u64,
        assignment_version: u64,
        bytes: Bytes,
    ) -> Result<(), StateBackendError> {
        self.limits.check_write(vnode, &bytes)?;
        self.carry_fence().await?;
        let shared = &self.store.shared;
        let version = assignment_version;
        // The period is the fence this store last read; a write never
        // carries a period above its own version.
        let mut period = shared.seen.load(Ordering::Acquire);
        let told = self.told.load(Ordering::Acquire);
        if version < told.max(period) {
            // Refused without writing; the refusal names the fence in force
            // now, which may be higher than this handle last saw.
            let fence = shared.fresh_fence().await?.value;
            return Err(Self::stale(
                version,
                fence.max(self.authoritative_version()),
            ));
        }
        let body = frame(Kind::Partial, &bytes);
        let what = format!("write_partial({vnode}, {epoch})");
        for _ in 0..MAX_RESTARTS {
            let key = shared.layout.partial(epoch, vnode, period);
            let etag = shared
                .put(&what, &key, body.clone(), Condition::None)
                .await
                .map_err(StateBackendError::from)?;
            // A fence read that started after the object landed.
            let fence = shared.fresh_fence().await?;
            if period >= fence.value {
                // Its period is current (and `version >= period`): visible
                // now, and named by the next raise's snapshot, whose listing
                // follows the swap.
                return Ok(());
            }
            // The fence rose past the period: the object is visible if and
            // only if the snapshot of that fence names it (readers judge it
            // the same way, and every later snapshot keeps what this one
            // shows). Named: it landed before the raise's listing, so the
            // write took effect before the raise.
            if shared.names(&fence, &key, etag.as_deref()).await? {
                return Ok(());
            }
            // Not named: invisible now and under every later fence, so the
            // answer below is true whether or not this delete succeeds; it
            // only keeps the bucket clean.
            shared.discard(&key).await;
            if version < fence.value {
                return Err(Self::stale(version, fence.value));
            }
            // The writer's version still satisfies the fence: write again in
            // the new period.
            period = fence.value;
        }
        Err(StateBackendError::Io(format!(
            "s3 {what}: the fence kept rising during the write"
        )))
    }

    async fn read_partial(
        &self,
        vnode: u32,
        epoch: u64,
    ) -> Result<Option<Bytes>, StateBackendError> {
        self.limits.check_vnode(vnode)?;
        let shared = &self.store.shared;
        let what = format!("read_partial({vnode}, {epoch})");
        let prefix = shared.layout.vnode_partials(epoch, vnode);
        for _ in 0..MAX_RESTARTS {
            let listed = shared.list(&what, &prefix, None).await?;
            // Nothing listed: nothing was stored when the listing was
            // answered, whatever the fence.
            let Some(newest) = listed.last().map(|o| o.key.clone()) else {
                return Ok(None);
            };
            // The listed objects are judged under a fence read that starts
            // after the listing was answered (an object listed then landed
            // before that read, so a raise the read does not show had not
            // swapped the fence when it landed). Meanwhile the newest
            // listed object, usually the answer, is fetched.
            let (fence, fetched) = tokio::join!(shared.fresh_fence(), shared.get(&what, &newest));
            let mut visible = shared.visible(listed, &fence?).await?;
            let Some(chosen) = visible.remove(&vnode).and_then(|mut v| v.pop()) else {
                return Ok(None);
            };
            let fetched = if chosen.key == newest {
                fetched
            } else {
                shared.get(&what, &chosen.key).await
            };
            match fetched {
                Ok((framed, _)) => return unframe(Kind::Partial, &chosen.key, framed).map(Some),
                // Pruned, or a refused write deleted, since the listing.
                Err(Failure::Missing(_)) => continue,
                Err(other) => return Err(other.into()),
            }
        }
        Err(StateBackendError::Io(format!(
            "s3 {what}: the partial kept vanishing between listing and reading"
        )))
    }

    async fn epoch_complete(&self, epoch: u64, vnodes: &[u32]) -> Result<bool, StateBackendError> {
        self.limits.check_gate(epoch, vnodes)?;
        self.carry_fence().await?;
        let shared = &self.store.shared;
        let what = format!("epoch_complete({epoch})");
        let prefix = shared.layout.epoch_partials(epoch);
        let key = shared.layout.marker(epoch);
        let body = frame(Kind::Marker, self.instance_id.as_bytes());
        for _ in 0..MAX_RESTARTS {
            let listed = shared.list(&what, &prefix, None).await?;
            // Judged under a fence read that starts after the listing was
            // answered (see `read_partial`). A deposed leader is refused on
            // that read, as a best effort: the check cannot be atomic with
            // the marker PUT (see "Sealing and the fence" in the crate docs).
            let fence = shared.fresh_fence().await?;
            let told = self.told.load(Ordering::Acquire);
            if told > 0 && told < fence.value {
                return Err(Self::stale(told, fence.value));
            }
            let present = shared.visible(listed, &fence).await?;
            if !vnodes.iter().all(|v| present.contains_key(v)) {
                return Ok(false);
            }
            match shared
                .put(&what, &key, body.clone(), Condition::Absent)
                .await
            {
                Ok(_) => return Ok(true),
                Err(Failure::Precondition(_)) => {}
                Err(other) => return Err(other.into()),
            }
            // Sealed already, perhaps by this very instance on an attempt
            // whose answer was lost: the marker names the committer.
            match shared.get(&what, &key).await {
                Ok((framed, _)) => {
                    let committer = utf8(&key, &unframe(Kind::Marker, &key, framed)?)?;
                    return seal_outcome(&committer, &self.instance_id);
                }
                // Pruned between the two requests, and the partials with it
                // (prune deletes markers first): start over from the
                // listing, never create the marker again unchecked.
                Err(Failure::Missing(_)) => continue,
                Err(other) => return Err(other.into()),
            }
        }
        Err(StateBackendError::Io(format!(
            "s3 {what}: the marker kept appearing and vanishing"
        )))
    }

    async fn prune_before(&self, before: u64) -> Result<(), StateBackendError> {
        let shared = &self.store.shared;
        let what = format!("prune_before({before})");
        // Markers first: a crash half-way leaves unsealed partials (pruned
        // next time), never a seal whose partials are gone.
        let ranges = [
            (shared.layout.markers(), shared.layout.marker(before)),
            (
                shared.layout.partials(),
                shared.layout.epoch_partials(before),
            ),
        ];
        for (prefix, bound) in ranges {
            let mut page = shared.list_page(&what, &prefix, None, None).await?;
            loop {
                let below: Vec<String> = page
                    .objects
                    .iter()
                    .map(|o| o.key.clone())
                    .take_while(|k| *k < bound)
                    .collect();
                let more = below.len() == page.objects.len() && page.next.is_some();
                if !more {
                    shared.delete_batch(&what, below).await?;
                    break;
                }
                // Delete this page while listing the next.
                let (deleted, next) = tokio::join!(
                    shared.delete_batch(&what, below),
                    shared.list_page(&what, &prefix, None, page.next.take())
                );
                deleted?;
                page = next?;
            }
        }
        Ok(())
    }

    fn set_authoritative_version(&self, version: u64) {
        self.told.fetch_max(version, Ordering::AcqRel);
    }

    fn authoritative_version(&self) -> u64 {
        self.told
            .load(Ordering::Acquire)
            .max(self.store.shared.seen.load(Ordering::Acquire))
    }

    async fn latest_committed_epoch(&self) -> Result<Option<u64>, StateBackendError> {
        let shared = &self.store.shared;
        let markers = shared
            .list("latest_committed_epoch()", &shared.layout.markers(), None)
            .await?;
        markers
            .last()
            .map(|m| shared.layout.parse_marker(&m.key))
            .transpose()
    }

    async fn sealed_epochs(&self, after: u64) -> Result<Vec<u64>, StateBackendError> {
        let shared = &self.store.shared;
        let markers = shared
            .list(
                &format!("sealed_epochs({after})"),
                &shared.layout.markers(),
                Some(&shared.layout.marker(after)),
            )
            .await?;
        markers
            .iter()
            .map(|m| shared.layout.parse_marker(&m.key))
            .collect()
    }

    async fn persist_authoritative_version(&self, version: u64) -> Result<(), StateBackendError> {
        self.set_authoritative_version(version);
        self.carry_fence().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_numerically() {
        let layout = Layout::new("/ns/a/");
        assert_eq!(layout.prefix, "ns/a/");
        assert!(layout.epoch_partials(9) < layout.epoch_partials(10));
        assert!(layout.partial(3, 7, 2) < layout.epoch_partials(4));
        assert!(layout.partial(3, 7, 2) > layout.epoch_partials(3));
        assert!(layout.partial(3, 7, 2) < layout.partial(3, 7, 10));
        assert!(layout.marker(u64::MAX) > layout.marker(9));
        let key = layout.partial(u64::MAX, u32::MAX, 5);
        assert_eq!(layout.parse_partial(&key), Some((u64::MAX, u32::MAX, 5)));
        assert_eq!(layout.parse_partial("ns/a/m/00000000000000000001"), None);
        assert_eq!(layout.parse_marker(&layout.marker(42)).ok(), Some(42));
        assert_eq!(Layout::new("").fence(), "fence");
    }

    #[test]
    fn stamps_increase_within_a_process() {
        let stamps: Vec<String> = (0..1000).map(|_| stamp()).collect();
        assert!(stamps.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn frames_detect_damage_and_kind() {
        let framed = frame(Kind::Partial, b"state");
        assert_eq!(
            unframe(Kind::Partial, "k", framed.clone())
                .unwrap()
                .as_ref(),
            b"state"
        );
        assert!(unframe(Kind::Marker, "k", framed.clone()).is_err());
        for i in 0..framed.len() {
            let mut damaged = framed.to_vec();
            damaged[i] ^= 0x40;
            assert!(
                matches!(
                    unframe(Kind::Partial, "k", Bytes::from(damaged)),
                    Err(StateBackendError::Serialization(_))
                ),
                "flip at byte {i} went unnoticed"
            );
        }
        assert!(unframe(Kind::Partial, "k", Bytes::new()).is_err());
    }

    #[test]
    fn urls_parse_and_refuse_nonsense() {
        let config = S3Config::from_url(
            "s3://bucket/a/b?endpoint=http%3A%2F%2F127.0.0.1%3A8333&region=eu-west-1&max_attempts=2&timeout_ms=1500&access_key_id=k&secret_access_key=s",
        )
        .unwrap();
        assert_eq!(config.bucket, "bucket");
        assert_eq!(config.prefix, "a/b");
        assert_eq!(config.endpoint.as_deref(), Some("http://127.0.0.1:8333"));
        assert!(config.force_path_style, "an endpoint implies path style");
        assert_eq!(config.region.as_deref(), Some("eu-west-1"));
        assert_eq!(config.max_attempts, 2);
        assert_eq!(config.operation_timeout, Duration::from_millis(1500));
        assert_eq!(config.credentials, Some(("k".into(), "s".into())));
        assert!(
            !format!("{config:?}").contains("\"s\""),
            "the secret is not printed"
        );
        let plain = S3Config::from_url("s3://bucket").unwrap();
        assert_eq!((plain.prefix.as_str(), plain.force_path_style), ("", false));
        for bad in [
            "http://bucket/x",
            "s3:///x",
            "s3://b/x?max_attempts=0",
            "s3://b/x?path_style=maybe",
            "s3://b/x?colour=red",
            "s3://b/x?access_key_id=k",
            "s3://b/x?region=%zz",
        ] {
            assert!(
                matches!(
                    S3Config::from_url(bad),
                    Err(StateBackendError::Serialization(_))
                ),
                "{bad} was accepted"
            );
        }
    }

    #[test]
    fn fences_round_trip_and_refuse_damage() {
        let text = render_fence(u64::MAX, 7);
        assert_eq!(parse_fence(&text), Some((u64::MAX, 7)));
        assert_eq!(parse_fence(&text.replace("7 ", "8 ")), None);
        assert_eq!(parse_fence("garbage"), None);
        assert_eq!(parse_fence(""), None);
    }

    #[test]
    fn snapshots_round_trip() {
        let mut snapshot = Snapshot::default();
        snapshot.visible.insert("p/1/2/3/4".into(), "\"e1\"".into());
        snapshot.visible.insert("p/1/2/3/5".into(), "\"e2\"".into());
        let parsed = Snapshot::parse("k", &snapshot.render()).unwrap();
        assert_eq!(parsed.visible, snapshot.visible);
    }
}
