//! `copy SRC DST`, and the destination side `import` shares with it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt, stream};
use laminar_state::{StateBackend, StateBackendError, redact_url};
use serde_json::{Value, json};

use crate::output::{CliError, CliResult, Exit, hex, human_bytes, table};
use crate::progress::Progress;
use crate::store::{
    CLI_ID, Epochs, IN_FLIGHT, Sha, committer, open, partials, read_listed, refuse_newer,
    sealed_epochs, sha256,
};

/// A hidden knob for the tests: sleep this many milliseconds before each
/// partial written to a destination, so a copy can be killed half-way.
const DELAY_ENV: &str = "LAMINAR_STATE_CLI_WRITE_DELAY_MS";

/// The destination of `copy` and `import`.
///
/// It writes at the fence it found when it opened the store and never
/// raises it: a write at exactly the fence is accepted and changes nothing,
/// so an engine fenced in on the destination stays fenced in, and a raise
/// by that engine during the copy stops the copy (the write is refused)
/// instead of being undone. Seals are made by a handle opened with the
/// source's committer as its instance id (never told a version, so a
/// backend with fenced seals does not refuse it).
pub(crate) struct Dst {
    pub(crate) url: String,
    handle: Arc<dyn StateBackend>,
    /// The fence found at open: every write's assignment version.
    pub(crate) version: u64,
    /// The sealed epochs found at open.
    pub(crate) sealed: Vec<u64>,
    sealers: tokio::sync::Mutex<HashMap<String, Arc<dyn StateBackend>>>,
    /// Per epoch, the vnodes the destination held when first asked: only
    /// those are read before writing (a fresh destination costs no read).
    held: tokio::sync::Mutex<HashMap<u64, Arc<BTreeSet<u32>>>>,
    delay: Option<Duration>,
}

/// What [`Dst::put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Put {
    /// Written.
    Copied,
    /// The destination already held these bytes.
    Skipped,
}

impl Dst {
    pub(crate) async fn open(url: &str) -> CliResult<Self> {
        let handle = open(url, CLI_ID).await?;
        let sealed = sealed_epochs(&handle).await?;
        let delay = std::env::var(DELAY_ENV)
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map(Duration::from_millis);
        Ok(Self {
            url: url.to_owned(),
            version: handle.authoritative_version(),
            handle,
            sealed,
            sealers: tokio::sync::Mutex::new(HashMap::new()),
            held: tokio::sync::Mutex::new(HashMap::new()),
            delay,
        })
    }

    pub(crate) fn is_sealed(&self, epoch: u64) -> bool {
        self.sealed.binary_search(&epoch).is_ok()
    }

    fn shown(&self) -> String {
        redact_url(&self.url)
    }

    /// Store `bytes` as `(vnode, epoch)` unless the destination holds them
    /// already.
    pub(crate) async fn put(&self, vnode: u32, epoch: u64, bytes: Bytes) -> CliResult<Put> {
        if self.held(epoch).await?.contains(&vnode) {
            self.write_unless_equal(vnode, epoch, bytes).await
        } else {
            self.write(vnode, epoch, bytes).await
        }
    }

    /// The vnodes of `epoch` the destination held when first asked.
    async fn held(&self, epoch: u64) -> CliResult<Arc<BTreeSet<u32>>> {
        let mut held = self.held.lock().await;
        if let Some(vnodes) = held.get(&epoch) {
            return Ok(Arc::clone(vnodes));
        }
        let vnodes: Arc<BTreeSet<u32>> = Arc::new(
            partials(&self.handle, &self.url, epoch)
                .await?
                .into_iter()
                .collect(),
        );
        held.insert(epoch, Arc::clone(&vnodes));
        Ok(vnodes)
    }

    async fn write_unless_equal(&self, vnode: u32, epoch: u64, bytes: Bytes) -> CliResult<Put> {
        match self.handle.read_partial(vnode, epoch).await {
            Ok(Some(held)) if held == bytes => return Ok(Put::Skipped),
            // Absent, other bytes, or damaged: (re)written.
            Ok(_) | Err(StateBackendError::Serialization(_)) => {}
            Err(e) => {
                return Err(CliError::backend(
                    format!("reading vnode {vnode} of epoch {epoch} on {}", self.shown()),
                    e,
                ));
            }
        }
        self.write(vnode, epoch, bytes).await
    }

