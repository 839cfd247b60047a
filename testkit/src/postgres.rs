//! Throwaway PostgreSQL databases for tests and benchmarks, on the server
//! at `EMIT_TEST_POSTGRES` (default: this machine's, user postgres, trust
//! auth). Shared by the core's tests, the API suite and the benchmarks.

/// The PostgreSQL server tests use.
fn postgres_server() -> String {
    std::env::var("EMIT_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A fresh database, dropped with this value.
pub struct PostgresDatabase {
    name: String,
    pub url: String,
}

impl PostgresDatabase {
    pub async fn create() -> Self {
        let name = format!("emit_test_{}", ulid::Ulid::new()).to_lowercase();
        admin(&format!("CREATE DATABASE {name}")).await;
        Self {
            url: format!("{}/{name}", postgres_server()),
            name,
        }
    }
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(admin(&statement))
        })
        .join();
    }
}

async fn admin(statement: &str) {
    use sqlx::Connection;
    let url = format!("{}/postgres", postgres_server());
    let mut connection = sqlx::PgConnection::connect(&url)
        .await
        .expect("the PostgreSQL server for tests is reachable");
    sqlx::query(statement)
        .execute(&mut connection)
        .await
        .expect("database administration succeeds");
}
