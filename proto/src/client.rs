//! How every crossbatch client dials a server: `http://` in plaintext, `https://`
//! over TLS (the OS trust store plus `--tls-ca`, optionally with a client
//! certificate), and the API key sent as `authorization: Bearer KEY`.

use std::path::{Path, PathBuf};

use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// A secret from the command line, the environment or a file: never shown by
/// `Debug` or in errors.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// A key usable in an HTTP header: non-empty visible ASCII, no spaces.
    pub fn new(value: &str) -> Result<Self, String> {
        let v = value.trim();
        if v.is_empty() {
            return Err("the API key is empty".into());
        }
        if !v.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the API key must be visible ASCII without spaces".into());
        }
        Ok(Self(v.to_string()))
    }

    /// The key on the first line of `path` (`--api-key-file`).
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--api-key-file {}: {e}", path.display()))?;
        Self::new(text.lines().next().unwrap_or(""))
            .map_err(|e| format!("--api-key-file {}: {e}", path.display()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares in time independent of where the inputs differ.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let mine = self.0.as_bytes();
        let mut diff = mine.len() ^ candidate.len();
        for (i, &b) in mine.iter().enumerate() {
            diff |= usize::from(b ^ candidate.get(i).copied().unwrap_or(!b));
        }
        diff == 0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// `--api-key` as given on the command line or in the environment: an empty value
/// (compose's `${API_KEY:-}`) means no key.
#[derive(Clone)]
pub struct KeyArg(pub Option<Secret>);

impl KeyArg {
    pub fn parse(value: &str) -> Result<Self, String> {
        if value.trim().is_empty() {
            Ok(Self(None))
        } else {
            Secret::new(value).map(|k| Self(Some(k)))
        }
    }
}

impl std::fmt::Debug for KeyArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "KeyArg(<redacted>)"
        } else {
            "KeyArg(None)"
        })
    }
}

/// The key of `--api-key` (a [`KeyArg`]) or else of `--api-key-file`; empty values
/// are unset.
pub fn resolve_key(flag: Option<&KeyArg>, file: Option<&Path>) -> Result<Option<Secret>, String> {
    let file = file.filter(|p| !p.as_os_str().is_empty());
    match (flag.and_then(|k| k.0.clone()), file) {
        (Some(_), Some(_)) => Err("give --api-key or --api-key-file, not both".into()),
        (Some(k), None) => Ok(Some(k)),
        (None, Some(path)) => Secret::from_file(path).map(Some),
        (None, None) => Ok(None),
    }
}

/// Adds `authorization: Bearer KEY` to a call when there is a key.
pub fn authorize<T>(request: &mut tonic::Request<T>, key: Option<&Secret>) {
    if let Some(key) = key
        && let Ok(value) = MetadataValue::try_from(format!("Bearer {}", key.expose()))
    {
        request.metadata_mut().insert("authorization", value);
    }
}

/// TLS settings for a client: a CA to trust beside the OS store, a client
/// certificate for servers that ask for one, the name to check when it differs from
/// the URL's host. Used for every `https://` URL the program dials.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientTls {
    /// Trust this CA (PEM) for https:// targets, besides the system's roots.
    #[arg(long = "tls-ca", env = "CROSSBATCH_TLS_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for servers that require one (mutual TLS).
    #[arg(
        long = "tls-cert",
        env = "CROSSBATCH_TLS_CLIENT_CERT",
        value_name = "FILE",
        requires = "key"
    )]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(
        long = "tls-key",
        env = "CROSSBATCH_TLS_CLIENT_KEY",
        value_name = "FILE",
        requires = "cert"
    )]
    pub key: Option<PathBuf>,
    /// Name to verify in the server's certificate when it differs from the URL's host.
    #[arg(
        long = "tls-domain",
        env = "CROSSBATCH_TLS_DOMAIN",
        value_name = "NAME"
    )]
    pub domain: Option<String>,
}

