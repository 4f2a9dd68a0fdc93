//! Users, products and the gateway end to end: sessions, the product cache, authorization
//! enumerated from the OpenAPI document, hostile input, rate limits, graceful stop, and no
//! secret in any log line.

use std::time::Duration;

use redis::AsyncCommands as _;
use reqwest::{Method, StatusCode};
use serde_json::json;
use shop_platform::testkit::eventually;

use crate::cluster::{ADMIN_PASSWORD, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_public_api_is_safe_and_behaves() {
    let shop = Cluster::start(&[]).await;
    let base = shop.base.clone();

    // Every response carries a request id; docs are served with no download.
    let resp = shop
        .http
        .get(format!("{base}/api/products"))
        .send()
        .await
        .unwrap();
    assert!(resp.headers().contains_key("x-request-id"));
    let docs = shop.http.get(format!("{base}/docs/")).send().await.unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(
        docs.text().await.unwrap().contains("swagger"),
        "Swagger UI page"
    );
    let (_, doc) = shop.call(Method::GET, "/openapi.json", None, None).await;
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    // The AsyncAPI document of the events, beside it, is the committed one.
    let (_, events) = shop.call(Method::GET, "/asyncapi.json", None, None).await;
    assert_eq!(events["asyncapi"], "3.0.0");
    assert_eq!(events, shop::asyncapi());

    // Readiness aggregates every service, in detail on the admin port only; the public port
    // says whether it is ready and serves no metrics.
    let ready: serde_json::Value = admin_get(&shop, "/health/ready")
        .await
        .json()
        .await
        .unwrap();
    for svc in shop::names().filter(|p| *p != shop_gateway::program::IDENTITY.name) {
        assert_eq!(ready["info"][svc]["status"], "up", "{ready}");
    }
    let (s, public) = shop.call(Method::GET, "/health/ready", None, None).await;
    assert_eq!(
        (s, public),
        (StatusCode::OK, serde_json::json!({"status": "ok"}))
    );
    let (s, _) = shop.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "no metrics on the public port");
    let metrics = admin_get(&shop, "/metrics").await.text().await.unwrap();
    assert!(metrics.contains("shop_http_requests_total"), "{metrics}");

    // Register, log in, me, log out: the token is dead at once.
    let (s, user) = shop
        .register("Ann@Example.com ", "correct-horse-battery")
        .await;
    assert_eq!(s, StatusCode::CREATED, "{user}");
    assert_eq!(user["email"], "ann@example.com");
    assert_eq!(user["role"], "user");
    let token = shop.login("ann@example.com", "correct-horse-battery").await;
    let (s, me) = shop.call(Method::GET, "/api/me", Some(&token), None).await;
    assert_eq!((s, me["id"].clone()), (StatusCode::OK, user["id"].clone()));
    let (s, _) = shop
        .call(Method::POST, "/api/auth/logout", Some(&token), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, p) = shop.call(Method::GET, "/api/me", Some(&token), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{p}");
    assert_eq!(p["type"], "urn:shop:problem:unauthorized");

    // Duplicate e-mail, short password, unknown fields, wrong credentials.
    let (s, _) = shop.register("ann@example.com", "another-password").await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, p) = shop.register("bob@example.com", "short").await;
    assert_eq!(
        (s, p["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("password")),
        "{p}"
    );
    let (s, p) = shop
        .call(
            Method::POST,
            "/api/auth/register",
            None,
            Some(json!({"email": "eve@example.com", "password": "long-enough-1", "name": "Eve", "role": "admin"})),
        )
        .await;
    assert_eq!(
        (s, p["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("role")),
        "mass assignment refused: {p}"
    );
    let wrong = shop
        .call(
            Method::POST,
            "/api/auth/login",
            None,
            Some(json!({"email": "ann@example.com", "password": "nope-nope-nope"})),
        )
        .await;
    let unknown = shop
        .call(
            Method::POST,
            "/api/auth/login",
            None,
            Some(json!({"email": "who@example.com", "password": "nope-nope-nope"})),
        )
        .await;
    assert_eq!(wrong.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        wrong, unknown,
        "the same answer whether the e-mail exists or not"
    );

    // Malformed input: 413, 415, 400, 422 — all problems, nothing changed.
    let (user_token, _) = shop.user().await;
    let admin = shop.admin().await;
    let big = "x".repeat(70 * 1024);
    let post_raw = |content_type: &'static str, body: String| {
        shop.http
            .post(format!("{base}/api/orders"))
            .bearer_auth(&user_token)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let r = post_raw(
        "application/json",
        format!("{{\"payment_token\":\"{big}\"}}"),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let r = post_raw("text/plain", "hi".into()).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = post_raw("application/json", "{\"items\": [".into())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let (s, p) = shop
        .call(
            Method::POST,
            "/api/orders",
            Some(&user_token),
            Some(json!({"items": [], "payment_token": "tok_visa"})),
        )
        .await;
    assert_eq!(
        (s, p["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("items")),
        "{p}"
    );
    let (s, p) = shop
        .call(
            Method::POST,
            "/api/orders",
            Some(&user_token),
            Some(json!({"items": [{"product_id": uuid::Uuid::now_v7(), "quantity": 1}], "payment_token": "t", "total_cents": 1})),
        )
        .await;
    assert_eq!(
        (s, p["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("total_cents")),
        "a client cannot set the price: {p}"
    );
    let (_, page) = shop
        .call(Method::GET, "/api/orders", Some(&user_token), None)
        .await;
    assert_eq!(
        page["items"].as_array().unwrap().len(),
        0,
        "nothing was created"
    );

    // Every non-public route answers 401 without a valid token (enumerated from the
    // document), and every admin route 403 for a plain user.
    let mut secured = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{id}", &uuid::Uuid::now_v7().to_string())
            .replace("{product_id}", &uuid::Uuid::now_v7().to_string());
        for (method, op) in item.as_object().unwrap() {
            if op.get("security").is_none() {
                continue;
            }
            secured += 1;
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (s, p) = shop.call(m.clone(), &concrete, None, Some(json!({}))).await;
            assert_eq!(
                s,
                StatusCode::UNAUTHORIZED,
                "{method} {path} without a token: {p}"
            );
            let (s, _) = shop
                .call(
                    m.clone(),
                    &concrete,
                    Some("not-a-real-token"),
                    Some(json!({})),
                )
                .await;
            assert_eq!(
                s,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with a forged token"
            );
            let admin_only = (path.starts_with("/api/products") && method != "get")
                || path.ends_with("/adjustments");
            if admin_only {
                let (s, _) = shop
                    .call(m, &concrete, Some(&user_token), Some(json!({})))
                    .await;
                assert_eq!(s, StatusCode::FORBIDDEN, "{method} {path} as a user");
            }
        }
    }
    assert!(secured >= 10, "{secured} secured operations");

    // The product cache: the first read fills it, an update invalidates it, the next read
    // has the new price.
    let product = shop.product(&admin, 999, 3).await;
    let (s, _) = shop
        .call(Method::GET, &format!("/api/products/{product}"), None, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let mut redis = redis::Client::open(shop.config.redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = shop.config.redis_key(&format!("product:{product}"));
    assert!(
        redis.exists::<_, bool>(&key).await.unwrap(),
        "cached after the first read"
    );
    let (s, p) = shop
        .call(
            Method::PATCH,
            &format!("/api/products/{product}"),
            Some(&admin),
            Some(json!({"price_cents": 1111})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    let (_, p) = shop
        .call(Method::GET, &format!("/api/products/{product}"), None, None)
        .await;
    assert_eq!(
        p["price_cents"], 1111,
        "never the old price after an update"
    );

    // A graceful stop: SIGTERM exits 0; readiness turns 503 while the service is away, then
    // recovers when it is back.
    let mut shop = shop;
    let status = shop.terminate("notifications");
    assert!(status.success(), "exit status {status}");
    // The public answer is reused for a second (PUBLIC_READINESS_TTL), the admin one is not.
    let public = shop_platform::testkit::eventually_some(
        "the public readiness turns 503",
        Duration::from_secs(10),
        || async {
            let (s, public) = shop.call(Method::GET, "/health/ready", None, None).await;
            (s == StatusCode::SERVICE_UNAVAILABLE).then_some(public)
        },
    )
    .await;
    assert_eq!(
        public,
        serde_json::json!({"status": "unavailable"}),
        "names nothing"
    );
    let ready = admin_get(&shop, "/health/ready").await;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(ready["error"]["notifications"]["status"], "down");
    shop.spawn("notifications");
    shop.wait_ready(Duration::from_secs(60)).await;

    // A login flood from one address is throttled with Retry-After. The window is a fixed
    // minute, so a flood may straddle two windows: 80 attempts put more than the limit (30)
    // into one of them whatever the timing.
    let mut limited = None;
    for _ in 0..80 {
        let r = shop
            .http
            .post(format!("{base}/api/auth/login"))
            .json(&json!({"email": "ann@example.com", "password": "wrong-password"}))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(r);
            break;
        }
    }
    let limited = limited.expect("429 within 80 logins");
    assert!(limited.headers().contains_key("retry-after"));

    // No password, token or password hash in any log line of the run.
    let logs = shop.logs();
    assert!(!logs.is_empty());
    for secret in [
        "correct-horse-battery",
        ADMIN_PASSWORD,
        &token,
        &user_token,
        &admin,
        "$argon2id$",
    ] {
        assert!(!logs.contains(secret), "a secret leaked into the logs");
    }
    let shop_ref = &shop;
    eventually(
        "the audit is clean",
        Duration::from_secs(5),
        || async move {
            shop::audit::run(&shop_ref.config, &shop_ref.settings, None)
                .await
                .unwrap()
                .ok()
        },
    )
    .await;
}

/// A GET on the gateway's admin port.
async fn admin_get(shop: &Cluster, path: &str) -> reqwest::Response {
    shop.http
        .get(format!("{}{path}", shop.admin))
        .send()
        .await
        .expect("the admin port answers")
}
