//! `export URL FILE` and `import FILE URL`: the single-file backup (format
//! in the README, "Export format").

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use laminar_state::redact_url;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::copy::{Counts, Dst, Put, check_sealed_epoch, merge};
use crate::output::{CliError, CliResult, Exit, hex, human_bytes};
use crate::progress::Progress;
use crate::store::{
    CLI_ID, Epochs, IN_FLIGHT, Sha, committer, open, partials, read_listed, refuse_newer,
    sealed_epochs, sha256,
};

/// The format's name, in the header record.
const FORMAT: &str = "laminar-state-export";
/// The format's version; `import` refuses any other.
const VERSION: u32 = 1;
/// The longest record line `import` reads (a manifest of millions of
/// partials fits).
const MAX_LINE: u64 = 1 << 30;
/// The largest partial `import` accepts from a record.
const MAX_PARTIAL: u64 = 1 << 32;

/// One record: a JSON line; a `partial` record is followed by its bytes
/// and a newline.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case", deny_unknown_fields)]
enum Record {
    /// First: what the file is and which sealed epochs it holds.
    Header {
        format: String,
        version: u32,
        source: String,
        epochs: Vec<u64>,
        partials: u64,
    },
    /// One partial; `len` bytes follow, then `\n`.
    Partial {
        epoch: u64,
        vnode: u32,
        len: u64,
        sha256: String,
    },
    /// After an epoch's partials: its seal.
    Seal {
        epoch: u64,
        committer: String,
        vnodes: Vec<u32>,
    },
    /// Last: the manifest, and the SHA-256 of every byte before this line.
    End {
        partials: u64,
        bytes: u64,
        manifest: Vec<Entry>,
        sha256: String,
    },
}

/// One manifest line: `[epoch, vnode, len, sha256]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry(u64, u32, u64, String);

/// A writer that hashes what it writes.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Hashing<W> {
    fn record(&mut self, record: &Record) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.bytes(&line)
    }

    fn bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hash.update(bytes);
        self.inner.write_all(bytes)
    }
}

