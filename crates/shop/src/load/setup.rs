//! The set-up of a load run through the typed API client: users logged in, products
//! created by the administrator, inventory waited for.

#[allow(unused_imports)]
use super::*;
use crate::client::Answer;

/// Why a request failed, as counted in the report.
pub(super) fn transport_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "other"
    }
}

/// Makes `call` until a rate limit no longer refuses it, waiting out its `Retry-After` at
/// most three times (`settings` names the limits to raise for big runs).
async fn patiently<F, Fut>(what: &str, settings: &str, mut call: F) -> anyhow::Result<Answer>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Answer>>,
{
    for _ in 0..3 {
        let answer = call().await?;
        if answer.status != StatusCode::TOO_MANY_REQUESTS {
            return Ok(answer);
        }
        let wait = answer.retry_after.unwrap_or(5).clamp(1, 61);
        eprintln!("load: {what} rate limit hit; waiting {wait}s (raise {settings} for big runs)");
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
    bail!("{what} kept hitting the rate limit")
}

/// Logs in, waiting out the login rate limits a few times if they are hit.
pub(super) async fn login(api: &ApiClient, email: &str, password: &str) -> anyhow::Result<String> {
    let limits = "SHOP_LOGIN_RATE_LIMIT_PER_MIN, SHOP_LOGINS_PER_ADDRESS_PER_MIN";
    let answer = patiently("login", limits, || api.login(email, password)).await?;
    if answer.status != StatusCode::OK {
        bail!(
            "login of {email} answered {}: {}",
            answer.status,
            answer.body
        );
    }
    answer.body["token"]
        .as_str()
        .map(str::to_string)
        .context("login answered without a token")
}

pub(super) async fn admin_token(settings: &Settings, api: &ApiClient) -> anyhow::Result<String> {
    let (Some(email), Some(password)) =
        (&settings.users.admin_email, &settings.users.admin_password)
    else {
        bail!(
            "creating products needs the administrator: set --admin-email and --admin-password (SHOP_ADMIN_EMAIL, SHOP_ADMIN_PASSWORD)"
        );
    };
    login(api, email, password)
        .await
        .context("logging in as the administrator")
}

/// A logged-in user placing orders.
pub(super) struct LoadUser {
    pub(super) token: String,
}

pub(super) async fn create_users(
    api: &ApiClient,
    n: usize,
    run_id: &str,
) -> anyhow::Result<Vec<LoadUser>> {
    let password = format!("load-password-{run_id}");
    let mut users = Vec::with_capacity(n);
    // A few at a time: each registration and login is an Argon2 hash on the server.
    for chunk in (0..n).collect::<Vec<_>>().chunks(4) {
        let made = futures::future::join_all(chunk.iter().map(|i| {
            let email = format!("load-{run_id}-{i}@load.test");
            let password = password.clone();
            async move {
                let name = format!("Load user {i}");
                let limit = "SHOP_REGISTRATIONS_PER_ADDRESS_PER_MIN";
                let answer = patiently("registration", limit, || {
                    api.register(&email, &password, &name)
                })
                .await?;
                if answer.status != StatusCode::CREATED {
                    bail!(
                        "registering {email} answered {}: {}",
                        answer.status,
                        answer.body
                    );
                }
                let token = login(api, &email, &password).await?;
                Ok(LoadUser { token })
            }
        }))
        .await;
        for u in made {
            users.push(u?);
        }
    }
    Ok(users)
}

/// The products orders are placed for.
pub(super) struct Catalog {
    pub(super) in_stock: Vec<Uuid>,
    /// A product created without stock, for out-of-stock orders.
    pub(super) sold_out: Option<Uuid>,
}

/// Units of stock of each product: the most a product may be created with.
pub(super) const PLENTY: i64 = 1_000_000;

/// Creates one product with `stock` units, as the administrator.
async fn create_product(
    api: &ApiClient,
    admin: &str,
    run_id: &str,
    i: usize,
    stock: i64,
) -> anyhow::Result<Uuid> {
    let (sku, name) = (format!("LOAD-{run_id}-{i}"), format!("Load product {i}"));
    let product = NewProduct {
        sku: &sku,
        name: &name,
        description: "created by shop load",
        price_cents: 100 + (i as i64 % 50) * 10,
        initial_stock: stock,
    };
    let answer = api.create_product(admin, &product).await?;
    if answer.status != StatusCode::CREATED {
        bail!(
            "creating a product answered {}: {}",
            answer.status,
            answer.body
        );
    }
    answer.id()
}

/// Whether the run needs a product without stock (for out-of-stock orders).
pub(super) fn wants_sold_out(args: &LoadArgs) -> bool {
    args.mode == Mode::Orders && args.out_of_stock_pct > 0.0
}

/// A product without stock, for out-of-stock orders (numbered after the --products ones).
pub(super) async fn create_sold_out(
    api: &ApiClient,
    admin: &str,
    args: &LoadArgs,
    run_id: &str,
) -> anyhow::Result<Uuid> {
    create_product(api, admin, run_id, args.products, 0).await
}

pub(super) async fn create_products(
    api: &ApiClient,
    admin: &str,
    args: &LoadArgs,
    run_id: &str,
) -> anyhow::Result<Catalog> {
    let mut in_stock = Vec::with_capacity(args.products);
    for chunk in (0..args.products).collect::<Vec<_>>().chunks(8) {
        let made = futures::future::join_all(
            chunk
                .iter()
                .map(|i| create_product(api, admin, run_id, *i, PLENTY)),
        )
        .await;
        for id in made {
            in_stock.push(id?);
        }
    }
    let sold_out = if wants_sold_out(args) {
        Some(create_sold_out(api, admin, args, run_id).await?)
    } else {
        None
    };
    Ok(Catalog { in_stock, sold_out })
}

/// Waits until inventory has the stock of every product (it learns of them by event).
pub(super) async fn wait_for_inventory(api: &ApiClient, products: &[Uuid]) -> anyhow::Result<()> {
    let until = Instant::now() + SETUP_DEADLINE;
    for id in products {
        loop {
            if api.stock(*id).await?.status == StatusCode::OK {
                break;
            }
            if Instant::now() > until {
                bail!("inventory does not know product {id} after {SETUP_DEADLINE:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}
