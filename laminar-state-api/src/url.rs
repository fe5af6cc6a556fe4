//! One URL dialect for every backend: how a backend URL is split, decoded
//! and checked ([`BackendUrl`]), the one error a bad URL gets
//! ([`UrlError`]), and what of a URL may be shown ([`redact_url`]).

use std::fmt;
use std::num::{IntErrorKind, ParseIntError};
use std::str::FromStr;
use std::time::Duration;

use percent_encoding::percent_decode_str;

use crate::StateBackendError;

/// A backend URL that cannot be used, found when it is parsed, before any
/// connection: which URL (with its credentials replaced by `***`), which
/// parameter (when one is to blame) and why. Every backend's `from_url`
/// and the facade report bad URLs with it, worded the same way; as a
/// [`StateBackendError`] it is a [`StateBackendError::Serialization`] (bad
/// input) carrying the same text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError {
    url: String,
    scheme: String,
    parameter: Option<String>,
    reason: String,
}

impl UrlError {
    /// The error for `url` (shown redacted), blaming `parameter` if given.
    pub fn new(url: &str, parameter: Option<&str>, reason: impl Into<String>) -> Self {
        Self {
            url: redact_url(url),
            scheme: url
                .split_once("://")
                .map_or("", |(scheme, _)| scheme)
                .to_ascii_lowercase(),
            parameter: parameter.map(str::to_owned),
            reason: reason.into(),
        }
    }

    /// The URL, credentials redacted.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL's scheme (lower case; empty if it has none).
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The query parameter to blame, if one is.
    pub fn parameter(&self) -> Option<&str> {
        self.parameter.as_deref()
    }

    /// What is wrong.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.scheme.is_empty() {
            write!(f, "bad backend URL `{}`: ", self.url)?;
        } else {
            write!(f, "bad `{}://` URL `{}`: ", self.scheme, self.url)?;
        }
        if let Some(parameter) = &self.parameter {
            write!(f, "parameter `{parameter}`: ")?;
        }
        f.write_str(&self.reason)
    }
}

impl std::error::Error for UrlError {}

impl From<UrlError> for StateBackendError {
    fn from(error: UrlError) -> Self {
        StateBackendError::Serialization(error.to_string())
    }
}

/// A backend URL, split and decoded, whose parameters a backend takes one
/// by one; [`finish`](Self::finish) then refuses whatever it did not take.
///
/// A backend URL is `SCHEME://LOCATION?NAME=VALUE&NAME=VALUE`:
///
/// - The location is everything between `://` and the first `?`: a store
///   name (`memory://`), a file path (`redb://`), `BUCKET/PREFIX` (`s3://`).
///   It is percent-decoded, and `+` is a plus (`%2F` is `/`, `%20` a
///   space); it holds no user or password (an `@` before the first `/` is
///   refused: write `%40`). A redis location
///   (`[user:password@]host:port[/db]`) goes to the redis client as
///   written, which decodes the user and password.
/// - The query is `application/x-www-form-urlencoded`, read the way the
///   `url` crate's `Url::query_pairs` reads it (with the same decoder,
///   `percent-encoding`): names and values are percent-decoded and `+` is
///   a space, so a value that holds a plus (a secret key, say) writes it
///   `%2B`.
/// - A `%` not followed by two hex digits, and text that is not UTF-8 once
///   decoded, are refused. So are a parameter given twice and a parameter
///   the backend does not take, by name.
/// - Flags are `true`/`false` (or `1`/`0`), sizes and counts are decimal,
///   durations are milliseconds (parameters ending in `_ms`).
///
/// ```
/// use laminar_state_api::BackendUrl;
///
/// let mut url = BackendUrl::parse("demo://a%20b?size=3&fast=true", &["demo"]).unwrap();
/// assert_eq!(url.location().unwrap(), "a b");
/// assert_eq!(url.number::<u32>("size").unwrap(), Some(3));
/// assert_eq!(url.flag("fast").unwrap(), Some(true));
/// url.finish().unwrap();
///
/// let mut url = BackendUrl::parse("demo://x?colour=red", &["demo"]).unwrap();
/// assert_eq!(url.take("size"), None);
/// let error = url.finish().unwrap_err();
/// assert_eq!(error.parameter(), Some("colour"));
/// ```
#[derive(Clone)]
pub struct BackendUrl {
    raw: String,
    scheme: String,
    location: String,
    /// Decoded parameters not taken yet, in URL order.
    params: Vec<(String, String)>,
    /// The parameters the backend asked for, for the unknown-parameter
    /// error.
    known: Vec<&'static str>,
}