/// `export`: see the README.
pub(crate) async fn export(
    url: &str,
    file: &Path,
    epochs: &Epochs,
    force: bool,
) -> CliResult<(Value, String)> {
    let started = Instant::now();
    if file.exists() && !force {
        return Err(CliError::new(
            Exit::Refused,
            format!("{} exists: pass --force to replace it", file.display()),
        ));
    }
    let src = open(url, CLI_ID).await?;
    let selected = epochs.select(&sealed_epochs(&src).await?);
    let mut plan = Vec::with_capacity(selected.len());
    for &epoch in &selected {
        plan.push((epoch, partials(&src, url, epoch).await?));
    }
    let total: usize = plan.iter().map(|(_, v)| v.len()).sum();
    // Written next to the file, renamed over it once complete: a failed
    // export leaves no file that looks like a backup.
    let temporary = PathBuf::from(format!("{}.partial", file.display()));
    let io = |e: std::io::Error| CliError::failure(format!("writing {}: {e}", temporary.display()));
    let mut out = Hashing {
        inner: BufWriter::new(File::create(&temporary).map_err(io)?),
        hash: Sha256::new(),
    };
    let result: CliResult<(u64, Vec<Entry>)> = async {
        out.record(&Record::Header {
            format: FORMAT.to_owned(),
            version: VERSION,
            source: redact_url(url),
            epochs: selected.clone(),
            partials: total as u64,
        })
        .map_err(io)?;
        let progress = Progress::new("export", "partials", total as u64);
        let mut manifest = Vec::with_capacity(total);
        let mut bytes_total = 0;
        for (epoch, vnodes) in &plan {
            let epoch = *epoch;
            let committer = committer(&src, epoch, vnodes)
                .await?
                .unwrap_or_else(|| CLI_ID.to_owned());
            let src = &src;
            // Read ahead a few partials, written in order as they come.
            let mut reads = stream::iter(vnodes.iter().copied())
                .map(|vnode| async move {
                    read_listed(src, vnode, epoch)
                        .await
                        .map(|bytes| (vnode, bytes))
                })
                .buffered(IN_FLIGHT);
            while let Some(read) = reads.next().await {
                let (vnode, bytes) = read?;
                let sha = hex(&sha256(&bytes));
                let len = bytes.len() as u64;
                out.record(&Record::Partial {
                    epoch,
                    vnode,
                    len,
                    sha256: sha.clone(),
                })
                .map_err(io)?;
                out.bytes(&bytes).map_err(io)?;
                out.bytes(b"\n").map_err(io)?;
                manifest.push(Entry(epoch, vnode, len, sha));
                bytes_total += len;
                progress.inc(len);
            }
            out.record(&Record::Seal {
                epoch,
                committer,
                vnodes: vnodes.clone(),
            })
            .map_err(io)?;
        }
        progress.finish();
        Ok((bytes_total, manifest))
    }
    .await;
    let (bytes_total, manifest) = match result {
        Ok(done) => done,
        Err(e) => {
            let _ = std::fs::remove_file(&temporary);
            return Err(e);
        }
    };
    let digest = hex(&out.hash.clone().finalize());
    let partial_count = manifest.len() as u64;
    let end = Record::End {
        partials: partial_count,
        bytes: bytes_total,
        manifest,
        sha256: digest.clone(),
    };
    out.record(&end).map_err(io)?;
    let file_handle = out.inner.into_inner().map_err(|e| io(e.into_error()))?;
    file_handle.sync_all().map_err(io)?;
    drop(file_handle);
    std::fs::rename(&temporary, file).map_err(|e| {
        CliError::failure(format!(
            "renaming {} to {}: {e}",
            temporary.display(),
            file.display()
        ))
    })?;
    let doc = json!({
        "ok": true,
        "command": "export",
        "src": redact_url(url),
        "file": file.display().to_string(),
        "format_version": VERSION,
        "epochs": selected,
        "partials": partial_count,
        "bytes": bytes_total,
        "sha256": digest,
        "seconds": started.elapsed().as_secs_f64(),
    });
    let text = format!(
        "exported {} sealed epochs ({}), {partial_count} partials, {} to {}\n",
        selected.len(),
        epochs_text(&selected),
        human_bytes(bytes_total),
        file.display()
    );
    Ok((doc, text))
}

fn epochs_text(epochs: &[u64]) -> String {
    match epochs {
        [] => "none".to_owned(),
        [one] => one.to_string(),
        [first, .., last] => format!("{first} to {last}"),
    }
}

/// A reader of an export file that hashes what it reads and says where it
/// is.
struct Reader {
    inner: BufReader<File>,
    hash: Sha256,
    offset: u64,
    path: PathBuf,
}

impl Reader {
    fn damaged(&self, what: impl std::fmt::Display) -> CliError {
        self.damaged_at(self.offset, what)
    }

    fn damaged_at(&self, offset: u64, what: impl std::fmt::Display) -> CliError {
        CliError::new(
            Exit::Damaged,
            format!(
                "{} is damaged at byte {offset}: {what}; nothing was sealed",
                self.path.display(),
            ),
        )
    }

    /// The next record line, or `None` at the end of the file.
    fn line(&mut self) -> CliResult<Option<(Vec<u8>, Record)>> {
        let mut line = Vec::new();
        let read = (&mut self.inner)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .map_err(|e| self.damaged(format!("cannot read: {e}")))?;
        if read == 0 {
            return Ok(None);
        }
        if line.last() != Some(&b'\n') {
            return Err(self.damaged("the file ends in the middle of a record (truncated)"));
        }
        let record = serde_json::from_slice(&line[..line.len() - 1])
            .map_err(|e| self.damaged(format!("not a record: {e}")))?;
        Ok(Some((line, record)))
    }

    fn consume(&mut self, bytes: &[u8]) {
        self.hash.update(bytes);
        self.offset += bytes.len() as u64;
    }

