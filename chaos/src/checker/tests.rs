//! Hand-written histories: one per violation kind, and the concurrent or
//! indeterminate cases that must not be taken for one.

use super::*;

/// A history under construction; times are plain numbers.
#[derive(Default)]
struct H {
    events: Vec<Event>,
    next: u64,
}

impl H {
    /// An operation by `inst` (its process is named after it), invoked at
    /// `inv`, answered `out` at `comp` (or never).
    fn op(&mut self, inst: &str, op: Op, inv: u64, done: Option<(u64, Outcome)>) -> &mut Self {
        let id = self.next;
        self.next += 1;
        let p = format!("p-{inst}");
        self.events.push(Event {
            t: inv,
            p: p.clone(),
            ev: Kind::Invoke {
                id,
                inst: inst.into(),
                op,
            },
        });
        if let Some((t, out)) = done {
            self.events.push(Event {
                t,
                p,
                ev: Kind::Complete { id, out },
            });
        }
        self
    }

    fn write(
        &mut self,
        inst: &str,
        key: (u32, u64),
        version: u64,
        payload: &str,
        at: (u64, u64),
        out: Outcome,
    ) -> &mut Self {
        let op = Op::Write {
            vnode: key.0,
            epoch: key.1,
            version,
            payload: payload.into(),
        };
        self.op(inst, op, at.0, Some((at.1, out)))
    }

    fn read(
        &mut self,
        inst: &str,
        key: (u32, u64),
        at: (u64, u64),
        value: Option<&str>,
    ) -> &mut Self {
        let op = Op::Read {
            vnode: key.0,
            epoch: key.1,
        };
        self.op(
            inst,
            op,
            at.0,
            Some((at.1, Outcome::Value(value.map(str::to_owned)))),
        )
    }

    fn seal(
        &mut self,
        inst: &str,
        epoch: u64,
        vnodes: u32,
        told: u64,
        at: (u64, u64),
        out: Outcome,
    ) -> &mut Self {
        self.op(
            inst,
            Op::Seal {
                epoch,
                vnodes,
                told,
            },
            at.0,
            Some((at.1, out)),
        )
    }

    fn prune(
        &mut self,
        inst: &str,
        before: u64,
        at: (u64, u64),
        out: Option<Outcome>,
    ) -> &mut Self {
        let done = out.map(|o| (at.1, o));
        self.op(inst, Op::Prune { before }, at.0, done)
    }

    /// `inst` persists the fence `version`, invoked at `at.0`, answered
    /// `Ok` at `at.1`.
    fn persist(&mut self, inst: &str, version: u64, at: (u64, u64)) -> &mut Self {
        self.op(
            inst,
            Op::PersistFence { version },
            at.0,
            Some((at.1, Outcome::Ok)),
        )
    }

    /// `inst` sets its own fence to `version` at `at` (a local call: it
    /// answers at once).
    fn set_fence(&mut self, inst: &str, version: u64, at: u64) -> &mut Self {
        self.op(inst, Op::SetFence { version }, at, Some((at, Outcome::Ok)))
    }

    /// `inst` asks for the latest committed epoch and is told `answer`.
    fn latest(&mut self, inst: &str, at: (u64, u64), answer: Option<u64>) -> &mut Self {
        self.op(
            inst,
            Op::Latest,
            at.0,
            Some((at.1, Outcome::Latest(answer))),
        )
    }

    fn check(&self) -> Report {
        let history = History::from_events(self.events.clone()).expect("a well-formed history");
        let report = check(&history);
        if let Some(text) = report.describe_first(&history) {
            eprintln!("{text}");
        }
        report
    }

    /// Checks the history, which must hold no violation; its report.
    fn passes(&self) -> Report {
        let report = self.check();
        assert!(report.violations.is_empty(), "{:?}", report.violations);
        report
    }

    fn kinds(&self) -> Vec<ViolationKind> {
        self.check().violations.iter().map(|v| v.kind).collect()
    }
}

fn stale(caller: u64, authoritative: u64) -> Outcome {
    Outcome::Stale {
        caller,
        authoritative,
    }
}

/// `self_id` lost the seal to `committer`.
fn split_brain(committer: &str, self_id: &str) -> Outcome {
    Outcome::SplitBrain {
        committer: committer.into(),
        self_id: self_id.into(),
    }
}

