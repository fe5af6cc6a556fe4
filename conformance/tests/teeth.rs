//! The suite has teeth: a small file-backed reference backend passes every
//! property, and each deliberately broken variant of it is caught by the
//! property that guards against its flaw.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use laminar_state_api::{InputLimits, StateBackend, StateBackendError};
use laminar_state_conformance::harness::{HarnessRun, Verdict};
use laminar_state_conformance::{
    BackendFactory, Capabilities, ChildCommand, Harness, Outcome, TestStore, assert_caught,
    check_blocking,
};

const MAX_PAYLOAD: usize = 64 << 10;

/// One bug each; `None` is the correct backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flaw {
    None,
    /// Each handle keeps its own fence.
    UnsharedFence,
    /// The fence is checked, then the write lands a moment later.
    FenceCheckThenWrite,
    /// The marker is checked, then written a moment later.
    TwoWinners,
    /// `prune_before(b)` also removes epoch `b`.
    PruneOffByOne,
    /// The gate looks at the first vnode only.
    GateChecksFirstVnode,
    /// A raise replaces the fence instead of raising it.
    FenceCanGoDown,
    /// Refusals report the caller's version as the authoritative one.
    StaleErrorMisreported,
    /// Epochs `e` and `e + 4` share storage.
    AliasedEpochs,
    /// No payload limit.
    NoPayloadLimit,
    /// Writes are acknowledged from a user-space buffer that is flushed only
    /// every 64 records: a SIGKILL loses acknowledged writes.
    BufferedAcks,
    /// Reopening forgets the fence.
    FenceNotPersisted,
    /// A replayed write after the seal removes the seal.
    ReplayUnseals,
    /// A deposed leader may still seal.
    SealIgnoresFence,
    /// Claims processes share the store, but each keeps its own fence.
    ClaimsCrossProcess,
    /// A persisted raise announces the new fence (what later raisers trust
    /// as done) before it enforces it: a raise cancelled in between is
    /// taken as done by the next one.
    RaiseAnnouncedFirst,
    /// The seal checks the fence, then writes the marker a moment later.
    SealChecksFenceEarly,
    /// `prune_before` removes partials but keeps commit markers.
    PruneKeepsMarkers,
    /// The gate answers from an existing marker before looking at the
    /// partials.
    GateSealedFirst,
    /// A raise is shared by the raising handle's next write only, not by
    /// its next seal.
    SealDoesNotCarryRaise,
    /// A raise is shared by writes and seals, but
    /// `persist_authoritative_version` is the trait's default (local).
    PersistDoesNotCarry,
    /// `sealed_epochs(after)` computes `after + 1` with wrap-around.
    RecoveryWraps,
    /// `prune_before` deletes the partials, then the markers a moment later.
    PruneMarkersLast,
    /// A seal asked again by its own committer (a retry after a lost
    /// answer) reports split-brain naming itself.
    SealRetryNotWon,
    /// A write checks the fence, awaits once (a round trip), then writes:
    /// the two steps a stall can split.
    WriteChecksFenceThenYields,
    /// `read_partials` answers in vnode order, each vnode once (one range
    /// scan), not in the order asked.
    BatchReadSorted,
    /// `read_partials` reads the distinct vnodes asked in chunks of 512,
    /// each chunk's end off by one: the last vnode of every full chunk is
    /// answered `None`.
    BatchReadLosesChunkEdges,
    /// A seal checks the fence, awaits once, then seals.
    SealChecksFenceThenYields,
    /// Seals hold a markers lock for the whole gate (so a listing of the
    /// sealed epochs waits for one in progress), but check the fence, then
    /// the partials a moment later: the in-memory backend's flaw until a
    /// review found it.
    SealChecksFenceBeforePartials,
    /// A write stores its bytes, awaits once (a round trip), then judges
    /// from what it finds: its key gone (pruned meanwhile) and the fence
    /// above its version, it answers `StaleVersion`, though others may have
    /// read its bytes.
    WriteJudgedAfterPrune,
    /// A raise is carried to the store by reading the fence, awaiting once,
    /// and writing `max(read, own)`: a raise held in between lowers a
    /// higher one made meanwhile.
    RacyFenceRaise,
    /// A seal, as on an object store: look for the marker, then one round
    /// trip later create it if absent; but the store ignores the condition
    /// and overwrites (two leaders both "create" the marker).
    IgnoresCreateIfAbsent,
    /// The same seal on a store that honours create-if-absent (correct).
    CreateIfAbsentHonoured,
    /// `partials` lists every vnode ever written at the epoch, pruned ones
    /// too.
    ListsPruned,
    /// `partials(e)` also lists the vnodes of epoch `e + 1`.
    ListsNextEpoch,
    /// Claims `list_partials`, but `partials` answers `None` (the trait's
    /// default).
    ListsNothing,
    /// Does not claim `list_partials` (and answers `None`): P16 is not
    /// applicable, never a silent pass.
    CannotList,
}

