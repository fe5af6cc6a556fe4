//! Requests: the one classification of S3 errors ([`Failure`]),
//! conditional writes, listings, deletes.

use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use bytes::Bytes;
use laminar_state_api::StateBackendError;

use crate::frame::FENCE_METADATA;
use crate::store::Shared;

/// Keys one LIST page or one DeleteObjects request carries at most (S3's
/// limit).
pub(crate) const PAGE: usize = 1000;

/// Asked vnodes per key range of [`Shared::list_epoch`]: about half a
/// page when each vnode has one object, so a range is one LIST.
pub(crate) const RANGE_VNODES: usize = 512;

/// Key ranges [`Shared::list_epoch`] lists at once.
pub(crate) const RANGES_AT_ONCE: usize = 16;

/// How a request failed, as far as the protocol cares.
pub(crate) enum Failure {
    /// 412 (or 404 for `If-Match` on a missing key, as AWS answers; or 409,
    /// AWS's answer to a conditional write racing another): the condition
    /// did not hold. The message is for a caller that expected no
    /// condition to fail.
    Precondition(String),
    /// 404: no such key (with the message, likewise).
    Missing(String),
    /// Anything else, already worded for the caller.
    Error(StateBackendError),
}

impl From<Failure> for StateBackendError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Error(e) => e,
            Failure::Precondition(message) | Failure::Missing(message) => {
                StateBackendError::Io(message)
            }
        }
    }
}

pub(crate) fn classify<E>(what: &str, key: &str, error: SdkError<E>) -> Failure
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
{
    let status = error.raw_response().map(|r| r.status().as_u16());
    let message = format!(
        "s3 {what} {key:?}: {}{}",
        DisplayErrorContext(&error),
        match error.code() {
            Some("SlowDown" | "ServiceUnavailable") => " (the store is throttling)",
            Some("QuotaExceeded" | "EntityTooLarge") =>
                " (the store is full or the object too large)",
            _ => "",
        }
    );
    match status {
        Some(412 | 409) => Failure::Precondition(message),
        Some(404) if error.code() != Some("NoSuchBucket") => Failure::Missing(message),
        _ => Failure::Error(StateBackendError::Io(message)),
    }
}

/// The condition of a PUT.
pub(crate) enum Condition<'a> {
    None,
    /// `If-None-Match: *`: create only.
    Absent,
    /// `If-Match: ETAG`: replace only this version.
    Matches(&'a str),
}

/// A listed object.
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    pub(crate) key: String,
    pub(crate) etag: String,
}

/// One page of a listing.
pub(crate) struct Page {
    pub(crate) objects: Vec<Listed>,
    pub(crate) next: Option<String>,
}

impl Shared {
    pub(crate) async fn put(
        &self,
        what: &str,
        key: &str,
        body: Bytes,
        condition: Condition<'_>,
    ) -> Result<Option<String>, Failure> {
        self.put_with_fence(what, key, body, condition, None).await
    }

    /// A PUT that may also carry the fence metadata (see [`FENCE_METADATA`]);
    /// the stored object's ETag, if the store answered one.
    pub(crate) async fn put_with_fence(
        &self,
        what: &str,
        key: &str,
        body: Bytes,
        condition: Condition<'_>,
        fence: Option<String>,
    ) -> Result<Option<String>, Failure> {
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .set_metadata(fence.map(|f| HashMap::from([(FENCE_METADATA.to_owned(), f)])))
            .body(ByteStream::from(body));
        let request = match condition {
            Condition::None => request,
            Condition::Absent => request.if_none_match("*"),
            Condition::Matches(etag) => request.if_match(etag),
        };
        request
            .send()
            .await
            .map(|out| out.e_tag().map(str::to_owned))
            .map_err(|e| classify(what, key, e))
    }

