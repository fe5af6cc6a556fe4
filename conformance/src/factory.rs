//! What a backend author implements to run the suite: a factory of fresh,
//! isolated stores, and the capabilities the backend claims.

use std::sync::Arc;

use async_trait::async_trait;
use laminar_state_api::{StateBackend, StateBackendError};

/// Optional semantics a backend may offer. A property that needs a
/// capability the backend does not claim is reported as not applicable, by
/// name; claiming a capability the backend lacks makes that property fail.
///
/// Built with const builders so a factory can keep its claims in a `const`:
///
/// ```
/// use laminar_state_conformance::Capabilities;
/// const CLAIMS: Capabilities = Capabilities::NONE.fencing().shared_fence();
/// assert!(CLAIMS.shared_fence && !CLAIMS.durable);
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Writes below the authoritative version are refused (P4, P5, P7).
    pub fencing: bool,
    /// A raise through one handle is enforced on every handle of the store,
    /// per the contract's timing (P6).
    pub shared_fence: bool,
    /// Acknowledged writes, seals and fence raises survive dropping every
    /// handle and reopening the store (P10, reopen).
    pub durable: bool,
    /// The store can be opened by another process from its locator, and
    /// survives that process being killed with SIGKILL (P10, crash).
    pub cross_process_reopen: bool,
    /// `latest_committed_epoch` and `sealed_epochs` reflect the markers.
    pub recovery_queries: bool,
    /// Stored bytes are framed or checksummed, so damage is reported as an
    /// error rather than returned as data; the test store can inject it.
    pub corruption_detection: bool,
    /// A handle told an assignment version below the store's fence cannot
    /// seal an epoch (P15).
    pub fenced_seal: bool,
    /// Several processes may have the store open at once, each attaching by
    /// its locator (P6 across processes).
    pub cross_process: bool,
    /// A prune is atomic with respect to seals: one racing a seal of the
    /// same epoch, or cut short part-way, never leaves a sealed epoch
    /// without its partials (P11, seals racing prunes; needs
    /// `recovery_queries` to observe it).
    pub atomic_prune: bool,
    /// `partials(epoch)` lists exactly the vnodes written at that epoch and
    /// not pruned, through any handle (P16); the trait's default, `None`,
    /// cannot claim it.
    pub list_partials: bool,
}

impl Capabilities {
    /// No optional capability.
    pub const NONE: Self = Self {
        fencing: false,
        shared_fence: false,
        durable: false,
        cross_process_reopen: false,
        recovery_queries: false,
        corruption_detection: false,
        fenced_seal: false,
        cross_process: false,
        atomic_prune: false,
        list_partials: false,
    };

    /// Claim [`fencing`](Self::fencing).
    pub const fn fencing(mut self) -> Self {
        self.fencing = true;
        self
    }

    /// Claim [`shared_fence`](Self::shared_fence) (implies fencing).
    pub const fn shared_fence(mut self) -> Self {
        self.fencing = true;
        self.shared_fence = true;
        self
    }

    /// Claim [`durable`](Self::durable).
    pub const fn durable(mut self) -> Self {
        self.durable = true;
        self
    }

    /// Claim [`cross_process_reopen`](Self::cross_process_reopen) (implies
    /// durable).
    pub const fn cross_process_reopen(mut self) -> Self {
        self.durable = true;
        self.cross_process_reopen = true;
        self
    }

    /// Claim [`recovery_queries`](Self::recovery_queries).
    pub const fn recovery_queries(mut self) -> Self {
        self.recovery_queries = true;
        self
    }

    /// Claim [`corruption_detection`](Self::corruption_detection).
    pub const fn corruption_detection(mut self) -> Self {
        self.corruption_detection = true;
        self
    }

    /// Claim [`fenced_seal`](Self::fenced_seal) (implies shared fence).
    pub const fn fenced_seal(mut self) -> Self {
        self.fencing = true;
        self.shared_fence = true;
        self.fenced_seal = true;
        self
    }

    /// Claim [`cross_process`](Self::cross_process).
    pub const fn cross_process(mut self) -> Self {
        self.cross_process = true;
        self
    }

    /// Claim [`atomic_prune`](Self::atomic_prune) (implies
    /// `recovery_queries`, through which it is observed).
    pub const fn atomic_prune(mut self) -> Self {
        self.recovery_queries = true;
        self.atomic_prune = true;
        self
    }

    /// Claim [`list_partials`](Self::list_partials).
    pub const fn list_partials(mut self) -> Self {
        self.list_partials = true;
        self
    }

    /// Whether the named capability is claimed.
    pub const fn has(&self, capability: Capability) -> bool {
        match capability {
            Capability::Fencing => self.fencing,
            Capability::SharedFence => self.shared_fence,
            Capability::Durable => self.durable,
            Capability::CrossProcessReopen => self.cross_process_reopen,
            Capability::RecoveryQueries => self.recovery_queries,
            Capability::CorruptionDetection => self.corruption_detection,
            Capability::FencedSeal => self.fenced_seal,
            Capability::CrossProcess => self.cross_process,
            Capability::AtomicPrune => self.atomic_prune,
            Capability::ListPartials => self.list_partials,
        }
    }
}