impl Flaw {
    /// A raise stays on the raising handle until something carries it.
    fn deferred(self) -> bool {
        matches!(
            self,
            Flaw::SealDoesNotCarryRaise | Flaw::PersistDoesNotCarry | Flaw::RacyFenceRaise
        )
    }
}

#[derive(Default)]
struct State {
    partials: BTreeMap<(u64, u32), Bytes>,
    markers: BTreeMap<u64, String>,
    /// Every key ever written, pruned or not ([`Flaw::ListsPruned`] only).
    ever: std::collections::BTreeSet<(u64, u32)>,
    fence: u64,
    /// The highest raise announced ([`Flaw::RaiseAnnouncedFirst`] only).
    announced: u64,
}

/// The store: state in memory, every change appended to a log file that a
/// reopen (or another process) replays.
struct Shared {
    flaw: Flaw,
    state: Mutex<(State, Log)>,
    /// Held by a whole gate and by the recovery queries, with
    /// `SealChecksFenceBeforePartials` only.
    markers: tokio::sync::Mutex<()>,
}

enum Log {
    Direct(File),
    Buffered(BufWriter<File>, usize),
}

impl Log {
    fn open(path: &Path, flaw: Flaw) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(if flaw == Flaw::BufferedAcks {
            Log::Buffered(BufWriter::with_capacity(1 << 20, file), 0)
        } else {
            Log::Direct(file)
        })
    }

    fn append(&mut self, line: String) -> Result<(), StateBackendError> {
        let io = |e: std::io::Error| StateBackendError::Io(e.to_string());
        match self {
            Log::Direct(file) => file.write_all(line.as_bytes()).map_err(io),
            Log::Buffered(writer, pending) => {
                writer.write_all(line.as_bytes()).map_err(io)?;
                *pending += 1;
                if *pending >= 64 {
                    *pending = 0;
                    writer.flush().map_err(io)?;
                }
                Ok(())
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Bytes {
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap_or(0))
        .collect::<Vec<u8>>()
        .into()
}

impl Shared {
    fn open(path: PathBuf, flaw: Flaw) -> Result<Arc<Self>, StateBackendError> {
        let mut state = State::default();
        // A SIGKILL mid-append can leave a torn last line; the next append
        // would glue its record onto it. Cut the log back to its last whole
        // line (the torn record was never acknowledged).
        if let Ok(bytes) = std::fs::read(&path)
            && !bytes.is_empty()
            && bytes.last() != Some(&b'\n')
        {
            let whole = bytes
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |at| at + 1);
            OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|file| file.set_len(whole as u64))
                .map_err(|e| StateBackendError::Io(e.to_string()))?;
        }
        if let Ok(file) = File::open(&path) {
            for line in BufReader::new(file).lines().map_while(Result::ok) {
                let f: Vec<&str> = line.split(' ').collect();
                match f.as_slice() {
                    ["W", vnode, epoch, bytes] => {
                        state.partials.insert(
                            (epoch.parse().unwrap_or(0), vnode.parse().unwrap_or(0)),
                            unhex(bytes),
                        );
                    }
                    ["M", epoch, id] => {
                        state
                            .markers
                            .insert(epoch.parse().unwrap_or(0), (*id).to_owned());
                    }
                    ["U", epoch] => {
                        state.markers.remove(&epoch.parse().unwrap_or(0));
                    }
                    ["F", version] if flaw != Flaw::FenceNotPersisted => {
                        state.fence = version.parse().unwrap_or(0);
                    }
                    ["P", before] => {
                        let before: u64 = before.parse().unwrap_or(0);
                        state.partials.retain(|&(e, _), _| e >= before);
                        state.markers.retain(|&e, _| e >= before);
                    }
                    _ => {}
                }
            }
        }
        let log = Log::open(&path, flaw).map_err(|e| StateBackendError::Io(e.to_string()))?;
        Ok(Arc::new(Shared {
            flaw,
            state: Mutex::new((state, log)),
            markers: tokio::sync::Mutex::new(()),
        }))
    }
}

struct Handle {
    shared: Arc<Shared>,
    id: String,
    limits: InputLimits,
    own_fence: Mutex<u64>,
}

