//! Where everything lives in the bucket: key names, and the stamps that
//! order an epoch's partial objects.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use laminar_state_api::StateBackendError;

use crate::client::Listed;

/// The key names of one store.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// Empty, or ends with `/`.
    pub(crate) prefix: String,
}

impl Layout {
    pub(crate) fn new(prefix: &str) -> Self {
        let trimmed = prefix.trim_matches('/');
        let prefix = if trimmed.is_empty() {
            String::new()
        } else {
            format!("{trimmed}/")
        };
        Self { prefix }
    }

    pub(crate) fn fence(&self) -> String {
        format!("{}fence", self.prefix)
    }

    /// The prune registry (see `prunes`).
    pub(crate) fn prunes(&self) -> String {
        format!("{}prunes", self.prefix)
    }

    pub(crate) fn snapshot(&self, fence: u64) -> String {
        format!("{}snapshots/{fence:020}", self.prefix)
    }

    pub(crate) fn partials(&self) -> String {
        format!("{}p/", self.prefix)
    }

    /// Every partial of `epoch` starts with this; every key of an earlier
    /// epoch sorts before it.
    pub(crate) fn epoch_partials(&self, epoch: u64) -> String {
        format!("{}p/{epoch:020}/", self.prefix)
    }

    pub(crate) fn vnode_partials(&self, epoch: u64, vnode: u32) -> String {
        format!("{}p/{epoch:020}/{vnode:010}.", self.prefix)
    }

    /// Where to split a listing of `epoch` into ranges of `per_range` of
    /// the asked `vnodes` each (none when one range holds them all): the
    /// names `{prefix}p/{epoch:020}/{vnode:010}` of every `per_range`-th
    /// asked vnode, ascending. No partial's key equals one (a partial's
    /// key goes on with `.`), every key of the vnode sorts after it, every
    /// key of a lower vnode before it.
    pub(crate) fn vnode_splits(&self, epoch: u64, vnodes: &[u32], per_range: usize) -> Vec<String> {
        let mut asked = vnodes.to_vec();
        asked.sort_unstable();
        asked.dedup();
        asked
            .iter()
            .skip(per_range)
            .step_by(per_range.max(1))
            .map(|vnode| format!("{}{vnode:010}", self.epoch_partials(epoch)))
            .collect()
    }

    pub(crate) fn partial(&self, epoch: u64, vnode: u32, period: u64) -> String {
        format!(
            "{}p/{epoch:020}/{vnode:010}.{period:020}.{}",
            self.prefix,
            stamp()
        )
    }

    pub(crate) fn markers(&self) -> String {
        format!("{}m/", self.prefix)
    }

    pub(crate) fn marker(&self, epoch: u64) -> String {
        format!("{}m/{epoch:020}", self.prefix)
    }

    /// `(epoch, vnode, period)` of a partial's key, `None` for a foreign key.
    pub(crate) fn parse_partial(&self, key: &str) -> Option<(u64, u32, u64)> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix("p/")?;
        let (epoch, name) = rest.split_once('/')?;
        let mut parts = name.split('.');
        let vnode = parts.next()?.parse().ok()?;
        let period = parts.next()?.parse().ok()?;
        parts.next()?;
        Some((epoch.parse().ok()?, vnode, period))
    }

    /// Whether a listing of one epoch holds a partial for every one of
    /// `vnodes` (visible or not: that takes a fence read to judge).
    pub(crate) fn names_every(&self, listed: &[Listed], vnodes: &[u32]) -> bool {
        let named: HashSet<u32> = listed
            .iter()
            .filter_map(|o| self.parse_partial(&o.key))
            .map(|(_, vnode, _)| vnode)
            .collect();
        vnodes.iter().all(|v| named.contains(v))
    }

    pub(crate) fn parse_marker(&self, key: &str) -> Result<u64, StateBackendError> {
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
pub(crate) fn stamp() -> String {
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
