//! The driver's view of many servers: every endpoint the targets name, kept current
//! (names re-resolved every `--resolve-s`), each call sent to one endpoint in
//! rotation, and a call refused by an unavailable endpoint retried on another.
//!
//! Balancing is per call, in the client: one HTTP/2 connection per endpoint, so
//! nothing that balances connections (DNS round robin, kube-proxy) can pin every
//! call of a driver to one replica.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crossbatch_proto::StatusCode;
use crossbatch_proto::client::ClientTls;
use crossbatch_proto::v1::cross_encoder_client::CrossEncoderClient;
use crossbatch_proto::v1::{ScoreRequest, ScoreResponse};
use tokio::sync::Notify;
use tonic::metadata::MetadataMap;

use super::member::{InFlight, Member, Phase};
use super::targets::{Resolver, Target};
use crate::workload::SplitMix;

/// How long a run waits for endpoints that do not answer at all, once another serves.
pub const UNREACHABLE_GRACE: Duration = Duration::from_secs(5);

/// How the driver spreads its calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Balance {
    /// Power of two choices: of two endpoints picked at random, the one with fewer
    /// calls in flight.
    P2c,
    /// Each endpoint in turn.
    RoundRobin,
    /// One endpoint, one connection, no failover: a naive client (the control case).
    Pinned,
}

impl Balance {
    pub fn name(self) -> &'static str {
        match self {
            Balance::P2c => "p2c",
            Balance::RoundRobin => "round-robin",
            Balance::Pinned => "pinned",
        }
    }
}

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub balance: Balance,
    /// Attempts after the first, each on another endpoint.
    pub retries: usize,
    /// Names re-resolved, and serving endpoints' health re-checked, this often.
    pub resolve_every: Duration,
    /// Seeds the random picks (p2c).
    pub seed: u64,
    /// Turns `dns:` targets into addresses (default: the system's resolver).
    pub resolver: Resolver,
}

/// A failed attempt of a call: where, and what it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedAttempt {
    pub endpoint: String,
    pub code: StatusCode,
}

/// How one call went, over all its attempts.
pub struct CallOutcome {
    pub result: Result<ScoreResponse, tonic::Status>,
    /// The endpoint of the last attempt ("" when none could be tried).
    pub endpoint: String,
    /// The replica that gave the final answer (its `crossbatch-instance` header).
    pub instance: String,
    pub attempts: u32,
    /// Attempts that failed and were retried elsewhere.
    pub failed: Vec<FailedAttempt>,
}

struct Shared {
    cfg: PoolConfig,
    tls: ClientTls,
    targets: Vec<Target>,
    /// Endpoints now known, sorted by key.
    members: RwLock<Vec<Arc<Member>>>,
    /// Every endpoint ever known (records keep a replica that vanished).
    seen: Mutex<BTreeMap<String, Arc<Member>>>,
    /// Signalled when an endpoint comes into rotation.
    into_rotation: Notify,
    next: AtomicUsize,
    rng: Mutex<SplitMix>,
    /// `pinned`: the key of its one endpoint, fixed at the first pick.
    pinned: Mutex<Option<String>>,
    /// Why the last resolution failed, if it did.
    resolve_error: Mutex<Option<String>>,
    /// Each DNS target's addresses at its last good resolution (kept through a failed
    /// one: a DNS blip must not empty the pool).
    last_addrs: Mutex<HashMap<String, Vec<String>>>,
}

/// The endpoints of a run; cheap to clone.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
    /// Ends the resolver and probe loops when the last clone is dropped.
    _alive: Arc<tokio::sync::watch::Sender<()>>,
}

/// One endpoint's figures at a moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSnapshot {
    pub endpoint: String,
    pub instance: String,
    pub ejections: usize,
    pub in_rotation: bool,
    /// Calls in flight on it when the snapshot was taken.
    pub in_flight: usize,
    pub last_ok_unix_nano: u64,
}

