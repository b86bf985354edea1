//! One endpoint of the pool: its channel, calls in flight, and whether it is in
//! rotation. Its probe loop takes it in when its health check says SERVING and
//! out (with back-off) when calls or checks fail.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tonic::transport::Channel;

/// Where an endpoint stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not yet SERVING (new, or warming up): no calls.
    Probing,
    /// In rotation.
    Serving,
    /// Taken out after a failure; back when its health check says SERVING.
    Ejected,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// Wait before the next health check while out of rotation.
    backoff: Duration,
    /// What the last failed check or call said (for error messages).
    last_error: String,
    /// Its last health check got an answer.
    reachable: bool,
    /// The back-off of the last ejection by a call, and when it came back after it:
    /// a replica ejected again soon after it came back waits twice as long.
    eject_backoff: Duration,
    back_since: Option<Instant>,
}

/// Back in rotation this long without an ejection, a replica starts over at
/// [`BASE_BACKOFF`].
const FORGIVE_AFTER: Duration = Duration::from_secs(10);

/// The first wait after an ejection, doubled per failed check up to [`MAX_BACKOFF`].
pub const BASE_BACKOFF: Duration = Duration::from_millis(200);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The longest wait between checks of a replica that answers NOT_SERVING.
pub const REACHABLE_BACKOFF: Duration = Duration::from_secs(1);

pub struct Member {
    /// "ip:port" as dialled (or a URL's authority).
    pub key: String,
    pub channel: Channel,
    in_flight: AtomicUsize,
    state: Mutex<State>,
    instance: Mutex<String>,
    ejections: AtomicUsize,
    /// Ejections by calls, for [`Self::serving_since`].
    generation: AtomicU64,
    last_ok_unix_nano: AtomicU64,
    /// Gone from the name's addresses: its probe loop ends.
    removed: AtomicBool,
    /// Wakes the probe loop (an ejection, a removal).
    pub(super) wake: Notify,
}

