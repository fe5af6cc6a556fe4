//! The checker: what a history may not contain.
//!
//! # The model
//!
//! Each key `(vnode, epoch)` is a register: a write sets it, a read returns
//! it, a prune with a bound above the epoch clears it. Each epoch has at
//! most one commit marker, which only a prune clears. The fence only rises.
//! Every operation took effect at one instant between its invocation and
//! its completion (the recorded interval contains the real one, see
//! [`history`](crate::history)). Operations that returned an answer the
//! contract calls definite took effect, or not, as they said:
//!
//! - `Ok`, a value, `Sealed`, `Latest`: done, inside the interval;
//! - `StaleVersion`, `Serialization`: nothing happened;
//! - `SplitBrainCommit`: nothing happened, and the epoch was sealed by the
//!   instance named;
//! - `Io`, or no completion at all (the process died or the run ended
//!   first): *indeterminate*, it may have taken effect at any instant after
//!   its invocation, even after its caller gave up (a request still
//!   travelling, or held by the fault proxy, lands late). The checker never
//!   assumes it did, nor that it did not.
//!
//! Every check below is a consequence of the contract under that model,
//! stated so that no linearization could excuse it: where a prune might
//! excuse a missing value, any prune that *could* fall in between (its
//! interval overlaps the window, indeterminate prunes included) excuses it;
//! where a prune is needed to condemn a value, only a prune that *certainly*
//! fell in between (acknowledged, its whole interval inside the window)
//! counts. So a violation is a real one, and concurrency or lost answers
//! never make one up; the price is that some real violations hide behind
//! overlapping operations (see "Blind spots").
//!
//! # The checks, one kind each ([`ViolationKind`])
//!
//! - **lost write**: a read that started after a write to its key was
//!   acknowledged returns that write's bytes or bytes of a write that could
//!   come after it, or nothing only if a prune of the epoch could fall in
//!   between.
//! - **refused bytes**: no read returns bytes whose every write was refused
//!   (`StaleVersion`); **unknown bytes**: none returns bytes nobody wrote to
//!   that key, or bytes that do not decode (payloads are unique).
//! - **stale write acknowledged** / **stale write landed**: once a raise to
//!   `v` is acknowledged (its `persist_authoritative_version` returned, or
//!   the raising handle's next write or won seal did, as the contract's
//!   timing rule says), no write at a version below `v` invoked later is
//!   acknowledged, nor ever read back; **deposed seal**: no handle told a
//!   version below `v` wins a seal invoked later.
//! - **two committers**: two instances never both win an epoch unless a
//!   prune of it could fall between the two seals.
//! - **wrong loser**: a `SplitBrainCommit` names the asking instance as the
//!   loser, names another instance as the winner, that instance invoked a
//!   seal of the epoch that won or is indeterminate before the loser's call
//!   returned, and no instance that had certainly won the epoch before
//!   (with no prune possibly in between) is passed over.
//! - **seal without partials**: every vnode of a won seal has a write that
//!   could have landed before the seal (invoked before the seal returned,
//!   not refused, and not certainly pruned in between); **sealed partial
//!   lost**: a read of a vnode of a won epoch, started after the seal
//!   returned, finds a partial unless a prune could fall in between.
//! - **pruned resurrected**: a read started after an acknowledged
//!   `prune_before(b)` returned never returns, for an epoch below `b`,
//!   bytes whose every write had returned before the prune was invoked.
//! - **latest unsealed** / **latest lost a seal**: `latest_committed_epoch`
//!   names an epoch some seal could have sealed and that was not certainly
//!   pruned since; and it is at least every epoch won before the call
//!   started (the last 64 such seals are checked), unless a prune of that
//!   epoch could fall in between.
//! - **unexpected answer**: an error the contract does not allow for the
//!   call (a `Serialization` error on valid input is damaged bytes, a read
//!   or a prune refused by the fence, `NotFound` from a read).
//!
//! # Blind spots
//!
//! - An indeterminate write may land at any later time, so it excuses a
//!   read that returns it (against "lost write") for the rest of the run;
//!   an indeterminate prune likewise excuses missing values of its epochs.
//! - A write invoked before a raise was acknowledged is never condemned,
//!   even if it lands long after (the contract forbids that too, but the
//!   history cannot tell when it landed).
//! - Values are checked only when read: a lost write nobody reads again is
//!   not seen (the run's final sweep reads every vnode of the recent
//!   epochs to narrow this).
//! - `latest_committed_epoch`'s lower bound looks at the last 64 won seals
//!   before each call, not all of them.
//! - The order of two overlapping operations is unknown, so no check
//!   relies on one.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use crate::history::{Event, Kind, Op, Outcome};

/// "Never": the end of an operation that may still take effect.
pub const NEVER: u64 = u64::MAX;

/// One operation: its invocation, matched with its completion.
#[derive(Debug, Clone)]
pub struct Operation {
    /// The process that ran it.
    pub process: String,
    /// Its id in that process.
    pub id: u64,
    /// The handle's instance id.
    pub inst: String,
    /// The call.
    pub op: Op,
    /// When it was invoked.
    pub inv: u64,
    /// When it returned, if it did.
    pub comp: Option<u64>,
    /// Its answer, if it returned.
    pub out: Option<Outcome>,
}

