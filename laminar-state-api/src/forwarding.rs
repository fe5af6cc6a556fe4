//! Middleware: a backend that wraps another and changes some of its calls.

use std::future::Future;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{StateBackend, StateBackendError};

/// A backend that wraps another, [`inner`](Self::inner), and hands it every
/// call it does not change: implement this instead of [`StateBackend`] for
/// middleware (a layer, a fault injector, a test double), and a blanket
/// implementation makes it a [`StateBackend`].
///
/// The calls that carry no partial bytes (the commit gate, pruning, the
/// fence, the recovery queries) forward to `inner` by default, so a wrapper
/// writes only what it changes. The three that carry bytes have no default,
/// on purpose: a wrapper that transforms bytes (compression, encryption)
/// must open a batch read as it opens a single one, and a default that handed
/// [`read_partials`](Self::read_partials) straight to `inner` would return
/// its stored bytes unopened, a bug no compiler would catch. So each wrapper
/// says what its bytes do: one that passes them through forwards all three;
/// one that changes single reads either opens each answer of the inner batch
/// or reads through its own `read_partial` with [`read_each`].
///
/// The blanket implementation returns this trait's futures as they are (no
/// second box per call), so forwarding costs one virtual call.
///
/// Both traits name the same methods, so where both are in scope a call on
/// the wrapper is ambiguous: implement this one by its path, as below, and
/// inside the implementation call your own methods as
/// `StateBackend::set_authoritative_version(self, v)`.
///
/// ```
/// use std::sync::Arc;
/// use async_trait::async_trait;
/// use bytes::Bytes;
/// use laminar_state_api::{StateBackend, StateBackendError};
///
/// /// Refuses writes of empty partials; forwards everything else.
/// struct NoEmptyPartials(Arc<dyn StateBackend>);
///
/// #[async_trait]
/// impl laminar_state_api::ForwardingBackend for NoEmptyPartials {
///     type Inner = dyn StateBackend;
///
///     fn inner(&self) -> &Self::Inner {
///         &*self.0
///     }
///
///     async fn write_partial(
///         &self,
///         vnode: u32,
///         epoch: u64,
///         assignment_version: u64,
///         bytes: Bytes,
///     ) -> Result<(), StateBackendError> {
///         if bytes.is_empty() {
///             return Err(StateBackendError::Serialization(format!(
///                 "empty partial for vnode {vnode} epoch {epoch}"
///             )));
///         }
///         self.0.write_partial(vnode, epoch, assignment_version, bytes).await
///     }
///
///     // Reads return what was written: forwarded as they are.
///     async fn read_partial(
///         &self,
///         vnode: u32,
///         epoch: u64,
///     ) -> Result<Option<Bytes>, StateBackendError> {
///         self.0.read_partial(vnode, epoch).await
///     }
///
///     async fn read_partials(
///         &self,
///         epoch: u64,
///         vnodes: &[u32],
///     ) -> Result<Vec<Option<Bytes>>, StateBackendError> {
///         self.0.read_partials(epoch, vnodes).await
///     }
/// }
///
/// fn wrap(backend: Arc<dyn StateBackend>) -> Arc<dyn StateBackend> {
///     Arc::new(NoEmptyPartials(backend))
/// }
/// ```
#[async_trait]
pub trait ForwardingBackend: Send + Sync + 'static {
    /// The wrapped backend's type: a concrete backend, or `dyn StateBackend`.
    type Inner: StateBackend + ?Sized;

    /// The wrapped backend.
    fn inner(&self) -> &Self::Inner;

    /// [`StateBackend::write_partial`]; no default (it carries bytes).
    async fn write_partial(
        &self,
        vnode: u32,
        epoch: u64,
        assignment_version: u64,
        bytes: Bytes,
    ) -> Result<(), StateBackendError>;

    /// [`StateBackend::read_partial`]; no default (it carries bytes).
    async fn read_partial(
        &self,
        vnode: u32,
        epoch: u64,
    ) -> Result<Option<Bytes>, StateBackendError>;

    /// [`StateBackend::read_partials`]; no default (it carries bytes): see
    /// the trait's docs.
    async fn read_partials(
        &self,
        epoch: u64,
        vnodes: &[u32],
    ) -> Result<Vec<Option<Bytes>>, StateBackendError>;

    /// [`StateBackend::epoch_complete`]; forwards by default.
    async fn epoch_complete(&self, epoch: u64, vnodes: &[u32]) -> Result<bool, StateBackendError> {
        self.inner().epoch_complete(epoch, vnodes).await
    }

    /// [`StateBackend::prune_before`]; forwards by default.
    async fn prune_before(&self, before: u64) -> Result<(), StateBackendError> {
        self.inner().prune_before(before).await
    }

    /// [`StateBackend::set_authoritative_version`]; forwards by default.
    fn set_authoritative_version(&self, version: u64) {
        self.inner().set_authoritative_version(version);
    }

    /// [`StateBackend::authoritative_version`]; forwards by default.
    fn authoritative_version(&self) -> u64 {
        self.inner().authoritative_version()
    }

    /// [`StateBackend::latest_committed_epoch`]; forwards by default.
    async fn latest_committed_epoch(&self) -> Result<Option<u64>, StateBackendError> {
        self.inner().latest_committed_epoch().await
    }

    /// [`StateBackend::sealed_epochs`]; forwards by default.
    async fn sealed_epochs(&self, after: u64) -> Result<Vec<u64>, StateBackendError> {
        self.inner().sealed_epochs(after).await
    }

    /// [`StateBackend::partials`]; forwards by default. A listing names
    /// vnodes only, so what a wrapper does to the bytes does not show in it.
    async fn partials(&self, epoch: u64) -> Result<Option<Vec<u32>>, StateBackendError> {
        self.inner().partials(epoch).await
    }

    /// [`StateBackend::persist_authoritative_version`]; forwards by default.
    async fn persist_authoritative_version(&self, version: u64) -> Result<(), StateBackendError> {
        self.inner().persist_authoritative_version(version).await
    }
}

