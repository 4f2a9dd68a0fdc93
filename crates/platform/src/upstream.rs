//! Several instances of a program behind its one name, without a load balancer: the instances
//! `SHOP_SERVICE_URLS` lists for it (`orders=http://a:8084,orders=http://b:9084`).
//!
//! A caller ([`Instances::send`]) spreads its requests over them in turn, skipping an
//! ejected instance. An instance is ejected when a connection to it fails (for
//! [`EJECT_FOR`], then tried again) or, with [`Instances::watch`] running, while its readiness
//! is not 2xx (a program stopping for a deploy answers 503 for its drain period, so callers
//! move away before it stops taking requests). Sent again to the next instance:
//! - a request whose connection could not be made, whatever its method: it was sent to
//!   nobody, so retrying cannot do anything twice;
//! - an idempotent request (a GET, or a POST with an `Idempotency-Key`) whose connection
//!   failed before any answer came (an instance killed with a pooled connection open).
//!
//! Nothing else is sent twice: a timeout, or an answer of any status, is the caller's. When
//! every instance is ejected, they are all tried anyway: an ejection is a guess, an error is
//! a fact.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::telemetry;

/// How long an instance that refused a connection is skipped.
pub const EJECT_FOR: Duration = Duration::from_secs(5);

/// The instances of one program.
#[derive(Debug)]
pub struct Instances {
    program: &'static str,
    instances: Vec<Instance>,
    next: AtomicUsize,
}

#[derive(Debug)]
struct Instance {
    url: String,
    /// Skipped until then (`None`: in service).
    ejected_until: Mutex<Option<Instant>>,
    /// Whether its readiness said it is not ready (cleared by a ready answer).
    not_ready: std::sync::atomic::AtomicBool,
}

impl Instances {
    pub fn new(program: &'static str, urls: Vec<String>) -> Instances {
        Instances {
            program,
            instances: urls
                .into_iter()
                .map(|url| Instance {
                    url,
                    ejected_until: Mutex::new(None),
                    not_ready: Default::default(),
                })
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    pub fn program(&self) -> &'static str {
        self.program
    }

    /// Every instance's base URL, in the configured order.
    pub fn urls(&self) -> impl Iterator<Item = &str> {
        self.instances.iter().map(|i| i.url.as_str())
    }

    pub fn len(&self) -> usize {
        self.instances.len()
    }

    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// The order in which to try the instances for one request: from the next in turn, those
    /// in service first, then the ejected ones.
    pub fn order(&self) -> Vec<&str> {
        let n = self.instances.len();
        if n == 0 {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let now = Instant::now();
        let (mut ready, mut ejected) = (Vec::with_capacity(n), Vec::new());
        for k in 0..n {
            let i = &self.instances[(start + k) % n];
            if i.is_ejected(now) {
                ejected.push(i.url.as_str());
            } else {
                ready.push(i.url.as_str());
            }
        }
        ready.extend(ejected);
        ready
    }

    /// Skips `url` for `duration`.
    pub fn eject(&self, url: &str, duration: Duration) {
        if let Some(i) = self.instances.iter().find(|i| i.url == url) {
            *i.ejected_until.lock().expect("not poisoned") = Some(Instant::now() + duration);
        }
    }

    /// Sends the request `build` makes for an instance's base URL, to the instances in
    /// [`Instances::order`], moving to the next one as the module says (`idempotent`: a GET,
    /// or a POST with an `Idempotency-Key`), ejecting the one whose connection failed. Each
    /// attempt is a client span of the current trace.
    pub async fn send(
        &self,
        method: &str,
        idempotent: bool,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> reqwest::Result<reqwest::Response> {
        let order = self.order();
        let last = order.len().saturating_sub(1);
        let mut failure = None;
        for (k, base) in order.into_iter().enumerate() {
            match telemetry::send(build(base), method, self.program).await {
                Err(e) if e.is_connect() || (idempotent && e.is_request() && !e.is_timeout()) => {
                    self.eject(base, EJECT_FOR);
                    if k < last {
                        warn!(program = self.program, instance = base, error = %e, "instance unreachable; trying the next");
                    }
                    failure = Some(e);
                }
                other => return other,
            }
        }
        Err(failure.expect("a program has at least one instance"))
    }

    /// Until `stop`, asks each instance's `/health/ready` every `every`: one that does not
    /// answer 2xx in time is skipped until it does (worth running only with several
    /// instances).
    pub async fn watch(&self, http: reqwest::Client, every: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            for i in &self.instances {
                let ready = http
                    .get(format!("{}/health/ready", i.url))
                    .timeout(every.max(Duration::from_millis(500)))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                let was_not_ready = i.not_ready.swap(!ready, Ordering::Relaxed);
                let mut until = i.ejected_until.lock().expect("not poisoned");
                match (ready, was_not_ready) {
                    (false, _) => *until = Some(Instant::now() + every * 2),
                    (true, true) => {
                        *until = None;
                        info!(program = self.program, instance = %i.url, "instance ready again");
                    }
                    (true, false) => {}
                }
                if !ready && !was_not_ready {
                    info!(program = self.program, instance = %i.url, "instance not ready; skipped until it is");
                }
            }
        }
    }
}

impl Instance {
    fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until
            .lock()
            .expect("not poisoned")
            .is_some_and(|t| t > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Instances {
        Instances::new(
            "orders",
            vec!["http://a".into(), "http://b".into(), "http://c".into()],
        )
    }

    #[test]
    fn requests_go_round_the_instances() {
        let i = three();
        let firsts: Vec<String> = (0..6).map(|_| i.order()[0].to_string()).collect();
        assert_eq!(
            firsts,
            [
                "http://a", "http://b", "http://c", "http://a", "http://b", "http://c"
            ]
        );
        // Each order holds every instance once.
        let mut all = i.order();
        all.sort();
        assert_eq!(all, ["http://a", "http://b", "http://c"]);
    }

    #[test]
    fn an_ejected_instance_is_tried_last_until_its_time_is_up() {
        let i = three();
        i.eject("http://a", Duration::from_secs(60));
        for _ in 0..6 {
            let order = i.order();
            assert_ne!(order[0], "http://a");
            assert_eq!(order[2], "http://a", "still a last resort");
        }
        i.eject("http://a", Duration::ZERO);
        assert!((0..3).any(|_| i.order()[0] == "http://a"), "back in turn");
    }
}