fn io() -> Outcome {
    Outcome::Io("timed out".into())
}

/// A leader's clean cycle: raise, write two vnodes, seal, read back,
/// prune; a coordinator loses the race and reads the latest epoch.
fn clean() -> H {
    let mut h = H::default();
    h.persist("a", 5, (1, 2))
        .write("a", (0, 1), 5, "a1", (3, 5), Outcome::Ok)
        .write("a", (1, 1), 5, "a2", (4, 6), Outcome::Ok)
        .seal("a", 1, 2, 5, (7, 8), Outcome::Sealed(true))
        .seal("c", 1, 2, 0, (7, 9), split_brain("a", "c"))
        .read("a", (0, 1), (9, 10), Some("a1"))
        .read("a", (1, 1), (9, 10), Some("a2"))
        .latest("c", (11, 12), Some(1))
        .read("c", (1, 1), (13, 14), Some("a2"));
    h
}

#[test]
fn a_clean_history_passes() {
    let report = clean().passes();
    assert_eq!(report.stats.seals_won, 1);
    assert_eq!(report.stats.split_brain, 1);
    assert_eq!(report.stats.reads, 3);
}

#[test]
fn lost_write() {
    let mut h = H::default();
    h.write("a", (0, 1), 0, "x", (1, 2), Outcome::Ok)
        .read("b", (0, 1), (3, 4), None);
    assert_eq!(h.kinds(), [ViolationKind::LostWrite]);
    // An older value read back is a lost write too.
    let mut h = H::default();
    h.write("a", (0, 1), 0, "old", (1, 2), Outcome::Ok)
        .write("a", (0, 1), 0, "new", (3, 4), Outcome::Ok)
        .read("b", (0, 1), (5, 6), Some("old"));
    assert_eq!(h.kinds(), [ViolationKind::LostWrite]);
}

#[test]
fn overlapping_and_indeterminate_operations_are_not_violations() {
    let mut h = H::default();
    // A read overlapping the write may miss it.
    h.write("a", (0, 1), 0, "x", (1, 5), Outcome::Ok)
        .read("b", (0, 1), (2, 3), None)
        // Two overlapping writes: either may be last.
        .write("a", (0, 2), 0, "p", (10, 14), Outcome::Ok)
        .write("b", (0, 2), 0, "q", (11, 13), Outcome::Ok)
        .read("c", (0, 2), (15, 16), Some("p"))
        .read("c", (0, 2), (17, 18), Some("p"))
        // An indeterminate write may land at any time after its invocation,
        // even after a later acknowledged one.
        .write("a", (0, 3), 0, "late", (20, 21), io())
        .write("b", (0, 3), 0, "acked", (22, 23), Outcome::Ok)
        .read("c", (0, 3), (30, 31), Some("late"))
        // A process that died mid-write: same.
        .op(
            "d",
            Op::Write {
                vnode: 0,
                epoch: 4,
                version: 0,
                payload: "dead".into(),
            },
            40,
            None,
        )
        .write("b", (0, 4), 0, "alive", (41, 42), Outcome::Ok)
        .read("c", (0, 4), (43, 44), Some("dead"))
        // A prune that may fall between excuses a missing value: one
        // overlapping the window, and one that never answered.
        .write("a", (0, 5), 0, "gone", (50, 51), Outcome::Ok)
        .prune("z", 6, (51, 60), Some(Outcome::Ok))
        .read("c", (0, 5), (52, 53), None)
        .write("a", (1, 5), 0, "gone2", (54, 55), Outcome::Ok)
        .prune("z", 7, (56, 57), None)
        .read("c", (1, 5), (100, 101), None);
    let report = h.passes();
    assert_eq!(report.stats.unanswered, 2);
    assert_eq!(report.stats.failed, 1);
}

#[test]
fn refused_and_unknown_bytes() {
    let mut h = H::default();
    h.write("a", (0, 1), 3, "z", (1, 2), stale(3, 5))
        .read("b", (0, 1), (3, 4), Some("z"));
    assert_eq!(h.kinds(), [ViolationKind::RefusedBytes]);
    let mut h = H::default();
    h.write("a", (0, 1), 0, "x", (1, 2), Outcome::Ok)
        .read("b", (0, 1), (3, 4), Some("nobody"))
        .read("b", (0, 2), (5, 6), Some("x"))
        .read("b", (0, 1), (7, 8), Some("!bad:x|3|."));
    assert_eq!(
        h.kinds(),
        [
            ViolationKind::UnknownBytes,
            ViolationKind::UnknownBytes,
            ViolationKind::UnknownBytes
        ]
    );
}