/// The boxed future every `async_trait` method returns.
type Answer<'a, T> = Pin<Box<dyn Future<Output = Result<T, StateBackendError>> + Send + 'a>>;

// Written as `async_trait` expands it, so each call returns the wrapper's own
// future rather than boxing it a second time.
impl<F: ForwardingBackend> StateBackend for F {
    fn write_partial<'life0, 'async_trait>(
        &'life0 self,
        vnode: u32,
        epoch: u64,
        assignment_version: u64,
        bytes: Bytes,
    ) -> Answer<'async_trait, ()>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        ForwardingBackend::write_partial(self, vnode, epoch, assignment_version, bytes)
    }

    fn read_partial<'life0, 'async_trait>(
        &'life0 self,
        vnode: u32,
        epoch: u64,
    ) -> Answer<'async_trait, Option<Bytes>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        ForwardingBackend::read_partial(self, vnode, epoch)
    }

    fn epoch_complete<'life0, 'life1, 'async_trait>(
        &'life0 self,
        epoch: u64,
        vnodes: &'life1 [u32],
    ) -> Answer<'async_trait, bool>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        ForwardingBackend::epoch_complete(self, epoch, vnodes)
    }

    fn prune_before<'life0, 'async_trait>(&'life0 self, before: u64) -> Answer<'async_trait, ()>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        ForwardingBackend::prune_before(self, before)
    }

    fn set_authoritative_version(&self, version: u64) {
        ForwardingBackend::set_authoritative_version(self, version);
    }

    fn authoritative_version(&self) -> u64 {
        ForwardingBackend::authoritative_version(self)
    }

    fn latest_committed_epoch<'life0, 'async_trait>(
        &'life0 self,
    ) -> Answer<'async_trait, Option<u64>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        ForwardingBackend::latest_committed_epoch(self)
    }

    fn sealed_epochs<'life0, 'async_trait>(
        &'life0 self,
        after: u64,
    ) -> Answer<'async_trait, Vec<u64>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        ForwardingBackend::sealed_epochs(self, after)
    }

    fn partials<'life0, 'async_trait>(
        &'life0 self,
        epoch: u64,
    ) -> Answer<'async_trait, Option<Vec<u32>>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        ForwardingBackend::partials(self, epoch)
    }

    fn persist_authoritative_version<'life0, 'async_trait>(
        &'life0 self,
        version: u64,
    ) -> Answer<'async_trait, ()>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        ForwardingBackend::persist_authoritative_version(self, version)
    }

    fn read_partials<'life0, 'life1, 'async_trait>(
        &'life0 self,
        epoch: u64,
        vnodes: &'life1 [u32],
    ) -> Answer<'async_trait, Vec<Option<Bytes>>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        ForwardingBackend::read_partials(self, epoch, vnodes)
    }
}

