//! The least a plain S3 client does for one checkpoint, with the same
//! durability as the S3 backend's: the floor its checkpoint latency is
//! measured against (by the S3 bench and the growth soak).

use aws_sdk_s3::Client;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use bytes::Bytes;

/// How the raw checkpoint learns that every partial is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// One LIST of the epoch: the least the store needs.
    List,
    /// A HEAD per vnode, [`HEADS_IN_FLIGHT`] at a time: the seed's approach.
    Heads,
}

/// How many HEADs [`Gate::Heads`] keeps in flight.
pub const HEADS_IN_FLIGHT: usize = 256;

/// One checkpoint under `root` (empty, or ending with `/`): every vnode's
/// partial PUT at once, the `gate`, the commit marker PUT with
/// `If-None-Match: *` (the seal), then a prune that lists what is left and
/// deletes the epochs before `epoch - 1`, 1,000 keys per request. No fence
/// and no framing.
pub async fn checkpoint(
    client: &Client,
    bucket: &str,
    root: &str,
    epoch: u64,
    vnodes: u32,
    payload: &Bytes,
    gate: Gate,
) -> Result<(), String> {
    let dir = format!("{root}{epoch:020}/");
    let mut puts = tokio::task::JoinSet::new();
    for vnode in 0..vnodes {
        let put = client
            .put_object()
            .bucket(bucket)
            .key(format!("{dir}{vnode:010}"))
            .body(payload.clone().into());
        puts.spawn(async move { put.send().await.map_err(|e| format!("raw PUT: {e:?}")) });
    }
    while let Some(done) = puts.join_next().await {
        done.map_err(|e| e.to_string())??;
    }
    let present = count_present(client, bucket, &dir, vnodes, gate).await?;
    if present != vnodes as usize {
        return Err(format!(
            "raw gate of epoch {epoch} found {present} of {vnodes} partials"
        ));
    }
    seal(client, bucket, &dir).await?;
    let keep = format!("{root}{:020}/", epoch.saturating_sub(1));
    delete_below(client, bucket, root, Some(&keep)).await
}

/// How many of the partials `{dir}{vnode:010}`, for `vnode` in
/// `0..vnodes`, the `gate` finds.
pub async fn count_present(
    client: &Client,
    bucket: &str,
    dir: &str,
    vnodes: u32,
    gate: Gate,
) -> Result<usize, String> {
    match gate {
        Gate::List => Ok(client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(dir)
            .send()
            .await
            .map_err(|e| format!("raw LIST: {e:?}"))?
            .contents()
            .len()),
        Gate::Heads => {
            let mut heads = tokio::task::JoinSet::new();
            let mut present = 0;
            for vnode in 0..vnodes {
                if heads.len() >= HEADS_IN_FLIGHT {
                    let done = heads.join_next().await.expect("a HEAD in flight");
                    present += usize::from(done.map_err(|e| e.to_string())?);
                }
                let head = client
                    .head_object()
                    .bucket(bucket)
                    .key(format!("{dir}{vnode:010}"));
                heads.spawn(async move { head.send().await.is_ok() });
            }
            while let Some(done) = heads.join_next().await {
                present += usize::from(done.map_err(|e| e.to_string())?);
            }
            Ok(present)
        }
    }
}

/// The seal: the commit marker `{dir}commit`, PUT with `If-None-Match: *`
/// so only the first seal wins.
pub async fn seal(client: &Client, bucket: &str, dir: &str) -> Result<(), String> {
    client
        .put_object()
        .bucket(bucket)
        .key(format!("{dir}commit"))
        .if_none_match("*")
        .body(Bytes::from_static(b"raw").into())
        .send()
        .await
        .map_err(|e| format!("raw marker PUT: {e:?}"))?;
    Ok(())
}

/// Delete every object under `prefix` whose key sorts below `below` (all
/// of them if `None`): LIST, then DeleteObjects, 1,000 keys per request.
pub async fn delete_below(
    client: &Client,
    bucket: &str,
    prefix: &str,
    below: Option<&str>,
) -> Result<(), String> {
    let mut token = None;
    loop {
        let page = client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_continuation_token(token)
            .send()
            .await
            .map_err(|e| format!("raw LIST: {e:?}"))?;
        let keys: Vec<ObjectIdentifier> = page
            .contents()
            .iter()
            .filter_map(|o| o.key())
            .filter(|key| below.is_none_or(|below| *key < below))
            .filter_map(|key| ObjectIdentifier::builder().key(key).build().ok())
            .collect();
        if !keys.is_empty() {
            let delete = Delete::builder()
                .set_objects(Some(keys))
                .quiet(true)
                .build()
                .map_err(|e| e.to_string())?;
            client
                .delete_objects()
                .bucket(bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| format!("raw DeleteObjects: {e:?}"))?;
        }
        token = page.next_continuation_token().map(str::to_owned);
        if token.is_none() {
            return Ok(());
        }
    }
}
