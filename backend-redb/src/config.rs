//! [`RedbConfig`]: which file, and how to open it; and the URL that says
//! so.

use std::path::PathBuf;

use laminar_state_api::{BackendUrl, StateBackendError, UrlError};

/// The default largest partial: 64 MiB.
pub const DEFAULT_MAX_PAYLOAD_LEN: usize = 64 << 20;

/// How to open a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedbConfig {
    /// The database file; created if missing.
    pub path: PathBuf,
    /// The largest partial, in bytes, the store accepts.
    pub max_payload_len: usize,
    /// Verify every page checksum when the file is opened, so a damaged
    /// file is refused at open with a typed error. Costs one read of the
    /// whole file per open; on by default.
    pub verify_on_open: bool,
}

impl RedbConfig {
    /// Defaults for the file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            max_payload_len: DEFAULT_MAX_PAYLOAD_LEN,
            verify_on_open: true,
        }
    }

    /// Parse `redb:///path/to/state.redb` (an absolute path after the
    /// third slash; `redb://relative/state.redb` is relative to the working
    /// directory), with optional `max_payload_len=BYTES` and
    /// `verify_on_open=true|false`. The path is everything up to the `?`,
    /// percent-decoded (`%20` is a space, `%3F` a `?`); see [`BackendUrl`]
    /// for the rules every backend URL follows. A bad URL is a
    /// [`StateBackendError::Serialization`] naming the parameter.
    pub fn from_url(url: &str) -> Result<Self, StateBackendError> {
        Ok(Self::parse_url(url)?)
    }

    /// [`from_url`](Self::from_url), with the error as the [`UrlError`]
    /// itself.
    pub fn parse_url(url: &str) -> Result<Self, UrlError> {
        let mut url = BackendUrl::parse(url, &["redb"])?;
        let path = url.location()?;
        if path.is_empty() {
            return Err(url.error(None, "no file path: write redb:///path/to/state.redb"));
        }
        let defaults = Self::new(path);
        let config = Self {
            max_payload_len: url
                .number("max_payload_len")?
                .unwrap_or(defaults.max_payload_len),
            verify_on_open: url
                .flag("verify_on_open")?
                .unwrap_or(defaults.verify_on_open),
            ..defaults
        };
        url.finish()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_refuse_nonsense() {
        assert_eq!(
            RedbConfig::from_url("redb:///var/lib/state.redb").unwrap(),
            RedbConfig::new("/var/lib/state.redb")
        );
        let config = RedbConfig::from_url(
            "redb:///tmp/a%20b+c@d.redb?max_payload_len=1024&verify_on_open=false",
        )
        .unwrap();
        assert_eq!(config.path, PathBuf::from("/tmp/a b+c@d.redb"));
        assert_eq!(
            (config.max_payload_len, config.verify_on_open),
            (1024, false)
        );
        // Paths the URL crate would rewrite are kept as written.
        for (url, path) in [
            ("redb://relative/state.redb", "relative/state.redb"),
            ("redb:///tmp/../x.redb", "/tmp/../x.redb"),
            ("redb://C:/state.redb", "C:/state.redb"),
            ("redb:///tmp/a#b.redb", "/tmp/a#b.redb"),
        ] {
            assert_eq!(RedbConfig::from_url(url).unwrap().path, PathBuf::from(path));
        }
        for (bad, parameter) in [
            ("redb://", None),
            ("redb:///x%", None),
            ("memory:///x", None),
            ("redb:///x?max_payload_len=-1", Some("max_payload_len")),
            ("redb:///x?verify_on_open=maybe", Some("verify_on_open")),
            ("redb:///x?sync=never", Some("sync")),
        ] {
            let error = RedbConfig::parse_url(bad).expect_err(bad);
            assert_eq!(error.parameter(), parameter, "{bad}: {error}");
            assert!(matches!(
                RedbConfig::from_url(bad),
                Err(StateBackendError::Serialization(_))
            ));
        }
    }
}
