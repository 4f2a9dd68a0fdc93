//! The order trickle: several users place orders concurrently through the gateway at a steady
//! pace (mostly `tok_visa`, some `tok_decline`, now and then a line of a scarce product), and
//! keep going whatever the fault does. Every answer is recorded: accepted orders (202) by id,
//! everything else by status, so a scenario can say what a client saw.
//!
//! With several gateways, each shopper has a home gateway and, like a client behind a load
//! balancer, sends a request that got no answer at all (the gateway stopping, say) once more
//! to the next gateway: safe, as every order carries an `Idempotency-Key`. A shopper may also
//! browse between orders (its account, a product, its stock, its notifications), so that
//! every service behind the gateways serves requests.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A small deterministic generator (no dependency needed for dice).
#[derive(Clone)]
pub struct Dice(u64);

impl Dice {
    pub fn new(seed: u64) -> Dice {
        Dice(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A shopper: credentials (to log in again when the session is gone) and the current token.
#[derive(Clone)]
pub struct Shopper {
    pub email: String,
    pub password: String,
    pub token: Arc<Mutex<String>>,
}

/// The catalogue the trickle buys from.
#[derive(Clone)]
pub struct Catalogue {
    /// Plenty of stock.
    pub products: Vec<Uuid>,
    /// A little stock: some orders are cancelled out of stock.
    pub scarce: Uuid,
}

#[derive(Debug, Default)]
pub struct Tally {
    /// Accepted orders: (order id, shopper index).
    pub accepted: Vec<(Uuid, usize)>,
    /// Answers other than 202, by status (or `error` for no answer).
    pub refused: BTreeMap<String, u64>,
    /// Logins after the session was lost.
    pub relogins: u64,
    /// Requests sent again to another gateway after no answer from the first.
    pub failovers: u64,
    /// Browsing answers other than 2xx, by status (or `error`).
    pub browse_refused: BTreeMap<String, u64>,
}

impl Tally {
    pub fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }

    /// 5xx answers to orders and to browsing.
    pub fn server_errors(&self) -> u64 {
        self.refused
            .iter()
            .chain(&self.browse_refused)
            .filter(|(status, _)| status.starts_with('5'))
            .map(|(_, n)| n)
            .sum()
    }
}

/// How the trickle's shoppers behave.
#[derive(Clone, Default)]
pub struct Habits {
    /// Browse (four GETs) after each order.
    pub browse: bool,
}

/// A running trickle.
pub struct Trickle {
    pub tally: Arc<Mutex<Tally>>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Trickle {
    /// One worker per shopper, each placing an order every `pace` through its gateway (the
    /// shoppers are spread over `gateways`).
    pub fn start(
        gateways: &[String],
        shoppers: &[Shopper],
        catalogue: &Catalogue,
        pace: Duration,
        seed: u64,
        habits: Habits,
    ) -> Trickle {
        let http = Client::builder()
            .timeout(Duration::from_secs(15))
            .pool_idle_timeout(shop_platform::config::Config::defaults().client_idle_timeout())
            .build()
            .unwrap();
        let tally = Arc::new(Mutex::new(Tally::default()));
        let stop = CancellationToken::new();
        let tasks = shoppers
            .iter()
            .enumerate()
            .map(|(i, shopper)| {
                // Shopper i's home gateway first, then the others in turn.
                let mut bases = gateways.to_vec();
                bases.rotate_left(i % gateways.len());
                let worker = Worker {
                    index: i,
                    bases,
                    habits: habits.clone(),
                    http: http.clone(),
                    shopper: shopper.clone(),
                    catalogue: catalogue.clone(),
                    tally: tally.clone(),
                    dice: Dice::new(seed.wrapping_add(i as u64 * 7919)),
                };
                let stop = stop.clone();
                tokio::spawn(worker.run(pace, stop))
            })
            .collect();
        Trickle { tally, stop, tasks }
    }

    pub fn accepted(&self) -> usize {
        self.tally.lock().unwrap().accepted.len()
    }

    /// The ids of the orders accepted so far.
    pub fn accepted_ids(&self) -> Vec<Uuid> {
        let tally = self.tally.lock().unwrap();
        tally.accepted.iter().map(|(id, _)| *id).collect()
    }

    pub fn refused(&self) -> u64 {
        self.tally.lock().unwrap().refused_total()
    }

    /// 5xx answers so far (orders and browsing).
    pub fn server_errors(&self) -> u64 {
        self.tally.lock().unwrap().server_errors()
    }

    /// Stops placing orders; returns what was seen.
    pub async fn stop(self) -> Tally {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        Arc::try_unwrap(self.tally)
            .map(|m| m.into_inner().unwrap())
            .unwrap_or_else(|arc| std::mem::take(&mut *arc.lock().unwrap()))
    }
}

struct Worker {
    index: usize,
    /// The home gateway first.
    bases: Vec<String>,
    habits: Habits,
    http: Client,
    shopper: Shopper,
    catalogue: Catalogue,
    tally: Arc<Mutex<Tally>>,
    dice: Dice,
}

impl Worker {
    async fn run(mut self, pace: Duration, stop: CancellationToken) {
        // Workers start out of step so that orders arrive spread over time.
        let offset = pace.mul_f64((self.index % 4) as f64 / 4.0);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(offset) => {}
        }
        while !stop.is_cancelled() {
            self.place_one().await;
            if self.habits.browse {
                self.browse().await;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pace) => {}
            }
        }
    }

    fn basket(&mut self) -> Value {
        let mut items = Vec::new();
        let n = 1 + self.dice.below(2) as usize;
        let first = self.dice.below(self.catalogue.products.len() as u64) as usize;
        for k in 0..n {
            let p = self.catalogue.products[(first + k) % self.catalogue.products.len()];
            items.push(json!({"product_id": p, "quantity": 1 + self.dice.below(2)}));
        }
        if self.dice.chance(10) {
            items.push(json!({"product_id": self.catalogue.scarce, "quantity": 1}));
        }
        let token = if self.dice.chance(20) {
            "tok_decline"
        } else {
            "tok_visa"
        };
        json!({"items": items, "payment_token": token})
    }

    /// Sends the request built by `build` for a base URL to the home gateway and, if no
    /// answer comes back at all, once to each other gateway in turn.
    async fn send(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> reqwest::Result<reqwest::Response> {
        let mut last = None;
        for (i, base) in self.bases.iter().enumerate() {
            if i > 0 {
                self.tally.lock().unwrap().failovers += 1;
            }
            match build(base).send().await {
                Ok(r) => return Ok(r),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one gateway"))
    }

    async fn place_one(&mut self) {
        let body = self.basket();
        let token = self.shopper.token.lock().unwrap().clone();
        let key = Uuid::new_v4().to_string();
        let resp = self
            .send(|base| {
                self.http
                    .post(format!("{base}/api/orders"))
                    .bearer_auth(&token)
                    .header("Idempotency-Key", &key)
                    .json(&body)
            })
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(_) => {
                self.refuse("error".into());
                return;
            }
        };
        let status = resp.status();
        let answer: Value = resp.json().await.unwrap_or(Value::Null);
        match status {
            StatusCode::ACCEPTED => match answer["id"].as_str().and_then(|s| s.parse().ok()) {
                Some(id) => self.tally.lock().unwrap().accepted.push((id, self.index)),
                None => self.refuse("202 without an id".into()),
            },
            StatusCode::UNAUTHORIZED => {
                self.refuse("401".into());
                self.login_again().await;
            }
            other => self.refuse(other.as_u16().to_string()),
        }
    }

    fn refuse(&self, what: String) {
        *self.tally.lock().unwrap().refused.entry(what).or_default() += 1;
    }

    /// The shopper's account, a product, its stock and the shopper's notifications.
    async fn browse(&mut self) {
        let token = self.shopper.token.lock().unwrap().clone();
        let product =
            self.catalogue.products[self.dice.below(self.catalogue.products.len() as u64) as usize];
        for (route, path) in [
            ("/api/me", "/api/me".to_string()),
            ("/api/products/{id}", format!("/api/products/{product}")),
            ("/api/inventory/{id}", format!("/api/inventory/{product}")),
            ("/api/notifications", "/api/notifications".to_string()),
        ] {
            let resp = self
                .send(|base| self.http.get(format!("{base}{path}")).bearer_auth(&token))
                .await;
            let what = match resp {
                Ok(r) if r.status().is_success() => continue,
                Ok(r) => r.status().as_u16().to_string(),
                Err(_) => "error".into(),
            };
            let mut tally = self.tally.lock().unwrap();
            *tally
                .browse_refused
                .entry(format!("{what} {route}"))
                .or_default() += 1;
        }
    }

    async fn login_again(&self) {
        let body = json!({"email": self.shopper.email, "password": self.shopper.password});
        let resp = self
            .send(|base| self.http.post(format!("{base}/api/auth/login")).json(&body))
            .await;
        if let Ok(r) = resp
            && r.status() == StatusCode::OK
            && let Ok(v) = r.json::<Value>().await
            && let Some(t) = v["token"].as_str()
        {
            *self.shopper.token.lock().unwrap() = t.to_string();
            self.tally.lock().unwrap().relogins += 1;
        }
    }
}
