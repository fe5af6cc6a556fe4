//! The names the layers give the trait's methods and their outcomes, in
//! spans, metric labels and error messages.

use std::fmt;

use laminar_state_api::StateBackendError;

/// One method of [`StateBackend`](laminar_state_api::StateBackend).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `write_partial`.
    WritePartial,
    /// `read_partial`.
    ReadPartial,
    /// `epoch_complete`, the commit gate.
    EpochComplete,
    /// `prune_before`.
    PruneBefore,
    /// `set_authoritative_version` (synchronous).
    SetAuthoritativeVersion,
    /// `authoritative_version` (synchronous).
    AuthoritativeVersion,
    /// `latest_committed_epoch`.
    LatestCommittedEpoch,
    /// `sealed_epochs`.
    SealedEpochs,
    /// `persist_authoritative_version`.
    PersistAuthoritativeVersion,
    /// `partials`, the listing of an epoch's vnodes.
    Partials,
    /// `read_partials`, the batch read of recovery.
    ReadPartials,
}

impl Operation {
    /// Every operation, in the trait's order.
    pub const ALL: [Operation; 11] = [
        Operation::WritePartial,
        Operation::ReadPartial,
        Operation::EpochComplete,
        Operation::PruneBefore,
        Operation::SetAuthoritativeVersion,
        Operation::AuthoritativeVersion,
        Operation::LatestCommittedEpoch,
        Operation::SealedEpochs,
        Operation::PersistAuthoritativeVersion,
        Operation::Partials,
        Operation::ReadPartials,
    ];

    /// The asynchronous operations: the ones that can fail, be retried or
    /// time out.
    pub const ASYNC: [Operation; 9] = [
        Operation::WritePartial,
        Operation::ReadPartial,
        Operation::EpochComplete,
        Operation::PruneBefore,
        Operation::LatestCommittedEpoch,
        Operation::SealedEpochs,
        Operation::PersistAuthoritativeVersion,
        Operation::Partials,
        Operation::ReadPartials,
    ];

    /// The method's name, as in spans, metric labels and messages.
    pub const fn name(self) -> &'static str {
        match self {
            Operation::WritePartial => "write_partial",
            Operation::ReadPartial => "read_partial",
            Operation::EpochComplete => "epoch_complete",
            Operation::PruneBefore => "prune_before",
            Operation::SetAuthoritativeVersion => "set_authoritative_version",
            Operation::AuthoritativeVersion => "authoritative_version",
            Operation::LatestCommittedEpoch => "latest_committed_epoch",
            Operation::SealedEpochs => "sealed_epochs",
            Operation::PersistAuthoritativeVersion => "persist_authoritative_version",
            Operation::Partials => "partials",
            Operation::ReadPartials => "read_partials",
        }
    }

    /// The operation named `name` (as [`name`](Self::name) spells it).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.name() == name)
    }

    /// A dense index, `0..10`, for per-operation tables.
    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a call ended, as a span field and a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// `Ok`.
    Ok,
    /// [`StateBackendError::Io`].
    Io,
    /// [`StateBackendError::Serialization`].
    Serialization,
    /// [`StateBackendError::NotFound`].
    NotFound,
    /// [`StateBackendError::StaleVersion`]: a fence rejection.
    StaleVersion,
    /// [`StateBackendError::SplitBrainCommit`]: another instance sealed.
    SplitBrain,
}

impl Outcome {
    /// Every outcome.
    pub const ALL: [Outcome; 6] = [
        Outcome::Ok,
        Outcome::Io,
        Outcome::Serialization,
        Outcome::NotFound,
        Outcome::StaleVersion,
        Outcome::SplitBrain,
    ];

    /// The outcome of `result`.
    pub fn of<T>(result: &Result<T, StateBackendError>) -> Self {
        match result {
            Ok(_) => Outcome::Ok,
            Err(StateBackendError::Io(_)) => Outcome::Io,
            Err(StateBackendError::Serialization(_)) => Outcome::Serialization,
            Err(StateBackendError::NotFound { .. }) => Outcome::NotFound,
            Err(StateBackendError::StaleVersion { .. }) => Outcome::StaleVersion,
            Err(StateBackendError::SplitBrainCommit { .. }) => Outcome::SplitBrain,
        }
    }

    /// The label, as in spans and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Io => "io",
            Outcome::Serialization => "serialization",
            Outcome::NotFound => "not_found",
            Outcome::StaleVersion => "stale_version",
            Outcome::SplitBrain => "split_brain",
        }
    }

    /// A dense index, `0..6`.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