impl Member {
    pub fn new(key: String, channel: Channel) -> Self {
        Self {
            key,
            channel,
            in_flight: AtomicUsize::new(0),
            state: Mutex::new(State {
                phase: Phase::Probing,
                backoff: Duration::ZERO,
                last_error: "not checked yet".into(),
                reachable: false,
                eject_backoff: Duration::ZERO,
                back_since: None,
            }),
            instance: Mutex::new(String::new()),
            ejections: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            last_ok_unix_nano: AtomicU64::new(0),
            removed: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is a few plain fields, valid after any panic mid-update.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn phase(&self) -> Phase {
        self.state().phase
    }

    pub fn last_error(&self) -> String {
        self.state().last_error.clone()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn ejections(&self) -> usize {
        self.ejections.load(Ordering::Relaxed)
    }

    pub fn instance(&self) -> String {
        self.instance
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_instance(&self, name: &str) {
        let mut i = self.instance.lock().unwrap_or_else(|p| p.into_inner());
        if *i != name {
            *i = name.to_string();
        }
    }

    pub fn last_ok_unix_nano(&self) -> u64 {
        self.last_ok_unix_nano.load(Ordering::Relaxed)
    }

    pub fn answered_ok(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        self.last_ok_unix_nano.fetch_max(now, Ordering::Relaxed);
    }

    /// Takes it out of rotation after a failed call; true when this call did it (so
    /// calls that fail together count one ejection).
    pub fn eject(&self, why: String) -> bool {
        let mut s = self.state();
        if s.phase != Phase::Serving {
            return false;
        }
        s.phase = Phase::Ejected;
        let recent = s.back_since.is_some_and(|t| t.elapsed() < FORGIVE_AFTER);
        s.eject_backoff = if recent {
            (s.eject_backoff * 2).clamp(BASE_BACKOFF, MAX_BACKOFF)
        } else {
            BASE_BACKOFF
        };
        s.backoff = s.eject_backoff;
        s.last_error = why;
        self.generation.fetch_add(1, Ordering::Relaxed);
        drop(s);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        self.wake.notify_one();
        true
    }

    /// A health check said SERVING: into rotation. True when it was out.
    pub(super) fn serving(&self) -> bool {
        Self::into_rotation(&mut self.state())
    }

    fn into_rotation(s: &mut State) -> bool {
        let was = s.phase;
        s.phase = Phase::Serving;
        s.backoff = Duration::ZERO;
        s.reachable = true;
        if was != Phase::Serving {
            s.back_since = Some(Instant::now());
        }
        was != Phase::Serving
    }

    /// [`Self::serving`] for a check sent at `generation`; ignored (false) when a call
    /// ejected the endpoint since, so a stale answer cannot undo the ejection.
    pub(super) fn serving_since(&self, generation: u64) -> bool {
        // `eject` bumps the generation while it holds the state lock.
        let mut s = self.state();
        if self.generation.load(Ordering::Relaxed) != generation {
            return false;
        }
        Self::into_rotation(&mut s)
    }

    /// Ejections by calls so far (see [`Self::serving_since`]).
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Takes over the counts of the member this address had before it left.
    pub(super) fn inherit(&self, earlier: &Member) {
        self.ejections
            .fetch_add(earlier.ejections(), Ordering::Relaxed);
        self.last_ok_unix_nano
            .fetch_max(earlier.last_ok_unix_nano(), Ordering::Relaxed);
        self.set_instance(&earlier.instance());
    }

    /// A health check failed or said NOT_SERVING: out of rotation (counted as an
    /// ejection when it was serving), and the next check waits longer.
    /// `reachable`: the replica answered (NOT_SERVING: starting or draining), so it is
    /// checked again within a second; one that did not answer backs off to
    /// [`MAX_BACKOFF`].
    pub(super) fn check_failed(&self, why: String, reachable: bool) {
        let mut s = self.state();
        if s.phase == Phase::Serving {
            s.phase = Phase::Ejected;
            self.ejections.fetch_add(1, Ordering::Relaxed);
        }
        let cap = if reachable {
            REACHABLE_BACKOFF
        } else {
            MAX_BACKOFF
        };
        s.backoff = (s.backoff * 2).clamp(BASE_BACKOFF, cap);
        s.last_error = why;
        s.reachable = reachable;
    }

    /// Whether its last health check got an answer (true once SERVING).
    pub fn reachable(&self) -> bool {
        self.state().reachable
    }

    /// How long the probe loop waits before its next check.
    pub(super) fn next_check_in(&self, serving_interval: Duration) -> Duration {
        let s = self.state();
        match s.phase {
            Phase::Serving => serving_interval,
            Phase::Probing | Phase::Ejected => s.backoff,
        }
    }

    pub fn remove(&self) {
        self.removed.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }
}

/// One call's claim on a member: counted in its calls in flight until dropped.
pub struct InFlight(pub Arc<Member>);

impl InFlight {
    pub fn new(m: Arc<Member>) -> Self {
        m.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(m)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member() -> Member {
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        Member::new("127.0.0.1:1".into(), channel)
    }

    #[tokio::test]
    async fn a_health_answer_sent_before_an_ejection_does_not_undo_it() {
        let m = member();
        assert!(m.serving());
        let sent_at = m.generation();
        assert!(m.eject("UNAVAILABLE".into()));
        assert!(!m.serving_since(sent_at), "a stale SERVING is ignored");
        assert_eq!(m.phase(), Phase::Ejected);
        // A check sent after the ejection puts it back.
        assert!(m.serving_since(m.generation()));
        assert_eq!(m.phase(), Phase::Serving);
        assert_eq!(m.ejections(), 1);
    }

    #[tokio::test]
    async fn ejected_again_soon_after_coming_back_it_waits_longer() {
        let m = member();
        let mut waits = Vec::new();
        for _ in 0..6 {
            m.serving();
            assert!(m.eject("UNAVAILABLE".into()));
            assert!(!m.eject("UNAVAILABLE".into()), "one ejection per fall");
            waits.push(m.next_check_in(Duration::from_secs(2)));
        }
        assert_eq!(
            waits,
            [200, 400, 800, 1600, 3200, 5000].map(Duration::from_millis),
        );
        assert_eq!(m.ejections(), 6);
        // Health checks that fail back off too, faster for a replica that answers.
        m.check_failed("health NOT_SERVING".into(), true);
        assert!(m.next_check_in(Duration::from_secs(2)) <= REACHABLE_BACKOFF);
    }

    #[tokio::test]
    async fn an_address_that_comes_back_keeps_its_counts() {
        let old = member();
        old.serving();
        old.eject("UNAVAILABLE".into());
        old.answered_ok();
        old.set_instance("replica-1");
        let new = member();
        new.inherit(&old);
        assert_eq!(new.ejections(), 1);
        assert_eq!(new.instance(), "replica-1");
        assert_eq!(new.last_ok_unix_nano(), old.last_ok_unix_nano());
    }
}
