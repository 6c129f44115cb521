//! For the project's own tests: a fresh registry in the PostgreSQL and S3 servers that
//! `scripts/with_services.sh` starts (and names in `REGISTRY_TEST_*` variables).

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{ObjectStoreConfig, RegistryLocation};

/// A test variable; panics with how to get it when missing.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run these tests through scripts/with_services.sh (make test does)"
        )
    })
}

/// The S3 client settings for the test server.
pub fn s3_options() -> Vec<(String, String)> {
    vec![
        ("aws_endpoint".into(), env("REGISTRY_TEST_S3_ENDPOINT")),
        (
            "aws_access_key_id".into(),
            env("REGISTRY_TEST_S3_ACCESS_KEY"),
        ),
        (
            "aws_secret_access_key".into(),
            env("REGISTRY_TEST_S3_SECRET_KEY"),
        ),
        ("aws_region".into(), "us-east-1".into()),
        ("aws_allow_http".into(), "true".into()),
    ]
}

/// A new, empty PostgreSQL database and S3 prefix, and the prefix (within the bucket).
pub fn remote_location() -> (RegistryLocation, String) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "registry_test_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let server = env("REGISTRY_TEST_POSTGRES");
    crate::sync::off_runtime(|| {
        let mut admin = postgres::Client::connect(&format!("{server}/postgres"), postgres::NoTls)
            .expect("the test PostgreSQL server");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("a test database");
    });
    let prefix = format!("tests/{name}");
    let location = RegistryLocation {
        dir: None,
        database_url: Some(format!("{server}/{name}")),
        store: Some(ObjectStoreConfig {
            url: format!("s3://{}/{prefix}", env("REGISTRY_TEST_S3_BUCKET")),
            options: s3_options(),
        }),
    };
    (location, prefix)
}