/// Whether a failed attempt says the endpoint, not the call, is at fault: UNAVAILABLE
/// from the server, or a failure of the transport itself (a status that carries a
/// local error source: connect refused, connection reset, GOAWAY). Such a call is safe
/// to send elsewhere: Score and Rerank are pure.
pub fn endpoint_failed(status: &tonic::Status) -> bool {
    use tonic::Code;
    match status.code() {
        Code::Unavailable => true,
        // The server's own answers carry no source; a local deadline is not the
        // endpoint's fault.
        Code::DeadlineExceeded | Code::Ok => false,
        _ => std::error::Error::source(status).is_some(),
    }
}

/// One server already connected, as a pool (the offline `bench-serve` and tests
/// that dial one server themselves): always in rotation, never re-resolved.
impl From<tonic::transport::Channel> for Pool {
    fn from(channel: tonic::transport::Channel) -> Self {
        let (alive, _) = tokio::sync::watch::channel(());
        let member = Arc::new(Member::new("server".into(), channel));
        member.serving();
        let shared = Arc::new(Shared {
            cfg: PoolConfig {
                balance: Balance::Pinned,
                retries: 0,
                resolve_every: Duration::from_secs(2),
                seed: 0,
                resolver: Resolver::default(),
            },
            tls: ClientTls::default(),
            targets: Vec::new(),
            members: RwLock::new(vec![Arc::clone(&member)]),
            seen: Mutex::new(BTreeMap::from([(member.key.clone(), Arc::clone(&member))])),
            into_rotation: Notify::new(),
            next: AtomicUsize::new(0),
            rng: Mutex::new(SplitMix::new(0)),
            pinned: Mutex::new(None),
            resolve_error: Mutex::new(None),
            last_addrs: Mutex::new(HashMap::new()),
        });
        Self {
            shared,
            _alive: Arc::new(alive),
        }
    }
}