    /// The object's bytes and ETag.
    pub(crate) async fn get(
        &self,
        what: &str,
        key: &str,
    ) -> Result<(Bytes, Option<String>), Failure> {
        let object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify(what, key, e))?;
        let etag = object.e_tag().map(str::to_owned);
        let body = object.body.collect().await.map_err(|e| {
            Failure::Error(StateBackendError::Io(format!(
                "s3 {what} {key:?}: reading the body failed: {e}"
            )))
        })?;
        Ok((body.into_bytes(), etag))
    }

    /// Whether the object exists: one HEAD.
    pub(crate) async fn exists(&self, what: &str, key: &str) -> Result<bool, StateBackendError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify(what, key, e))
        {
            Ok(_) => Ok(true),
            Err(Failure::Missing(_)) => Ok(false),
            Err(other) => Err(other.into()),
        }
    }

    pub(crate) async fn list_page(
        &self,
        what: &str,
        prefix: &str,
        start_after: Option<&str>,
        token: Option<String>,
    ) -> Result<Page, StateBackendError> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .max_keys(PAGE as i32)
            .set_start_after(start_after.map(str::to_owned))
            .set_continuation_token(token)
            .send()
            .await
            .map_err(|e| StateBackendError::from(classify(what, prefix, e)))?;
        let objects = out
            .contents()
            .iter()
            .filter_map(|o| {
                Some(Listed {
                    key: o.key()?.to_owned(),
                    etag: o.e_tag().unwrap_or_default().to_owned(),
                })
            })
            .collect();
        let next = if out.is_truncated() == Some(true) {
            out.next_continuation_token().map(str::to_owned)
        } else {
            None
        };
        Ok(Page { objects, next })
    }

    /// Every object under `prefix` (after `start_after`), in key order.
    pub(crate) async fn list(
        &self,
        what: &str,
        prefix: &str,
        start_after: Option<&str>,
    ) -> Result<Vec<Listed>, StateBackendError> {
        self.list_between(what, prefix, start_after, None).await
    }

    /// Every object under `prefix` whose key is after `start_after` and,
    /// given `end`, before it, in key order: the listing stops at the first
    /// page that reaches `end`.
    pub(crate) async fn list_between(
        &self,
        what: &str,
        prefix: &str,
        start_after: Option<&str>,
        end: Option<&str>,
    ) -> Result<Vec<Listed>, StateBackendError> {
        let mut all = Vec::new();
        let mut token = None;
        loop {
            let mut page = self.list_page(what, prefix, start_after, token).await?;
            if let Some(end) = end
                && let Some(past) = page.objects.iter().position(|o| o.key.as_str() >= end)
            {
                page.objects.truncate(past);
                all.extend(page.objects);
                return Ok(all);
            }
            all.extend(page.objects);
            match page.next {
                Some(next) => token = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// Every partial of `epoch`, in key order: every partial `list` of the
    /// epoch's prefix answers, those of vnodes not asked included (a
    /// foreign object named exactly like a split is in no range).
    /// When more than [`RANGE_VNODES`] vnodes are asked, the epoch is listed
    /// as key ranges of that many asked vnodes each, [`RANGES_AT_ONCE`] at
    /// once, so a gate or a batch read of thousands of vnodes waits for one
    /// range's pages rather than for every page in turn. The ranges split at
    /// `{vnode:010}`, a name no partial's key equals (see
    /// [`Layout::vnode_splits`](crate::layout::Layout::vnode_splits)).
    pub(crate) async fn list_epoch(
        self: &Arc<Self>,
        what: &str,
        epoch: u64,
        vnodes: &[u32],
    ) -> Result<Vec<Listed>, StateBackendError> {
        let prefix = self.layout.epoch_partials(epoch);
        let splits = self.layout.vnode_splits(epoch, vnodes, RANGE_VNODES);
        if splits.is_empty() {
            return self.list(what, &prefix, None).await;
        }
        // Each range runs from one bound to the next: the first from the
        // epoch's start, the last to its end.
        let bounds: Vec<Option<String>> = std::iter::once(None)
            .chain(splits.into_iter().map(Some))
            .chain(std::iter::once(None))
            .collect();
        let mut ranges = bounds.windows(2).enumerate();
        let mut listed: Vec<Option<Vec<Listed>>> = vec![None; bounds.len() - 1];
        let mut running = tokio::task::JoinSet::new();
        loop {
            while running.len() < RANGES_AT_ONCE {
                let Some((index, [start, end])) = ranges.next() else {
                    break;
                };
                let (start, end) = (start.clone(), end.clone());
                let (shared, what, prefix) = (Arc::clone(self), what.to_owned(), prefix.clone());
                running.spawn(async move {
                    let range = shared
                        .list_between(&what, &prefix, start.as_deref(), end.as_deref())
                        .await;
                    (index, range)
                });
            }
            let Some(done) = running.join_next().await else {
                break;
            };
            let (index, range) = done.map_err(|e| {
                StateBackendError::Io(format!("s3 {what}: a LIST task failed: {e}"))
            })?;
            listed[index] = Some(range?);
        }
        Ok(listed.into_iter().flatten().flatten().collect())
    }

    /// Delete `keys` (at most [`PAGE`]) in one request.
    pub(crate) async fn delete_batch(
        &self,
        what: &str,
        keys: Vec<String>,
    ) -> Result<(), StateBackendError> {
        if keys.is_empty() {
            return Ok(());
        }
        let objects = keys
            .into_iter()
            .map(|key| ObjectIdentifier::builder().key(key).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StateBackendError::Io(format!("s3 {what}: {e}")))?;
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(|e| StateBackendError::Io(format!("s3 {what}: {e}")))?;
        let out = self
            .client
            .delete_objects()
            .bucket(&self.bucket)
            .delete(delete)
            .send()
            .await
            .map_err(|e| StateBackendError::from(classify(what, "DeleteObjects", e)))?;
        match out.errors().first() {
            None => Ok(()),
            Some(failed) => Err(StateBackendError::Io(format!(
                "s3 {what}: deleting {:?} failed: {} {}",
                failed.key().unwrap_or_default(),
                failed.code().unwrap_or_default(),
                failed.message().unwrap_or_default()
            ))),
        }
    }

    // --- the fence ---------------------------------------------------------

    /// Delete an invisible object: garbage collection, best effort (an
    /// object left behind stays invisible; prune removes it with its epoch).
    pub(crate) async fn discard(&self, key: &str) {
        let _ = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
    }
}