    async fn write(&self, vnode: u32, epoch: u64, bytes: Bytes) -> CliResult<Put> {
        if let Some(delay) = self.delay {
            tokio::time::sleep(delay).await;
        }
        match self
            .handle
            .write_partial(vnode, epoch, self.version, bytes)
            .await
        {
            Ok(()) => Ok(Put::Copied),
            Err(StateBackendError::StaleVersion { authoritative, .. }) => {
                Err(CliError::failure(format!(
                    "writing vnode {vnode} of epoch {epoch} on {}: its fence rose from {} to \
                 {authoritative} during the copy (the CLI writes at the fence it found and never \
                 raises it): is an engine running on it?",
                    self.shown(),
                    self.version
                )))
            }
            Err(e) => Err(CliError::backend(
                format!("writing vnode {vnode} of epoch {epoch} on {}", self.shown()),
                e,
            )),
        }
    }

    /// The partials of `epoch` on the destination, compared with
    /// `expected`: an error naming the first difference, of kind
    /// [`Exit::Mismatch`].
    pub(crate) async fn compare(&self, epoch: u64, expected: &BTreeMap<u32, Sha>) -> CliResult<()> {
        let listed = partials(&self.handle, &self.url, epoch).await?;
        let wanted: Vec<u32> = expected.keys().copied().collect();
        if listed != wanted {
            return Err(CliError::new(
                Exit::Mismatch,
                format!(
                    "epoch {epoch} on {} holds the partials of vnodes {listed:?}, the source \
                     {wanted:?}",
                    self.shown()
                ),
            ));
        }
        let handle = &self.handle;
        stream::iter(expected.iter())
            .map(|(&vnode, sha)| async move {
                let held = handle.read_partial(vnode, epoch).await.map_err(|e| {
                    CliError::backend(format!("reading back vnode {vnode} of epoch {epoch}"), e)
                })?;
                match held {
                    Some(bytes) if sha256(&bytes) == *sha => Ok(()),
                    Some(bytes) => Err(CliError::new(
                        Exit::Mismatch,
                        format!(
                            "vnode {vnode} of epoch {epoch} on {}: sha256 {}, expected {}",
                            self.shown(),
                            hex(&sha256(&bytes)),
                            hex(sha)
                        ),
                    )),
                    None => Err(CliError::new(
                        Exit::Mismatch,
                        format!(
                            "vnode {vnode} of epoch {epoch} is missing on {}",
                            self.shown()
                        ),
                    )),
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await
            .map(drop)
    }

    /// Seal `epoch` as `committer`, once exactly `vnodes` (ascending) are
    /// there.
    pub(crate) async fn seal(&self, epoch: u64, vnodes: &[u32], committer: &str) -> CliResult<()> {
        let listed = partials(&self.handle, &self.url, epoch).await?;
        let missing: Vec<u32> = vnodes
            .iter()
            .copied()
            .filter(|v| listed.binary_search(v).is_err())
            .collect();
        if !missing.is_empty() {
            return Err(CliError::failure(format!(
                "epoch {epoch} on {} lacks the partials of vnodes {missing:?}: not sealed",
                self.shown()
            )));
        }
        let extra: Vec<u32> = listed
            .iter()
            .copied()
            .filter(|v| vnodes.binary_search(v).is_err())
            .collect();
        if !extra.is_empty() {
            // Nothing but a prune removes a partial: sealed, the epoch
            // would read differently on the two stores.
            return Err(CliError::new(
                Exit::Mismatch,
                format!(
                    "epoch {epoch} on {} also holds partials of vnodes {extra:?}, which the \
                     source does not have: not sealed",
                    self.shown()
                ),
            ));
        }
        let sealer = self.sealer(committer).await?;
        match sealer.epoch_complete(epoch, vnodes).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(CliError::failure(format!(
                "epoch {epoch} on {}: the gate found a partial missing (pruned meanwhile?): not \
                 sealed",
                self.shown()
            ))),
            Err(StateBackendError::SplitBrainCommit {
                committer: other, ..
            }) => Err(CliError::new(
                Exit::Mismatch,
                format!(
                    "epoch {epoch} on {} is sealed by {other:?}, not by the source's \
                     committer {committer:?}",
                    self.shown()
                ),
            )),
            Err(e) => Err(CliError::backend(
                format!("sealing epoch {epoch} on {}", self.shown()),
                e,
            )),
        }
    }

    /// Who sealed `epoch` on the destination (which must be sealed there).
    pub(crate) async fn committer(&self, epoch: u64, vnodes: &[u32]) -> CliResult<Option<String>> {
        committer(&self.handle, epoch, vnodes).await
    }

    async fn sealer(&self, committer: &str) -> CliResult<Arc<dyn StateBackend>> {
        if committer == CLI_ID {
            return Ok(Arc::clone(&self.handle));
        }
        let mut sealers = self.sealers.lock().await;
        if let Some(sealer) = sealers.get(committer) {
            return Ok(Arc::clone(sealer));
        }
        let sealer = open(&self.url, committer).await?;
        sealers.insert(committer.to_owned(), Arc::clone(&sealer));
        Ok(sealer)
    }
}

/// Counts of one `copy` or `import`, as its report shows them.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) epochs_sealed: u64,
    pub(crate) epochs_skipped: u64,
    pub(crate) partials_copied: u64,
    pub(crate) partials_skipped: u64,
    pub(crate) bytes_copied: u64,
}

impl Counts {
    pub(crate) fn json(&self) -> Value {
        json!({
            "epochs_sealed": self.epochs_sealed,
            "epochs_skipped": self.epochs_skipped,
            "partials_copied": self.partials_copied,
            "partials_skipped": self.partials_skipped,
            "bytes_copied": self.bytes_copied,
        })
    }
}

/// An epoch already sealed on the destination is skipped when it holds
/// the same partials, sealed by the same committer; anything else is a
/// mismatch.
pub(crate) async fn check_sealed_epoch(
    dst: &Dst,
    epoch: u64,
    digests: &BTreeMap<u32, Sha>,
    committer: &str,
) -> CliResult<()> {
    dst.compare(epoch, digests).await?;
    let vnodes: Vec<u32> = digests.keys().copied().collect();
    match dst.committer(epoch, &vnodes).await? {
        Some(found) if found == committer => Ok(()),
        found => Err(CliError::new(
            Exit::Mismatch,
            format!(
                "epoch {epoch} is sealed on {} by {found:?}, on the source by {committer:?}",
                redact_url(&dst.url)
            ),
        )),
    }
}

/// One epoch's row of the report.
struct EpochRow {
    epoch: u64,
    committer: String,
    partials: usize,
    copied: u64,
    bytes: u64,
    outcome: &'static str,
}

/// `copy`: see the README.
pub(crate) async fn copy(
    src_url: &str,
    dst_url: &str,
    epochs: &Epochs,
    verify: bool,
    force: bool,
) -> CliResult<(Value, String)> {
    let started = Instant::now();
    let src = open(src_url, CLI_ID).await?;
    let dst = Dst::open(dst_url).await?;
    let selected = epochs.select(&sealed_epochs(&src).await?);
    refuse_newer(dst_url, &dst.sealed, selected.last().copied(), force)?;
    let mut plan = Vec::with_capacity(selected.len());
    for &epoch in &selected {
        plan.push((epoch, partials(&src, src_url, epoch).await?));
    }
    let total: usize = plan.iter().map(|(_, v)| v.len()).sum();
    let progress = Progress::new("copy", "partials", total as u64);
    let mut counts = Counts::default();
    let mut rows = Vec::new();
    for (epoch, vnodes) in plan {
        let committer = committer(&src, epoch, &vnodes)
            .await?
            .unwrap_or_else(|| CLI_ID.to_owned());
        let src = &src;
        let dst = &dst;
        let progress = &progress;
        let already = dst.is_sealed(epoch);
        // Read every partial; store it unless the epoch is sealed on the
        // destination already (then only compare).
        let copied: Vec<(u32, Sha, u64, Option<Put>)> = stream::iter(vnodes.iter().copied())
            .map(|vnode| async move {
                let bytes = read_listed(src, vnode, epoch).await?;
                let sha = sha256(&bytes);
                let len = bytes.len() as u64;
                let put = if already {
                    None
                } else {
                    Some(dst.put(vnode, epoch, bytes).await?)
                };
                progress.inc(len);
                Ok::<_, CliError>((vnode, sha, len, put))
            })
            .buffer_unordered(IN_FLIGHT)
            .try_collect()
            .await?;
        let digests: BTreeMap<u32, Sha> = copied.iter().map(|&(v, sha, _, _)| (v, sha)).collect();
        let mut row = EpochRow {
            epoch,
            committer: committer.clone(),
            partials: vnodes.len(),
            copied: 0,
            bytes: 0,
            outcome: "already sealed",
        };
        if already {
            check_sealed_epoch(dst, epoch, &digests, &committer).await?;
            counts.epochs_skipped += 1;
            counts.partials_skipped += vnodes.len() as u64;
        } else {
            for &(_, _, len, put) in &copied {
                if put == Some(Put::Copied) {
                    row.copied += 1;
                    row.bytes += len;
                }
            }
            counts.partials_copied += row.copied;
            counts.partials_skipped += vnodes.len() as u64 - row.copied;
            counts.bytes_copied += row.bytes;
            if verify {
                dst.compare(epoch, &digests).await?;
            }
            dst.seal(epoch, &vnodes, &committer).await?;
            counts.epochs_sealed += 1;
            row.outcome = "sealed";
        }
        progress.note(&format!(
            "epoch {epoch}: {} ({} of {} partials copied)",
            row.outcome, row.copied, row.partials
        ));
        rows.push(row);
    }
    progress.finish();
    let dst_latest = dst
        .handle
        .latest_committed_epoch()
        .await
        .map_err(|e| CliError::backend("latest_committed_epoch() of the destination", e))?;
    let mut doc = json!({
        "ok": true,
        "command": "copy",
        "src": redact_url(src_url),
        "dst": redact_url(dst_url),
        "write_version": dst.version,
        "verified": verify,
        "dst_latest_sealed_epoch": dst_latest,
        "seconds": started.elapsed().as_secs_f64(),
        "epochs": rows.iter().map(|r| json!({
            "epoch": r.epoch,
            "committer": r.committer,
            "partials": r.partials,
            "partials_copied": r.copied,
            "bytes_copied": r.bytes,
            "outcome": r.outcome,
        })).collect::<Vec<_>>(),
    });
    merge(&mut doc, counts.json());
    let text = table(
        &[
            "epoch",
            "committer",
            "partials",
            "copied",
            "bytes",
            "outcome",
        ],
        &rows
            .iter()
            .map(|r| {
                vec![
                    r.epoch.to_string(),
                    r.committer.clone(),
                    r.partials.to_string(),
                    r.copied.to_string(),
                    human_bytes(r.bytes),
                    r.outcome.to_owned(),
                ]
            })
            .collect::<Vec<_>>(),
    ) + &format!(
        "{} epochs sealed, {} already sealed; {} partials copied ({}), {} already there{}; \
         destination's latest sealed epoch: {}\n",
        counts.epochs_sealed,
        counts.epochs_skipped,
        counts.partials_copied,
        human_bytes(counts.bytes_copied),
        counts.partials_skipped,
        if verify { "; verified" } else { "" },
        dst_latest.map_or("none".to_owned(), |e| e.to_string()),
    );
    Ok((doc, text))
}

/// Add `extra`'s fields to the object `doc`.
pub(crate) fn merge(doc: &mut Value, extra: Value) {
    if let (Some(doc), Value::Object(extra)) = (doc.as_object_mut(), extra) {
        doc.extend(extra);
    }
}
