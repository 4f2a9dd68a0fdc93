//! The order trickle: several users place orders concurrently through the gateway at a steady
//! pace (mostly `tok_visa`, some `tok_decline`, now and then a line of a scarce product), and
//! keep going whatever the fault does. Every answer is recorded: accepted orders (202) by id,
//! everything else by status, so a scenario can say what a client saw.

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
}

impl Tally {
    pub fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }
}

/// A running trickle.
pub struct Trickle {
    pub tally: Arc<Mutex<Tally>>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Trickle {
    /// One worker per shopper, each placing an order every `pace`.
    pub fn start(
        base: &str,
        shoppers: &[Shopper],
        catalogue: &Catalogue,
        pace: Duration,
        seed: u64,
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
                let worker = Worker {
                    index: i,
                    base: base.to_string(),
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

    pub fn refused(&self) -> u64 {
        self.tally.lock().unwrap().refused_total()
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
    base: String,
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

    async fn place_one(&mut self) {
        let body = self.basket();
        let token = self.shopper.token.lock().unwrap().clone();
        let resp = self
            .http
            .post(format!("{}/api/orders", self.base))
            .bearer_auth(&token)
            .header("Idempotency-Key", Uuid::new_v4().to_string())
            .json(&body)
            .send()
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

    async fn login_again(&self) {
        let resp = self
            .http
            .post(format!("{}/api/auth/login", self.base))
            .json(&json!({"email": self.shopper.email, "password": self.shopper.password}))
            .send()
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
