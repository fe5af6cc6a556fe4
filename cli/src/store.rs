//! Opening stores, and what the CLI asks of every store: its sealed
//! epochs, an epoch's partials, who sealed an epoch.

use std::ops::RangeInclusive;
use std::sync::Arc;

use laminar_state::{StateBackend, StateBackendError, redact_url};
use sha2::{Digest as _, Sha256};

use crate::output::{CliError, CliResult, Exit};

/// The instance id of the CLI's own handles: reads, listings, the
/// committer probe, and seals whose source committer is unknown.
pub(crate) const CLI_ID: &str = "laminar-state-cli";

/// The vnode capacity of the CLI's handles: every vnode a store can hold.
pub(crate) const CAPACITY: u32 = u32::MAX;

/// How many partials are read or written at once.
pub(crate) const IN_FLIGHT: usize = 8;

/// A SHA-256 digest.
pub(crate) type Sha = [u8; 32];

/// The SHA-256 of `bytes`.
pub(crate) fn sha256(bytes: &[u8]) -> Sha {
    Sha256::digest(bytes).into()
}

/// A handle on the store at `url`, as instance `instance_id`.
pub(crate) async fn open(url: &str, instance_id: &str) -> CliResult<Arc<dyn StateBackend>> {
    laminar_state::connect(url, instance_id, CAPACITY)
        .await
        .map_err(|e| CliError::failure(format!("cannot open {}: {e}", redact_url(url))))
}

/// Every sealed epoch of the store, ascending.
///
/// The trait's `sealed_epochs(after)` lists epochs strictly above `after`,
/// so epoch 0 is seen only when it is the latest sealed epoch (see the
/// README, "Limits").
pub(crate) async fn sealed_epochs(handle: &Arc<dyn StateBackend>) -> CliResult<Vec<u64>> {
    let mut epochs = handle
        .sealed_epochs(0)
        .await
        .map_err(|e| CliError::backend("sealed_epochs(0)", e))?;
    if epochs.is_empty()
        && handle
            .latest_committed_epoch()
            .await
            .map_err(|e| CliError::backend("latest_committed_epoch()", e))?
            == Some(0)
    {
        epochs.push(0);
    }
    Ok(epochs)
}

/// The vnodes with a partial at `epoch`, ascending; an error if the
/// backend cannot list them.
pub(crate) async fn partials(
    handle: &Arc<dyn StateBackend>,
    url: &str,
    epoch: u64,
) -> CliResult<Vec<u32>> {
    match handle.partials(epoch).await {
        Ok(Some(vnodes)) => Ok(vnodes),
        Ok(None) => Err(CliError::failure(format!(
            "the backend of {} cannot list the partials of an epoch (StateBackend::partials \
             answered None)",
            redact_url(url)
        ))),
        Err(e) => Err(CliError::backend(
            format!("partials({epoch}) of {}", redact_url(url)),
            e,
        )),
    }
}

/// The partial of `(vnode, epoch)` on the source, which listed it: an
/// error naming both if it cannot be read (a damaged partial) or is gone.
pub(crate) async fn read_listed(
    handle: &Arc<dyn StateBackend>,
    vnode: u32,
    epoch: u64,
) -> CliResult<bytes::Bytes> {
    handle
        .read_partial(vnode, epoch)
        .await
        .map_err(|e| {
            CliError::backend(
                format!("source partial of vnode {vnode} at epoch {epoch}"),
                e,
            )
        })?
        .ok_or_else(|| {
            CliError::failure(format!(
                "source partial of vnode {vnode} at epoch {epoch} vanished (pruned meanwhile?)"
            ))
        })
}

/// Who sealed `epoch`, whose partials are `vnodes`, or `None` if it is no
/// longer sealed (pruned meanwhile) or has no partial to ask with.
///
/// The trait has no query for a marker's committer, so this asks the gate
/// as the CLI's own instance ([`CLI_ID`]), never told any version: on a
/// sealed epoch whose partials are all present, the gate answers
/// `SplitBrainCommit` naming the committer and changes nothing. Only ask
/// about an epoch the store listed as sealed.
pub(crate) async fn committer(
    probe: &Arc<dyn StateBackend>,
    epoch: u64,
    vnodes: &[u32],
) -> CliResult<Option<String>> {
    if vnodes.is_empty() {
        return Ok(None);
    }
    match probe.epoch_complete(epoch, vnodes).await {
        Err(StateBackendError::SplitBrainCommit { committer, .. }) => Ok(Some(committer)),
        Ok(true) => Ok(Some(CLI_ID.to_owned())),
        Ok(false) => Ok(None),
        Err(e) => Err(CliError::backend(
            format!("asking who sealed epoch {epoch}"),
            e,
        )),
    }
}

