//! Turning least privilege on for a database the services already filled as the
//! administrator: `setup_roles` hands each schema and everything in it (tables, their serial
//! sequences, functions) to the service's role, which then works there and nowhere else.

use shop_platform::{config::Config, db};
use sqlx::{Connection as _, Executor as _};
use uuid::Uuid;

/// Drops the test's database and roles, also when the test fails.
struct Cleanup(Config);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let config = self.0.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let _ = db::drop_database(&config.database_url).await;
                let _ = db::drop_roles(&config, &["alpha", "beta"]).await;
            });
        })
        .join();
    }
}

#[tokio::test]
async fn an_existing_schema_moves_to_its_service_role() {
    let mut config = Config::defaults();
    let name = format!("shop_roles_{}", &Uuid::new_v4().simple().to_string()[..12]);
    config.database_url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    let cleanup = Cleanup(config.clone());
    // Before: made by the administrator, as without SHOP_DB_PASSWORDS.
    for schema in ["alpha", "beta"] {
        let pool = db::connect(&config.database_url, schema, 1).await.unwrap();
        let limit: String = sqlx::query_scalar("SHOW idle_in_transaction_session_timeout")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(limit, "1min", "a silent client's transaction ends");
        pool.execute(
            "CREATE TABLE things (id BIGSERIAL PRIMARY KEY, note TEXT);
             CREATE FUNCTION shout(t TEXT) RETURNS TEXT LANGUAGE sql AS 'SELECT upper(t)';",
        )
        .await
        .unwrap();
        pool.close().await;
    }

    config.db_passwords = Some("alpha=one,beta=two".into());
    db::setup_roles(&config, &["alpha", "beta"]).await.unwrap();
    // Twice is the same as once.
    db::setup_roles(&config, &["alpha", "beta"]).await.unwrap();

    let alpha = db::connect_service(&config, "alpha", 1).await.unwrap();
    // A transaction whose client goes silent is ended by the server, locks and all.
    let limit: String = sqlx::query_scalar("SHOW idle_in_transaction_session_timeout")
        .fetch_one(&alpha)
        .await
        .unwrap();
    assert_eq!(limit, "1min");
    let id: i64 = sqlx::query_scalar("INSERT INTO things (note) VALUES (shout('a')) RETURNING id")
        .fetch_one(&alpha)
        .await
        .unwrap();
    assert_eq!(id, 1);
    sqlx::query("DROP FUNCTION shout(TEXT)")
        .execute(&alpha)
        .await
        .unwrap();
    let refused = sqlx::query("SELECT * FROM beta.things")
        .execute(&alpha)
        .await
        .unwrap_err();
    assert_eq!(
        refused
            .as_database_error()
            .and_then(|d| d.code())
            .as_deref(),
        Some("42501"),
        "{refused}"
    );
    alpha.close().await;

    drop(cleanup);
    let mut admin = sqlx::PgConnection::connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_roles WHERE rolname LIKE $1")
        .bind(format!("{name}%"))
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(left, 0, "roles left behind");
}
