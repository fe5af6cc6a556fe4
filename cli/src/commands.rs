//! `inspect`, `get`, `fence` and `prune`.

use std::io::{IsTerminal, Write};
use std::path::Path;

use futures_util::{StreamExt, TryStreamExt, stream};
use laminar_state::redact_url;
use serde_json::{Value, json};

use crate::output::{CliError, CliResult, Exit, hex, human_bytes, table};
use crate::store::{CLI_ID, IN_FLIGHT, committer, open, partials, sealed_epochs, sha256};

/// `inspect`: the fence, and per sealed epoch its committer, partials and
/// bytes (read, unless `quick`).
pub(crate) async fn inspect(url: &str, quick: bool) -> CliResult<(Value, String)> {
    let handle = open(url, CLI_ID).await?;
    // Every backend reads the store's fence when a handle opens.
    let fence = handle.authoritative_version();
    let sealed = sealed_epochs(&handle).await?;
    let mut rows = Vec::with_capacity(sealed.len());
    for &epoch in &sealed {
        let vnodes = partials(&handle, url, epoch).await?;
        let who = committer(&handle, epoch, &vnodes).await?;
        let bytes = if quick {
            None
        } else {
            let handle = &handle;
            let lens: Vec<u64> = stream::iter(vnodes.iter().copied())
                .map(|vnode| async move {
                    handle
                        .read_partial(vnode, epoch)
                        .await
                        .map(|b| b.map_or(0, |b| b.len() as u64))
                        .map_err(|e| {
                            CliError::backend(
                                format!("partial of vnode {vnode} at epoch {epoch}"),
                                e,
                            )
                        })
                })
                .buffer_unordered(IN_FLIGHT)
                .try_collect()
                .await?;
            Some(lens.iter().sum::<u64>())
        };
        rows.push((epoch, who, vnodes, bytes));
    }
    let latest = rows.last();
    let doc = json!({
        "ok": true,
        "command": "inspect",
        "url": redact_url(url),
        "fence": fence,
        "latest_sealed_epoch": latest.map(|r| r.0),
        "latest_committer": latest.and_then(|r| r.1.clone()),
        "sealed_epochs": rows.iter().map(|(epoch, who, vnodes, bytes)| json!({
            "epoch": epoch,
            "committer": who,
            "partials": vnodes.len(),
            "vnodes": vnodes,
            "bytes": bytes,
        })).collect::<Vec<_>>(),
    });
    let mut text = format!(
        "store:   {}\nfence:   {fence}\nlatest:  {}\n\n",
        redact_url(url),
        latest.map_or("no sealed epoch".to_owned(), |r| format!(
            "epoch {} sealed by {}",
            r.0,
            r.1.as_deref().unwrap_or("?")
        )),
    );
    text += &table(
        &["epoch", "committer", "partials", "bytes"],
        &rows
            .iter()
            .map(|(epoch, who, vnodes, bytes)| {
                vec![
                    epoch.to_string(),
                    who.clone().unwrap_or_else(|| "?".to_owned()),
                    vnodes.len().to_string(),
                    bytes.map_or("-".to_owned(), human_bytes),
                ]
            })
            .collect::<Vec<_>>(),
    );
    Ok((doc, text))
}

/// `get`: one partial, to `output` or stdout.
pub(crate) async fn get(
    url: &str,
    vnode: u32,
    epoch: u64,
    output: Option<&Path>,
    json: bool,
) -> CliResult<Option<(Value, String)>> {
    let handle = open(url, CLI_ID).await?;
    let bytes = handle
        .read_partial(vnode, epoch)
        .await
        .map_err(|e| CliError::backend(format!("partial of vnode {vnode} at epoch {epoch}"), e))?
        .ok_or_else(|| {
            CliError::new(
                Exit::NotFound,
                format!(
                    "no partial for vnode {vnode} at epoch {epoch} in {}",
                    redact_url(url)
                ),
            )
        })?;
    let sha = hex(&sha256(&bytes));
    match output {
        Some(path) => std::fs::write(path, &bytes)
            .map_err(|e| CliError::failure(format!("writing {}: {e}", path.display())))?,
        // Raw bytes to stdout, unless the JSON document goes there.
        None if !json => {
            std::io::stdout()
                .lock()
                .write_all(&bytes)
                .map_err(|e| CliError::failure(format!("writing to stdout: {e}")))?;
            return Ok(None);
        }
        None => {}
    }
    let doc = json!({
        "ok": true,
        "command": "get",
        "vnode": vnode,
        "epoch": epoch,
        "len": bytes.len(),
        "sha256": sha,
        "file": output.map(|p| p.display().to_string()),
    });
    let text = format!(
        "vnode {vnode}, epoch {epoch}: {} bytes, sha256 {sha}{}\n",
        bytes.len(),
        output.map_or(String::new(), |p| format!(", written to {}", p.display()))
    );
    Ok(Some((doc, text)))
}

/// `fence`: show it, or raise it (durably, for every handle).
pub(crate) async fn fence(url: &str, raise: Option<u64>) -> CliResult<(Value, String)> {
    let handle = open(url, CLI_ID).await?;
    let before = handle.authoritative_version();
    if let Some(version) = raise {
        handle
            .persist_authoritative_version(version)
            .await
            .map_err(|e| CliError::backend(format!("raising the fence to {version}"), e))?;
    }
    let after = handle.authoritative_version();
    let doc = json!({
        "ok": true,
        "command": "fence",
        "url": redact_url(url),
        "fence": after,
        "before": before,
        "raised": after > before,
    });
    let text = match raise {
        None => format!("fence: {after}\n"),
        Some(asked) if after > before => {
            format!("fence: {before} -> {after} (asked {asked})\n")
        }
        Some(asked) => {
            format!("fence: {after} (asked {asked}: a fence never goes down, nothing changed)\n")
        }
    };
    Ok((doc, text))
}

/// `prune`: delete every partial and seal below `before`, once confirmed.
pub(crate) async fn prune(url: &str, before: u64, yes: bool) -> CliResult<(Value, String)> {
    let handle = open(url, CLI_ID).await?;
    let sealed = sealed_epochs(&handle).await?;
    let doomed: Vec<u64> = sealed.iter().copied().filter(|&e| e < before).collect();
    if !yes {
        if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
            return Err(CliError::new(
                Exit::Refused,
                "prune deletes state: not on a terminal to confirm, so pass --yes",
            ));
        }
        eprint!(
            "Delete every partial and seal below epoch {before} of {} ({} sealed epochs: {:?})? \
             Type yes: ",
            redact_url(url),
            doomed.len(),
            doomed
        );
        let mut answer = String::new();
        std::io::stdin()
            .read_line(&mut answer)
            .map_err(|e| CliError::failure(format!("reading the answer: {e}")))?;
        if answer.trim() != "yes" {
            return Err(CliError::new(
                Exit::Refused,
                "not confirmed: nothing pruned",
            ));
        }
    }
    handle
        .prune_before(before)
        .await
        .map_err(|e| CliError::backend(format!("prune_before({before})"), e))?;
    let doc = json!({
        "ok": true,
        "command": "prune",
        "url": redact_url(url),
        "before": before,
        "sealed_epochs_pruned": doomed,
    });
    let text = format!(
        "pruned below epoch {before}: {} sealed epochs removed\n",
        doomed.len()
    );
    Ok((doc, text))
}