/// Shows the URL redacted.
impl fmt::Debug for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BackendUrl")
            .field(&redact_url(&self.raw))
            .finish()
    }
}

impl BackendUrl {
    /// Split `url` and decode its query; its scheme must be one of
    /// `schemes` (compared without case).
    pub fn parse(url: &str, schemes: &[&str]) -> Result<Self, UrlError> {
        let error = |reason: String| UrlError::new(url, None, reason);
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(error(format!(
                "expected `{}://...`",
                schemes.first().copied().unwrap_or("SCHEME")
            )));
        };
        let scheme = scheme.to_ascii_lowercase();
        if !schemes.contains(&scheme.as_str()) {
            return Err(error(format!(
                "the scheme must be {}",
                schemes
                    .iter()
                    .map(|s| format!("`{s}://`"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            )));
        }
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut params: Vec<(String, String)> = Vec::new();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode(name, true)
                .map_err(|why| UrlError::new(url, None, format!("a parameter name {why}")))?;
            let value = decode(value, true).map_err(|why| UrlError::new(url, Some(&name), why))?;
            if params.iter().any(|(seen, _)| *seen == name) {
                return Err(UrlError::new(url, Some(&name), "is given twice"));
            }
            params.push((name, value));
        }
        Ok(Self {
            raw: url.to_owned(),
            scheme,
            location: location.to_owned(),
            params,
            known: Vec::new(),
        })
    }

    /// The scheme, in lower case.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The location, percent-decoded (`+` stays a plus), for a backend
    /// whose location holds no credentials: an `@` before the first `/`
    /// (user info, `user:password@`) is refused, so that a password given
    /// to such a backend is never taken for a name and shown (write `%40`
    /// for an `@`).
    pub fn location(&self) -> Result<String, UrlError> {
        let authority = self.location.split('/').next().unwrap_or_default();
        if authority.contains('@') {
            return Err(self.error(
                None,
                format!(
                    "`{}://` takes no user or password (write an `@` as `%40`)",
                    self.scheme
                ),
            ));
        }
        decode(&self.location, false).map_err(|why| self.error(None, format!("the location {why}")))
    }

    /// The location as written.
    pub fn raw_location(&self) -> &str {
        &self.location
    }

    /// The decoded value of parameter `name`, if given; the parameter is
    /// taken, so [`finish`](Self::finish) accepts it.
    pub fn take(&mut self, name: &'static str) -> Option<String> {
        self.known.push(name);
        let at = self.params.iter().position(|(given, _)| given == name)?;
        Some(self.params.remove(at).1)
    }

    /// Parameter `name` as a flag: `true`/`1` or `false`/`0`.
    pub fn flag(&mut self, name: &'static str) -> Result<Option<bool>, UrlError> {
        self.take(name)
            .map(|value| match value.as_str() {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(self.error(
                    Some(name),
                    format!("{} is not true or false", shown(name, &value)),
                )),
            })
            .transpose()
    }