impl Operation {
    /// When it returned, or [`NEVER`].
    pub fn ret(&self) -> u64 {
        self.comp.unwrap_or(NEVER)
    }

    /// The last instant at which it can take effect: its return when the
    /// answer is definite, [`NEVER`] when indeterminate.
    pub fn end(&self) -> u64 {
        if self.indeterminate() {
            NEVER
        } else {
            self.ret()
        }
    }

    /// `Io`, or no answer.
    pub fn indeterminate(&self) -> bool {
        matches!(self.out, None | Some(Outcome::Io(_)))
    }

    /// Refused: it certainly had no effect.
    pub fn refused(&self) -> bool {
        matches!(
            self.out,
            Some(Outcome::Stale { .. } | Outcome::Serialization(_) | Outcome::NotFound { .. })
        )
    }

    fn acknowledged(&self) -> bool {
        matches!(self.out, Some(Outcome::Ok))
    }

    fn won(&self) -> bool {
        matches!(self.out, Some(Outcome::Sealed(true)))
    }
}

/// A fault the orchestrator injected.
#[derive(Debug, Clone)]
pub struct Fault {
    /// When.
    pub t: u64,
    /// Its kind (see [`Kind::Fault`]).
    pub kind: String,
    /// What it hit.
    pub target: String,
}

/// A history: operations in invocation order, and faults.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// The operations.
    pub ops: Vec<Operation>,
    /// The faults, in time order.
    pub faults: Vec<Fault>,
}

impl History {
    /// Match invocations with completions.
    pub fn from_events(events: Vec<Event>) -> Result<Self, String> {
        let mut ops = Vec::new();
        let mut open: HashMap<(String, u64), usize> = HashMap::new();
        let mut faults = Vec::new();
        let mut completions = Vec::new();
        for event in events {
            match event.ev {
                Kind::Invoke { id, inst, op } => {
                    if open.insert((event.p.clone(), id), ops.len()).is_some() {
                        return Err(format!("process {} invoked operation {id} twice", event.p));
                    }
                    ops.push(Operation {
                        process: event.p,
                        id,
                        inst,
                        op,
                        inv: event.t,
                        comp: None,
                        out: None,
                    });
                }
                Kind::Complete { id, out } => completions.push((event.p, id, event.t, out)),
                Kind::Fault { kind, target } => faults.push(Fault {
                    t: event.t,
                    kind,
                    target,
                }),
            }
        }
        for (process, id, t, out) in completions {
            let Some(&index) = open.get(&(process.clone(), id)) else {
                return Err(format!(
                    "process {process} completed operation {id}, never invoked"
                ));
            };
            let op = &mut ops[index];
            if op.comp.is_some() {
                return Err(format!("process {process} completed operation {id} twice"));
            }
            op.comp = Some(t);
            op.out = Some(out);
        }
        ops.sort_by_key(|op| op.inv);
        faults.sort_by_key(|f| f.t);
        Ok(Self { ops, faults })
    }
}

/// The kinds of violation (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ViolationKind {
    /// An acknowledged write was lost.
    LostWrite,
    /// A read returned bytes whose every write was refused.
    RefusedBytes,
    /// A read returned bytes nobody wrote to that key.
    UnknownBytes,
    /// A write below an acknowledged fence was acknowledged.
    StaleWriteAcknowledged,
    /// A write below an acknowledged fence was read back.
    StaleWriteLanded,
    /// A handle told a version below an acknowledged fence won a seal.
    DeposedSeal,
    /// Two instances won one epoch with no prune in between.
    TwoCommitters,
    /// A `SplitBrainCommit` named the wrong winner or loser.
    WrongLoser,
    /// A won seal lacked a partial.
    SealWithoutPartials,
    /// A partial of a won epoch went missing.
    SealedPartialLost,
    /// A pruned partial came back.
    PrunedResurrected,
    /// `latest_committed_epoch` named an epoch that is not sealed.
    LatestUnsealed,
    /// `latest_committed_epoch` missed a won epoch.
    LatestLostSeal,
    /// An error the contract does not allow for that call.
    UnexpectedAnswer,
}

impl ViolationKind {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            ViolationKind::LostWrite => "lost write",
            ViolationKind::RefusedBytes => "refused bytes read",
            ViolationKind::UnknownBytes => "unknown bytes read",
            ViolationKind::StaleWriteAcknowledged => "stale write acknowledged",
            ViolationKind::StaleWriteLanded => "stale write landed",
            ViolationKind::DeposedSeal => "deposed seal",
            ViolationKind::TwoCommitters => "two committers",
            ViolationKind::WrongLoser => "wrong loser",
            ViolationKind::SealWithoutPartials => "seal without partials",
            ViolationKind::SealedPartialLost => "sealed partial lost",
            ViolationKind::PrunedResurrected => "pruned resurrected",
            ViolationKind::LatestUnsealed => "latest unsealed",
            ViolationKind::LatestLostSeal => "latest lost a seal",
            ViolationKind::UnexpectedAnswer => "unexpected answer",
        }
    }
}