    /// A partial's `len` bytes and the newline after them.
    fn payload(&mut self, len: u64, epoch: u64, vnode: u32) -> CliResult<Bytes> {
        if len > MAX_PARTIAL {
            return Err(self.damaged(format!(
                "the record of vnode {vnode} at epoch {epoch} claims {len} bytes"
            )));
        }
        let mut bytes = vec![0; len as usize + 1];
        self.inner.read_exact(&mut bytes).map_err(|_| {
            self.damaged(format!(
                "the file ends inside the partial of vnode {vnode} at epoch {epoch} (truncated)"
            ))
        })?;
        if bytes.pop() != Some(b'\n') {
            return Err(self.damaged(format!(
                "the partial of vnode {vnode} at epoch {epoch} is not {len} bytes long"
            )));
        }
        self.hash.update(&bytes);
        self.hash.update(b"\n");
        self.offset += len + 1;
        Ok(Bytes::from(bytes))
    }
}

/// `import`: see the README.
pub(crate) async fn import(file: &Path, url: &str, force: bool) -> CliResult<(Value, String)> {
    let started = Instant::now();
    let opened = File::open(file)
        .map_err(|e| CliError::failure(format!("cannot open {}: {e}", file.display())))?;
    let mut reader = Reader {
        inner: BufReader::with_capacity(1 << 20, opened),
        hash: Sha256::new(),
        offset: 0,
        path: file.to_owned(),
    };
    let (epochs, total) = match reader.line()? {
        Some((
            line,
            Record::Header {
                format,
                version,
                epochs,
                partials,
                ..
            },
        )) => {
            if format != FORMAT {
                return Err(reader.damaged(format!("format {format:?}, not {FORMAT:?}")));
            }
            if version != VERSION {
                return Err(CliError::new(
                    Exit::Damaged,
                    format!(
                        "{} is an export of format version {version}; this laminar-state reads \
                         version {VERSION}",
                        file.display()
                    ),
                ));
            }
            reader.consume(&line);
            (epochs, partials)
        }
        Some(_) => return Err(reader.damaged("the first record is not the header")),
        None => return Err(reader.damaged("the file is empty")),
    };
    let dst = Arc::new(Dst::open(url).await?);
    refuse_newer(url, &dst.sealed, epochs.last().copied(), force)?;
    let progress = Progress::new("import", "partials", total);
    let mut counts = Counts::default();
    let mut manifest: Vec<Entry> = Vec::new();
    let mut bytes_total = 0;
    // Epoch -> (vnode -> digest), for the epoch being read.
    let mut digests: BTreeMap<u64, BTreeMap<u32, Sha>> = BTreeMap::new();
    let mut seals: Vec<(u64, String, Vec<u32>)> = Vec::new();
    let mut writes = tokio::task::JoinSet::new();
    loop {
        let Some((line, record)) = reader.line()? else {
            // Let the writes in flight finish; then report the truncation.
            drain(&mut writes, &mut counts).await?;
            return Err(reader.damaged(format!(
                "the file ends after {} partials, before its end record (truncated)",
                manifest.len()
            )));
        };
        match record {
            Record::Partial {
                epoch,
                vnode,
                len,
                sha256: stated,
            } => {
                let start = reader.offset;
                reader.consume(&line);
                let bytes = reader.payload(len, epoch, vnode)?;
                let actual = sha256(&bytes);
                if hex(&actual) != stated {
                    drain(&mut writes, &mut counts).await?;
                    return Err(reader.damaged_at(start, format!(
                        "the partial of vnode {vnode} at epoch {epoch} has sha256 {}, its record \
                         says {stated} (altered)",
                        hex(&actual)
                    )));
                }
                if digests
                    .entry(epoch)
                    .or_default()
                    .insert(vnode, actual)
                    .is_some()
                {
                    return Err(
                        reader.damaged(format!("vnode {vnode} at epoch {epoch} appears twice"))
                    );
                }
                manifest.push(Entry(epoch, vnode, len, stated));
                bytes_total += len;
                if !dst.is_sealed(epoch) {
                    while writes.len() >= IN_FLIGHT {
                        join_one(&mut writes, &mut counts).await?;
                    }
                    let dst = Arc::clone(&dst);
                    writes.spawn(async move {
                        dst.put(vnode, epoch, bytes).await.map(|put| (put, len))
                    });
                }
                progress.inc(len);
            }
            Record::Seal {
                epoch,
                committer,
                vnodes,
            } => {
                reader.consume(&line);
                let read: Vec<u32> = digests
                    .get(&epoch)
                    .map_or_else(Vec::new, |d| d.keys().copied().collect());
                if read != vnodes {
                    return Err(reader.damaged(format!(
                        "the seal of epoch {epoch} names vnodes {vnodes:?}, the file holds \
                         {read:?}"
                    )));
                }
                seals.push((epoch, committer, vnodes));
            }
            Record::End {
                partials,
                bytes,
                manifest: stated,
                sha256: stated_sha,
            } => {
                let actual = hex(&reader.hash.clone().finalize());
                if actual != stated_sha {
                    return Err(reader.damaged(format!(
                        "the records hash to sha256 {actual}, the end record says {stated_sha} \
                         (altered)"
                    )));
                }
                if partials != manifest.len() as u64 || bytes != bytes_total || stated != manifest {
                    return Err(reader.damaged(
                        "the manifest does not list the partials the file holds (altered)",
                    ));
                }
                reader.consume(&line);
                break;
            }
            Record::Header { .. } => return Err(reader.damaged("a second header")),
        }
    }
    let mut rest = [0u8; 1];
    if reader
        .inner
        .read(&mut rest)
        .map_err(|e| reader.damaged(e))?
        != 0
    {
        return Err(reader.damaged("bytes after the end record"));
    }
    let sealed_epochs: Vec<u64> = seals.iter().map(|(e, _, _)| *e).collect();
    if sealed_epochs != epochs {
        return Err(reader.damaged(format!(
            "the header lists epochs {epochs:?}, the file seals {sealed_epochs:?}"
        )));
    }
    drain(&mut writes, &mut counts).await?;
    // Every partial is written and the file checked: now, and only now,
    // the seals, oldest first.
    let mut rows = Vec::new();
    for (epoch, committer, vnodes) in &seals {
        let expected = &digests[epoch];
        if dst.is_sealed(*epoch) {
            check_sealed_epoch(&dst, *epoch, expected, committer).await?;
            counts.epochs_skipped += 1;
            counts.partials_skipped += vnodes.len() as u64;
            rows.push(json!({"epoch": epoch, "committer": committer, "partials": vnodes.len(), "outcome": "already sealed"}));
        } else {
            dst.compare(*epoch, expected).await?;
            dst.seal(*epoch, vnodes, committer).await?;
            counts.epochs_sealed += 1;
            rows.push(json!({"epoch": epoch, "committer": committer, "partials": vnodes.len(), "outcome": "sealed"}));
        }
    }
    progress.finish();
    let mut doc = json!({
        "ok": true,
        "command": "import",
        "file": file.display().to_string(),
        "dst": redact_url(url),
        "write_version": dst.version,
        "epochs": rows,
        "partials": manifest.len(),
        "bytes": bytes_total,
        "seconds": started.elapsed().as_secs_f64(),
    });
    merge(&mut doc, counts.json());
    let text = format!(
        "imported {} into {}: {} epochs sealed, {} already sealed; {} partials written ({}), {} \
         already there; every digest checked\n",
        file.display(),
        redact_url(url),
        counts.epochs_sealed,
        counts.epochs_skipped,
        counts.partials_copied,
        human_bytes(counts.bytes_copied),
        counts.partials_skipped
    );
    Ok((doc, text))
}

type Write1 = CliResult<(Put, u64)>;

async fn join_one(writes: &mut tokio::task::JoinSet<Write1>, counts: &mut Counts) -> CliResult<()> {
    if let Some(done) = writes.join_next().await {
        let (put, len) =
            done.map_err(|e| CliError::failure(format!("a write task failed: {e}")))??;
        match put {
            Put::Copied => {
                counts.partials_copied += 1;
                counts.bytes_copied += len;
            }
            Put::Skipped => counts.partials_skipped += 1,
        }
    }
    Ok(())
}

async fn drain(writes: &mut tokio::task::JoinSet<Write1>, counts: &mut Counts) -> CliResult<()> {
    while !writes.is_empty() {
        join_one(writes, counts).await?;
    }
    Ok(())
}
