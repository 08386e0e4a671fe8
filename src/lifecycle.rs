//! Live, ready, drain: what `/readyz` answers, and how a replica stops without losing the
//! usage of a request it let through (docs/DESIGN.md, "Live, ready, drain").
//!
//! One [`Lifecycle`] per started tollgate, shared by the edges and
//! [`Running`](crate::app::Running):
//!
//! - every Check, ext_proc stream and HTTP request (but the probes and `/metrics`) stamps
//!   its arrival: one atomic store, so the drain can tell when traffic has stopped coming;
//! - a background probe keeps the database's and Redis' status, so `/readyz` answers from
//!   memory, at once, whatever the backends do;
//! - [`Lifecycle::drain`] (SIGTERM) turns `/readyz` 503 at once; [`Lifecycle::drained`]
//!   then waits until no request has arrived for [`QUIET`] or the drain timeout passes;
//! - [`Lifecycle::close_door`] then refuses new Checks (Envoy fails closed: 503) and waits
//!   until the requests already admitted have opened their ext_proc streams, so none of
//!   them reaches the upstream unmetered once the listeners close.

use crate::admission::counters::Counters;
use crate::admission::Admission;
use crate::store::SharedStore;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Status;

/// The drain ends once no request has arrived for this long.
pub const QUIET: Duration = Duration::from_secs(1);
/// Once Checks are refused: how long no admitted request may still open its ext_proc
/// stream before the listeners close. Envoy opens it right after Check answers.
pub const OPEN_GRACE: Duration = Duration::from_millis(200);
/// The longest [`Lifecycle::close_door`] waits for Checks in progress (a cache miss waits
/// up to `database.timeout` for the store).
pub const CLOSE_DOOR_MAX: Duration = Duration::from_secs(3);
/// How often the probe asks the database and Redis whether they answer.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);

/// Paths that are not traffic: probes and scrapes come whatever the load balancer does.
const NOT_TRAFFIC: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// How the drain window ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// No request arrived for [`QUIET`].
    Quiet,
    /// `server.drain_timeout` passed with requests still arriving.
    Timeout,
}

/// A backend's status in `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Up,
    Down,
    /// Not configured (Redis only).
    Absent,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Up => "up",
            Backend::Down => "down",
            Backend::Absent => "absent",
        }
    }
}

/// The shared state of a started tollgate's life (see the module docs).
pub struct Lifecycle {
    epoch: Instant,
    /// Milliseconds after `epoch` of the last arrival (Check, ext_proc stream, HTTP).
    last_arrival: AtomicU64,
    /// Milliseconds after `epoch` when the last ext_proc stream opened or a Check answered.
    last_admission: AtomicU64,
    /// Checks being decided.
    checks_in_flight: AtomicUsize,
    /// Checks are answered UNAVAILABLE (the drain is over).
    refusing: AtomicBool,
    /// When a stop was asked; `None` while serving.
    draining: watch::Sender<Option<Instant>>,
    /// The last readiness ping of the database answered.
    database_up: AtomicBool,
    /// The last readiness ping of Redis answered (true without Redis).
    redis_answers: AtomicBool,
}

impl Lifecycle {
    pub fn new() -> Arc<Lifecycle> {
        Arc::new(Lifecycle {
            epoch: Instant::now(),
            last_arrival: AtomicU64::new(0),
            last_admission: AtomicU64::new(0),
            checks_in_flight: AtomicUsize::new(0),
            refusing: AtomicBool::new(false),
            draining: watch::channel(None).0,
            // The store was connected and migrated just before the listeners were bound.
            database_up: AtomicBool::new(true),
            redis_answers: AtomicBool::new(true),
        })
    }

    /// Milliseconds from `epoch` to `at`.
    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// A request arrived.
    pub fn arrived(&self) {
        self.arrived_at(Instant::now());
    }

    fn arrived_at(&self, at: Instant) {
        self.last_arrival.store(self.ms(at), Ordering::Relaxed);
    }

    /// An ext_proc stream opened.
    pub fn stream_opened(&self) {
        self.stream_opened_at(Instant::now());
    }

    fn stream_opened_at(&self, at: Instant) {
        self.last_arrival.store(self.ms(at), Ordering::Relaxed);
        self.last_admission.store(self.ms(at), Ordering::Relaxed);
    }

    /// Asks to stop: `/readyz` answers 503 from now on. Idempotent.
    pub fn drain(&self) {
        self.draining.send_if_modified(|since| {
            if since.is_some() {
                return false;
            }
            *since = Some(Instant::now());
            true
        });
    }

    /// When a stop was asked, if it was.
    pub fn draining_since(&self) -> Option<Instant> {
        *self.draining.borrow()
    }

