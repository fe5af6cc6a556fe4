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
//!
//! # Where things are
//!
//! | module | holds |
//! |---|---|
//! | `config` | [`S3Config`] and its URL |
//! | `layout` | the key scheme above, and stamps |
//! | `frame` | framing and checksums, the fence's metadata |
//! | `client` | requests and the one classification of S3 errors |
//! | `fence` | the fence object, snapshots and visibility (P7) |
//! | `store` | [`S3Store`]: the client, shared state, the checks at connect |
//! | `backend` | [`S3Backend`] and the trait implementation, in the trait's order |
//!
//! [`StateBackend`]: laminar_state_api::StateBackend
//! [`StateBackendError::Io`]: laminar_state_api::StateBackendError::Io
//! [`StateBackendError::Serialization`]: laminar_state_api::StateBackendError::Serialization
//! [`StateBackendError::SplitBrainCommit`]: laminar_state_api::StateBackendError::SplitBrainCommit
//! [`StateBackendError::StaleVersion`]: laminar_state_api::StateBackendError::StaleVersion

mod backend;
mod client;
mod config;
mod fence;
mod frame;
mod layout;
mod store;

pub use backend::S3Backend;
pub use config::{
    DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_PAYLOAD_LEN, DEFAULT_OPERATION_TIMEOUT, S3Config,
};
pub use store::S3Store;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::*;
    use crate::fence::*;
    use crate::frame::*;
    use crate::layout::*;
    use bytes::Bytes;
    use laminar_state_api::StateBackendError;

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