impl Pool {
    /// Starts resolving and checking `targets`; must run inside a tokio runtime.
    /// Fails only on settings that can never work (bad URLs, TLS files).
    pub async fn start(
        targets: Vec<Target>,
        tls: ClientTls,
        cfg: PoolConfig,
    ) -> Result<Self, String> {
        if targets.is_empty() {
            return Err("--target names no server".into());
        }
        let (alive, dead) = tokio::sync::watch::channel(());
        let shared = Arc::new(Shared {
            rng: Mutex::new(SplitMix::new(cfg.seed ^ 0x9a11_ba1a_9ce5)),
            cfg,
            tls,
            targets,
            members: RwLock::new(Vec::new()),
            seen: Mutex::new(BTreeMap::new()),
            into_rotation: Notify::new(),
            next: AtomicUsize::new(0),
            pinned: Mutex::new(None),
            resolve_error: Mutex::new(None),
            last_addrs: Mutex::new(HashMap::new()),
        });
        // URLs and TLS files are checked now: a typo fails at once, not after the
        // connect timeout.
        for t in &shared.targets {
            match t {
                Target::Url(u) => {
                    crossbatch_proto::client::endpoint(u, &shared.tls)?;
                }
                Target::Dns { host, port } if shared.tls_on() => {
                    let mut tls = shared.tls.clone();
                    tls.domain.get_or_insert_with(|| host.clone());
                    crossbatch_proto::client::endpoint(&format!("https://{host}:{port}"), &tls)?;
                }
                Target::Dns { .. } => {}
            }
        }
        // A name that does not resolve yet (a replica still starting) is not fatal:
        // `wait_ready` waits for it, and says why it gave up.
        if let Err(e) = shared.refresh(&dead).await {
            tracing::warn!("{e}");
        }
        let resolver = {
            let shared = Arc::clone(&shared);
            let mut dead = dead.clone();
            async move {
                let every = shared.cfg.resolve_every;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(every) => {}
                        _ = dead.changed() => return,
                    }
                    if let Err(e) = shared.refresh(&dead).await {
                        tracing::warn!("{e}");
                    }
                }
            }
        };
        if shared
            .targets
            .iter()
            .any(|t| matches!(t, Target::Dns { .. }))
        {
            tokio::spawn(resolver);
        }
        Ok(Self {
            shared,
            _alive: Arc::new(alive),
        })
    }

    pub fn balance(&self) -> Balance {
        self.shared.cfg.balance
    }

    fn members(&self) -> Vec<Arc<Member>> {
        self.shared
            .members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until every known endpoint is SERVING, up to `timeout`; then goes on
    /// with those that are (warning about the rest), or fails when none is. Once one
    /// serves, an endpoint that does not answer at all (nothing listening, no route)
    /// holds the run up for [`UNREACHABLE_GRACE`] only; one that answers NOT_SERVING
    /// (still loading its model) is waited for up to `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let started = Instant::now();
        let until = started + timeout;
        loop {
            let notified = self.shared.into_rotation.notified();
            let members = self.members();
            let serving = members
                .iter()
                .filter(|m| m.phase() == Phase::Serving)
                .count();
            if !members.is_empty() && serving == members.len() {
                return Ok(());
            }
            let now = Instant::now();
            let only_unreachable_left = serving > 0
                && now >= started + UNREACHABLE_GRACE
                && members
                    .iter()
                    .all(|m| m.phase() == Phase::Serving || !m.reachable());
            if now >= until || only_unreachable_left {
                let waiting: Vec<String> = members
                    .iter()
                    .filter(|m| m.phase() != Phase::Serving)
                    .map(|m| format!("{} ({})", m.key, m.last_error()))
                    .collect();
                if serving == 0 {
                    let targets: Vec<String> =
                        self.shared.targets.iter().map(|t| t.to_string()).collect();
                    return Err(format!(
                        "no server at {} SERVING after {timeout:.0?}: {}",
                        targets.join(","),
                        match (waiting.is_empty(), self.shared.resolve_error()) {
                            (true, Some(e)) => e,
                            (true, None) => "no address".to_string(),
                            (false, _) => waiting.join("; "),
                        }
                    ));
                }
                tracing::warn!(
                    "going on with {serving} of {} endpoints; not SERVING: {}",
                    members.len(),
                    waiting.join("; ")
                );
                return Ok(());
            }
            // Also wakes for endpoints that a re-resolution adds.
            let _ =
                tokio::time::timeout((until - now).min(Duration::from_millis(250)), notified).await;
        }
    }

    /// A channel to some SERVING endpoint (for `Info`).
    pub fn any_serving(&self) -> Option<Arc<Member>> {
        self.members()
            .into_iter()
            .find(|m| m.phase() == Phase::Serving)
    }

    /// Every endpoint known during the run, in key order.
    pub fn snapshot(&self) -> Vec<MemberSnapshot> {
        let live: Vec<String> = self.members().iter().map(|m| m.key.clone()).collect();
        self.shared
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|m| MemberSnapshot {
                endpoint: m.key.clone(),
                instance: m.instance(),
                ejections: m.ejections(),
                in_rotation: m.phase() == Phase::Serving && live.contains(&m.key),
                in_flight: m.in_flight(),
                last_ok_unix_nano: m.last_ok_unix_nano(),
            })
            .collect()
    }

    /// The endpoint for a call's next attempt, none of `tried`.
    fn pick(&self, tried: &[String]) -> Option<Arc<Member>> {
        let members = self.members();
        if self.shared.cfg.balance == Balance::Pinned {
            let mut pinned = self.shared.pinned.lock().unwrap_or_else(|p| p.into_inner());
            if pinned.is_none() {
                // The first endpoint in rotation, for good.
                *pinned = members
                    .iter()
                    .find(|m| m.phase() == Phase::Serving)
                    .map(|m| m.key.clone());
            }
            let key = pinned.as_deref()?;
            return members
                .iter()
                .find(|m| m.key == key && !tried.contains(&m.key))
                .cloned();
        }
        let serving: Vec<&Arc<Member>> = members
            .iter()
            .filter(|m| m.phase() == Phase::Serving && !tried.contains(&m.key))
            .collect();
        let n = serving.len();
        if n == 0 {
            return None;
        }
        let i = match self.shared.cfg.balance {
            Balance::RoundRobin => self.shared.next.fetch_add(1, Ordering::Relaxed) % n,
            _ if n == 1 => 0,
            _ => {
                let (a, b) = {
                    let mut rng = self.shared.rng.lock().unwrap_or_else(|p| p.into_inner());
                    let a = rng.range(0, n - 1);
                    // A second index, distinct from the first.
                    let b = (a + rng.range(1, n - 1)) % n;
                    (a, b)
                };
                if serving[b].in_flight() < serving[a].in_flight() {
                    b
                } else {
                    a
                }
            }
        };
        Some(Arc::clone(serving[i]))
    }

    /// `pinned` whose one endpoint is no longer resolved: nothing to wait for.
    fn pinned_gone(&self) -> bool {
        if self.shared.cfg.balance != Balance::Pinned {
            return false;
        }
        let pinned = self
            .shared
            .pinned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        pinned.is_some_and(|k| !self.members().iter().any(|m| m.key == k))
    }

    /// Waits up to `limit` for an endpoint outside `tried` to come into rotation.
    async fn pick_waiting(&self, tried: &[String], limit: Duration) -> Option<Arc<Member>> {
        let until = Instant::now() + limit;
        loop {
            let notified = self.shared.into_rotation.notified();
            if let Some(m) = self.pick(tried) {
                return Some(m);
            }
            if self.pinned_gone() {
                return None;
            }
            let now = Instant::now();
            if now >= until {
                return None;
            }
            let _ =
                tokio::time::timeout((until - now).min(Duration::from_millis(100)), notified).await;
        }
    }

    /// One Score call: an endpoint picked per attempt; an attempt that fails because
    /// of its endpoint (see [`endpoint_failed`]) ejects it and is retried on another,
    /// up to `--retries` times and within `deadline` (from the call's first attempt).
    pub async fn score(
        &self,
        message: ScoreRequest,
        metadata: MetadataMap,
        deadline: Option<Duration>,
    ) -> CallOutcome {
        // With no endpoint in rotation (all ejected, none serving yet), a call waits
        // this long for one before it fails: bounded, so nothing hangs.
        const NO_ENDPOINT_WAIT: Duration = Duration::from_secs(10);
        // With no deadline an attempt still ends: a replica whose handler hangs keeps
        // answering keep-alive pings, so nothing else would end the call.
        const NO_DEADLINE_BOUND: Duration = Duration::from_secs(120);
        let first = Instant::now();
        let end = deadline.map(|d| first + d);
        let mut tried: Vec<String> = Vec::new();
        let mut failed = Vec::new();
        let max_attempts = if self.balance() == Balance::Pinned {
            1
        } else {
            1 + self.shared.cfg.retries
        };
        let mut last: Option<(tonic::Status, String, String)> = None;
        for attempt in 1..=max_attempts as u32 {
            let left = end.map(|e| e.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                break;
            }
            // A retry waits for an endpoint only while some endpoint it has not tried
            // exists (it may come back into rotation); none can appear otherwise
            // before the next resolution.
            let wait = if attempt == 1 || self.members().iter().any(|m| !tried.contains(&m.key)) {
                left.map_or(NO_ENDPOINT_WAIT, |l| l.min(NO_ENDPOINT_WAIT))
            } else {
                Duration::ZERO
            };
            let Some(member) = self.pick_waiting(&tried, wait).await else {
                break;
            };
            // The wait took some of the deadline.
            let left = end.map(|e| e.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                break;
            }
            let guard = InFlight::new(member);
            let m = &guard.0;
            let mut request = tonic::Request::new(message.clone());
            *request.metadata_mut() = metadata.clone();
            if let Some(l) = left {
                request.set_timeout(l);
            }
            let mut client =
                CrossEncoderClient::new(m.channel.clone()).max_decoding_message_size(usize::MAX);
            let call = client.score(request);
            // The server enforces the deadline it is sent; this bounds a peer that
            // stopped answering altogether.
            let result = match tokio::time::timeout(left.unwrap_or(NO_DEADLINE_BOUND), call).await {
                Ok(r) => r,
                Err(_) if left.is_some() => Err(tonic::Status::deadline_exceeded(format!(
                    "no answer from {} within the call's deadline",
                    m.key
                ))),
                Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                    "no answer from {} in {NO_DEADLINE_BOUND:?} (no --deadline-ms given)",
                    m.key
                ))),
            };
            let header = |md: &MetadataMap| {
                md.get(crossbatch_proto::attrs::INSTANCE_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            match result {
                Ok(response) => {
                    let instance = header(response.metadata()).unwrap_or_default();
                    m.set_instance(&instance);
                    m.answered_ok();
                    return CallOutcome {
                        result: Ok(response.into_inner()),
                        endpoint: m.key.clone(),
                        instance,
                        attempts: attempt,
                        failed,
                    };
                }
                Err(status) => {
                    let instance = header(status.metadata());
                    if let Some(i) = &instance {
                        m.set_instance(i);
                    }
                    if !endpoint_failed(&status) {
                        return CallOutcome {
                            result: Err(status),
                            endpoint: m.key.clone(),
                            instance: instance.unwrap_or_default(),
                            attempts: attempt,
                            failed,
                        };
                    }
                    // Pinned has no rotation to take it out of: a naive client.
                    if self.balance() != Balance::Pinned
                        && m.eject(format!("{}: {}", status.code(), status.message()))
                    {
                        tracing::info!(endpoint = %m.key, code = ?status.code(), "endpoint ejected");
                    }
                    tried.push(m.key.clone());
                    failed.push(FailedAttempt {
                        endpoint: m.key.clone(),
                        code: status.code().into(),
                    });
                    last = Some((status, m.key.clone(), instance.unwrap_or_default()));
                }
            }
        }
        // Out of attempts, time or endpoints. The last failed attempt is the call's
        // answer, not a retry.
        let attempts = tried.len() as u32;
        match last {
            Some((status, endpoint, instance)) => {
                failed.pop();
                CallOutcome {
                    result: Err(status),
                    endpoint,
                    instance,
                    attempts,
                    failed,
                }
            }
            None => CallOutcome {
                result: Err(match end {
                    Some(e) if Instant::now() >= e => tonic::Status::deadline_exceeded(
                        "the call's deadline passed with no endpoint in rotation",
                    ),
                    _ => tonic::Status::unavailable(format!(
                        "no endpoint in rotation ({})",
                        self.describe()
                    )),
                }),
                endpoint: String::new(),
                instance: String::new(),
                attempts,
                failed,
            },
        }
    }

    /// Each endpoint and its state, for error messages.
    fn describe(&self) -> String {
        let members = self.members();
        if members.is_empty() {
            return "no address".into();
        }
        members
            .iter()
            .map(|m| match m.phase() {
                Phase::Serving => format!("{} serving", m.key),
                p => format!("{} {:?}: {}", m.key, p, m.last_error()).to_lowercase(),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl Shared {
    /// Brings the endpoint set in line with the targets: new addresses join (and are
    /// checked before they get calls), vanished ones leave. A name that fails to
    /// resolve keeps its last addresses: a DNS blip must not empty the pool.
    async fn refresh(
        self: &Arc<Self>,
        dead: &tokio::sync::watch::Receiver<()>,
    ) -> Result<(), String> {
        let mut wanted: Vec<(String, String, Option<String>)> = Vec::new();
        let mut errors = Vec::new();
        let current: Vec<String> = self
            .members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|m| m.key.clone())
            .collect();
        for t in &self.targets {
            match t {
                Target::Url(u) => wanted.push((Target::url_key(u), u.clone(), None)),
                Target::Dns { host, port } => match self.cfg.resolver.resolve(host, *port).await {
                    Ok(addrs) => {
                        let tls = self.tls_on();
                        self.last_addrs
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(t.to_string(), addrs.iter().map(|a| a.to_string()).collect());
                        for a in addrs {
                            let scheme = if tls { "https" } else { "http" };
                            wanted.push((
                                a.to_string(),
                                format!("{scheme}://{a}"),
                                Some(host.clone()),
                            ));
                        }
                    }
                    Err(e) => {
                        errors.push(e);
                        // Keep what this name had at its last resolution.
                        let last = self
                            .last_addrs
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get(&t.to_string())
                            .cloned()
                            .unwrap_or_default();
                        for k in last.into_iter().filter(|k| current.contains(k)) {
                            if !wanted.iter().any(|(w, _, _)| *w == k) {
                                wanted.push((k, String::new(), Some(host.clone())));
                            }
                        }
                    }
                },
            }
        }
        let mut members = self.members.write().unwrap_or_else(|p| p.into_inner());
        let mut next = Vec::with_capacity(wanted.len());
        for (key, url, name) in wanted {
            if let Some(m) = members.iter().find(|m| m.key == key) {
                if !next.iter().any(|n: &Arc<Member>| n.key == key) {
                    next.push(Arc::clone(m));
                }
                continue;
            }
            if url.is_empty() || next.iter().any(|n: &Arc<Member>| n.key == key) {
                continue;
            }
            let channel = match self.channel(&url, name) {
                Ok(c) => c,
                Err(e) => {
                    errors.push(format!("{key}: {e}"));
                    continue;
                }
            };
            let member = Arc::new(Member::new(key.clone(), channel));
            tracing::info!(endpoint = %key, "endpoint added");
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            // An address that left and came back keeps its counts (the step records
            // difference them).
            if let Some(earlier) = seen.get(&key) {
                member.inherit(earlier);
            }
            seen.insert(key, Arc::clone(&member));
            drop(seen);
            tokio::spawn(probe(Arc::clone(self), Arc::clone(&member), dead.clone()));
            next.push(member);
        }
        for gone in members
            .iter()
            .filter(|m| !next.iter().any(|n| n.key == m.key))
        {
            tracing::info!(endpoint = %gone.key, "endpoint removed (no longer resolved)");
            gone.remove();
        }
        next.sort_by(|a, b| a.key.cmp(&b.key));
        *members = next;
        drop(members);
        self.into_rotation.notify_waiters();
        let error = (!errors.is_empty()).then(|| errors.join("; "));
        *self.resolve_error.lock().unwrap_or_else(|p| p.into_inner()) = error.clone();
        error.map_or(Ok(()), Err)
    }

    fn resolve_error(&self) -> Option<String> {
        self.resolve_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn tls_on(&self) -> bool {
        let t = &self.tls;
        t.ca.is_some() || t.cert.is_some() || t.key.is_some() || t.domain.is_some()
    }

    /// A lazily connected channel to `url`; TLS to an address resolved from `name`
    /// verifies `name` (unless --tls-domain says otherwise). Keep-alive pings find a
    /// peer that vanished without closing its connection.
    fn channel(
        &self,
        url: &str,
        name: Option<String>,
    ) -> Result<tonic::transport::Channel, String> {
        let mut tls = self.tls.clone();
        if self.tls_on() && tls.domain.is_none() {
            tls.domain = name;
        }
        let endpoint = crossbatch_proto::client::endpoint(url, &tls)?
            .connect_timeout(Duration::from_secs(2))
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        Ok(endpoint.connect_lazy())
    }
}

/// An endpoint's health loop: while out of rotation, checks after its back-off and
/// takes it in on SERVING; while in, re-checks every `resolve_every`, so a replica
/// that starts draining (NOT_SERVING) stops getting calls.
async fn probe(
    shared: Arc<Shared>,
    member: Arc<Member>,
    mut dead: tokio::sync::watch::Receiver<()>,
) {
    const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
    loop {
        if member.is_removed() {
            return;
        }
        let wait = member.next_check_in(shared.cfg.resolve_every);
        if !wait.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                // Ejected or removed: look again at what to wait for (an ejected
                // endpoint waits out its back-off before it is checked).
                _ = member.wake.notified() => continue,
                _ = dead.changed() => return,
            }
        }
        // A call may eject the endpoint while this check is out; its answer is then
        // stale and must not put the endpoint straight back.
        let generation = member.generation();
        let check = tokio::time::timeout(
            CHECK_TIMEOUT,
            crossbatch_proto::lifecycle::not_serving(member.channel.clone()),
        )
        .await;
        match check {
            Ok(Ok(None)) => {
                if member.serving_since(generation) {
                    tracing::info!(endpoint = %member.key, "endpoint in rotation (SERVING)");
                    shared.into_rotation.notify_waiters();
                }
            }
            Ok(Ok(Some(status))) => {
                member.check_failed(format!("health {}", status.as_str_name()), true);
            }
            Ok(Err(e)) => member.check_failed(format!("{}: {}", e.code(), e.message()), false),
            Err(_) => member.check_failed(format!("no health answer in {CHECK_TIMEOUT:?}"), false),
        }
    }
}