#[test]
fn stale_write_acknowledged() {
    // Raised by persist.
    let mut h = H::default();
    h.persist("new", 10, (1, 2))
        .write("old", (0, 1), 5, "z", (3, 4), Outcome::Ok);
    assert_eq!(h.kinds(), [ViolationKind::StaleWriteAcknowledged]);
    // Raised by set, acknowledged by the raising handle's next write.
    let mut h = H::default();
    h.set_fence("new", 10, 1)
        .write("new", (1, 1), 10, "n", (2, 3), Outcome::Ok)
        .write("old", (0, 1), 5, "z", (4, 5), Outcome::Ok);
    assert_eq!(h.kinds(), [ViolationKind::StaleWriteAcknowledged]);
    // Not yet acknowledged when the stale write began: allowed.
    let mut h = H::default();
    h.set_fence("new", 10, 1)
        .write("old", (0, 1), 5, "z", (2, 6), Outcome::Ok)
        .write("new", (1, 1), 10, "n", (2, 3), Outcome::Ok)
        // A set never carried by a write is never acknowledged.
        .set_fence("other", 20, 7)
        .write("old", (0, 2), 10, "y", (8, 9), Outcome::Ok);
    h.passes();
}

#[test]
fn stale_write_landed() {
    let mut h = H::default();
    h.persist("new", 10, (1, 2))
        .write("old", (0, 1), 5, "z", (3, 4), io())
        .read("c", (0, 1), (10, 11), Some("z"));
    assert_eq!(h.kinds(), [ViolationKind::StaleWriteLanded]);
}

#[test]
fn deposed_seal() {
    let mut h = H::default();
    h.write("old", (0, 1), 5, "a", (1, 2), Outcome::Ok)
        .persist("new", 10, (3, 4))
        .seal("old", 1, 1, 5, (5, 6), Outcome::Sealed(true));
    assert_eq!(h.kinds(), [ViolationKind::DeposedSeal]);
    // A handle never told a version (0) is not fenced.
    let mut h = H::default();
    h.write("old", (0, 1), 5, "a", (1, 2), Outcome::Ok)
        .persist("new", 10, (3, 4))
        .seal("coord", 1, 1, 0, (5, 6), Outcome::Sealed(true));
    h.passes();
}

#[test]
fn two_committers() {
    let mut h = H::default();
    h.write("a", (0, 1), 0, "x", (1, 2), Outcome::Ok)
        .seal("a", 1, 1, 0, (3, 4), Outcome::Sealed(true))
        .seal("b", 1, 1, 0, (5, 6), Outcome::Sealed(true));
    assert_eq!(h.kinds(), [ViolationKind::TwoCommitters]);
    // A prune in between makes the epoch new: both may win.
    let mut h = H::default();
    h.write("a", (0, 1), 0, "x", (1, 2), Outcome::Ok)
        .seal("a", 1, 1, 0, (3, 4), Outcome::Sealed(true))
        .prune("z", 2, (4, 5), Some(Outcome::Ok))
        .write("b", (0, 1), 0, "y", (5, 6), Outcome::Ok)
        .seal("b", 1, 1, 0, (7, 8), Outcome::Sealed(true));
    h.passes();
    // The same instance winning twice is a retried seal.
    let mut h = H::default();
    h.write("a", (0, 1), 0, "x", (1, 2), Outcome::Ok)
        .seal("a", 1, 1, 0, (3, 4), Outcome::Sealed(true))
        .seal("a", 1, 1, 0, (5, 6), Outcome::Sealed(true));
    h.passes();
}

