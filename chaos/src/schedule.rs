//! The fault schedule: a pure function of the seed and the run's shape, so
//! the same seed replays the same faults at the same offsets.

use std::fmt;

/// One fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL engine process `slot`; start it again, with new instance
    /// ids, `restart_after_ms` later.
    Kill {
        /// The engine process.
        slot: usize,
        /// Delay before its restart.
        restart_after_ms: u64,
    },
    /// SIGSTOP engine process `slot`, SIGCONT it `for_ms` later: a paused
    /// zombie that wakes up after others took over.
    Pause {
        /// The engine process.
        slot: usize,
        /// How long it stays stopped.
        for_ms: u64,
    },
    /// SIGKILL the server and start it again on its data.
    RestartServer,
    /// The proxies `proxies` forward nothing for `for_ms`, then deliver
    /// what they held.
    Stall {
        /// Which proxies.
        proxies: Vec<usize>,
        /// For how long.
        for_ms: u64,
    },
    /// The proxies forward requests but drop the answers (cutting the
    /// connection) for `for_ms`.
    DropAnswers {
        /// Which proxies.
        proxies: Vec<usize>,
        /// For how long.
        for_ms: u64,
    },
    /// The proxies cut every open connection.
    Reset {
        /// Which proxies.
        proxies: Vec<usize>,
    },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill {
                slot,
                restart_after_ms,
            } => write!(f, "kill engine {slot}, restart after {restart_after_ms} ms"),
            Fault::Pause { slot, for_ms } => write!(f, "pause engine {slot} for {for_ms} ms"),
            Fault::RestartServer => write!(f, "restart the server"),
            Fault::Stall { proxies, for_ms } => {
                write!(f, "stall proxies {proxies:?} for {for_ms} ms")
            }
            Fault::DropAnswers { proxies, for_ms } => {
                write!(f, "drop answers at proxies {proxies:?} for {for_ms} ms")
            }
            Fault::Reset { proxies } => write!(f, "reset connections at proxies {proxies:?}"),
        }
    }
}

/// A fault at an offset from the start of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// Milliseconds after the start.
    pub at_ms: u64,
    /// The fault.
    pub fault: Fault,
}

/// What a run can inject faults into.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Engine processes.
    pub slots: usize,
    /// Fault proxies (0: none, an embedded store).
    pub proxies: usize,
    /// Whether there is a server to restart.
    pub server: bool,
    /// The shortest gap between two server restarts, in ms (a slow server
    /// takes seconds to come back).
    pub restart_gap_ms: u64,
}

/// The schedule for a run of `seconds` with `seed`.
pub fn generate(seed: u64, seconds: u64, shape: Shape) -> Vec<Planned> {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x6368_616f_735f_7363);
    let end_ms = seconds * 1000;
    let mut at_ms = rng.u64(700..1_500);
    let mut last_restart: Option<u64> = None;
    let mut plan = Vec::new();
    // Leave the last second quiet: the engines finish their cycles.
    while at_ms + 1_000 < end_ms {
        // Weights: kill 3, pause 3, restart 1, stall 2, drop 2, reset 1.
        let mut kinds: Vec<(u32, u8)> = vec![(3, 0), (3, 1)];
        if shape.server && last_restart.is_none_or(|t| at_ms >= t + shape.restart_gap_ms) {
            kinds.push((1, 2));
        }
        if shape.proxies > 0 {
            kinds.extend([(2, 3), (2, 4), (1, 5)]);
        }
        let total: u32 = kinds.iter().map(|k| k.0).sum();
        let mut pick = rng.u32(0..total);
        let kind = kinds
            .iter()
            .find(|(w, _)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .map_or(0, |k| k.1);
        let mut proxies = || {
            let all: Vec<usize> = (0..shape.proxies).collect();
            if shape.proxies > 1 && rng.bool() {
                vec![rng.usize(0..shape.proxies)]
            } else {
                all
            }
        };
        let fault = match kind {
            0 => Fault::Kill {
                slot: rng.usize(0..shape.slots),
                restart_after_ms: rng.u64(100..2_000),
            },
            1 => Fault::Pause {
                slot: rng.usize(0..shape.slots),
                for_ms: rng.u64(200..4_000),
            },
            2 => {
                last_restart = Some(at_ms);
                Fault::RestartServer
            }
            3 => Fault::Stall {
                proxies: proxies(),
                for_ms: rng.u64(100..3_000),
            },
            4 => Fault::DropAnswers {
                proxies: proxies(),
                for_ms: rng.u64(50..1_000),
            },
            _ => Fault::Reset { proxies: proxies() },
        };
        plan.push(Planned { at_ms, fault });
        at_ms += rng.u64(300..2_500);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    const NETWORKED: Shape = Shape {
        slots: 4,
        proxies: 2,
        server: true,
        restart_gap_ms: 10_000,
    };

    #[test]
    fn the_same_seed_replays_the_same_schedule() {
        let a = generate(42, 60, NETWORKED);
        assert_eq!(a, generate(42, 60, NETWORKED));
        assert_ne!(a, generate(43, 60, NETWORKED));
        assert!(a.len() > 20, "{}", a.len());
        assert!(a.windows(2).all(|w| w[0].at_ms < w[1].at_ms));
        assert!(a.iter().all(|p| p.at_ms + 1_000 < 60_000));
    }

    #[test]
    fn faults_fit_the_shape() {
        let embedded = Shape {
            slots: 2,
            proxies: 0,
            server: false,
            restart_gap_ms: 0,
        };
        for seed in 0..20 {
            for planned in generate(seed, 60, embedded) {
                assert!(matches!(
                    planned.fault,
                    Fault::Kill { slot: 0..=1, .. } | Fault::Pause { slot: 0..=1, .. }
                ));
            }
            let plan = generate(seed, 120, NETWORKED);
            let restarts: Vec<u64> = plan
                .iter()
                .filter(|p| p.fault == Fault::RestartServer)
                .map(|p| p.at_ms)
                .collect();
            assert!(restarts.windows(2).all(|w| w[1] - w[0] >= 10_000));
        }
    }
}
