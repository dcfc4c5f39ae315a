//! Property-based fuzzing of what parses untrusted input: the SigV4 verifier, the S3 request
//! parser, `Range` and the conditional headers, and the internal fill's query.
//!
//! The targets are proptest properties named `fuzz_*`, beside the code they exercise, with
//! generators for hostile shapes (stray `%`, `+`, `/`, overlong fields, out-of-range dates,
//! non-ASCII). `cargo fuzz` needs a nightly toolchain, which cannot be installed on the
//! machines this project is built on, so coverage-guided fuzzing is not used. Each target runs
//! `SHOAL_FUZZ_CASES` cases (2,000 by default, seconds in `make test`); `make fuzz` runs many
//! more. A failing case is saved under `proptest-regressions/` and replayed on every later run.

use proptest::test_runner::Config;

/// The proptest config of every fuzz target.
pub(crate) fn config() -> Config {
    let cases = std::env::var("SHOAL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    Config {
        cases,
        ..Config::default()
    }
}