    /// Resolves once a stop is asked.
    pub async fn drain_asked(&self) {
        let mut rx = self.draining.subscribe();
        // The sender lives in `self`, so this only ends with a stop asked.
        let _ = rx.wait_for(Option::is_some).await;
    }

    /// After [`Lifecycle::drain`]: resolves when no request has arrived for [`QUIET`] (and
    /// at least that long after the stop was asked), or `timeout` after it was asked.
    pub async fn drained(&self, timeout: Duration) -> Drained {
        self.drain();
        let since = self.draining_since().unwrap_or_else(Instant::now);
        loop {
            match self.drain_at(since, timeout, Instant::now()) {
                Ok(drained) => return drained,
                Err(next) => tokio::time::sleep_until(next).await,
            }
        }
    }

    /// Where a drain asked at `since` stands at `now`: over, or when to look again.
    fn drain_at(
        &self,
        since: Instant,
        timeout: Duration,
        now: Instant,
    ) -> Result<Drained, Instant> {
        let last = self
            .at(self.last_arrival.load(Ordering::Relaxed))
            .max(since);
        let quiet_at = last + QUIET;
        let deadline = since + timeout;
        if now >= quiet_at {
            Ok(Drained::Quiet)
        } else if now >= deadline {
            Ok(Drained::Timeout)
        } else {
            Err(quiet_at.min(deadline))
        }
    }

    /// Refuses new Checks, then waits (at most [`CLOSE_DOOR_MAX`]) until the Checks in
    /// progress have answered and no admitted request has opened its ext_proc stream for
    /// [`OPEN_GRACE`].
    pub async fn close_door(&self) {
        self.refusing.store(true, Ordering::SeqCst);
        let give_up = Instant::now() + CLOSE_DOOR_MAX;
        while let Some(next) = self.door_at(Instant::now(), give_up) {
            tokio::time::sleep_until(next).await;
        }
    }

    /// Whether the door may close at `now` (`None`), or when to look again.
    fn door_at(&self, now: Instant, give_up: Instant) -> Option<Instant> {
        if now >= give_up {
            return None;
        }
        if self.checks_in_flight.load(Ordering::SeqCst) > 0 {
            return Some((now + Duration::from_millis(10)).min(give_up));
        }
        let settled_at = self.at(self.last_admission.load(Ordering::Relaxed)) + OPEN_GRACE;
        (now < settled_at).then(|| settled_at.min(give_up))
    }

    /// Checks are refused (the drain is over).
    pub fn refusing_checks(&self) -> bool {
        self.refusing.load(Ordering::SeqCst)
    }

    pub fn database(&self) -> Backend {
        if self.database_up.load(Ordering::Relaxed) {
            Backend::Up
        } else {
            Backend::Down
        }
    }

    /// Redis is up when the last readiness ping answered and decisions find it up (a
    /// failed call marks it down until its own probe sees it answer again).
    pub fn redis(&self, counters: &Counters) -> Backend {
        if !counters.is_shared() {
            Backend::Absent
        } else if self.redis_answers.load(Ordering::Relaxed) && counters.healthy() {
            Backend::Up
        } else {
            Backend::Down
        }
    }

    /// Asks the database and Redis every [`PROBE_EVERY`] whether they answer, each bounded
    /// by its timeout, so that `/readyz` reads their status from memory. The answers only
    /// inform `/readyz`: decisions find out for themselves.
    pub fn spawn_probe(
        self: Arc<Self>,
        store: SharedStore,
        timeout: Duration,
        admission: Arc<Admission>,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let ping = tokio::time::timeout(timeout, store.ping());
                let up = matches!(ping.await, Ok(Ok(())));
                if self.database_up.swap(up, Ordering::Relaxed) != up {
                    if up {
                        tracing::info!("the database answers its readiness ping again");
                    } else {
                        tracing::warn!("the database does not answer its readiness ping");
                    }
                }
                let answers = admission.counters().ping().await.is_ok();
                if self.redis_answers.swap(answers, Ordering::Relaxed) != answers {
                    if answers {
                        tracing::info!("redis answers its readiness ping again");
                    } else {
                        tracing::warn!("redis does not answer its readiness ping");
                    }
                }
                tokio::time::sleep(PROBE_EVERY).await;
            }
        })
    }

    /// A Check began: counted until the guard drops, so [`Lifecycle::close_door`] waits for
    /// it; refused once the door is closed.
    pub(crate) fn check_began(self: &Arc<Self>) -> Result<CheckGuard, Status> {
        self.arrived();
        // Counted before the door is looked at; the door is closed before the count is
        // read: one of the two sees the other.
        self.checks_in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = CheckGuard(self.clone());
        if self.refusing.load(Ordering::SeqCst) {
            // Envoy fails closed on UNAVAILABLE: the client gets 503 and tries again,
            // through another replica.
            return Err(Status::unavailable("tollgate is shutting down"));
        }
        Ok(guard)
    }
}

