//! [`MemoryConfig`]: which store (a private one, or the store of a name
//! that every handle naming it in this process shares), and the URL that
//! says so.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use laminar_state_api::{BackendUrl, StateBackendError, UrlError};

use crate::{DEFAULT_MAX_PAYLOAD_LEN, MemoryBackend, MemoryStore, lock};

/// Which store to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryConfig {
    /// `Some(name)`: the store of that name, shared by every handle that
    /// names it in this process and kept until the process exits, like a
    /// server's. `None`: a new store, private to the handles opened on it.
    pub name: Option<String>,
    /// The largest partial, in bytes. A named store keeps the limit of the
    /// config that created it.
    pub max_payload_len: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            name: None,
            max_payload_len: DEFAULT_MAX_PAYLOAD_LEN,
        }
    }
}

impl MemoryConfig {
    /// Parse `memory://` (a private store) or `memory://NAME` (the shared
    /// store of that name), with an optional `max_payload_len=BYTES`. The
    /// name is percent-decoded; see [`BackendUrl`] for the rules every
    /// backend URL follows. A bad URL is a
    /// [`StateBackendError::Serialization`] naming the parameter.
    pub fn from_url(url: &str) -> Result<Self, StateBackendError> {
        Ok(Self::parse_url(url)?)
    }

    /// [`from_url`](Self::from_url), with the error as the [`UrlError`]
    /// itself.
    pub fn parse_url(url: &str) -> Result<Self, UrlError> {
        let mut url = BackendUrl::parse(url, &["memory"])?;
        let name = url.location()?;
        let config = Self {
            name: (!name.is_empty()).then_some(name),
            max_payload_len: url
                .number("max_payload_len")?
                .unwrap_or(DEFAULT_MAX_PAYLOAD_LEN),
        };
        url.finish()?;
        Ok(config)
    }

    /// The store: the named one (created by the first call that names it)
    /// or a new private one.
    pub fn store(&self) -> MemoryStore {
        let Some(name) = &self.name else {
            return MemoryStore::with_max_payload_len(self.max_payload_len);
        };
        static NAMED: OnceLock<Mutex<HashMap<String, MemoryStore>>> = OnceLock::new();
        lock(NAMED.get_or_init(Mutex::default))
            .entry(name.clone())
            .or_insert_with(|| MemoryStore::with_max_payload_len(self.max_payload_len))
            .clone()
    }

    /// A handle for `instance_id`, serving vnodes `0..vnode_capacity`, on
    /// [`store`](Self::store).
    pub fn open(&self, instance_id: impl Into<String>, vnode_capacity: u32) -> MemoryBackend {
        self.store().open(instance_id, vnode_capacity)
    }
}

#[cfg(test)]
mod tests {
    use laminar_state_api::StateBackend;

    use super::*;

    #[test]
    fn urls_parse_and_refuse_nonsense() {
        assert_eq!(
            MemoryConfig::from_url("memory://").unwrap(),
            MemoryConfig::default()
        );
        let named = MemoryConfig::from_url("memory://a%20b+c?max_payload_len=10").unwrap();
        assert_eq!(named.name.as_deref(), Some("a b+c"));
        assert_eq!(named.max_payload_len, 10);
        for (bad, parameter) in [
            ("memory", None),
            ("redb://x", None),
            ("memory://%zz", None),
            ("memory://?max_payload_len=lots", Some("max_payload_len")),
            ("memory://?colour=blue", Some("colour")),
        ] {
            let error = MemoryConfig::parse_url(bad).expect_err(bad);
            assert_eq!(error.parameter(), parameter, "{bad}: {error}");
            assert!(matches!(
                MemoryConfig::from_url(bad),
                Err(StateBackendError::Serialization(_))
            ));
        }
    }

    #[tokio::test]
    async fn named_stores_are_shared_and_unnamed_ones_private() {
        let config = MemoryConfig::from_url("memory://config-test-shared").unwrap();
        let a = config.open("a", 2);
        let b = config.open("b", 2);
        let private = MemoryConfig::default().open("c", 2);
        a.write_partial(1, 1, 0, "x".into()).await.unwrap();
        assert!(b.read_partial(1, 1).await.unwrap().is_some());
        assert!(private.read_partial(1, 1).await.unwrap().is_none());
    }
}
