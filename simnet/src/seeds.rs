//! Running a property over many seeds, with a one-line replay of any failure.
//!
//! `SIMNET_SEED=s` runs only seed `s`; `SIMNET_SEEDS=k` runs `k` seeds instead of the default.

/// Run `property` for `count` seeds (or those the environment names). On the first failure it
/// panics with the error and the command that replays exactly that run.
///
/// `test_binary` is the integration test's crate name (`env!("CARGO_CRATE_NAME")`); the test's
/// own name is read from the thread the test harness runs it on.
pub fn run_seeds<T>(test_binary: &str, count: u64, property: impl Fn(u64) -> Result<T, String>) -> Vec<T> {
    let seeds: Vec<u64> = match env_u64("SIMNET_SEED") {
        Some(seed) => vec![seed],
        None => (0..env_u64("SIMNET_SEEDS").unwrap_or(count)).collect(),
    };
    let test = std::thread::current().name().unwrap_or("<test name>").to_string();
    seeds
        .into_iter()
        .map(|seed| match property(seed) {
            Ok(value) => value,
            Err(error) => panic!(
                "{error}\nreplay: SIMNET_SEED={seed} cargo test --release -p simnet --test {test_binary} -- {test} --exact --include-ignored"
            ),
        })
        .collect()
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse() {
        Ok(parsed) => Some(parsed),
        Err(_) => panic!("{name}={value:?} is not a number"),
    }
}
