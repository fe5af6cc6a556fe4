#![doc = include_str!("../README.md")]
//!
//! # The primitives
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
//! | `P/m/EPOCH` | the commit marker: the committer's instance id and the prune count its gate read (see "Sealing and pruning"); created only if absent, or replacing (`If-Match`) a marker that is no seal |
//! | `P/prunes` | the prune registry: how many prunes began, the highest bound begun after each count, the unfinished prunes with their leases; replaced by compare-and-swap; created by the first prune |
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
//!    the answer is true whether or not that delete succeeds. One case
//!    differs: a prune of the epoch may have deleted the object after
//!    readers saw it and before the snapshot's listing, and a retry of the
//!    PUT (its first answer lost, or the process paused past the attempt
//!    timeout) may have stored it again since, so an object found now
//!    need not have been stored throughout. So when the snapshot does not
//!    name the object and a prune of its epoch was unfinished when the PUT
//!    went out or began since (the prune registry, read after the
//!    snapshot; see "Sealing and pruning"), or the object is gone, the
//!    write answers [`StateBackendError::Io`] (outcome unknown), never
//!    `StaleVersion` (tested by
//!    `a_write_read_by_others_and_then_pruned_is_never_refused` and
//!    `a_write_whose_retry_lands_after_a_prune_and_a_raise_is_not_refused`;
//!    `cargo xtask chaos --backend s3` found the second: a paused engine's
//!    write, retried after a prune, was refused though others had read it).
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
//! `read_partial`, `epoch_complete` and `partials` list the partials first and read the
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
//! - No expiry of the fence, the snapshots or the prune registry (see
//!   "Sealing and pruning"): a lifecycle rule that
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
//! | `write_partial` | 1 PUT + 1 fence HEAD, the HEAD shared by concurrent writes of the store; + 1 snapshot GET (cached) when the fence rose past the store's last read; + 1 registry GET and 1 HEAD when the snapshot does not name the object (a refusal), + 1 DELETE of it | 2 |
//! | `read_partial` | 1 LIST, then 1 fence HEAD (shared) and 1 GET at once; the LIST alone when nothing is listed; + 1 GET if the newest listed object is invisible | 2 |
//! | `read_partials`, `N` vnodes | ceil(L/1000) LIST of the epoch (ranged, below), then 1 fence HEAD (shared), then `N` GETs, 32 at a time; the LIST alone when nothing is listed; + 1 snapshot GET (cached) when objects older than the fence are listed | 3 + pages |
//! | `epoch_complete`, any vnode count | ceil(L/1000) LIST (ranged, below), then 1 fence HEAD (shared) and 1 registry GET at once (the GET only when the listing names every vnode asked), then 1 marker PUT; the LIST and the HEAD alone when a vnode is missing; + 1 registry GET before the LIST when this process's copy shows a prune of the epoch (then often `Ok(false)` without listing); + 1 marker GET and 1 registry GET if the epoch was already sealed; all again when a prune of the epoch got in the way | 3 + |
//! | `prune_before` | 1 registry PUT to register and 1 to unregister (each + 1 GET when another process changed the registry since this one last saw it); ceil(K/1000) LIST + ceil(K/1000) DeleteObjects, for markers, partials and markers again; + 1 registry PUT per renewal of its lease (a prune running longer than two request bounds) | 2 + pages |
//! | `partials(epoch)` | ceil(L/1000) LIST, then 1 fence HEAD (shared); the LIST alone when nothing is listed; + 1 snapshot GET (cached) when an object is older than the fence. Lists exactly the vnodes `read_partial` would find: an object a fenced-out write left behind is judged invisible here too | 2 |
//! | `latest_committed_epoch`, `sealed_epochs` | 1 LIST per 1000 markers; + 1 registry GET if any marker is listed; + 1 marker GET per listed marker below the highest bound any prune ever had (`latest_committed_epoch`: until the highest seal) | 1 to 3 |
//! | a fence raise | 1 HEAD + 1 PUT `If-Match` + ceil(all partials/1000) LIST + 1 snapshot PUT | 3 + pages |
//! | [`S3Store::connect`] | 1 HeadBucket + 1 fence HEAD; on a new store + 1 LIST + 1 fence PUT; once per process per endpoint and bucket, the probe: 3 PUT + 1 DELETE | 2 to 8 |
//!
//! A fence HEAD is shared: a write needs a fence read that *started after its
//! object landed*; all writes of the store waiting for one are answered by
//! the same HEAD, so many concurrent writers cost about one PUT each. After
//! a raise, a reader that meets objects older than the fence also fetches
//! the snapshot once (it is immutable and cached).
//!
//! The gate's one registry GET is the read after its listing, before its
//! marker goes out (its copy from before the listing is the one its
//! process last saw, at no cost). A recovery query reads a marker only
//! below the highest bound any prune ever had: markers of an epoch being pruned, left by a seal that
//! raced a prune, or of an epoch sealed again after it was pruned; an
//! engine that prunes behind its seals has none of them once its prunes
//! finish.
//!
//! The gate and `read_partials` asked for more than 512 vnodes list the
//! epoch in key ranges of 512 asked vnodes each, 16 ranges at once: the
//! LISTs of one listing, plus at most one per range boundary (a range of
//! 512 vnodes of one object each is one page), but a gate of 4,096 vnodes
//! waits for one page, not for five in turn. The ranges split at
//! `{vnode:010}` under the epoch's prefix, a name that no partial's key
//! equals and that sorts after every key of a lower vnode, so together
//! they answer every partial one listing of the epoch answers (a foreign
//! object named exactly like a split is in no range; it is no partial);
//! each range's pages are answered at their own moments, as the pages of
//! one listing are, which the visibility argument allows (an object is
//! judged under a fence read that starts after the whole listing was
//! answered).
//!
//! # Limits
//!
//! - A write concurrent with a prune of its own epoch can be undone and
//!   redone: if its PUT landed, was deleted by the prune, and the client's
//!   retry of that PUT (its first answer lost) stored it again, readers see
//!   its bytes, then nothing, then its bytes again. The write's answer
//!   stays true (`Ok` when visible, `Io` when unknown, never a refusal of
//!   bytes that were read), and an engine prunes only epochs it no longer
//!   writes, so it meets this only through a zombie; the bytes are invisible
//!   once a raise passed the write's period.
//! - A write that is retried by the client after its first attempt landed
//!   relies on the store giving the same bytes the same ETag (an MD5, as
//!   S3 does without SSE-KMS or SSE-C, and SeaweedFS and moto do): a store
//!   that gives a new ETag to each PUT makes such an object, if a snapshot
//!   named the first one, invisible, and its writer answers
//!   `StaleVersion`, which is then true of what readers see from then on
//!   but not of what they may have read before.
//! - A raise lists every partial of the store and writes a snapshot of
//!   about 100 bytes per partial older than the new fence; raises happen on
//!   failover, and pruning keeps the store small.
//! - Snapshots are never deleted (a reader judging under an older fence
//!   may still need that fence's snapshot, and the next one is built from
//!   it): one object per raise stays, which the growth soak shows
//!   (`cargo xtask soak --backend s3 --raise-every K`). The footprint grows
//!   with leader changes, not with checkpoints.
//! - Every write is a new object; rewrites of a `(vnode, epoch)` (replays)
//!   keep their older objects until the epoch is pruned. Objects of refused
//!   writes whose clean-up failed stay (invisible) until then too.
//!
//! # Sealing and pruning (P11)
//!
//! No sealed epoch lacks its partials, even when a prune races a seal of
//! the same epoch, or either dies half-way. A prune deletes markers and
//! partials, the gate lists partials and then creates a marker, and S3
//! cannot make a DELETE conditional on another object: a prune can delete
//! the partials a gate counted, and the gate's marker can land after. So,
//! as with late writes (P7), such a marker is made harmless rather than
//! prevented: what decides is which markers are *seals*.
//!
//! 1. The prune registry `P/prunes`, replaced only by compare-and-swap,
//!    counts the prunes that ever began and lists the unfinished ones (id,
//!    bound, end of lease). A prune registers (the count goes up), deletes
//!    the markers below its bound, then the partials, then the markers
//!    again (those that landed meanwhile), and unregisters.
//! 2. A marker of epoch `e` records a count `c`: how many prunes had begun
//!    in a copy of the registry its gate took *before listing the
//!    partials*. It is a seal if and only if no prune with a bound above
//!    `e` began after the first `c`. For that the registry keeps, for each
//!    count, the highest bound of the prunes begun after it, as a staircase
//!    of steps `(n, bound)`: one per prune whose bound is above that of
//!    every prune begun after it, so one in all while bounds rise, as an
//!    engine's do. A marker that is no seal never becomes one again.
//! 3. The gate's copy is the newest registry this process saw (the empty
//!    one a store starts with, at first): any registry that existed before
//!    the listing will do, since an older copy only makes the check in 4
//!    stricter, except for lease ends: a running prune renews its lease,
//!    so an old copy can show a lease over that was extended since. So
//!    when the copy lists an unfinished prune of the epoch, whatever its
//!    lease end, the gate reads the registry, and if that shows the prune
//!    unfinished with its lease not over, answers `Ok(false)`: ordered
//!    after that prune, the seal finds the partials gone. (The gate once
//!    trusted the copy's lease end; a cold review found that a gate could
//!    then count partials a renewed prune was about to delete.)
//! 4. After the listing was answered, and before its marker goes out, the
//!    gate reads the registry again. If a prune of the epoch began since
//!    its copy, it starts over from this registry (the prune is running:
//!    `Ok(false)`; it took the partials: `Ok(false)` from the listing; it
//!    took none, the epoch having been written again or the copy being
//!    old: a marker at the new count). If not, it creates the marker (or
//!    replaces, `If-Match`, a marker at the key that is no seal) and
//!    answers `Ok(true)` once it landed: the seal is ordered before any
//!    prune of the epoch that began later, and that prune takes it away.
//! 5. Readers list first and read the registry after, then count only
//!    seals: `latest_committed_epoch` and `sealed_epochs` (a marker at or
//!    above every bound ever pruned is a seal whatever its count; one below
//!    is read, and if the key holds another object than the one listed,
//!    they list again), and the gate whose marker PUT met 412 (it reads the
//!    marker, then the registry; a marker that is no seal is replaced, never
//!    reported as a win or a split brain).
//!
//! Why. Take a marker of epoch `e` at count `c` and a prune `P` whose bound
//! is above `e`. If `P` began after the first `c`, it shows in every
//! registry read after it registered, before it deleted anything, and from
//! then on the marker is no seal for any reader: a reader whose read does
//! not show `P` read before `P` deleted anything, when the marker (listed
//! before) and the partials its gate counted were still stored. The gate
//! created the marker only after a read that did not show `P` either, so
//! `P` began after that read, when every partial the gate counted was still
//! stored: the gate's `Ok(true)` is a seal ordered before `P`, and `P`
//! takes it away (for readers at once; its marker passes delete the marker
//! if it landed in time, and a later prune or gate does otherwise). If `P`
//! began at or before count `c`, the gate's copy showed it, and its lease
//! was over (below; by a registry read for this gate, so by its newest
//! end), or it was unfinished (the gate answered `Ok(false)`
//! and made no marker), or it had unregistered, after every request it
//! sent had been answered: the gate listed after all of `P`'s deletes, and
//! counted partials `P` never deletes (a prune deletes the objects it
//! listed, and every write makes a new object). So a gate that dies
//! anywhere, or whose answers are lost, leaves at worst a marker that is
//! no seal, and every marker was a seal when its gate answered (or would
//! have answered) `Ok(true)`: a gate told `SplitBrainCommit` never names an
//! instance that was told it did not seal. (The gate used to read the
//! registry after its marker landed, and to answer `Ok(false)` when a
//! prune showed there, though another gate may have read the marker as a
//! seal before the prune began: `cargo xtask chaos --backend s3` found it,
//! `a_gate_named_as_committer_never_answers_that_it_did_not_seal` tests it.)

