//! What `--target` names: one or more server URLs (`http://host:port`,
//! `https://host:port`) and DNS names (`dns:///host:port`) whose every address is a
//! replica, re-resolved while the run goes on.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

/// One item of `--target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A server URL, dialled as it is (one endpoint).
    Url(String),
    /// Every address the name resolves to is an endpoint; TLS when any `--tls-*`
    /// option is given, verifying `host` (or `--tls-domain`).
    Dns { host: String, port: u16 },
}

impl Target {
    /// The endpoint key of a URL target: its authority, as the summary shows it.
    pub fn url_key(url: &str) -> String {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        rest.split('/').next().unwrap_or(rest).to_string()
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Url(u) => f.write_str(u),
            Target::Dns { host, port } => write!(f, "dns:///{host}:{port}"),
        }
    }
}

/// Parses a comma-separated `--target` list.
pub fn parse_targets(list: &str) -> Result<Vec<Target>, String> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(format!("--target {list:?} has an empty item"));
        }
        let target = if let Some(rest) = item.strip_prefix("dns:") {
            // gRPC's naming: dns:///host:port (an empty authority) or dns:host:port.
            let hostport = rest.strip_prefix("///").unwrap_or(rest);
            if hostport.starts_with('/') || hostport.contains('/') {
                return Err(format!(
                    "--target {item}: a DNS server in the name is not supported; use dns:///host:port"
                ));
            }
            let (host, port) = hostport.rsplit_once(':').ok_or_else(|| {
                format!("--target {item}: give the port, as in dns:///server:50051")
            })?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() {
                return Err(format!("--target {item}: the host name is empty"));
            }
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("--target {item}: {port:?} is not a port"))?;
            Target::Dns {
                host: host.to_string(),
                port,
            }
        } else if item.starts_with("http://") || item.starts_with("https://") {
            Target::Url(item.to_string())
        } else {
            return Err(format!(
                "--target {item}: use http://host:port, https://host:port or dns:///host:port"
            ));
        };
        if !out.contains(&target) {
            out.push(target);
        }
    }
    Ok(out)
}

/// The future a [`Resolver`] returns.
pub type Resolving = Pin<Box<dyn Future<Output = Result<Vec<SocketAddr>, String>> + Send>>;

/// How a `dns:` target's name becomes addresses: the system's resolver, or one a test
/// controls (replicas that come and go without touching DNS).
#[derive(Clone)]
pub struct Resolver(Arc<dyn Fn(String, u16) -> Resolving + Send + Sync>);

impl Resolver {
    pub fn new(f: impl Fn(String, u16) -> Resolving + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let mut addrs = (self.0)(host.to_string(), port).await?;
        addrs.sort();
        addrs.dedup();
        if addrs.is_empty() {
            return Err(format!("{host} resolves to no address"));
        }
        Ok(addrs)
    }
}

impl Default for Resolver {
    /// The system's resolver (getaddrinfo, as `tokio::net::lookup_host`).
    fn default() -> Self {
        Self::new(|host, port| Box::pin(async move { resolve(&host, port).await }))
    }
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

/// Every address of `host:port`, sorted (a stable order for round-robin).
pub async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("resolving {host}: {e}"))?
        .collect();
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(format!("{host} resolves to no address"));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_urls_and_names() {
        let t = parse_targets("http://a:1, https://b:2,dns:///server:50051,dns:x:7").unwrap();
        assert_eq!(
            t,
            vec![
                Target::Url("http://a:1".into()),
                Target::Url("https://b:2".into()),
                Target::Dns {
                    host: "server".into(),
                    port: 50051
                },
                Target::Dns {
                    host: "x".into(),
                    port: 7
                },
            ]
        );
        assert_eq!(t[2].to_string(), "dns:///server:50051");
        assert_eq!(parse_targets("http://a:1,http://a:1").unwrap().len(), 1);
        assert_eq!(Target::url_key("https://h:9/x"), "h:9");
    }

    #[test]
    fn bad_lists_say_what_is_wrong() {
        for (bad, says) in [
            ("", "empty item"),
            ("http://a:1,", "empty item"),
            ("a:1", "use http://"),
            ("dns:///server", "give the port"),
            ("dns:///server:http", "not a port"),
            ("dns:///server:0", "not a port"),
            ("dns:///:80", "host name is empty"),
            ("dns://8.8.8.8/server:80", "DNS server"),
        ] {
            let e = parse_targets(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn localhost_resolves_to_loopback() {
        let addrs = resolve("localhost", 50051).await.unwrap();
        assert!(
            addrs
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 50051)
        );
    }
}
