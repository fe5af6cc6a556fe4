#![doc = include_str!("../README.md")]

mod archive;
mod bench;
mod commands;
mod copy;
mod output;
mod progress;
mod store;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::output::{CliResult, fail, print};
use crate::store::Epochs;

/// The operator CLI of laminar-state: look at a state store, fetch a
/// partial, move state between backends, back it up and restore it.
///
/// URLs are the facade's: memory://, redb:///path, redis://host:port/?namespace=NS,
/// s3://bucket/prefix?endpoint=..., each with layer settings in its query
/// if the store was written with them (?compression=lz4, ?encryption_key_id=..).
#[derive(Debug, Parser)]
#[command(name = "laminar-state", version, max_term_width = 100)]
struct Cli {
    /// Print one JSON document on stdout instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The fence, the latest sealed epoch and its committer, and per sealed
    /// epoch its committer, partials and bytes.
    Inspect {
        /// The store.
        url: String,
        /// Do not read the partials to count their bytes.
        #[arg(long)]
        quick: bool,
    },
    /// One partial: its bytes to stdout (or FILE); with --json, its length
    /// and sha256.
    Get {
        /// The store.
        url: String,
        /// The vnode.
        #[arg(long)]
        vnode: u32,
        /// The epoch.
        #[arg(long)]
        epoch: u64,
        /// Write the bytes to this file.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Show the fence, or raise it durably for every handle on the store.
    Fence {
        /// The store.
        url: String,
        /// Raise the fence to N (a fence never goes down).
        #[arg(long, value_name = "N")]
        raise: Option<u64>,
    },
    /// Delete every partial and seal of the epochs below N.
    Prune {
        /// The store.
        url: String,
        /// The first epoch kept.
        #[arg(long, value_name = "N")]
        before: u64,
        /// Do not ask for confirmation (required off a terminal).
        #[arg(long)]
        yes: bool,
    },
    /// Copy sealed epochs, partials then seal, from SRC to DST: idempotent
    /// and resumable.
    Copy {
        /// The source store.
        src: String,
        /// The destination store.
        dst: String,
        /// latest, all, N, A..B (B excluded) or A..=B.
        #[arg(long, default_value = "latest", value_parser = parse_epochs)]
        epochs: Epochs,
        /// Read every copied partial back from DST and compare digests.
        #[arg(long)]
        verify: bool,
        /// Write even if DST holds sealed epochs newer than those copied.
        #[arg(long)]
        force: bool,
    },
    /// Back sealed epochs up into one file (streamed, sha256 per partial).
    Export {
        /// The store.
        url: String,
        /// The file to write.
        file: PathBuf,
        /// latest, all, N, A..B (B excluded) or A..=B.
        #[arg(long, default_value = "all", value_parser = parse_epochs)]
        epochs: Epochs,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Restore an export file into a store: every digest checked, seals
    /// last.
    Import {
        /// The export file.
        file: PathBuf,
        /// The store.
        url: String,
        /// Write even if the store holds sealed epochs newer than the file's.
        #[arg(long)]
        force: bool,
    },
    /// The checkpoint loop (write every vnode at once, seal, prune), timed:
    /// on a scratch store.
    Bench {
        /// The store.
        url: String,
        /// Vnodes per checkpoint.
        #[arg(long, default_value_t = 64)]
        vnodes: u32,
        /// Bytes per partial.
        #[arg(long, default_value_t = 64 * 1024)]
        bytes: usize,
        /// Checkpoints.
        #[arg(long, default_value_t = 10)]
        epochs: u64,
    },
}

fn parse_epochs(text: &str) -> Result<Epochs, String> {
    text.parse()
}

async fn run(cli: &Cli) -> CliResult<()> {
    let json = cli.json;
    let (doc, text) = match &cli.command {
        Command::Inspect { url, quick } => commands::inspect(url, *quick).await?,
        Command::Get {
            url,
            vnode,
            epoch,
            output,
        } => match commands::get(url, *vnode, *epoch, output.as_deref(), json).await? {
            Some(done) => done,
            None => return Ok(()),
        },
        Command::Fence { url, raise } => commands::fence(url, *raise).await?,
        Command::Prune { url, before, yes } => commands::prune(url, *before, *yes).await?,
        Command::Copy {
            src,
            dst,
            epochs,
            verify,
            force,
        } => copy::copy(src, dst, epochs, *verify, *force).await?,
        Command::Export {
            url,
            file,
            epochs,
            force,
        } => archive::export(url, file, epochs, *force).await?,
        Command::Import { file, url, force } => archive::import(file, url, *force).await?,
        Command::Bench {
            url,
            vnodes,
            bytes,
            epochs,
        } => bench::bench(url, *vnodes, *bytes, *epochs).await?,
    };
    print(json, &doc, || text);
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("laminar-state: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error, cli.json),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