impl Handle {
    /// The shared state and its log, locked.
    fn locked(&self) -> std::sync::MutexGuard<'_, (State, Log)> {
        self.shared.state.lock().unwrap()
    }

    /// With `SealChecksFenceBeforePartials`, the markers lock, so that a
    /// listing waits for a seal in progress.
    async fn markers_for_listing(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.shared.flaw {
            Flaw::SealChecksFenceBeforePartials => Some(self.shared.markers.lock().await),
            _ => None,
        }
    }

    fn epoch_key(&self, epoch: u64) -> u64 {
        if self.shared.flaw == Flaw::AliasedEpochs {
            epoch % 4
        } else {
            epoch
        }
    }

    fn check_fence(&self, state: &State, version: u64) -> Result<(), StateBackendError> {
        let fence = self.fence(state);
        if fence > 0 && version < fence {
            let authoritative = if self.shared.flaw == Flaw::StaleErrorMisreported {
                version
            } else {
                fence
            };
            return Err(StateBackendError::StaleVersion {
                caller: version,
                authoritative,
            });
        }
        Ok(())
    }

    /// Check the fence (if `version` is given) and write, under one lock.
    fn store(
        &self,
        vnode: u32,
        epoch: u64,
        version: Option<u64>,
        bytes: Bytes,
    ) -> Result<(), StateBackendError> {
        let mut guard = self.locked();
        if let Some(version) = version {
            self.check_fence(&guard.0, version)?;
        }
        let (state, log) = &mut *guard;
        if self.shared.flaw == Flaw::ReplayUnseals
            && state.partials.get(&(epoch, vnode)) == Some(&bytes)
            && state.markers.remove(&epoch).is_some()
        {
            log.append(format!("U {epoch}\n"))?;
        }
        log.append(format!("W {vnode} {epoch} {}\n", hex(&bytes)))?;
        // The fence rides along with every write, so a raise is durable once
        // a write after it is acknowledged.
        log.append(format!("F {}\n", state.fence))?;
        state.partials.insert((epoch, vnode), bytes);
        state.ever.insert((epoch, vnode));
        Ok(())
    }

    /// Whether the gate's vnodes all have a partial for `epoch` (only the
    /// first one, with [`Flaw::GateChecksFirstVnode`]).
    fn listed_present(&self, state: &State, epoch: u64, vnodes: &[u32]) -> bool {
        let listed = if self.shared.flaw == Flaw::GateChecksFirstVnode {
            &vnodes[..1]
        } else {
            vnodes
        };
        listed
            .iter()
            .all(|&v| state.partials.contains_key(&(epoch, v)))
    }

    /// Share this handle's raise with the store (deferred flaws only).
    fn carry(&self) {
        if self.shared.flaw.deferred() {
            let own = *self.own_fence.lock().unwrap();
            let mut guard = self.locked();
            guard.0.fence = guard.0.fence.max(own);
        }
    }

    /// [`Flaw::RacyFenceRaise`]'s carry: read, await, write the maximum of
    /// what it read and its own raise (others: [`Handle::carry`]).
    async fn carry_async(&self) {
        if self.shared.flaw != Flaw::RacyFenceRaise {
            self.carry();
            return;
        }
        let own = *self.own_fence.lock().unwrap();
        let seen = self.locked().0.fence;
        if own <= seen {
            return;
        }
        tokio::task::yield_now().await;
        self.locked().0.fence = seen.max(own);
    }

    /// The answer to a seal of an epoch sealed by `committer`.
    fn outcome(&self, committer: String) -> Result<bool, StateBackendError> {
        if committer == self.id {
            Ok(true)
        } else {
            Err(StateBackendError::SplitBrainCommit {
                committer,
                self_id: self.id.clone(),
            })
        }
    }

    fn fence(&self, state: &State) -> u64 {
        if self.shared.flaw == Flaw::UnsharedFence {
            *self.own_fence.lock().unwrap()
        } else {
            state.fence
        }
    }
}

#[async_trait]
impl StateBackend for Handle {
    async fn write_partial(
        &self,
        vnode: u32,
        epoch: u64,
        version: u64,
        bytes: Bytes,
    ) -> Result<(), StateBackendError> {
        if self.shared.flaw != Flaw::NoPayloadLimit {
            self.limits.check_write(vnode, &bytes)?;
        } else {
            self.limits.check_vnode(vnode)?;
        }
        let epoch = self.epoch_key(epoch);
        self.carry_async().await;
        if self.shared.flaw == Flaw::FenceCheckThenWrite {
            self.check_fence(&self.locked().0, version)?;
            tokio::time::sleep(Duration::from_millis(2)).await;
            return self.store(vnode, epoch, None, bytes);
        }
        if self.shared.flaw == Flaw::WriteChecksFenceThenYields {
            self.check_fence(&self.locked().0, version)?;
            tokio::task::yield_now().await;
            return self.store(vnode, epoch, None, bytes);
        }
        if self.shared.flaw == Flaw::WriteJudgedAfterPrune {
            self.store(vnode, epoch, Some(version), bytes)?;
            tokio::task::yield_now().await;
            let guard = self.locked();
            if !guard.0.partials.contains_key(&(epoch, vnode)) {
                self.check_fence(&guard.0, version)?;
            }
            return Ok(());
        }
        self.store(vnode, epoch, Some(version), bytes)
    }

    async fn read_partial(
        &self,
        vnode: u32,
        epoch: u64,
    ) -> Result<Option<Bytes>, StateBackendError> {
        self.limits.check_vnode(vnode)?;
        let epoch = self.epoch_key(epoch);
        Ok(self.locked().0.partials.get(&(epoch, vnode)).cloned())
    }