//! ## A prune that dies, and its lease
//!
//! A prune that dies registered (its process killed, or an error that stops
//! it half-way) would block seals below its bound for ever if only it could
//! unregister; and a later prune may not unregister it either, since S3
//! cannot stop a pruner that is merely slow from deleting later. So a
//! registration is a lease: it ends `4 x (operation timeout + attempt
//! timeout)` after it was sent (320 s with the defaults), by the pruner's
//! clock. A prune that runs longer renews it (a swap) once less than two
//! request bounds (operation + attempt timeout) are left, and stops, with
//! [`StateBackendError::Io`] and sending nothing more, once one is. Others
//! treat a registration as over once their clock is 2 s past its end, and
//! the next change to the registry forgets it. Until then seals of the
//! epochs below its bound answer `Ok(false)`; its markers below the bound
//! are no seals from the moment it registered, whatever it got to delete;
//! and a later `prune_before` of the bound deletes the rest. A prune whose
//! caller drops its future (a timeout) is not cut short: it runs on a task
//! of its own to the end, and unregisters.
//!
//! This rests on two assumptions, which nothing here can check:
//!
//! - the store applies a request attempt within the attempt timeout of its
//!   sending, or never; and a pruner's process is not frozen, between
//!   checking its lease and sending a request, for longer than one request
//!   bound. (So every request of a prune lands before its lease ends, and a
//!   prune that unregistered has no delete still in flight.)
//! - the clocks of the machines sharing a store are less than 2 s apart.
//!
//! A prune that breaks them (a DELETE applied minutes after it was sent, a
//! process frozen past its lease and resumed mid-prune) can delete the
//! partials of an epoch below its bound that was sealed again after its
//! lease ended: the one way left to a sealed epoch without its partials.
//! Engines prune only epochs they no longer recover from, and seldom seal
//! those again.
//!
//! ## The registry must stay
//!
//! The registry decides which markers are seals, so, like the fence, it
//! must not be deleted or expired (see "What the store must do"). Damaged
//! bytes fail its frame ([`StateBackendError::Serialization`]); a registry
//! that goes back (deleted, or replaced by an older copy) is reported the
//! same way by a process that read a later one, and by any reader of a
//! marker that counts more prunes than it. A process that never read it
//! and meets only markers at or above the bounds it lists cannot tell.
//!
//! Past 256 steps (prunes each with a bound below every prune begun since
//! the step before, which an engine pruning behind its seals never does)
//! the two oldest steps merge, towards the higher bound: a marker made
//! between those two prunes, of an epoch between their bounds, then reads
//! as no seal. That can lose a seal (an epoch sealed again below an old
//! prune's bound), never make a marker without partials one.
//!
//! Markers written before the registry existed (frame format 1, the
//! committer alone) count as made at count 0: seals until a prune above
//! them begins.