#[test]
fn wrong_loser() {
    let base = || {
        let mut h = H::default();
        h.write("a", (0, 1), 0, "x", (1, 2), Outcome::Ok);
        h
    };
    // Named a winner that never sealed.
    let mut h = base();
    h.seal("b", 1, 1, 0, (3, 4), split_brain("ghost", "b"));
    assert_eq!(h.kinds(), [ViolationKind::WrongLoser]);
    // Named itself as the loser under another name.
    let mut h = base();
    h.seal("a", 1, 1, 0, (3, 4), Outcome::Sealed(true)).seal(
        "b",
        1,
        1,
        0,
        (5, 6),
        split_brain("a", "c"),
    );
    assert_eq!(h.kinds(), [ViolationKind::WrongLoser]);
    // Passed over the instance that had certainly won.
    let mut h = base();
    h.seal("a", 1, 1, 0, (3, 4), Outcome::Sealed(true))
        .seal("c", 1, 1, 0, (3, 9), io())
        .seal("b", 1, 1, 0, (5, 6), split_brain("c", "b"));
    assert_eq!(h.kinds(), [ViolationKind::WrongLoser]);
    // Told the winner whose seal is indeterminate: fine.
    let mut h = base();
    h.seal("a", 1, 1, 0, (3, 9), io())
        .seal("b", 1, 1, 0, (5, 6), split_brain("a", "b"));
    h.passes();
}

#[test]
fn seal_without_partials() {
    let mut h = H::default();
    h.write("a", (0, 1), 0, "x", (1, 2), Outcome::Ok)
        .seal("c", 1, 2, 0, (3, 4), Outcome::Sealed(true))
        .write("a", (1, 1), 0, "y", (5, 6), Outcome::Ok);
    assert_eq!(h.kinds(), [ViolationKind::SealWithoutPartials]);
    // A write that was certainly pruned before the seal does not count.
    let mut h = H::default();
    h.write("a", (0, 1), 0, "x", (1, 2), Outcome::Ok)
        .prune("z", 2, (3, 4), Some(Outcome::Ok))
        .seal("c", 1, 1, 0, (5, 6), Outcome::Sealed(true));
    assert_eq!(h.kinds(), [ViolationKind::SealWithoutPartials]);
    // A write still in flight when the seal returned may have landed.
    let mut h = H::default();
    h.write("a", (0, 1), 0, "x", (3, 9), Outcome::Ok).seal(
        "c",
        1,
        1,
        0,
        (2, 4),
        Outcome::Sealed(true),
    );
    h.passes();
}

#[test]
fn sealed_partial_lost() {
    let mut h = H::default();
    h.write("a", (0, 1), 0, "x", (1, 2), io())
        .seal("a", 1, 1, 0, (3, 4), Outcome::Sealed(true))
        .read("a", (0, 1), (5, 6), None);
    assert_eq!(h.kinds(), [ViolationKind::SealedPartialLost]);
    let mut h = H::default();
    h.write("a", (0, 1), 0, "x", (1, 2), io())
        .seal("a", 1, 1, 0, (3, 4), Outcome::Sealed(true))
        .prune("z", 9, (4, 7), Some(Outcome::Ok))
        .read("a", (0, 1), (5, 6), None);
    h.passes();
}

#[test]
fn pruned_resurrected() {
    let mut h = H::default();
    h.write("a", (0, 1), 0, "x", (1, 2), Outcome::Ok)
        .prune("z", 5, (3, 4), Some(Outcome::Ok))
        .read("b", (0, 1), (5, 6), Some("x"));
    assert_eq!(h.kinds(), [ViolationKind::PrunedResurrected]);
    // Overlapping the write, the prune may have come first.
    let mut h = H::default();
    h.write("a", (0, 1), 0, "x", (1, 4), Outcome::Ok)
        .prune("z", 5, (3, 4), Some(Outcome::Ok))
        .read("b", (0, 1), (5, 6), Some("x"))
        // A rewrite after the prune is new data.
        .write("a", (1, 1), 0, "y", (7, 8), Outcome::Ok)
        .prune("z", 5, (9, 10), Some(Outcome::Ok))
        .write("a", (1, 1), 0, "y", (11, 12), Outcome::Ok)
        .read("b", (1, 1), (13, 14), Some("y"));
    h.passes();
}