pub(crate) struct CheckGuard(Arc<Lifecycle>);

impl Drop for CheckGuard {
    fn drop(&mut self) {
        let now = self.0.ms(Instant::now());
        self.0.last_admission.store(now, Ordering::Relaxed);
        self.0.checks_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The gRPC interceptor of ext_proc: stamps each stream's opening.
pub fn stream_interceptor(
    lifecycle: Arc<Lifecycle>,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, Status> + Clone {
    move |request| {
        lifecycle.stream_opened();
        Ok(request)
    }
}

/// HTTP middleware: stamps each request's arrival, but probes' and scrapes'.
pub async fn http_arrivals(
    State(lifecycle): State<Arc<Lifecycle>>,
    request: Request,
    next: Next,
) -> Response {
    if !NOT_TRAFFIC.contains(&request.uri().path()) {
        lifecycle.arrived();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(15);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_drain_ends_a_quiet_second_after_the_signal() {
        let l = Lifecycle::new();
        let since = l.epoch + ms(10_000);
        l.arrived_at(since - ms(500));
        assert_eq!(
            l.drain_at(since, TIMEOUT, since + ms(500)),
            Err(since + QUIET)
        );
        assert_eq!(
            l.drain_at(since, TIMEOUT, since + QUIET),
            Ok(Drained::Quiet)
        );
    }

    #[test]
    fn each_arrival_keeps_the_drain_going_a_second_more() {
        let l = Lifecycle::new();
        let since = l.epoch + ms(10_000);
        l.arrived_at(since + ms(700));
        assert_eq!(
            l.drain_at(since, TIMEOUT, since + QUIET),
            Err(since + ms(700) + QUIET)
        );
        l.stream_opened_at(since + ms(1_600));
        assert_eq!(
            l.drain_at(since, TIMEOUT, since + ms(1_700)),
            Err(since + ms(1_600) + QUIET)
        );
        assert_eq!(
            l.drain_at(since, TIMEOUT, since + ms(2_600)),
            Ok(Drained::Quiet)
        );
    }

    #[test]
    fn arrivals_that_never_stop_end_at_the_timeout() {
        let l = Lifecycle::new();
        let since = l.epoch + ms(10_000);
        l.arrived_at(since + ms(14_800));
        assert_eq!(
            l.drain_at(since, TIMEOUT, since + ms(14_900)),
            Err(since + TIMEOUT)
        );
        assert_eq!(
            l.drain_at(since, TIMEOUT, since + TIMEOUT),
            Ok(Drained::Timeout)
        );
    }

    #[test]
    fn draining_is_asked_once() {
        let l = Lifecycle::new();
        assert_eq!(l.draining_since(), None);
        l.drain();
        let since = l.draining_since().unwrap();
        l.drain();
        assert_eq!(l.draining_since(), Some(since));
    }

    #[test]
    fn a_closed_door_refuses_checks_and_waits_for_those_in_progress() {
        let l = Lifecycle::new();
        let in_progress = l.check_began().unwrap();
        l.refusing.store(true, Ordering::SeqCst);
        assert!(l.refusing_checks());
        assert_eq!(
            l.check_began().err().map(|s| s.code()),
            Some(tonic::Code::Unavailable)
        );
        let now = Instant::now();
        let give_up = now + CLOSE_DOOR_MAX;
        // Busy: look again shortly.
        assert_eq!(l.door_at(now, give_up), Some(now + ms(10)));
        drop(in_progress);
        // Answered: its ext_proc stream gets OPEN_GRACE to open.
        let answered = Instant::now();
        let next = l.door_at(answered, give_up).expect("waits for the stream");
        assert!(next > answered + OPEN_GRACE - ms(2), "{next:?}");
        assert!(next <= answered + OPEN_GRACE, "{next:?}");
        assert_eq!(l.door_at(answered + OPEN_GRACE, give_up), None);
        // However busy, it closes at give_up.
        let _stuck = l.check_began();
        assert_eq!(l.door_at(give_up, give_up), None);
    }

    #[test]
    fn a_door_waits_for_a_stream_that_just_opened_and_no_more() {
        let l = Lifecycle::new();
        let opened = l.epoch + ms(5_000);
        let give_up = opened + CLOSE_DOOR_MAX;
        l.stream_opened_at(opened);
        assert_eq!(
            l.door_at(opened + ms(100), give_up),
            Some(opened + OPEN_GRACE)
        );
        assert_eq!(l.door_at(opened + OPEN_GRACE, give_up), None);
        // Nothing admitted for long: it closes at once.
        assert_eq!(l.door_at(opened + ms(60_000), opened + ms(63_000)), None);
    }
}