/// One capability, by name, as reported for a property that needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// See [`Capabilities::fencing`].
    Fencing,
    /// See [`Capabilities::shared_fence`].
    SharedFence,
    /// See [`Capabilities::durable`].
    Durable,
    /// See [`Capabilities::cross_process_reopen`].
    CrossProcessReopen,
    /// See [`Capabilities::recovery_queries`].
    RecoveryQueries,
    /// See [`Capabilities::corruption_detection`].
    CorruptionDetection,
    /// See [`Capabilities::fenced_seal`].
    FencedSeal,
    /// See [`Capabilities::cross_process`].
    CrossProcess,
    /// See [`Capabilities::atomic_prune`].
    AtomicPrune,
    /// See [`Capabilities::list_partials`].
    ListPartials,
}

impl Capability {
    /// The capability's name as written in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Capability::Fencing => "fencing",
            Capability::SharedFence => "shared_fence",
            Capability::Durable => "durable",
            Capability::CrossProcessReopen => "cross_process_reopen",
            Capability::RecoveryQueries => "recovery_queries",
            Capability::CorruptionDetection => "corruption_detection",
            Capability::FencedSeal => "fenced_seal",
            Capability::CrossProcess => "cross_process",
            Capability::AtomicPrune => "atomic_prune",
            Capability::ListPartials => "list_partials",
        }
    }
}

/// Stored data a test store damages on request, for the corruption property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// Overwrite the stored partial of `(vnode, epoch)` with bytes that fail
    /// its framing or checksum.
    Partial {
        /// The vnode of the partial.
        vnode: u32,
        /// The epoch of the partial.
        epoch: u64,
    },
    /// Overwrite the commit marker of `epoch` with bytes that are not a
    /// valid marker.
    Marker {
        /// The sealed epoch.
        epoch: u64,
    },
}

/// Builds the stores the suite runs against. Implement it once for your
/// backend; the suite calls [`create_store`](Self::create_store) for every
/// case, so each gets a store no other case sees.
#[async_trait]
pub trait BackendFactory: Send + Sync + 'static {
    /// The backend's name, as shown in reports.
    fn name(&self) -> String;

    /// The optional semantics the backend claims.
    fn capabilities(&self) -> Capabilities;

    /// A new, empty store, isolated from every other store this factory made
    /// (a fresh file, key prefix or bucket prefix). It must never wipe data
    /// it did not create.
    async fn create_store(&self) -> Result<Box<dyn TestStore>, StateBackendError>;

    /// The store named by `locator` (from [`TestStore::locator`]), opened from
    /// another process: the child writer of the crash property calls it.
    /// Needed with [`Capabilities::cross_process_reopen`].
    async fn attach_store(&self, locator: &str) -> Result<Box<dyn TestStore>, StateBackendError> {
        Err(StateBackendError::Io(format!(
            "{} cannot attach to store {locator:?}: attach_store is not implemented",
            self.name()
        )))
    }

    /// How many proptest cases to run per property, given the requested
    /// count (`PROPTEST_CASES`, or the suite's default). A slow remote store
    /// may lower it.
    fn proptest_cases(&self, requested: u32) -> u32 {
        requested
    }

    /// How many rounds of each race (P7, P9, P11) to run, given the
    /// requested count (`LAMINAR_CONFORMANCE_ROUNDS`, or the suite's
    /// default). A slow remote store may lower it, as for
    /// [`proptest_cases`](Self::proptest_cases).
    fn race_rounds(&self, requested: u32) -> u32 {
        requested
    }

    /// How many child writers the crash property (P10) kills, given the
    /// requested count (`LAMINAR_CONFORMANCE_KILLS`, or the suite's
    /// default). A slow remote store may lower it, as for
    /// [`proptest_cases`](Self::proptest_cases).
    fn crash_kills(&self, requested: u32) -> u32 {
        requested
    }
}

/// One isolated store made by a [`BackendFactory`]. Dropping it releases
/// whatever it holds (temporary files, server-side prefixes).
#[async_trait]
pub trait TestStore: Send + Sync {
    /// A new handle on this store for `instance_id`, serving vnodes
    /// `0..vnode_capacity`. Handles on one store share its data.
    async fn open(
        &self,
        instance_id: &str,
        vnode_capacity: u32,
    ) -> Result<Arc<dyn StateBackend>, StateBackendError>;

    /// The largest partial, in bytes, the handles of this store accept.
    fn max_payload_len(&self) -> usize;

    /// Called once every handle has been dropped: release anything held in
    /// process (connections, caches, open files), so the next
    /// [`open`](Self::open) reads the store from durable storage.
    async fn reopen(&self) -> Result<(), StateBackendError> {
        Ok(())
    }

    /// A string from which [`BackendFactory::attach_store`] in another
    /// process finds this store.
    fn locator(&self) -> Option<String> {
        None
    }

    /// Damage stored data, for [`Capabilities::corruption_detection`].
    async fn damage(&self, what: Damage) -> Result<(), StateBackendError> {
        Err(StateBackendError::Io(format!(
            "this test store cannot inject {what:?}"
        )))
    }
}