#[test]
fn latest_committed_epoch() {
    let mut h = H::default();
    h.latest("c", (1, 2), Some(7));
    assert_eq!(h.kinds(), [ViolationKind::LatestUnsealed]);
    let mut h = H::default();
    h.write("a", (0, 2), 0, "x", (1, 2), Outcome::Ok)
        .write("a", (0, 3), 0, "y", (1, 2), Outcome::Ok)
        .seal("a", 2, 1, 0, (3, 4), Outcome::Sealed(true))
        .seal("a", 3, 1, 0, (5, 6), Outcome::Sealed(true))
        .latest("c", (7, 8), Some(2));
    assert_eq!(h.kinds(), [ViolationKind::LatestLostSeal]);
    let mut h = H::default();
    h.write("a", (0, 2), 0, "x", (1, 2), Outcome::Ok)
        .seal("a", 2, 1, 0, (3, 4), Outcome::Sealed(true))
        .prune("z", 3, (5, 6), Some(Outcome::Ok))
        .latest("c", (7, 8), Some(2));
    assert_eq!(h.kinds(), [ViolationKind::LatestUnsealed]);
    // Pruned, or concurrent with the seal: nothing is owed.
    let mut h = H::default();
    h.write("a", (0, 2), 0, "x", (1, 2), Outcome::Ok)
        .seal("a", 2, 1, 0, (3, 4), Outcome::Sealed(true))
        .prune("z", 3, (5, 6), Some(Outcome::Ok))
        .latest("c", (7, 8), None)
        .write("a", (0, 4), 0, "y", (9, 10), Outcome::Ok)
        .seal("a", 4, 1, 0, (11, 14), Outcome::Sealed(true))
        .latest("c", (12, 13), None);
    h.passes();
}

#[test]
fn unexpected_answers() {
    let mut h = H::default();
    h.read("a", (0, 1), (1, 2), None).op(
        "a",
        Op::Read { vnode: 0, epoch: 1 },
        3,
        Some((4, Outcome::Serialization("bad crc".into()))),
    );
    h.prune("a", 3, (5, 6), Some(stale(1, 2)));
    assert_eq!(
        h.kinds(),
        [
            ViolationKind::UnexpectedAnswer,
            ViolationKind::UnexpectedAnswer
        ]
    );
}

#[test]
fn the_first_violation_comes_with_its_excerpt() {
    let mut h = clean();
    h.read("c", (0, 1), (20, 21), Some("a2"));
    h.events.push(Event {
        t: 19,
        p: "run".into(),
        ev: Kind::Fault {
            kind: "kill".into(),
            target: "w0".into(),
        },
    });
    let history = History::from_events(h.events.clone()).unwrap();
    let report = check(&history);
    assert_eq!(report.violations.len(), 1);
    let text = report.describe_first(&history).unwrap();
    assert!(text.contains("unknown bytes read"), "{text}");
    assert!(text.contains("\"read\""), "{text}");
    assert!(text.contains("\"kill\""), "{text}");
    assert_eq!(report.stats.faults["kill"], 1);
}

#[test]
fn malformed_histories_are_refused() {
    let mut h = H::default();
    h.read("a", (0, 1), (1, 2), None);
    let mut events = h.events.clone();
    events.push(events[1].clone());
    assert!(History::from_events(events).is_err());
    let orphan = vec![h.events[1].clone()];
    assert!(History::from_events(orphan).is_err());
}

#[test]
fn prune_index_answers_like_a_scan() {
    let mut rng = fastrand::Rng::with_seed(7);
    let prunes: Vec<(u64, u64, u64)> = (0..200)
        .map(|_| {
            let inv = rng.u64(0..1000);
            (inv, rng.u64(0..50), inv + rng.u64(0..100))
        })
        .collect();
    let max = PruneIndex::new(prunes.clone(), true);
    let min = PruneIndex::new(prunes.clone(), false);
    for _ in 0..2000 {
        let (e, a, b) = (rng.u64(0..50), rng.u64(0..1100), rng.u64(0..1100));
        let hi = max.invs.partition_point(|&inv| inv < b);
        let fast = max.query(0, hi, e).is_some_and(|end| end > a);
        let slow = prunes
            .iter()
            .any(|&(inv, bound, end)| bound > e && inv < b && end > a);
        assert_eq!(fast, slow);
        let lo = min.invs.partition_point(|&inv| inv <= a);
        let fast = min.query(lo, min.invs.len(), e).is_some_and(|end| end < b);
        let slow = prunes
            .iter()
            .any(|&(inv, bound, end)| bound > e && inv > a && end < b);
        assert_eq!(fast, slow);
    }
}
