//! The history: every operation's invocation and completion, and every
//! fault, as JSON lines.
//!
//! Each process writes its own file (`history/<process>.jsonl`), one
//! `write` call per line on an unbuffered file opened for appending, so a
//! process killed with SIGKILL leaves whole lines in the page cache (a
//! kill does not lose what was written; only a machine crash would, and no
//! run survives one). A torn last line is skipped when the file is read.
//!
//! Timestamps are CLOCK_MONOTONIC nanoseconds ([`now_ns`]): that clock is
//! system-wide on Linux (one counter for every process, unlike
//! `std::time::Instant`, whose values are only documented to compare within
//! a process), never jumps, and every process of a run is on one machine,
//! so timestamps of different processes compare directly. An invocation is
//! stamped before its line is written and before the call is made, a
//! completion after the call returned: each recorded interval contains the
//! real one.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// CLOCK_MONOTONIC in nanoseconds: comparable across the processes of one
/// machine.
pub fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When, in CLOCK_MONOTONIC nanoseconds.
    pub t: u64,
    /// The process that wrote it: `w<slot>.<incarnation>` for engine
    /// processes, `run` for the orchestrator, `sweep` for the final reads.
    pub p: String,
    /// What happened.
    pub ev: Kind,
}

/// What one line records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An operation was invoked by handle `inst`. `id` is unique within
    /// the process.
    Invoke {
        /// The operation's id within its process.
        id: u64,
        /// The handle's instance id.
        inst: String,
        /// The call.
        op: Op,
    },
    /// The operation `id` of the same process returned.
    Complete {
        /// The operation's id within its process.
        id: u64,
        /// Its answer.
        out: Outcome,
    },
    /// The orchestrator injected a fault.
    Fault {
        /// The kind: `kill`, `restart_engine`, `pause`, `resume`,
        /// `restart_server`, `proxy_stall`, `proxy_drop`, `proxy_reset`.
        kind: String,
        /// What it hit.
        target: String,
    },
}

/// A call on a [`StateBackend`](laminar_state_api::StateBackend).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// `write_partial(vnode, epoch, version, payload)`; `payload` is the
    /// unique id the bytes carry.
    Write {
        /// The vnode.
        vnode: u32,
        /// The epoch.
        epoch: u64,
        /// The assignment version presented.
        version: u64,
        /// The payload's unique id.
        payload: String,
    },
    /// `read_partial(vnode, epoch)`.
    Read {
        /// The vnode.
        vnode: u32,
        /// The epoch.
        epoch: u64,
    },
    /// `epoch_complete(epoch, 0..vnodes)`, by a handle last told `told`
    /// (0: never told a version, fencing opted out).
    Seal {
        /// The epoch.
        epoch: u64,
        /// The gate lists vnodes `0..vnodes`.
        vnodes: u32,
        /// The highest version the handle was told before the call.
        told: u64,
    },
    /// `prune_before(before)`.
    Prune {
        /// The bound.
        before: u64,
    },
    /// `set_authoritative_version(version)` (synchronous).
    SetFence {
        /// The version.
        version: u64,
    },
    /// `persist_authoritative_version(version)`.
    PersistFence {
        /// The version.
        version: u64,
    },
    /// `latest_committed_epoch()`.
    Latest,
}

/// What a call answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// `Ok(())`.
    Ok,
    /// A read's answer: the payload id found (see [`decode_payload`]), or
    /// `None`.
    Value(Option<String>),
    /// The gate's answer.
    Sealed(bool),
    /// `latest_committed_epoch`'s answer.
    Latest(Option<u64>),
    /// `StaleVersion { caller, authoritative }`.
    Stale {
        /// The version presented.
        caller: u64,
        /// The fence enforced.
        authoritative: u64,
    },
    /// `SplitBrainCommit { committer, self_id }`.
    SplitBrain {
        /// The winner named.
        committer: String,
        /// The loser named.
        self_id: String,
    },
    /// `Io(message)`: the call may or may not have taken effect.
    Io(String),
    /// `Serialization(message)`.
    Serialization(String),
    /// `NotFound { vnode, epoch }`.
    NotFound {
        /// The vnode.
        vnode: u32,
        /// The epoch.
        epoch: u64,
    },
}

impl Outcome {
    /// The outcome of an error.
    pub fn of_error(error: &laminar_state_api::StateBackendError) -> Self {
        use laminar_state_api::StateBackendError as E;
        match error {
            E::Io(m) => Outcome::Io(m.clone()),
            E::Serialization(m) => Outcome::Serialization(m.clone()),
            E::NotFound { vnode, epoch } => Outcome::NotFound {
                vnode: *vnode,
                epoch: *epoch,
            },
            E::StaleVersion {
                caller,
                authoritative,
            } => Outcome::Stale {
                caller: *caller,
                authoritative: *authoritative,
            },
            E::SplitBrainCommit { committer, self_id } => Outcome::SplitBrain {
                committer: committer.clone(),
                self_id: self_id.clone(),
            },
        }
    }
}

