//! How the server and the drivers reach the collector's port (OTLP export and
//! coordination) when the collector takes an API key or serves TLS. Read from the
//! environment, under the names the collector itself reads its key from, so one
//! setting in a compose file or a shell covers every process of a run:
//!
//! - `CROSSBATCH_COLLECTOR_API_KEY` or `CROSSBATCH_COLLECTOR_API_KEY_FILE`: sent as
//!   `authorization: Bearer KEY` on every export and coordination call;
//! - `CROSSBATCH_COLLECTOR_TLS_CA`: a CA (PEM) to trust, beside the system's roots,
//!   for an `https://` collector URL.

use std::path::PathBuf;
use std::time::Duration;

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::client::{ClientTls, KeyArg, Secret, endpoint, resolve_key};

pub const KEY_ENV: &str = "CROSSBATCH_COLLECTOR_API_KEY";
pub const KEY_FILE_ENV: &str = "CROSSBATCH_COLLECTOR_API_KEY_FILE";
pub const CA_ENV: &str = "CROSSBATCH_COLLECTOR_TLS_CA";

/// The key and TLS settings for dialling the collector.
#[derive(Debug, Clone, Default)]
pub struct CollectorAccess {
    key: Option<Secret>,
    tls: ClientTls,
}

impl CollectorAccess {
    /// From the process environment (unset or empty variables: no key, system roots).
    pub fn from_env() -> Result<Self, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Self::from_values(var(KEY_ENV), var(KEY_FILE_ENV), var(CA_ENV))
    }

    fn from_values(
        key: Option<String>,
        key_file: Option<String>,
        ca: Option<String>,
    ) -> Result<Self, String> {
        let key = key
            .as_deref()
            .map(KeyArg::parse)
            .transpose()
            .map_err(|e| format!("{KEY_ENV}: {e}"))?;
        let key_file = key_file.map(PathBuf::from);
        let key = resolve_key(key.as_ref(), key_file.as_deref())
            .map_err(|e| format!("{KEY_ENV}/{KEY_FILE_ENV}: {e}"))?;
        Ok(Self {
            key,
            tls: ClientTls {
                ca: ca.map(PathBuf::from),
                ..Default::default()
            },
        })
    }

    /// With `key` sent on every call (tests, and callers with a key of their own).
    pub fn with_key(mut self, key: Option<Secret>) -> Self {
        self.key = key;
        self
    }

    /// With `ca` trusted for `https://` URLs.
    pub fn with_ca(mut self, ca: Option<PathBuf>) -> Self {
        self.tls.ca = ca;
        self
    }

    /// The endpoint of `url`: plaintext for `http://`, TLS for `https://`.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, String> {
        let tls = if url.starts_with("https://") {
            self.tls.clone()
        } else {
            // A CA for the collector is not an error with a plaintext URL: the same
            // environment may serve an https:// collector elsewhere.
            ClientTls::default()
        };
        endpoint(url, &tls)
    }

    /// A channel to `url` that connects on first use; each call times out after
    /// `timeout`.
    pub fn channel(&self, url: &str, timeout: Duration) -> Result<Channel, String> {
        Ok(self.endpoint(url)?.timeout(timeout).connect_lazy())
    }

    /// The headers every call to the collector carries: the API key, if any.
    pub fn metadata(&self) -> MetadataMap {
        let mut m = MetadataMap::new();
        if let Some(key) = &self.key
            && let Ok(v) = MetadataValue::try_from(format!("Bearer {}", key.expose()))
        {
            m.insert("authorization", v);
        }
        m
    }

    /// Adds the API key to `request`, if there is one.
    pub fn authorize<T>(&self, request: &mut tonic::Request<T>) {
        crate::client::authorize(request, self.key.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_from_value_or_file_and_never_both() {
        let none = CollectorAccess::from_values(None, None, None).expect("empty");
        assert!(none.metadata().is_empty());
        let keyed = CollectorAccess::from_values(Some("k3y".into()), None, None).expect("key");
        assert_eq!(
            keyed
                .metadata()
                .get("authorization")
                .map(|v| v.to_str().ok()),
            Some(Some("Bearer k3y"))
        );
        let both = CollectorAccess::from_values(Some("a".into()), Some("/nope".into()), None);
        assert!(both.unwrap_err().contains("not both"));
        let missing = CollectorAccess::from_values(None, Some("/nonexistent/key".into()), None);
        assert!(missing.unwrap_err().contains("/nonexistent/key"));
    }

    #[tokio::test]
    async fn plaintext_and_tls_channels() {
        let with_ca = CollectorAccess::default().with_ca(Some("/nonexistent/ca.pem".into()));
        assert!(
            with_ca
                .channel("http://127.0.0.1:1", Duration::from_secs(1))
                .is_ok()
        );
        let err = with_ca
            .channel("https://127.0.0.1:1", Duration::from_secs(1))
            .unwrap_err();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        assert!(
            CollectorAccess::default()
                .channel("ftp://x", Duration::from_secs(1))
                .is_err()
        );
    }
}