//! # Retries, timeouts and checksums
//!
//! The client retries throttling, 5xx answers, timeouts and broken
//! connections with exponential backoff ([`S3Config::max_attempts`],
//! [`S3Config::attempt_timeout`], [`S3Config::operation_timeout`]); what
//! still fails is [`StateBackendError::Io`] naming the operation. A request
//! retried after it landed is safe: a partial's key is unique to the write,
//! a repeated fence swap or marker creation answers 412, and the 412 is
//! resolved by reading the fence or the marker (whose committer may be this
//! very instance). A registry swap that met 412 reads the registry and
//! decides again (a prune finds itself registered by its id). Request checksums are sent only where S3 requires them
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
//! | `prunes` | the prune registry, leases, and which markers are seals (P11) |
//! | `store` | [`S3Store`]: the client, shared state, the checks at connect |
//! | `backend` | [`S3Backend`] and the trait implementation, in the trait's order |
//!
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
mod prunes;
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
    use crate::prunes::*;
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
    fn the_registry_keeps_the_highest_bound_begun_after_each_count() {
        let mut registry = Registry::default();
        assert_eq!(registry.pruned_since(0), 0);
        // Rising bounds, as an engine prunes: one step.
        for (bound, id) in [(10, "a"), (20, "b"), (30, "c")] {
            registry.begin(id, bound, 1_000);
        }
        assert_eq!(registry.steps, vec![(3, 30)]);
        assert_eq!(registry.pruned_since(0), 30);
        assert_eq!(registry.pruned_since(2), 30);
        assert_eq!(registry.pruned_since(3), 0);
        // A lower bound after them: a second step.
        registry.begin("d", 12, 1_000);
        assert_eq!(registry.steps, vec![(3, 30), (4, 12)]);
        assert_eq!(registry.pruned_since(2), 30);
        assert_eq!(registry.pruned_since(3), 12);
        assert_eq!(registry.highest_bound(), 30);
        // A marker at epoch 15 made after 3 prunes began is a seal; one
        // made before is not.
        assert!(registry.pruned_since(3) <= 15);
        assert!(registry.pruned_since(2) > 15);
        // Unfinished prunes block the epochs below their bound until their
        // lease is over (with the clock skew allowed).
        let skew = u64::try_from(MAX_CLOCK_SKEW.as_millis()).unwrap();
        assert!(registry.blocking(29, 1_000 + skew));
        assert!(!registry.blocking(30, 1_000));
        assert!(!registry.blocking(29, 1_001 + skew));
        registry.forget_ended(1_001 + skew);
        assert!(registry.pruning.is_empty());
        assert_eq!(registry.steps, vec![(3, 30), (4, 12)], "steps stay");
        let text = registry.render();
        assert_eq!(Registry::parse("k", &text).unwrap(), registry);
        for bad in [
            "step 4 12\nstep 3 30\n",
            "began x\n",
            "colour red\n",
            "began 1\nstep 2 5\n",
        ] {
            assert!(
                matches!(
                    Registry::parse("k", bad),
                    Err(StateBackendError::Serialization(_))
                ),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn a_prune_is_judged_by_its_newest_lease() {
        let skew = MAX_CLOCK_SKEW.as_millis() as u64;
        let (sent, epoch) = (1_000_000, 5);
        let mut before = Registry::default();
        before.begin("p", 6, sent - skew - 1);
        // By the copy, its lease was over when the write was sent ...
        assert!(!before.blocking(epoch, sent));
        assert!(before.lists_unfinished(epoch));
        assert!(!before.lists_unfinished(6));
        // ... but it renewed: judged by the newest end, it was running.
        let mut renewed = before.clone();
        renewed.version += 1;
        renewed.pruning.get_mut("p").unwrap().expires_ms = sent + 60_000;
        assert!(Registry::pruned_after(&before, &renewed, epoch, sent));
        // Finished since (no longer listed): it may have deleted after.
        let mut finished = before.clone();
        finished.pruning.clear();
        assert!(Registry::pruned_after(&before, &finished, epoch, sent));
        // Still listed with the lease the copy shows: over, it sent nothing
        // that lands after the write was sent.
        assert!(!Registry::pruned_after(&before, &before, epoch, sent));
        // Epochs at or above its bound are not its concern.
        assert!(!Registry::pruned_after(&before, &renewed, 6, sent));
        // A prune that began since the copy, whatever its lease.
        let empty = Registry::default();
        let mut began = empty.clone();
        began.begin("q", 6, 0);
        began.pruning.clear();
        assert!(Registry::pruned_after(&empty, &began, epoch, sent));
        assert!(!Registry::pruned_after(&empty, &began, 6, sent));
    }

    #[test]
    fn too_many_falling_bounds_merge_towards_higher_bounds() {
        let mut registry = Registry::default();
        let steps = u64::try_from(MAX_STEPS).unwrap();
        for n in 0..=steps {
            registry.begin(&format!("p{n}"), 1_000 - n, 0);
        }
        assert_eq!(registry.steps.len(), MAX_STEPS);
        // The two oldest, (1, 1000) and (2, 999), became (2, 1000): a
        // marker read at count 1 is judged against 1000, not 999.
        assert_eq!(registry.steps[0], (2, 1_000));
        assert_eq!(registry.pruned_since(1), 1_000);
        assert_eq!(registry.pruned_since(2), 998);
    }

    #[test]
    fn markers_of_both_formats_parse() {
        let marker = Marker::parse("m", Marker::frame(7, "node a")).unwrap();
        assert_eq!((marker.began, marker.committer.as_str()), (7, "node a"));
        // Written before the registry existed: read at 0 prunes begun.
        let old = Marker::parse("m", frame(Kind::Marker, b"node-b")).unwrap();
        assert_eq!((old.began, old.committer.as_str()), (0, "node-b"));
        assert!(Marker::parse("m", frame_as(Kind::Marker, MARKER_FORMAT, b"x")).is_err());
        assert!(Marker::parse("m", frame(Kind::Partial, b"x")).is_err());
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