/// One violation: its kind, when it was observed, what is wrong, and the
/// operations involved (indexes into [`History::ops`]).
#[derive(Debug, Clone)]
pub struct Violation {
    /// The kind.
    pub kind: ViolationKind,
    /// When it was observed (the offending operation's return or
    /// invocation).
    pub at: u64,
    /// What is wrong, in words.
    pub message: String,
    /// The operations involved, the offending one first.
    pub ops: Vec<usize>,
}

/// Counts of a history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Operations invoked.
    pub operations: usize,
    /// Answered with success (a value, a gate answer, `Ok`).
    pub succeeded: usize,
    /// Refused with `StaleVersion`.
    pub refused: usize,
    /// Lost a seal race (`SplitBrainCommit`).
    pub split_brain: usize,
    /// Failed with `Io`.
    pub failed: usize,
    /// Never answered (process killed, or stopped at the end).
    pub unanswered: usize,
    /// Seals won.
    pub seals_won: usize,
    /// Reads that returned a value or nothing.
    pub reads: usize,
    /// Faults, by kind.
    pub faults: BTreeMap<String, usize>,
}

/// The checker's verdict.
#[derive(Debug, Clone)]
pub struct Report {
    /// Counts.
    pub stats: Stats,
    /// Every violation, earliest first.
    pub violations: Vec<Violation>,
}

impl Report {
    /// The first violation with its history excerpt: the operations
    /// involved, as their history lines, and the faults around them.
    pub fn describe_first(&self, history: &History) -> Option<String> {
        self.describe(history, 0)
            .map(|text| format!("first violation: {text}"))
    }

    /// Violation `index` with its history excerpt.
    pub fn describe(&self, history: &History, index: usize) -> Option<String> {
        let violation = self.violations.get(index)?;
        let mut text = format!(
            "{}: {}\nhistory excerpt (CLOCK_MONOTONIC ns):\n",
            violation.kind.name(),
            violation.message
        );
        let mut from = NEVER;
        let mut to = 0;
        for &index in &violation.ops {
            let op = &history.ops[index];
            from = from.min(op.inv);
            to = to.max(op.comp.unwrap_or(op.inv));
            for line in op_lines(op) {
                let _ = writeln!(text, "  {line}");
            }
        }
        let nearby: Vec<&Fault> = history
            .faults
            .iter()
            .filter(|f| f.t + 2_000_000_000 >= from && f.t <= to.saturating_add(500_000_000))
            .collect();
        if !nearby.is_empty() {
            let _ = writeln!(text, "faults from 2 s before to 0.5 s after:");
            for fault in nearby.iter().rev().take(12).rev() {
                let line = serde_json::to_string(&Event {
                    t: fault.t,
                    p: "run".into(),
                    ev: Kind::Fault {
                        kind: fault.kind.clone(),
                        target: fault.target.clone(),
                    },
                })
                .unwrap_or_default();
                let _ = writeln!(text, "  {line}");
            }
        }
        Some(text)
    }

