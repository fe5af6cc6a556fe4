//! Benchmarks: each backend crate's `benches/`, in release mode, compared
//! with the raw store in the same run.

use crate::Backend;
use crate::cargo::{cargo, run as run_command};

pub(crate) fn run(backends: &[&Backend]) -> Result<(), String> {
    if backends.iter().any(|b| !b.embedded) {
        crate::cargo::install()?;
    }
    for backend in backends {
        let mut bench = cargo();
        bench.args(["bench", "--package", backend.package]);
        run_command(bench)?;
    }
    Ok(())
}