    async fn epoch_complete(&self, epoch: u64, vnodes: &[u32]) -> Result<bool, StateBackendError> {
        self.limits.check_gate(epoch, vnodes)?;
        if self.shared.flaw != Flaw::SealDoesNotCarryRaise {
            self.carry_async().await;
        }
        let _markers = self.markers_for_listing().await;
        if self.shared.flaw == Flaw::GateSealedFirst {
            let guard = self.locked();
            if let Some(committer) = guard.0.markers.get(&self.epoch_key(epoch)) {
                return self.outcome(committer.clone());
            }
        }
        if self.shared.flaw != Flaw::SealIgnoresFence {
            let fence = self.locked().0.fence;
            let told = *self.own_fence.lock().unwrap();
            if told > 0 && told < fence {
                return Err(StateBackendError::StaleVersion {
                    caller: told,
                    authoritative: fence,
                });
            }
            if matches!(
                self.shared.flaw,
                Flaw::SealChecksFenceEarly | Flaw::SealChecksFenceBeforePartials
            ) {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            if self.shared.flaw == Flaw::SealChecksFenceThenYields {
                tokio::task::yield_now().await;
            }
        }
        let epoch = self.epoch_key(epoch);
        if matches!(
            self.shared.flaw,
            Flaw::IgnoresCreateIfAbsent | Flaw::CreateIfAbsentHonoured
        ) {
            // As on an object store: look (partials, marker), then a
            // create-if-absent one round trip later.
            {
                let guard = self.locked();
                if !self.listed_present(&guard.0, epoch, vnodes) {
                    return Ok(false);
                }
                if let Some(committer) = guard.0.markers.get(&epoch) {
                    return self.outcome(committer.clone());
                }
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
            let mut guard = self.locked();
            let (state, log) = &mut *guard;
            if self.shared.flaw == Flaw::CreateIfAbsentHonoured
                && let Some(committer) = state.markers.get(&epoch)
            {
                return self.outcome(committer.clone());
            }
            // "Created" (with the flaw: over whatever was there).
            state.markers.insert(epoch, self.id.clone());
            log.append(format!("M {epoch} {}\n", self.id))?;
            return Ok(true);
        }
        if self.shared.flaw == Flaw::TwoWinners {
            // The flaw: decide on a stale look, write later.
            let seen = {
                let guard = self.locked();
                if !self.listed_present(&guard.0, epoch, vnodes) {
                    return Ok(false);
                }
                guard.0.markers.get(&epoch).cloned()
            };
            tokio::time::sleep(Duration::from_millis(2)).await;
            let mut guard = self.locked();
            return match seen {
                Some(committer) if committer != self.id => self.outcome(committer),
                _ => {
                    let (state, log) = &mut *guard;
                    state.markers.insert(epoch, self.id.clone());
                    log.append(format!("M {epoch} {}\n", self.id))?;
                    Ok(true)
                }
            };
        }
        // The partials are checked and the marker written under one lock,
        // so no prune can slip in between (the correct baseline).
        let mut guard = self.locked();
        if !self.listed_present(&guard.0, epoch, vnodes) {
            return Ok(false);
        }
        let (state, log) = &mut *guard;
        let existed = state.markers.contains_key(&epoch);
        let committer = match state.markers.get(&epoch) {
            Some(committer) => committer.clone(),
            None => {
                state.markers.insert(epoch, self.id.clone());
                log.append(format!("M {epoch} {}\n", self.id))?;
                log.append(format!("F {}\n", state.fence))?;
                self.id.clone()
            }
        };
        if committer == self.id && !(existed && self.shared.flaw == Flaw::SealRetryNotWon) {
            Ok(true)
        } else {
            Err(StateBackendError::SplitBrainCommit {
                committer,
                self_id: self.id.clone(),
            })
        }
    }

    async fn prune_before(&self, before: u64) -> Result<(), StateBackendError> {
        let cut = if self.shared.flaw == Flaw::PruneOffByOne {
            before.saturating_add(1)
        } else {
            before
        };
        if self.shared.flaw == Flaw::PruneMarkersLast {
            self.locked().0.partials.retain(|&(e, _), _| e >= cut);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut guard = self.locked();
        let (state, log) = &mut *guard;
        state.partials.retain(|&(e, _), _| e >= cut);
        if self.shared.flaw != Flaw::PruneKeepsMarkers {
            state.markers.retain(|&e, _| e >= cut);
        }
        log.append(format!("P {cut}\n"))
    }

    fn set_authoritative_version(&self, version: u64) {
        let mut guard = self.locked();
        let flaw = self.shared.flaw;
        let mut own = self.own_fence.lock().unwrap();
        let raise = |f: &mut u64| {
            *f = if flaw == Flaw::FenceCanGoDown {
                version
            } else {
                (*f).max(version)
            }
        };
        raise(&mut own);
        if !flaw.deferred() {
            raise(&mut guard.0.fence);
        }
    }

    fn authoritative_version(&self) -> u64 {
        self.fence(&self.locked().0)
    }

    async fn read_partials(
        &self,
        epoch: u64,
        vnodes: &[u32],
    ) -> Result<Vec<Option<Bytes>>, StateBackendError> {
        let mut asked = vnodes.to_vec();
        if self.shared.flaw == Flaw::BatchReadSorted {
            asked.sort_unstable();
            asked.dedup();
        }
        let mut lost = Vec::new();
        if self.shared.flaw == Flaw::BatchReadLosesChunkEdges {
            let mut distinct = asked.clone();
            distinct.sort_unstable();
            distinct.dedup();
            lost.extend(distinct.chunks_exact(512).map(|chunk| chunk[511]));
        }
        let mut partials = Vec::with_capacity(asked.len());
        for vnode in asked {
            let read = if lost.contains(&vnode) {
                None
            } else {
                self.read_partial(vnode, epoch).await?
            };
            partials.push(read);
        }
        Ok(partials)
    }

    async fn persist_authoritative_version(&self, version: u64) -> Result<(), StateBackendError> {
        if self.shared.flaw == Flaw::RaiseAnnouncedFirst {
            {
                let mut guard = self.locked();
                if guard.0.announced >= version {
                    // Taken as done: only this handle learns the version.
                    let mut own = self.own_fence.lock().unwrap();
                    *own = (*own).max(version);
                    return Ok(());
                }
                guard.0.announced = version;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.set_authoritative_version(version);
        if self.shared.flaw != Flaw::PersistDoesNotCarry {
            self.carry_async().await;
            let mut guard = self.locked();
            let (state, log) = &mut *guard;
            log.append(format!("F {}\n", state.fence))?;
        }
        Ok(())
    }

    async fn latest_committed_epoch(&self) -> Result<Option<u64>, StateBackendError> {
        let _markers = self.markers_for_listing().await;
        Ok(self.locked().0.markers.keys().next_back().copied())
    }

    async fn sealed_epochs(&self, after: u64) -> Result<Vec<u64>, StateBackendError> {
        let _markers = self.markers_for_listing().await;
        Ok(self
            .locked()
            .0
            .markers
            .range(if self.shared.flaw == Flaw::RecoveryWraps {
                (
                    std::ops::Bound::Included(after.wrapping_add(1)),
                    std::ops::Bound::Unbounded,
                )
            } else {
                (std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)
            })
            .map(|(&e, _)| e)
            .collect())
    }

    async fn partials(&self, epoch: u64) -> Result<Option<Vec<u32>>, StateBackendError> {
        let flaw = self.shared.flaw;
        if matches!(flaw, Flaw::ListsNothing | Flaw::CannotList) {
            return Ok(None);
        }
        let guard = self.locked();
        let state = &guard.0;
        let mut keys: Vec<(u64, u32)> = if flaw == Flaw::ListsPruned {
            state.ever.iter().copied().collect()
        } else {
            state.partials.keys().copied().collect()
        };
        keys.retain(|&(e, _)| {
            e == epoch || (flaw == Flaw::ListsNextEpoch && Some(e) == epoch.checked_add(1))
        });
        let mut vnodes: Vec<u32> = keys.into_iter().map(|(_, v)| v).collect();
        vnodes.sort_unstable();
        vnodes.dedup();
        Ok(Some(vnodes))
    }
}

struct Factory(Flaw);

struct Store {
    flaw: Flaw,
    path: PathBuf,
    shared: Mutex<Option<Arc<Shared>>>,
    _dir: Option<tempfile::TempDir>,
}

#[async_trait]
impl BackendFactory for Factory {
    fn name(&self) -> String {
        format!("reference-{:?}", self.0)
    }

    fn capabilities(&self) -> Capabilities {
        let claims = Capabilities::NONE
            .fenced_seal()
            .cross_process_reopen()
            .recovery_queries()
            .atomic_prune();
        let claims = if self.0 == Flaw::CannotList {
            claims
        } else {
            claims.list_partials()
        };
        if self.0 == Flaw::ClaimsCrossProcess {
            claims.cross_process()
        } else {
            claims
        }
    }

    async fn create_store(&self) -> Result<Box<dyn TestStore>, StateBackendError> {
        let dir = tempfile::tempdir().map_err(|e| StateBackendError::Io(e.to_string()))?;
        Ok(Box::new(Store {
            flaw: self.0,
            path: dir.path().join("log"),
            shared: Mutex::new(None),
            _dir: Some(dir),
        }))
    }

    async fn attach_store(&self, locator: &str) -> Result<Box<dyn TestStore>, StateBackendError> {
        Ok(Box::new(Store {
            flaw: self.0,
            path: PathBuf::from(locator),
            shared: Mutex::new(None),
            _dir: None,
        }))
    }
}

#[async_trait]
impl TestStore for Store {
    async fn open(
        &self,
        instance_id: &str,
        vnode_capacity: u32,
    ) -> Result<Arc<dyn StateBackend>, StateBackendError> {
        let mut slot = self.shared.lock().unwrap();
        let shared = match &*slot {
            Some(shared) => Arc::clone(shared),
            None => {
                let shared = Shared::open(self.path.clone(), self.flaw)?;
                *slot = Some(Arc::clone(&shared));
                shared
            }
        };
        Ok(Arc::new(Handle {
            shared,
            id: instance_id.to_owned(),
            limits: InputLimits::new(vnode_capacity, MAX_PAYLOAD),
            own_fence: Mutex::new(0),
        }))
    }

    fn max_payload_len(&self) -> usize {
        MAX_PAYLOAD
    }

    async fn reopen(&self) -> Result<(), StateBackendError> {
        // Flush what a clean shutdown would, then forget the in-memory state.
        if let Some(shared) = self.shared.lock().unwrap().take()
            && let Log::Buffered(writer, _) = &mut shared.state.lock().unwrap().1
        {
            writer
                .flush()
                .map_err(|e| StateBackendError::Io(e.to_string()))?;
        }
        Ok(())
    }

    fn locator(&self) -> Option<String> {
        Some(self.path.display().to_string())
    }
}

fn run(property: &str, flaw: Flaw) -> Outcome {
    let child = ChildCommand::libtest(child_test_name(flaw));
    check_blocking(property, &Factory(flaw), &child)
}

/// The crash property re-runs the test that started it; each crash test
/// below is named after its flaw.
fn child_test_name(flaw: Flaw) -> &'static str {
    match flaw {
        Flaw::BufferedAcks => "crash_buffered_acks_are_caught",
        Flaw::ClaimsCrossProcess => "unshared_fence_across_processes_is_caught",
        _ => "crash_reference_passes",
    }
}

/// `property` passes on the correct backend and fails on the one with `flaw`.
fn caught(property: &str, flaw: Flaw) {
    assert_eq!(
        run(property, Flaw::None),
        Outcome::Passed,
        "the correct backend must pass {property}"
    );
    fails(property, flaw);
}

/// `property` fails on the backend with `flaw`.
fn fails(property: &str, flaw: Flaw) {
    assert_caught(property, &flaw, run(property, flaw));
}

#[test]
fn reference_passes_everything_else() {
    for property in laminar_state_conformance::PROPERTIES
        .iter()
        .filter(|p| p.name != "p10_durability_crash")
    {
        let outcome = run(property.name, Flaw::None);
        assert!(
            matches!(outcome, Outcome::Passed)
                || (["p12_corruption", "p06_shared_fence_across_processes"]
                    .contains(&property.name)
                    && matches!(outcome, Outcome::NotApplicable { .. })),
            "{} on the reference backend: {outcome:?}",
            property.name
        );
    }
}

/// Tests, each named for a flaw and the property that catches it: the
/// correct backend passes the property and the one with the flaw fails it.
macro_rules! caught_by {
    ($($test:ident: $property:literal catches $flaw:ident;)*) => {
        $(
            #[test]
            fn $test() {
                caught($property, Flaw::$flaw);
            }
        )*
    };
}

caught_by! {
    unshared_fence_is_caught_by_p6: "p06_shared_fence" catches UnsharedFence;
    check_then_write_fence_is_caught_by_p7: "p07_atomic_fence" catches FenceCheckThenWrite;
    two_winners_are_caught_by_p9: "p09_one_committer" catches TwoWinners;
    off_by_one_prune_is_caught_by_p11: "p11_pruning" catches PruneOffByOne;
    lax_gate_is_caught_by_p8: "p08_commit_gate" catches GateChecksFirstVnode;
    lowering_fence_is_caught_by_p4: "p04_fence_monotonic" catches FenceCanGoDown;
    misreported_stale_error_is_caught_by_p5: "p05_fence_enforced" catches StaleErrorMisreported;
    aliased_keys_are_caught_by_p3: "p03_independence" catches AliasedEpochs;
    missing_payload_limit_is_caught_by_p12: "p12_bad_input" catches NoPayloadLimit;
    forgotten_fence_is_caught_by_p10_reopen: "p10_durability_reopen" catches FenceNotPersisted;
    unsealing_replay_is_caught_by_p2: "p02_idempotent_replay" catches ReplayUnseals;
    sealing_deposed_leader_is_caught_by_p15: "p15_fenced_seal" catches SealIgnoresFence;
    half_finished_raise_taken_as_done_is_caught_by_p7_cancelled_raise:
        "p07_cancelled_raise" catches RaiseAnnouncedFirst;
    seal_checking_the_fence_early_is_caught_by_p15: "p15_fenced_seal" catches SealChecksFenceEarly;
    seal_checking_the_fence_before_the_partials_is_caught_by_p15: "p15_fenced_seal" catches SealChecksFenceBeforePartials;
    markers_kept_by_prune_are_caught_by_p11: "p11_pruning" catches PruneKeepsMarkers;
    gate_answering_from_the_marker_first_is_caught_by_p8: "p08_commit_gate" catches GateSealedFirst;
    seal_that_does_not_carry_the_raise_is_caught_by_p6:
        "p06_shared_fence" catches SealDoesNotCarryRaise;
    local_persist_is_caught_by_p6: "p06_shared_fence" catches PersistDoesNotCarry;
    wrapping_recovery_query_is_caught_by_p12: "p12_bad_input" catches RecoveryWraps;
    prune_deleting_markers_last_is_caught_by_p11_prune_races_seals:
        "p11_prune_races_seals" catches PruneMarkersLast;
    seal_retry_reported_as_split_brain_is_caught_by_p2_lost_answers:
        "p02_lost_answers" catches SealRetryNotWon;
    write_checking_the_fence_before_a_stall_is_caught_by_p7_stalled_zombie:
        "p07_stalled_zombie" catches WriteChecksFenceThenYields;
    seal_checking_the_fence_before_a_stall_is_caught_by_p7_stalled_zombie:
        "p07_stalled_zombie" catches SealChecksFenceThenYields;
    a_write_judged_after_its_epoch_was_pruned_is_caught_by_p7_seen_write_never_refused:
        "p07_seen_write_never_refused" catches WriteJudgedAfterPrune;
    a_batch_read_answering_in_vnode_order_is_caught_by_p1_batch_read:
        "p01_batch_read" catches BatchReadSorted;
    a_batch_read_losing_the_edges_of_its_chunks_is_caught_by_p1_batch_read:
        "p01_batch_read" catches BatchReadLosesChunkEdges;
    racy_raise_is_caught_by_p7_stalled_raise: "p07_stalled_raise" catches RacyFenceRaise;
    two_winners_are_caught_by_p9_stalled_seal: "p09_stalled_seal" catches TwoWinners;
    listing_pruned_vnodes_is_caught_by_p16: "p16_list_partials" catches ListsPruned;
}

#[test]
fn unshared_fence_across_processes_is_caught() {
    // Only this flawed variant claims the capability, so there is no passing
    // baseline to compare with: the memory of each process is its own.
    fails(
        "p06_shared_fence_across_processes",
        Flaw::ClaimsCrossProcess,
    );
}

#[test]
fn crash_reference_passes() {
    // In the child process, this test is the child writer.
    assert_eq!(run("p10_durability_crash", Flaw::None), Outcome::Passed);
}

#[test]
fn crash_buffered_acks_are_caught() {
    // The correct baseline is `crash_reference_passes`: each crash test is
    // its own child process's entry point, so they cannot share one test.
    fails("p10_durability_crash", Flaw::BufferedAcks);
}

/// `property` catches a seal on a store that ignores create-if-absent,
/// while the same seal on a store that honours the condition passes it:
/// the flaw is the store's.
fn caught_ignoring_create_if_absent(property: &str) {
    assert_eq!(
        run(property, Flaw::CreateIfAbsentHonoured),
        Outcome::Passed,
        "a store honouring create-if-absent must pass {property}"
    );
    caught(property, Flaw::IgnoresCreateIfAbsent);
}

#[test]
fn store_ignoring_create_if_absent_is_caught_by_p9() {
    caught_ignoring_create_if_absent("p09_one_committer");
}

#[test]
fn store_ignoring_create_if_absent_is_caught_by_p9_stalled_seal() {
    caught_ignoring_create_if_absent("p09_stalled_seal");
}

/// The harness, run in process on one trial (`--exact`), one thread.
fn harness_run(harness: Harness, trial: &str, extra: &[&str]) -> HarnessRun {
    let mut args = vec!["teeth", trial, "--exact", "--test-threads=1"];
    args.extend_from_slice(extra);
    harness.run_with_args(args)
}

/// The harness `name` on the reference with `flaw`, `property` listed as
/// an expected failure, run on that property alone.
fn expecting_failure(name: &str, flaw: Flaw, property: &str) -> HarnessRun {
    harness_run(
        Harness::new(name, Factory(flaw)).expect_failure(property),
        &format!("{name}::{property}"),
        &[],
    )
}

/// `property`, listed as an expected failure of the harness `name` on the
/// correct reference, does not fail there: the run fails, and the trial's
/// verdict is an unexpected pass whose reason says `why`.
fn unexpected_pass(name: &str, property: &str, why: &str) -> HarnessRun {
    let run = expecting_failure(name, Flaw::None, property);
    assert!(run.has_failed(), "{run:?}");
    let trial = run.trial(property).expect("the trial ran");
    assert!(
        matches!(&trial.verdict, Verdict::UnexpectedPass(reason) if reason.contains(why)),
        "{trial:?}"
    );
    run
}

#[test]
fn harness_expected_failure_that_fails_does_not_fail_the_run() {
    let run = expecting_failure("xfail", Flaw::TwoWinners, "p09_one_committer");
    assert!(!run.has_failed(), "{run:?}");
    assert_eq!((run.passed, run.failed, run.ignored), (0, 0, 1), "{run:?}");
    let trial = run.trial("p09_one_committer").expect("the trial ran");
    assert!(
        matches!(&trial.verdict, Verdict::ExpectedFailure(reason) if reason.contains("two instances sealed")),
        "{trial:?}"
    );
    assert!(!trial.elapsed.is_zero());
}

#[test]
fn harness_expected_failure_that_passes_fails_the_run() {
    let run = unexpected_pass(
        "xpass",
        "p09_one_committer",
        "now passes on reference-None: remove it from the expected failures",
    );
    assert_eq!((run.passed, run.failed, run.ignored), (0, 1, 0), "{run:?}");
}

#[test]
fn harness_expected_failure_that_does_not_apply_fails_the_run() {
    // The reference does not claim corruption_detection.
    unexpected_pass(
        "stale",
        "p12_corruption",
        "does not claim `corruption_detection`",
    );
}

#[test]
fn harness_reports_not_applicable_as_ignored_with_its_reason() {
    for extra in [&[][..], &["--ignored"][..], &["--include-ignored"][..]] {
        let run = harness_run(
            Harness::new("na", Factory(Flaw::None)),
            "na::p12_corruption",
            extra,
        );
        assert_eq!(
            (run.passed, run.failed, run.ignored),
            (0, 0, 1),
            "{extra:?}: {run:?}"
        );
        let trial = run.trial("p12_corruption").expect("the trial is reported");
        assert_eq!(
            trial.verdict,
            Verdict::NotApplicable(
                "not applicable: the backend does not claim `corruption_detection`".into()
            ),
            "{extra:?}"
        );
    }
    // `--ignored` alone runs only the ignored trials: an applicable one is
    // filtered out.
    let run = harness_run(
        Harness::new("na", Factory(Flaw::None)),
        "na::p01_round_trip",
        &["--ignored"],
    );
    assert_eq!(
        (run.passed, run.failed, run.ignored, run.trials.len()),
        (0, 0, 0, 0),
        "{run:?}"
    );
    assert_eq!(
        run.filtered_out,
        laminar_state_conformance::PROPERTIES.len() as u64
    );
}

#[test]
fn harness_runs_and_times_a_passing_property_and_lists() {
    let run = harness_run(
        Harness::new("ok", Factory(Flaw::None)),
        "ok::p08_commit_gate",
        &[],
    );
    assert_eq!((run.passed, run.failed, run.ignored), (1, 0, 0), "{run:?}");
    let trial = run.trial("p08_commit_gate").expect("the trial ran");
    assert_eq!(trial.verdict, Verdict::Passed);
    assert!(!trial.elapsed.is_zero());
    // A failing one fails the run.
    let run = harness_run(
        Harness::new("bad", Factory(Flaw::GateChecksFirstVnode)),
        "bad::p08_commit_gate",
        &[],
    );
    assert!(run.has_failed(), "{run:?}");
    // `--list` runs nothing.
    let run = Harness::new("list", Factory(Flaw::None)).run_with_args(["teeth", "--list"]);
    assert_eq!(run, Default::default());
}

#[test]
fn macro_expected_failure_that_fails_passes_and_one_that_passes_fails() {
    // The body of each test `conformance_tests!` generates.
    laminar_state_conformance::__run_libtest(
        "teeth::macro_xfail",
        "p09_one_committer",
        &Factory(Flaw::TwoWinners),
        &["p09_one_committer"],
    );
    let passed = std::panic::catch_unwind(|| {
        laminar_state_conformance::__run_libtest(
            "teeth::macro_xpass",
            "p09_one_committer",
            &Factory(Flaw::None),
            &["p09_one_committer"],
        )
    });
    let message = passed
        .expect_err("an expected failure that passes must fail its test")
        .downcast::<String>()
        .expect("a panic message");
    assert!(
        message.contains("now passes on reference-None: remove it from the expected failures"),
        "{message}"
    );
    // Not listed: a failure fails the test.
    let failed = std::panic::catch_unwind(|| {
        laminar_state_conformance::__run_libtest(
            "teeth::macro_fail",
            "p09_one_committer",
            &Factory(Flaw::TwoWinners),
            &[],
        )
    });
    assert!(failed.is_err());
}

/// Compile check of the macros' `expect_failure` syntax (test items inside
/// a function are not collected, so nothing here runs).
#[allow(dead_code, unnameable_test_items)]
fn macro_syntax_compiles() {
    laminar_state_conformance::conformance_tests!(
        with_expected_failures,
        Factory(Flaw::TwoWinners),
        expect_failure = [p09_one_committer, p09_stalled_seal],
    );
    laminar_state_conformance::conformance_tests!(without, Factory(Flaw::None));
}

#[test]
fn listing_another_epochs_vnodes_is_caught_by_p16() {
    fails("p16_list_partials", Flaw::ListsNextEpoch);
}

#[test]
fn a_claimed_listing_that_answers_none_fails_p16() {
    fails("p16_list_partials", Flaw::ListsNothing);
}

#[test]
fn a_backend_that_cannot_list_is_not_applicable_for_p16() {
    assert_eq!(
        run("p16_list_partials", Flaw::CannotList),
        Outcome::NotApplicable {
            missing: laminar_state_conformance::Capability::ListPartials
        }
    );
}
