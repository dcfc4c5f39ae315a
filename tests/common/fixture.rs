//! The one way the tests and the benchmarks write a `shoal serve` config file: build a
//! [`Config`] value (see `common::config()`), then serialize it. A TOML copy per test drifted
//! from the config it meant (13 of them once); a value cannot name a key that does not exist.
//! The benchmarks include this file with `#[path]`.

#![allow(dead_code)]

use shoal::config::Config;
use std::time::Duration;

/// `cfg` as the TOML file `shoal serve --config` reads.
pub fn toml(cfg: &Config) -> String {
    toml::to_string(cfg).expect("a Config serializes to TOML")
}

/// Shoal's test settings without an origin: loopback ports the OS picks, no client auth,
/// 1 MiB chunks, short retry backoffs.
pub fn base_config() -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.ops.listen = "127.0.0.1:0".parse().unwrap();
    c.server.shutdown_grace = shoal::config::Dur(Duration::from_secs(2));
    c.origin.id = "itest".into();
    c.auth.mode = shoal::config::AuthMode::None;
    c.chunk.size = shoal::config::ByteSize(1 << 20);
    c.fill.retry.backoff_initial = shoal::config::Dur(Duration::from_millis(10));
    c.fill.retry.backoff_max = shoal::config::Dur(Duration::from_millis(50));
    c
}