    /// Violations per kind, `kind: n, ...`.
    pub fn by_kind(&self) -> String {
        let mut counts: BTreeMap<ViolationKind, usize> = BTreeMap::new();
        for v in &self.violations {
            *counts.entry(v.kind).or_default() += 1;
        }
        counts
            .iter()
            .map(|(k, n)| format!("{}: {n}", k.name()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The history lines of one operation.
fn op_lines(op: &Operation) -> Vec<String> {
    let mut lines = vec![
        serde_json::to_string(&Event {
            t: op.inv,
            p: op.process.clone(),
            ev: Kind::Invoke {
                id: op.id,
                inst: op.inst.clone(),
                op: op.op.clone(),
            },
        })
        .unwrap_or_default(),
    ];
    match (&op.comp, &op.out) {
        (Some(t), Some(out)) => lines.push(
            serde_json::to_string(&Event {
                t: *t,
                p: op.process.clone(),
                ev: Kind::Complete {
                    id: op.id,
                    out: out.clone(),
                },
            })
            .unwrap_or_default(),
        ),
        _ => lines.push(format!(
            "(operation {} of {} never completed)",
            op.id, op.process
        )),
    }
    lines
}

/// Prunes, indexed for "is there a prune of an epoch above `e` whose
/// interval satisfies ..." in O(log² n): a merge-sort tree over the prunes
/// sorted by invocation, each node's prunes sorted by bound (descending)
/// with a running maximum (or minimum) of a per-prune value.
struct PruneIndex {
    invs: Vec<u64>,
    size: usize,
    nodes: Vec<Vec<(u64, u64)>>,
    max: bool,
}

impl PruneIndex {
    /// `items`: (invocation, bound, value). `max`: keep the running
    /// maximum of the values, else the minimum.
    fn new(mut items: Vec<(u64, u64, u64)>, max: bool) -> Self {
        items.sort_by_key(|&(inv, _, _)| inv);
        let size = items.len().next_power_of_two().max(1);
        let mut nodes: Vec<Vec<(u64, u64)>> = vec![Vec::new(); 2 * size];
        for (i, &(_, bound, value)) in items.iter().enumerate() {
            nodes[size + i] = vec![(bound, value)];
        }
        for node in (1..size).rev() {
            let mut merged: Vec<(u64, u64)> = nodes[2 * node]
                .iter()
                .chain(&nodes[2 * node + 1])
                .copied()
                .collect();
            merged.sort_by_key(|entry| std::cmp::Reverse(entry.0));
            let mut acc = if max { 0 } else { NEVER };
            for entry in &mut merged {
                acc = if max {
                    acc.max(entry.1)
                } else {
                    acc.min(entry.1)
                };
                entry.1 = acc;
            }
            nodes[node] = merged;
        }
        Self {
            invs: items.iter().map(|&(inv, _, _)| inv).collect(),
            size,
            nodes,
            max,
        }
    }

    /// The running max (min) of the values of the prunes at positions
    /// `lo..hi` whose bound is above `epoch`.
    fn query(&self, lo: usize, hi: usize, epoch: u64) -> Option<u64> {
        let mut best: Option<u64> = None;
        let mut visit = |node: &Vec<(u64, u64)>| {
            let count = node.partition_point(|&(bound, _)| bound > epoch);
            if count > 0 {
                let value = node[count - 1].1;
                best = Some(match best {
                    None => value,
                    Some(b) if self.max => b.max(value),
                    Some(b) => b.min(value),
                });
            }
        };
        let (mut l, mut r) = (lo + self.size, hi + self.size);
        while l < r {
            if l & 1 == 1 {
                visit(&self.nodes[l]);
                l += 1;
            }
            if r & 1 == 1 {
                r -= 1;
                visit(&self.nodes[r]);
            }
            l >>= 1;
            r >>= 1;
        }
        best
    }
}

/// Every prune that may have taken effect, by its interval.
struct Prunes {
    /// Value: the prune's end ([`NEVER`] when indeterminate); running max.
    possible: PruneIndex,
    /// Acknowledged prunes only; value: their return; running min.
    certain: PruneIndex,
}

impl Prunes {
    fn new(history: &History) -> Self {
        let mut possible = Vec::new();
        let mut certain = Vec::new();
        for op in &history.ops {
            if let Op::Prune { before } = op.op {
                if op.refused() {
                    continue;
                }
                possible.push((op.inv, before, op.end()));
                if op.acknowledged() {
                    certain.push((op.inv, before, op.ret()));
                }
            }
        }
        Self {
            possible: PruneIndex::new(possible, true),
            certain: PruneIndex::new(certain, false),
        }
    }

    /// Could a prune of `epoch` take effect strictly after `after` and
    /// before `before`?
    fn could_between(&self, epoch: u64, after: u64, before: u64) -> bool {
        if after >= before {
            return false;
        }
        let hi = self.possible.invs.partition_point(|&inv| inv < before);
        self.possible
            .query(0, hi, epoch)
            .is_some_and(|end| end > after)
    }

    /// Did an acknowledged prune of `epoch` certainly take effect after
    /// `after` and before `before` (its whole interval inside)?
    fn certainly_between(&self, epoch: u64, after: u64, before: u64) -> bool {
        if after >= before {
            return false;
        }
        let lo = self.certain.invs.partition_point(|&inv| inv <= after);
        self.certain
            .query(lo, self.certain.invs.len(), epoch)
            .is_some_and(|ret| ret < before)
    }
}

/// Acknowledged raises of the fence, and the highest version acknowledged
/// before a given instant.
struct Fence {
    /// (when acknowledged, highest version acknowledged by then, the raise
    /// and the operation that acknowledged it).
    acks: Vec<(u64, u64, usize, usize)>,
}

impl Fence {
    fn new(history: &History) -> Self {
        // Per instance: its operations that carry a raise (acknowledged
        // writes, won seals) by invocation, each with the earliest-returning
        // one among those invoked at or after it.
        let mut carriers: HashMap<&str, Vec<(u64, u64, usize)>> = HashMap::new();
        for (i, op) in history.ops.iter().enumerate() {
            let carries = match op.op {
                Op::Write { .. } => op.acknowledged(),
                Op::Seal { .. } => op.won(),
                _ => false,
            };
            if carries {
                carriers
                    .entry(op.inst.as_str())
                    .or_default()
                    .push((op.inv, op.ret(), i));
            }
        }
        for list in carriers.values_mut() {
            list.sort_unstable();
            let mut earliest = (NEVER, usize::MAX);
            for entry in list.iter_mut().rev() {
                if entry.1 < earliest.0 {
                    earliest = (entry.1, entry.2);
                }
                (entry.1, entry.2) = earliest;
            }
        }
        let mut acks = Vec::new();
        for (i, op) in history.ops.iter().enumerate() {
            match op.op {
                Op::PersistFence { version } if op.acknowledged() => {
                    acks.push((op.ret(), version, i, i));
                }
                Op::SetFence { version } => {
                    let Some(set) = op.comp else { continue };
                    if let Some(list) = carriers.get(op.inst.as_str()) {
                        let n = list.partition_point(|&(inv, _, _)| inv <= set);
                        if let Some(&(_, ret, carrier)) = list.get(n) {
                            acks.push((ret, version, i, carrier));
                        }
                    }
                }
                _ => {}
            }
        }
        acks.sort_unstable();
        let mut highest = (0, usize::MAX, usize::MAX);
        for ack in &mut acks {
            if ack.1 > highest.0 {
                highest = (ack.1, ack.2, ack.3);
            }
            (ack.1, ack.2, ack.3) = highest;
        }
        Self { acks }
    }

    /// The highest version whose raise was acknowledged before `t`.
    fn before(&self, t: u64) -> u64 {
        self.raise_before(t).map_or(0, |(version, _)| version)
    }

    /// The highest version acknowledged before `t`, with the raise and the
    /// operation that acknowledged it (the same for a persist).
    fn raise_before(&self, t: u64) -> Option<(u64, Vec<usize>)> {
        let n = self.acks.partition_point(|&(at, ..)| at < t);
        let &(_, version, raise, carrier) = self.acks.get(n.checked_sub(1)?)?;
        let mut ops = vec![raise];
        if carrier != raise {
            ops.push(carrier);
        }
        Some((version, ops))
    }
}

/// Check a history.
pub fn check(history: &History) -> Report {
    let ops = &history.ops;
    let prunes = Prunes::new(history);
    let fence = Fence::new(history);

    let mut writes_by_key: HashMap<(u32, u64), Vec<usize>> = HashMap::new();
    let mut writes_by_payload: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut seals_by_epoch: HashMap<u64, Vec<usize>> = HashMap::new();
    let mut won_by_comp: Vec<usize> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match &op.op {
            Op::Write {
                vnode,
                epoch,
                payload,
                ..
            } => {
                writes_by_key.entry((*vnode, *epoch)).or_default().push(i);
                writes_by_payload.entry(payload).or_default().push(i);
            }
            Op::Seal { epoch, .. } => {
                seals_by_epoch.entry(*epoch).or_default().push(i);
                if op.won() {
                    won_by_comp.push(i);
                }
            }
            _ => {}
        }
    }
    won_by_comp.sort_by_key(|&i| ops[i].ret());

    let mut violations = Vec::new();
    let mut stats = Stats::default();
    for fault in &history.faults {
        *stats.faults.entry(fault.kind.clone()).or_default() += 1;
    }
    let mut flag = |kind, at, message: String, involved: Vec<usize>| {
        violations.push(Violation {
            kind,
            at,
            message,
            ops: involved,
        });
    };

    for (i, op) in ops.iter().enumerate() {
        stats.operations += 1;
        match &op.out {
            None => stats.unanswered += 1,
            Some(Outcome::Io(_)) => stats.failed += 1,
            Some(Outcome::Stale { .. }) => stats.refused += 1,
            Some(Outcome::SplitBrain { .. }) => stats.split_brain += 1,
            Some(_) => stats.succeeded += 1,
        }
        if let Some(out) = &op.out
            && let Some(why) = unexpected(&op.op, out)
        {
            flag(
                ViolationKind::UnexpectedAnswer,
                op.ret(),
                format!("{} answered {why}", describe(op)),
                vec![i],
            );
        }
        match (&op.op, &op.out) {
            (Op::Write { version, .. }, Some(Outcome::Ok)) => {
                let fence_then = fence.before(op.inv);
                if fence_then > *version {
                    flag(
                        ViolationKind::StaleWriteAcknowledged,
                        op.ret(),
                        format!(
                            "{} was acknowledged, invoked after a raise to {fence_then} was acknowledged",
                            describe(op)
                        ),
                        with_raise(i, &fence, op.inv),
                    );
                }
            }
            (
                Op::Seal {
                    epoch,
                    vnodes,
                    told,
                },
                Some(Outcome::Sealed(true)),
            ) => {
                stats.seals_won += 1;
                let fence_then = fence.before(op.inv);
                if *told > 0 && fence_then > *told {
                    flag(
                        ViolationKind::DeposedSeal,
                        op.ret(),
                        format!(
                            "{} won, invoked by a handle told {told} after a raise to {fence_then} was acknowledged",
                            describe(op)
                        ),
                        with_raise(i, &fence, op.inv),
                    );
                }
                check_seal_had_partials(
                    ops,
                    i,
                    *epoch,
                    *vnodes,
                    &writes_by_key,
                    &prunes,
                    &mut flag,
                );
            }
            (Op::Seal { epoch, .. }, Some(Outcome::SplitBrain { committer, self_id })) => {
                check_loser(
                    ops,
                    i,
                    *epoch,
                    committer,
                    self_id,
                    seals_by_epoch.get(epoch).map_or(&[][..], Vec::as_slice),
                    &prunes,
                    &mut flag,
                );
            }
            (Op::Read { vnode, epoch }, Some(Outcome::Value(value))) => {
                stats.reads += 1;
                check_read(
                    ops,
                    i,
                    (*vnode, *epoch),
                    value.as_deref(),
                    &writes_by_key,
                    &writes_by_payload,
                    seals_by_epoch.get(epoch).map_or(&[][..], Vec::as_slice),
                    &prunes,
                    &fence,
                    &mut flag,
                );
            }
            (Op::Latest, Some(Outcome::Latest(latest))) => {
                check_latest(
                    ops,
                    i,
                    *latest,
                    &seals_by_epoch,
                    &won_by_comp,
                    &prunes,
                    &mut flag,
                );
            }
            _ => {}
        }
    }

    // Two committers: per epoch, every pair of winners with different
    // instances needs a prune that could fall between them, in one order
    // or the other.
    let mut epochs: Vec<&u64> = seals_by_epoch.keys().collect();
    epochs.sort_unstable();
    for epoch in epochs {
        let winners: Vec<usize> = seals_by_epoch[epoch]
            .iter()
            .copied()
            .filter(|&i| ops[i].won())
            .collect();
        'pairs: for (n, &a) in winners.iter().enumerate() {
            for &b in &winners[n + 1..] {
                let (sa, sb) = (&ops[a], &ops[b]);
                if sa.inst == sb.inst {
                    continue;
                }
                let a_then_b = sa.inv < sb.ret() && prunes.could_between(*epoch, sa.inv, sb.ret());
                let b_then_a = sb.inv < sa.ret() && prunes.could_between(*epoch, sb.inv, sa.ret());
                if !a_then_b && !b_then_a {
                    flag(
                        ViolationKind::TwoCommitters,
                        sa.ret().max(sb.ret()),
                        format!(
                            "epoch {epoch} was won by {} and by {}, with no prune of it possibly in between",
                            sa.inst, sb.inst
                        ),
                        vec![b, a],
                    );
                    break 'pairs;
                }
            }
        }
    }

    violations.sort_by_key(|v| (v.at, v.kind));
    Report { stats, violations }
}

/// `op` and the raise acknowledged before `t` (with what acknowledged it).
fn with_raise(op: usize, fence: &Fence, t: u64) -> Vec<usize> {
    let mut ops = vec![op];
    ops.extend(
        fence
            .raise_before(t)
            .map(|(_, raise)| raise)
            .unwrap_or_default(),
    );
    ops
}

/// An error the contract does not allow for this call, if `out` is one.
fn unexpected(op: &Op, out: &Outcome) -> Option<String> {
    match (op, out) {
        (_, Outcome::Io(_)) => None,
        (_, Outcome::Serialization(m)) => Some(format!(
            "Serialization on valid input (damaged bytes?): {m}"
        )),
        (_, Outcome::NotFound { vnode, epoch }) => Some(format!(
            "NotFound {{ vnode: {vnode}, epoch: {epoch} }} (a read answers Ok(None))"
        )),
        (Op::Write { .. } | Op::Seal { .. }, Outcome::Stale { .. }) => None,
        (_, Outcome::Stale { .. }) => {
            Some("StaleVersion, which only writes and seals may be".into())
        }
        (Op::Seal { .. }, Outcome::SplitBrain { .. }) => None,
        (_, Outcome::SplitBrain { .. }) => Some("SplitBrainCommit, which only seals may be".into()),
        (
            Op::Write { .. } | Op::Prune { .. } | Op::PersistFence { .. } | Op::SetFence { .. },
            Outcome::Ok,
        )
        | (Op::Read { .. }, Outcome::Value(_))
        | (Op::Seal { .. }, Outcome::Sealed(_))
        | (Op::Latest, Outcome::Latest(_)) => None,
        (_, other) => Some(format!("{other:?}, an answer of another call")),
    }
}

/// An operation in words.
fn describe(op: &Operation) -> String {
    let call = match &op.op {
        Op::Write {
            vnode,
            epoch,
            version,
            payload,
        } => format!("write_partial({vnode}, {epoch}, v{version}, {payload})"),
        Op::Read { vnode, epoch } => format!("read_partial({vnode}, {epoch})"),
        Op::Seal {
            epoch,
            vnodes,
            told,
        } => format!("epoch_complete({epoch}, 0..{vnodes}) [told v{told}]"),
        Op::Prune { before } => format!("prune_before({before})"),
        Op::SetFence { version } => format!("set_authoritative_version({version})"),
        Op::PersistFence { version } => format!("persist_authoritative_version({version})"),
        Op::Latest => "latest_committed_epoch()".into(),
    };
    format!("{call} by {} ({} op {})", op.inst, op.process, op.id)
}

#[allow(clippy::too_many_arguments)]
fn check_read(
    ops: &[Operation],
    r: usize,
    key: (u32, u64),
    value: Option<&str>,
    writes_by_key: &HashMap<(u32, u64), Vec<usize>>,
    writes_by_payload: &HashMap<&str, Vec<usize>>,
    seals: &[usize],
    prunes: &Prunes,
    fence: &Fence,
    flag: &mut impl FnMut(ViolationKind, u64, String, Vec<usize>),
) {
    let read = &ops[r];
    let (vnode, epoch) = key;
    let key_writes = writes_by_key.get(&key).map_or(&[][..], Vec::as_slice);
    // The acknowledged write to the key, returned before the read began,
    // invoked last: the strongest witness (a later invocation leaves fewer
    // writes that may follow it and fewer prunes that may fall between).
    let witness = key_writes
        .iter()
        .copied()
        .filter(|&w| ops[w].acknowledged() && ops[w].ret() < read.inv)
        .max_by_key(|&w| ops[w].inv);
    match value {
        None => {
            if let Some(w) = witness
                && !prunes.could_between(epoch, ops[w].inv, read.ret())
            {
                flag(
                    ViolationKind::LostWrite,
                    read.ret(),
                    format!(
                        "{} found nothing, after {} was acknowledged, with no prune of epoch {epoch} possibly in between",
                        describe(read),
                        describe(&ops[w])
                    ),
                    vec![r, w],
                );
                return;
            }
            // A won seal of the epoch that returned before the read began:
            // the partial was there at the seal, and only a prune removes it.
            let seal = seals
                .iter()
                .copied()
                .filter(|&s| {
                    let seal = &ops[s];
                    seal.won()
                        && seal.ret() < read.inv
                        && matches!(seal.op, Op::Seal { vnodes, .. } if vnode < vnodes)
                })
                .max_by_key(|&s| ops[s].inv);
            if let Some(s) = seal
                && !prunes.could_between(epoch, ops[s].inv, read.ret())
            {
                flag(
                    ViolationKind::SealedPartialLost,
                    read.ret(),
                    format!(
                        "{} found nothing, after {} won, with no prune of epoch {epoch} possibly in between",
                        describe(read),
                        describe(&ops[s])
                    ),
                    vec![r, s],
                );
            }
        }
        Some(payload) => {
            let all = writes_by_payload
                .get(payload)
                .map_or(&[][..], Vec::as_slice);
            let same_key: Vec<usize> = all
                .iter()
                .copied()
                .filter(
                    |&w| matches!(ops[w].op, Op::Write { vnode: v, epoch: e, .. } if (v, e) == key),
                )
                .collect();
            if payload.starts_with("!bad:") || same_key.is_empty() {
                let mut involved = vec![r];
                involved.extend(all.iter().take(2));
                flag(
                    ViolationKind::UnknownBytes,
                    read.ret(),
                    format!(
                        "{} returned {payload:?}, which no write wrote to that key{}",
                        describe(read),
                        if all.is_empty() {
                            ""
                        } else {
                            " (it was written to another key)"
                        }
                    ),
                    involved,
                );
                return;
            }
            if same_key.iter().all(|&w| ops[w].refused()) {
                let mut involved = vec![r];
                involved.extend(same_key.iter().take(2));
                flag(
                    ViolationKind::RefusedBytes,
                    read.ret(),
                    format!(
                        "{} returned {payload}, whose every write was refused",
                        describe(read)
                    ),
                    involved,
                );
                return;
            }
            let stale = same_key.iter().all(|&w| {
                let write = &ops[w];
                let Op::Write { version, .. } = write.op else {
                    unreachable!("writes")
                };
                write.refused() || fence.before(write.inv) > version
            });
            if stale {
                let w = &ops[same_key[0]];
                let mut involved = vec![r];
                involved.extend(same_key.iter().take(2));
                involved.extend(
                    fence
                        .raise_before(w.inv)
                        .map(|(_, raise)| raise)
                        .unwrap_or_default(),
                );
                flag(
                    ViolationKind::StaleWriteLanded,
                    read.ret(),
                    format!(
                        "{} returned {payload}, written by {} below the fence acknowledged before it ({})",
                        describe(read),
                        describe(w),
                        fence.before(w.inv)
                    ),
                    involved,
                );
                return;
            }
            // The latest moment the bytes can have landed.
            let landed = same_key.iter().map(|&w| ops[w].end()).max().unwrap_or(0);
            if let Some(w) = witness
                && landed < ops[w].inv
            {
                flag(
                    ViolationKind::LostWrite,
                    read.ret(),
                    format!(
                        "{} returned {payload}, written before {} was invoked and acknowledged before the read",
                        describe(read),
                        describe(&ops[w])
                    ),
                    vec![r, w, same_key[0]],
                );
                return;
            }
            if prunes.certainly_between(epoch, landed, read.inv) {
                flag(
                    ViolationKind::PrunedResurrected,
                    read.ret(),
                    format!(
                        "{} returned {payload}, written before an acknowledged prune above epoch {epoch} that returned before the read",
                        describe(read)
                    ),
                    vec![r, same_key[0]],
                );
            }
        }
    }
}

fn check_seal_had_partials(
    ops: &[Operation],
    s: usize,
    epoch: u64,
    vnodes: u32,
    writes_by_key: &HashMap<(u32, u64), Vec<usize>>,
    prunes: &Prunes,
    flag: &mut impl FnMut(ViolationKind, u64, String, Vec<usize>),
) {
    let seal = &ops[s];
    for vnode in 0..vnodes {
        let candidates = writes_by_key
            .get(&(vnode, epoch))
            .map_or(&[][..], Vec::as_slice);
        // The write that could have landed last, among those invoked before
        // the seal returned and not refused.
        let best = candidates
            .iter()
            .copied()
            .filter(|&w| !ops[w].refused() && ops[w].inv < seal.ret())
            .max_by_key(|&w| ops[w].end());
        let missing = match best {
            None => true,
            Some(w) => prunes.certainly_between(epoch, ops[w].end(), seal.inv),
        };
        if missing {
            flag(
                ViolationKind::SealWithoutPartials,
                seal.ret(),
                format!(
                    "{} won, but no write of vnode {vnode} can have been there when it sealed{}",
                    describe(seal),
                    if best.is_some() {
                        " (the writes before it were certainly pruned)"
                    } else {
                        ""
                    }
                ),
                std::iter::once(s).chain(best).collect(),
            );
            return;
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn check_loser(
    ops: &[Operation],
    l: usize,
    epoch: u64,
    committer: &str,
    self_id: &str,
    seals: &[usize],
    prunes: &Prunes,
    flag: &mut impl FnMut(ViolationKind, u64, String, Vec<usize>),
) {
    let loser = &ops[l];
    if self_id != loser.inst {
        flag(
            ViolationKind::WrongLoser,
            loser.ret(),
            format!("{} was told it is {self_id:?}", describe(loser)),
            vec![l],
        );
        return;
    }
    if committer == loser.inst {
        flag(
            ViolationKind::WrongLoser,
            loser.ret(),
            format!("{} was told it lost to itself", describe(loser)),
            vec![l],
        );
        return;
    }
    let named = seals.iter().copied().find(|&s| {
        let seal = &ops[s];
        seal.inst == committer && seal.inv < loser.ret() && (seal.won() || seal.indeterminate())
    });
    if named.is_none() {
        flag(
            ViolationKind::WrongLoser,
            loser.ret(),
            format!(
                "{} was told {committer:?} won, which never invoked a seal of epoch {epoch} that won or may have",
                describe(loser)
            ),
            vec![l],
        );
        return;
    }
    for &s in seals {
        let seal = &ops[s];
        if seal.won()
            && seal.inst != committer
            && seal.ret() < loser.inv
            && !prunes.could_between(epoch, seal.inv, loser.ret())
        {
            flag(
                ViolationKind::WrongLoser,
                loser.ret(),
                format!(
                    "{} was told {committer:?} won, but {} had won before it, with no prune of the epoch possibly in between",
                    describe(loser),
                    describe(seal)
                ),
                vec![l, s],
            );
            return;
        }
    }
}

fn check_latest(
    ops: &[Operation],
    r: usize,
    latest: Option<u64>,
    seals_by_epoch: &HashMap<u64, Vec<usize>>,
    won_by_comp: &[usize],
    prunes: &Prunes,
    flag: &mut impl FnMut(ViolationKind, u64, String, Vec<usize>),
) {
    let read = &ops[r];
    if let Some(epoch) = latest {
        let seals = seals_by_epoch.get(&epoch).map_or(&[][..], Vec::as_slice);
        let best = seals
            .iter()
            .copied()
            .filter(|&s| {
                let seal = &ops[s];
                seal.inv < read.ret() && (seal.won() || seal.indeterminate())
            })
            .max_by_key(|&s| ops[s].end());
        match best {
            None => {
                flag(
                    ViolationKind::LatestUnsealed,
                    read.ret(),
                    format!(
                        "{} named epoch {epoch}, which no seal that won or may have had sealed",
                        describe(read)
                    ),
                    vec![r],
                );
                return;
            }
            Some(s) if prunes.certainly_between(epoch, ops[s].end(), read.inv) => {
                flag(
                    ViolationKind::LatestUnsealed,
                    read.ret(),
                    format!(
                        "{} named epoch {epoch}, certainly pruned after its last seal",
                        describe(read)
                    ),
                    vec![r, s],
                );
                return;
            }
            Some(_) => {}
        }
    }
    let before = won_by_comp.partition_point(|&s| ops[s].ret() < read.inv);
    for &s in won_by_comp[..before].iter().rev().take(64) {
        let seal = &ops[s];
        let Op::Seal { epoch, .. } = seal.op else {
            continue;
        };
        if latest.is_none_or(|l| epoch > l) && !prunes.could_between(epoch, seal.inv, read.ret()) {
            flag(
                ViolationKind::LatestLostSeal,
                read.ret(),
                format!(
                    "{} answered {latest:?}, after {} won, with no prune of epoch {epoch} possibly in between",
                    describe(read),
                    describe(seal)
                ),
                vec![r, s],
            );
            return;
        }
    }
}

#[cfg(test)]
mod tests;