/// Which sealed epochs a command works on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Epochs {
    /// The latest sealed epoch.
    Latest,
    /// Every sealed epoch.
    All,
    /// The sealed epochs in a range.
    Range(RangeInclusive<u64>),
}

impl std::str::FromStr for Epochs {
    type Err = String;

    /// `latest`, `all`, `N`, `A..B` (B excluded) or `A..=B`.
    fn from_str(text: &str) -> Result<Self, String> {
        let number = |s: &str| {
            s.trim()
                .parse::<u64>()
                .map_err(|_| format!("{s:?} is not an epoch number"))
        };
        let bad = || format!("{text:?}: expected latest, all, N, A..B or A..=B");
        match text {
            "latest" => Ok(Epochs::Latest),
            "all" => Ok(Epochs::All),
            _ => {
                if let Some((a, b)) = text.split_once("..=") {
                    Ok(Epochs::Range(number(a)?..=number(b)?))
                } else if let Some((a, b)) = text.split_once("..") {
                    let (a, b) = (number(a)?, number(b)?);
                    if b == 0 || a >= b {
                        return Err(format!("{text:?} is an empty range"));
                    }
                    Ok(Epochs::Range(a..=b - 1))
                } else {
                    number(text)
                        .map(|n| Epochs::Range(n..=n))
                        .map_err(|_| bad())
                }
            }
        }
    }
}

impl Epochs {
    /// The epochs of `sealed` (ascending) this selects.
    pub(crate) fn select(&self, sealed: &[u64]) -> Vec<u64> {
        match self {
            Epochs::Latest => sealed.last().copied().into_iter().collect(),
            Epochs::All => sealed.to_vec(),
            Epochs::Range(range) => sealed
                .iter()
                .copied()
                .filter(|e| range.contains(e))
                .collect(),
        }
    }
}

/// Refuse to write into a store whose newest sealed epoch is above what is
/// being written, unless forced.
pub(crate) fn refuse_newer(
    dst_url: &str,
    dst_sealed: &[u64],
    newest_written: Option<u64>,
    force: bool,
) -> CliResult<()> {
    let (Some(&dst_latest), Some(newest)) = (dst_sealed.last(), newest_written) else {
        return Ok(());
    };
    if dst_latest > newest && !force {
        return Err(CliError::new(
            Exit::Refused,
            format!(
                "{} holds sealed epoch {dst_latest}, newer than the newest epoch written here \
                 ({newest}): its latest sealed epoch would not be the source's; pass --force to \
                 write anyway",
                redact_url(dst_url)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_specs_parse() {
        assert_eq!("latest".parse(), Ok(Epochs::Latest));
        assert_eq!("all".parse(), Ok(Epochs::All));
        assert_eq!("3..6".parse(), Ok(Epochs::Range(3..=5)));
        assert_eq!("3..=6".parse(), Ok(Epochs::Range(3..=6)));
        assert_eq!("7".parse(), Ok(Epochs::Range(7..=7)));
        assert!("6..3".parse::<Epochs>().is_err());
        assert!("x".parse::<Epochs>().is_err());
        let sealed = [1, 3, 5, 8];
        assert_eq!(Epochs::Latest.select(&sealed), [8]);
        assert_eq!(Epochs::Range(2..=5).select(&sealed), [3, 5]);
        assert_eq!(Epochs::Latest.select(&[]), Vec::<u64>::new());
    }

    #[test]
    fn newer_destinations_are_refused_unless_forced() {
        assert!(refuse_newer("memory://", &[1, 9], Some(5), false).is_err());
        assert!(refuse_newer("memory://", &[1, 9], Some(5), true).is_ok());
        assert!(refuse_newer("memory://", &[1, 5], Some(5), false).is_ok());
        assert!(refuse_newer("memory://", &[], Some(5), false).is_ok());
    }
}
