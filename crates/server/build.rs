//! Tells the integration tests which external services they run against.
//!
//! A test that needs PostgreSQL or Redis is compiled as ignored, so the test runner reports
//! it as skipped and names the variable to set, unless the service's test URL is set or
//! `CI` is. Under `CI` such a test always runs, and fails when its service is missing or
//! unreachable: a skipped test never counts as passed.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CI");
    let ci = std::env::var_os("CI").is_some();
    for (var, cfg) in [
        ("DATASTACK_TEST_DATABASE_URL", "datastack_test_postgres"),
        ("DATASTACK_TEST_REDIS_URL", "datastack_test_redis"),
    ] {
        println!("cargo::rerun-if-env-changed={var}");
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        if ci || std::env::var(var).is_ok_and(|v| !v.is_empty()) {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