    /// Parameter `name` as a whole number of type `T`.
    pub fn number<T>(&mut self, name: &'static str) -> Result<Option<T>, UrlError>
    where
        T: FromStr<Err = ParseIntError>,
    {
        self.take(name)
            .map(|value| {
                value.parse().map_err(|e: ParseIntError| {
                    let what = match e.kind() {
                        IntErrorKind::PosOverflow => "is too large",
                        IntErrorKind::Empty => "is empty, not a number",
                        _ => "is not a whole number",
                    };
                    self.error(Some(name), format!("{} {what}", shown(name, &value)))
                })
            })
            .transpose()
    }

    /// Parameter `name` as a whole number of at least `min`.
    pub fn number_at_least<T>(&mut self, name: &'static str, min: T) -> Result<Option<T>, UrlError>
    where
        T: FromStr<Err = ParseIntError> + PartialOrd + fmt::Display,
    {
        match self.number::<T>(name)? {
            Some(n) if n < min => {
                Err(self.error(Some(name), format!("must be at least {min}, not {n}")))
            }
            n => Ok(n),
        }
    }

    /// Parameter `name` as a duration in whole milliseconds of at least
    /// `min_ms`.
    pub fn millis(
        &mut self,
        name: &'static str,
        min_ms: u64,
    ) -> Result<Option<Duration>, UrlError> {
        Ok(self
            .number_at_least::<u64>(name, min_ms)?
            .map(Duration::from_millis))
    }

    /// An error about this URL, blaming `parameter` if given.
    pub fn error(&self, parameter: Option<&str>, reason: impl Into<String>) -> UrlError {
        UrlError::new(&self.raw, parameter, reason)
    }

    /// Refuse every parameter not taken, naming them and the ones the
    /// backend takes.
    pub fn finish(self) -> Result<(), UrlError> {
        let Some(((first, _), others)) = self.params.split_first() else {
            return Ok(());
        };
        let mut reason = format!("`{}://` takes no such parameter", self.scheme);
        if !others.is_empty() {
            let others: Vec<String> = others.iter().map(|(n, _)| format!("`{n}`")).collect();
            reason.push_str(&format!(" (nor {})", others.join(", ")));
        }
        if !self.known.is_empty() {
            reason.push_str(&format!("; it takes {}", self.known.join(", ")));
        }
        Err(self.error(Some(first), reason))
    }
}

/// `value` quoted for an error message, unless `name` says it is a secret.
fn shown(name: &str, value: &str) -> String {
    if is_secret(name) {
        "the value".to_owned()
    } else {
        format!("`{value}`")
    }
}

/// Percent-decode `raw` (with `+` as a space in a query), refusing a
/// stray `%` and text that is not UTF-8 once decoded.
fn decode(raw: &str, plus_is_space: bool) -> Result<String, String> {
    let bytes = raw.as_bytes();
    if let Some((at, _)) = raw.match_indices('%').find(|&(at, _)| {
        !(bytes.get(at + 1).is_some_and(u8::is_ascii_hexdigit)
            && bytes.get(at + 2).is_some_and(u8::is_ascii_hexdigit))
    }) {
        return Err(format!(
            "has a `%` at byte {at} that is not followed by two hex digits (write `%25` for a percent sign)"
        ));
    }
    let spaced;
    let raw = if plus_is_space {
        spaced = raw.replace('+', " ");
        spaced.as_str()
    } else {
        raw
    };
    percent_decode_str(raw)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| "is not UTF-8 once percent-decoded".to_owned())
}

/// Whether a query parameter named `name` holds a credential.
fn is_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["secret", "password", "token"]
        .iter()
        .any(|word| name.contains(word))
}