/// What [`StateBackend::read_partials`] returns by default: `backend`'s
/// [`read_partial`](StateBackend::read_partial) of each vnode, one after
/// the other, in the order asked; the first error fails the call.
///
/// For a wrapper whose single reads are its own (one that reorders,
/// delays or damages them, say): its batch read then answers exactly as
/// its single reads do.
pub async fn read_each<B: StateBackend + ?Sized>(
    backend: &B,
    epoch: u64,
    vnodes: &[u32],
) -> Result<Vec<Option<Bytes>>, StateBackendError> {
    let mut partials = Vec::with_capacity(vnodes.len());
    for &vnode in vnodes {
        partials.push(backend.read_partial(vnode, epoch).await?);
    }
    Ok(partials)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::task::{Context, Poll, Waker};

    use super::*;

    /// Records each call with its arguments; answers with values derived
    /// from them, so a forward that changed an argument or an answer shows.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl Recorder {
        fn log(&self, call: String) {
            self.0.lock().unwrap().push(call);
        }
    }

    #[async_trait]
    impl StateBackend for Recorder {
        async fn write_partial(
            &self,
            v: u32,
            e: u64,
            a: u64,
            b: Bytes,
        ) -> Result<(), StateBackendError> {
            self.log(format!("write {v} {e} {a} {}", b.len()));
            Ok(())
        }
        async fn read_partial(&self, v: u32, e: u64) -> Result<Option<Bytes>, StateBackendError> {
            self.log(format!("read {v} {e}"));
            Ok(Some(Bytes::from(format!("v{v}e{e}"))))
        }
        async fn epoch_complete(&self, e: u64, v: &[u32]) -> Result<bool, StateBackendError> {
            self.log(format!("gate {e} {v:?}"));
            Ok(e % 2 == 1)
        }
        async fn prune_before(&self, b: u64) -> Result<(), StateBackendError> {
            self.log(format!("prune {b}"));
            Err(StateBackendError::Io(format!("prune {b}")))
        }
        fn set_authoritative_version(&self, v: u64) {
            self.log(format!("set {v}"));
        }
        fn authoritative_version(&self) -> u64 {
            41
        }
        async fn latest_committed_epoch(&self) -> Result<Option<u64>, StateBackendError> {
            Ok(Some(7))
        }
        async fn sealed_epochs(&self, after: u64) -> Result<Vec<u64>, StateBackendError> {
            Ok(vec![after + 1, after + 3])
        }
        async fn partials(&self, e: u64) -> Result<Option<Vec<u32>>, StateBackendError> {
            Ok(Some(vec![e as u32, 9]))
        }
        async fn persist_authoritative_version(&self, v: u64) -> Result<(), StateBackendError> {
            self.log(format!("persist {v}"));
            Ok(())
        }
    }

    /// Writes only the three byte-carrying calls: uppercases what it reads.
    struct Shouting(Recorder);

    #[async_trait]
    impl ForwardingBackend for Shouting {
        type Inner = Recorder;
        fn inner(&self) -> &Recorder {
            &self.0
        }
        async fn write_partial(
            &self,
            v: u32,
            e: u64,
            a: u64,
            b: Bytes,
        ) -> Result<(), StateBackendError> {
            self.0.write_partial(v, e, a, b).await
        }
        async fn read_partial(&self, v: u32, e: u64) -> Result<Option<Bytes>, StateBackendError> {
            let read = self.0.read_partial(v, e).await?;
            Ok(read.map(|b| Bytes::from(b.to_ascii_uppercase())))
        }
        async fn read_partials(
            &self,
            e: u64,
            v: &[u32],
        ) -> Result<Vec<Option<Bytes>>, StateBackendError> {
            read_each(self, e, v).await
        }
    }

    /// Every future here is ready at once: poll it once.
    fn now<T>(future: impl Future<Output = T>) -> T {
        let mut future = std::pin::pin!(future);
        match future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Ready(value) => value,
            Poll::Pending => panic!("the recorder never waits"),
        }
    }

    #[test]
    fn calls_without_bytes_reach_the_inner_backend_unchanged() {
        let shouting = Shouting(Recorder::default());
        let wrapper: &dyn StateBackend = &shouting;
        assert!(now(wrapper.epoch_complete(3, &[1, 2])).unwrap());
        assert!(!now(wrapper.epoch_complete(4, &[5])).unwrap());
        let pruned = now(wrapper.prune_before(6)).unwrap_err();
        assert!(matches!(pruned, StateBackendError::Io(m) if m == "prune 6"));
        wrapper.set_authoritative_version(8);
        assert_eq!(wrapper.authoritative_version(), 41);
        assert_eq!(now(wrapper.latest_committed_epoch()).unwrap(), Some(7));
        assert_eq!(now(wrapper.sealed_epochs(10)).unwrap(), vec![11, 13]);
        assert_eq!(now(wrapper.partials(12)).unwrap(), Some(vec![12, 9]));
        now(wrapper.persist_authoritative_version(14)).unwrap();
        now(wrapper.write_partial(1, 2, 3, Bytes::from_static(b"abcd"))).unwrap();
        assert_eq!(
            *shouting.0.0.lock().unwrap(),
            [
                "gate 3 [1, 2]",
                "gate 4 [5]",
                "prune 6",
                "set 8",
                "persist 14",
                "write 1 2 3 4"
            ]
        );
    }

    #[test]
    fn batch_reads_answer_as_the_wrappers_single_reads() {
        let wrapper = Shouting(Recorder::default());
        let batch = now(StateBackend::read_partials(&wrapper, 5, &[2, 1, 2])).unwrap();
        let single = now(StateBackend::read_partial(&wrapper, 2, 5)).unwrap();
        assert_eq!(batch[0], single);
        assert_eq!(batch[0].as_deref(), Some(&b"V2E5"[..]));
        assert_eq!(batch[1].as_deref(), Some(&b"V1E5"[..]));
        assert_eq!(batch[2], batch[0]);
        assert_eq!(batch.len(), 3);
    }
}
