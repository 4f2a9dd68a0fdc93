//! Logins and registrations are limited where the password work happens, per account and
//! per client address (the gateway's, from its signed assertion; else the peer's).

use std::net::IpAddr;

use reqwest::{Response, StatusCode};
use serde_json::json;
use shop_platform::assertion::{HEADER, Keys, Subject};

use crate::helpers::{App, PASSWORD};

/// The limit set in these tests. Windows are fixed minutes, so a run may straddle two:
/// `2 * LIMIT + 1` attempts put more than `LIMIT` into one of them whatever the timing.
const LIMIT: u32 = 3;
const ATTEMPTS: u32 = 2 * LIMIT + 1;

/// Makes `attempt(i)` until the first 429, which must come, and asserts that every answer
/// before it was `before`.
async fn until_limited<F, Fut>(before: StatusCode, mut attempt: F)
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Response>,
{
    let mut seen = Vec::new();
    for i in 0..ATTEMPTS {
        let r = attempt(i).await;
        seen.push(r.status());
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(
                r.headers().contains_key("retry-after"),
                "429 without Retry-After"
            );
            let ct = &r.headers()["content-type"];
            assert_eq!(ct, "application/problem+json");
            seen.pop();
            assert!(seen.iter().all(|s| *s == before), "{seen:?}");
            return;
        }
    }
    panic!("no 429 within {ATTEMPTS} attempts: {seen:?}");
}

/// The gateway's assertion for a public route, naming the client `ip`, signed with `keys`.
fn from_gateway(keys: &Keys, ip: &str) -> String {
    let gateway = Subject::Service {
        name: "gateway".into(),
    };
    let ip: IpAddr = ip.parse().unwrap();
    keys.sign(gateway, "users", None, None, Some(ip))
}

impl App {
    async fn login_as_client(&self, assertion: &str, email: &str) -> Response {
        self.http
            .post(self.url("/api/auth/login"))
            .header(HEADER, assertion)
            .json(&json!({"email": email, "password": "wrong password"}))
            .send()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn wrong_passwords_for_one_account_are_limited_from_any_address() {
    let app = App::spawn_with(|s| {
        s.logins_per_account_per_min = LIMIT;
        s.logins_per_address_per_min = 1000;
    })
    .await;
    app.registered("carol@example.com").await;
    app.registered("dave@example.com").await;
    let keys = app.keys();
    let app_ref = &app;
    // Each attempt from another address: only the account's limit can stop them.
    until_limited(StatusCode::UNAUTHORIZED, |i| {
        let assertion = from_gateway(&keys, &format!("198.51.100.{i}"));
        async move {
            app_ref
                .login_as_client(&assertion, "Carol@Example.com")
                .await
        }
    })
    .await;
    // Another account is not affected.
    let r = app.login("dave@example.com", PASSWORD).await;
    assert_eq!(r.status(), StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn logins_from_one_client_address_are_limited_by_the_gateways_assertion() {
    let app = App::spawn_with(|s| {
        s.logins_per_account_per_min = 1000;
        s.logins_per_address_per_min = LIMIT;
    })
    .await;
    let keys = app.keys();
    let app_ref = &app;
    let flooder = from_gateway(&keys, "203.0.113.1");
    until_limited(StatusCode::UNAUTHORIZED, |i| {
        let assertion = from_gateway(&keys, "203.0.113.1");
        async move {
            app_ref
                .login_as_client(&assertion, &format!("n{i}@example.com"))
                .await
        }
    })
    .await;
    // The flooder's address stays limited; other clients of the gateway are not.
    let r = app.login_as_client(&flooder, "x@example.com").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let other = from_gateway(&keys, "203.0.113.2");
    let r = app.login_as_client(&other, "x@example.com").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // An address in a forged assertion is not believed: the peer (127.0.0.1) is counted.
    let forged = from_gateway(&Keys::parse(&Keys::generate()).unwrap(), "203.0.113.1");
    let r = app.login_as_client(&forged, "x@example.com").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    app.stop().await;
}

#[tokio::test]
async fn registrations_from_one_address_are_limited_once_valid() {
    let app = App::spawn_with(|s| s.registrations_per_address_per_min = LIMIT).await;
    let app_ref = &app;
    until_limited(StatusCode::CREATED, |i| async move {
        app_ref
            .register(&format!("r{i}@example.com"), PASSWORD, "Reg")
            .await
    })
    .await;
    // Invalid ones cost no hash: they are refused for what they are.
    let r = app.register("not-an-email", PASSWORD, "Reg").await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    app.stop().await;
}