/// The API key a client sends (`--api-key` or `--api-key-file`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientKey {
    /// Send `authorization: Bearer KEY` on every scoring call (the server's --api-key).
    #[arg(long, env = "CROSSBATCH_API_KEY", hide_env_values = true, value_parser = KeyArg::parse)]
    pub api_key: Option<KeyArg>,
    /// Read the API key from the first line of this file.
    #[arg(long, env = "CROSSBATCH_API_KEY_FILE", value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
}

impl ClientKey {
    pub fn secret(&self) -> Result<Option<Secret>, String> {
        resolve_key(self.api_key.as_ref(), self.api_key_file.as_deref())
    }
}

impl ClientTls {
    fn is_set(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some() || self.domain.is_some()
    }
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
}

/// An endpoint for `url`: TLS for `https://`, plaintext for `http://`. TLS settings
/// with an `http://` URL are an error rather than silently unused.
pub fn endpoint(url: &str, tls: &ClientTls) -> Result<Endpoint, String> {
    let endpoint = Endpoint::from_shared(url.to_string()).map_err(|e| format!("{url}: {e}"))?;
    let scheme = endpoint.uri().scheme_str().unwrap_or("");
    match scheme {
        "https" => {}
        "http" if tls.is_set() => {
            return Err(format!(
                "{url} is plaintext (http://); the TLS options (--tls-ca, --tls-cert, \
                 --tls-key, --tls-domain) need an https:// target"
            ));
        }
        "http" => return Ok(endpoint),
        other => return Err(format!("{url}: scheme {other:?}; use http:// or https://")),
    }
    let mut config = ClientTlsConfig::new().with_native_roots();
    if let Some(ca) = &tls.ca {
        config = config.ca_certificate(Certificate::from_pem(read("--tls-ca", ca)?));
    }
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            config = config.identity(Identity::from_pem(
                read("--tls-cert", cert)?,
                read("--tls-key", key)?,
            ));
        }
        (None, None) => {}
        _ => return Err("--tls-cert and --tls-key go together".into()),
    }
    if let Some(domain) = &tls.domain {
        config = config.domain_name(domain.clone());
    }
    endpoint
        .tls_config(config)
        .map_err(|e| format!("{url}: TLS: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_never_printed_and_compares_exactly() {
        let s = Secret::new(" k3y-abc ").unwrap();
        assert_eq!(s.expose(), "k3y-abc");
        assert!(!format!("{s:?}").contains("k3y"));
        assert!(s.matches(b"k3y-abc"));
        assert!(!s.matches(b"k3y-abd"));
        assert!(!s.matches(b"k3y-ab"));
        assert!(!s.matches(b"k3y-abcd"));
        assert!(!s.matches(b""));
        assert!(Secret::new("").is_err());
        assert!(Secret::new("two words").is_err());
    }

    #[test]
    fn key_from_file_or_flag() {
        let dir = std::env::temp_dir().join(format!("crossbatch-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key");
        std::fs::write(&file, "from-file\n").unwrap();
        let flag = |v: &str| KeyArg::parse(v).unwrap();
        let got = resolve_key(None, Some(&file)).unwrap().unwrap();
        assert_eq!(got.expose(), "from-file");
        let got = resolve_key(Some(&flag("flag")), None).unwrap().unwrap();
        assert_eq!(got.expose(), "flag");
        assert!(resolve_key(Some(&flag("a")), Some(&file)).is_err());
        let missing = resolve_key(None, Some(&dir.join("nope"))).unwrap_err();
        assert!(missing.contains("--api-key-file"), "{missing}");
        assert!(resolve_key(None, None).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tls_options_need_https() {
        let tls = ClientTls {
            ca: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let err = endpoint("http://127.0.0.1:1", &tls).unwrap_err();
        assert!(err.contains("https://"), "{err}");
        let err = endpoint("https://127.0.0.1:1", &tls).unwrap_err();
        assert!(err.contains("--tls-ca /nonexistent/ca.pem"), "{err}");
        assert!(endpoint("http://127.0.0.1:1", &ClientTls::default()).is_ok());
        assert!(endpoint("ftp://127.0.0.1:1", &ClientTls::default()).is_err());
    }
}