/// `url` with its credentials replaced by `***`: what error messages and
/// `Debug` output may show of a connection URL. The password of the user
/// info goes (`redis://user:hunter2@host/` becomes `redis://user:***@host/`),
/// and so does the value of every query setting whose name holds `secret`,
/// `password` or `token` (`?secret_access_key=...`); text without a scheme
/// is read as a URL after `://`. A URL without them (or of a file,
/// `redb:///path`) comes back as is.
pub fn redact_url(url: &str) -> String {
    // Without a scheme, the whole text may still be `user:password@host`.
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    // User info ends at the last `@` before the query; a path never starts
    // the rest of a URL that has one.
    let query_at = rest.find('?').unwrap_or(rest.len());
    let (before_query, query) = rest.split_at(query_at);
    let before_query = match before_query.rfind('@') {
        Some(at) if !before_query.starts_with('/') => {
            let userinfo = &before_query[..at];
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{user}:***@{}", &before_query[at + 1..])
        }
        _ => before_query.to_owned(),
    };
    let query: Vec<String> = query
        .strip_prefix('?')
        .map(|q| q.split('&').collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_secret(key) => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    if query.is_empty() && query_at == rest.len() {
        format!("{scheme}{before_query}")
    } else {
        format!("{scheme}{before_query}?{}", query.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_passwords() {
        for (url, shown) in [
            (
                "redis://u:hunter2@h:1/?namespace=n",
                "redis://u:***@h:1/?namespace=n",
            ),
            ("rediss://:hunter2@h:1", "rediss://:***@h:1"),
            ("redis://u:pa/ss@w@h:1/x", "redis://u:***@h:1/x"),
            ("redis://h:1/?", "redis://h:1/?"),
            ("redis://h:1/?namespace=a@b", "redis://h:1/?namespace=a@b"),
            ("redb:///tmp/a@b.redb", "redb:///tmp/a@b.redb"),
            ("memory://", "memory://"),
            (
                "s3://b/p?region=r&secret_access_key=hunter2&access_key_id=id",
                "s3://b/p?region=r&secret_access_key=***&access_key_id=id",
            ),
            ("redis://h/?password=hunter2", "redis://h/?password=***"),
            ("u:hunter2@h:1", "u:***@h:1"),
            ("memory", "memory"),
            ("/tmp/a@b", "/tmp/a@b"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
            assert!(!redact_url(url).contains("hunter2"));
        }
    }

    #[test]
    fn one_decoding_rule() {
        let mut url =
            BackendUrl::parse("demo://a+b%2Fc%20d?name=a+b%2Bc%20d&empty=&bare", &["demo"])
                .unwrap();
        // The location keeps `+`; the query makes it a space.
        assert_eq!(url.location().unwrap(), "a+b/c d");
        assert_eq!(url.raw_location(), "a+b%2Fc%20d");
        assert_eq!(url.take("name").as_deref(), Some("a b+c d"));
        assert_eq!(url.take("empty").as_deref(), Some(""));
        assert_eq!(url.take("bare").as_deref(), Some(""));
        url.finish().unwrap();
        assert_eq!(
            BackendUrl::parse("DEMO://x", &["demo"]).unwrap().scheme(),
            "demo"
        );
    }

    #[test]
    fn bad_urls_name_the_parameter() {
        let parse = |url: &str| BackendUrl::parse(url, &["demo"]);
        let error = parse("demo://x?region=%zz").unwrap_err();
        assert_eq!(error.parameter(), Some("region"));
        assert!(error.reason().contains("`%`"), "{error}");
        assert_eq!(
            parse("demo://x?a=%FF").unwrap_err().reason(),
            "is not UTF-8 once percent-decoded"
        );
        let error = parse("demo://x?a=1&a=2").unwrap_err();
        assert_eq!(
            (error.parameter(), error.reason()),
            (Some("a"), "is given twice")
        );
        assert!(parse("demo://100%").unwrap().location().is_err());
        let error = parse("demo://u:hunter2@x/y")
            .unwrap()
            .location()
            .unwrap_err();
        assert!(!error.to_string().contains("hunter2"), "{error}");
        assert_eq!(parse("demo:///a@b").unwrap().location().unwrap(), "/a@b");
        assert_eq!(parse("demo://a%40b").unwrap().location().unwrap(), "a@b");
        assert!(parse("demo:/x").is_err());
        let error = parse("other://x").unwrap_err();
        assert_eq!((error.scheme(), error.parameter()), ("other", None));
        assert!(error.to_string().contains("`demo://`"), "{error}");

        let mut url = parse("demo://x?n=x&big=99999999999&f=maybe&min=0&ms=-1").unwrap();
        for (error, name) in [
            (url.number::<u32>("n").unwrap_err(), "n"),
            (url.number::<u32>("big").unwrap_err(), "big"),
            (url.flag("f").unwrap_err(), "f"),
            (url.number_at_least::<u32>("min", 1).unwrap_err(), "min"),
            (url.millis("ms", 0).unwrap_err(), "ms"),
        ] {
            assert_eq!(error.parameter(), Some(name), "{error}");
            assert!(error.to_string().contains(&format!("parameter `{name}`")));
        }
        assert!(url.number::<u32>("absent").unwrap().is_none());
        url.finish().unwrap();

        let mut url = parse("demo://u:hunter2@x?colour=red&size=1&shape=round").unwrap();
        assert_eq!(url.take("size").as_deref(), Some("1"));
        let error = url.finish().unwrap_err();
        assert_eq!(error.parameter(), Some("colour"));
        let text = error.to_string();
        assert!(
            text.contains("`shape`") && text.contains("takes size"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
        assert_eq!(
            StateBackendError::from(error.clone()).to_string(),
            format!("serialization error: {error}")
        );
    }

    #[test]
    fn secret_values_are_not_echoed() {
        let mut url = BackendUrl::parse("demo://x?secret_key=hunter2", &["demo"]).unwrap();
        let error = url.number::<u32>("secret_key").unwrap_err();
        assert!(!error.to_string().contains("hunter2"), "{error}");
        let url = BackendUrl::parse("demo://x?password=hunter2", &["demo"]).unwrap();
        assert!(!format!("{url:?}").contains("hunter2"));
    }
}