/// The bytes of a partial: its unique id, then a filler of a length the id
/// does not predict, so framing bugs show up as bytes that do not decode.
pub fn encode_payload(id: &str, filler: usize) -> Vec<u8> {
    let mut bytes = format!("{id}|{filler}|").into_bytes();
    bytes.resize(bytes.len() + filler, b'.');
    bytes
}

/// The id in bytes made by [`encode_payload`]; bytes that are not such a
/// payload come back as `!bad:` and a prefix of them, which the checker
/// reports.
pub fn decode_payload(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let decoded = text.split_once('|').and_then(|(id, rest)| {
        let (len, filler) = rest.split_once('|')?;
        let len: usize = len.parse().ok()?;
        (filler.len() == len && filler.bytes().all(|b| b == b'.')).then(|| id.to_owned())
    });
    decoded.unwrap_or_else(|| {
        let shown: String = text.chars().take(48).collect();
        format!("!bad:{shown}")
    })
}

/// Appends one process's events to its history file.
pub struct Recorder {
    process: String,
    file: Mutex<File>,
    next_id: AtomicU64,
}

impl Recorder {
    /// Open (append) `dir/<process>.jsonl`.
    pub fn open(dir: &Path, process: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{process}.jsonl")))?;
        Ok(Self {
            process: process.to_owned(),
            file: Mutex::new(file),
            next_id: AtomicU64::new(0),
        })
    }

    /// The process name the events carry.
    pub fn process(&self) -> &str {
        &self.process
    }

    /// A fresh operation id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Write one event, stamped now, as one line in one `write` call.
    pub fn record(&self, ev: Kind) -> u64 {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let t = now_ns();
        let event = Event {
            t,
            p: self.process.clone(),
            ev,
        };
        let mut line = serde_json::to_vec(&event).expect("events serialize");
        line.push(b'\n');
        // A full disk or a closed file must not go unnoticed: the history
        // would be incomplete, and the checker would accept less.
        file.write_all(&line)
            .unwrap_or_else(|e| panic!("cannot append to the history: {e}"));
        t
    }

    /// Record the invocation of `op` by `inst`; returns its id.
    pub fn invoke(&self, inst: &str, op: Op) -> u64 {
        let id = self.next_id();
        self.record(Kind::Invoke {
            id,
            inst: inst.to_owned(),
            op,
        });
        id
    }

    /// Record the completion of operation `id`.
    pub fn complete(&self, id: u64, out: Outcome) {
        self.record(Kind::Complete { id, out });
    }
}

/// Every event of every `*.jsonl` file in `dir`. A line that does not parse
/// is skipped when it is the last of its file (a torn write of a killed
/// process) and is an error anywhere else.
pub fn read_dir(dir: &Path) -> Result<Vec<Event>, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    let mut events = Vec::new();
    for file in files {
        let text =
            std::fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        events.extend(parse(&text).map_err(|e| format!("{}: {e}", file.display()))?);
    }
    Ok(events)
}

/// The events of one history file's bytes (see [`read_dir`]).
pub fn parse(bytes: &[u8]) -> Result<Vec<Event>, String> {
    let lines: Vec<&[u8]> = bytes
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .collect();
    let torn_tail = !bytes.ends_with(b"\n");
    let mut events = Vec::with_capacity(lines.len());
    for (n, line) in lines.iter().enumerate() {
        match serde_json::from_slice::<Event>(line) {
            Ok(event) => events.push(event),
            Err(_) if n + 1 == lines.len() && torn_tail => {}
            Err(e) => return Err(format!("line {} does not parse: {e}", n + 1)),
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_damage_shows() {
        let bytes = encode_payload("w1.0/e0#7", 13);
        assert_eq!(decode_payload(&bytes), "w1.0/e0#7");
        assert_eq!(decode_payload(&encode_payload("x", 0)), "x");
        let mut damaged = bytes.clone();
        damaged.pop();
        assert!(decode_payload(&damaged).starts_with("!bad:"));
        assert!(decode_payload(b"\xff\xfe").starts_with("!bad:"));
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_a_torn_middle_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::open(dir.path(), "w0.0").unwrap();
        let id = recorder.invoke("i", Op::Latest);
        recorder.complete(id, Outcome::Latest(Some(3)));
        let path = dir.path().join("w0.0.jsonl");
        let mut text = std::fs::read(&path).unwrap();
        assert_eq!(parse(&text).unwrap().len(), 2);
        text.extend_from_slice(b"{\"t\":1,\"p\":\"w0");
        assert_eq!(parse(&text).unwrap().len(), 2);
        let mut middle = b"{\"t\":1,\n".to_vec();
        middle.extend_from_slice(&text);
        assert!(parse(&middle).is_err());
        std::fs::write(&path, &text).unwrap();
        let events = read_dir(dir.path()).unwrap();
        assert_eq!(events.len(), 2);
        assert!(matches!(
            events[1].ev,
            Kind::Complete {
                out: Outcome::Latest(Some(3)),
                ..
            }
        ));
    }
}
