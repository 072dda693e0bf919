//! `cargo xtask`: the one automation entry point of the workspace.
//!
//! - `cargo xtask ci`: everything CI checks, in the order a developer wants to hear about it.
//! - `cargo xtask codegen [--check]`: regenerates the committed gRPC code of `sf-pubsub` from its
//!   `.proto` (protox + tonic-prost-build, no protoc); `--check` fails when the file is stale.
//! - `cargo xtask bench [criterion args]`: the criterion benchmarks of every crate, then the
//!   100,000-event backlog drill (`BACKLOG_ORDERS` changes the size).
//! - `cargo xtask bench procs [--only NAME,..] [--orders N] ...`: the product through real
//!   processes (`procs.rs`): release `sf-sandbox` and `provisioner run` children over loopback
//!   gRPC and HTTP, SQLite and PostgreSQL, one and two instances, a 100,000-event backlog, a
//!   paced stream and a faulty twin of a clean run; prints a markdown table and the Done-when
//!   checks, and writes `bench-procs.md` and `bench-procs.json` to the target directory.
//! - `cargo xtask demo [args]`: `provisioner demo` in release mode.
//! - `cargo xtask fuzz <target> <seconds>`: one cargo-fuzz target of `fuzz/` for a bounded time
//!   (needs cargo-fuzz and a nightly toolchain; CI does not fuzz, it runs the proptests).
//!
//! Its tests (`tidy.rs`) keep the documents honest: `ARCHITECTURE.md`'s crate edges match the
//! `Cargo.toml` files, no document points outside the repository, and every publishable crate
//! carries the metadata a registry shows.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

mod codegen;
mod procs;
#[cfg(test)]
mod tidy;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<()> {
    let root = workspace_root()?;
    std::env::set_current_dir(&root).context("entering the workspace root")?;
    match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("codegen") => match args.get(1).map(String::as_str) {
            None => codegen::run(&root, codegen::Mode::Write),
            Some("--check") => codegen::run(&root, codegen::Mode::Check),
            Some(other) => bail!("unknown codegen option `{other}` (expected `--check`)"),
        },
        Some("bench") if args.get(1).map(String::as_str) == Some("procs") => {
            procs::run(&root, &args[2..])
        }
        Some("bench") => bench(&args[1..]),
        Some("fuzz") => fuzz(&args[1..]),
        Some("demo") => cargo(
            &[
                &[
                    "run",
                    "--release",
                    "--locked",
                    "-p",
                    "provisioner",
                    "--",
                    "demo",
                ],
                &args[1..].iter().map(String::as_str).collect::<Vec<_>>()[..],
            ]
            .concat(),
        ),
        _ => {
            eprintln!(
                "usage: cargo xtask <ci | codegen [--check] | bench [criterion args] | bench procs [--only NAME,..] [--orders N] [--backlog-orders N] [--rate N] [--seconds N] [--fault-orders N] [--fault-cap SECS] | demo [demo args] | fuzz <target> <seconds>>"
            );
            bail!("unknown or missing task")
        }
    }
}

fn workspace_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .context("xtask lives one level below the workspace root")
}

/// Runs `cargo <args>` and fails when it fails.
fn cargo(args: &[&str]) -> Result<()> {
    cargo_env(args, &[])
}

/// Whether `key` is one of the variables `cargo run` sets for the binary it runs (this one),
/// describing the xtask package: nothing the cargo commands we start should see.
fn set_by_cargo_run(key: &str) -> bool {
    [
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "CARGO_BIN_",
        "CARGO_CRATE_",
    ]
    .iter()
    .any(|prefix| key.starts_with(prefix))
        || ["OUT_DIR", "CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR"].contains(&key)
}

/// `$CARGO` (the cargo that runs this xtask), without the variables `cargo run` set for the
/// xtask package. Some build scripts and crates watch one of them (ring's fingerprint tracks
/// `CARGO_MANIFEST_DIR`): a value that differs from one cargo command to the next (ours say
/// `xtask/`, the process tests' own builds and a plain `cargo nextest run` say nothing)
/// rebuilt ring, rustls, sqlx, tonic and every workspace library again in the doc-test step
/// of `ci`, and once more after it.
fn cargo_command() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    for (key, _) in std::env::vars_os() {
        if set_by_cargo_run(&key.to_string_lossy()) {
            cmd.env_remove(&key);
        }
    }
    cmd
}

fn cargo_env(args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    eprintln!("xtask: $ cargo {}", args.join(" "));
    let mut cmd = cargo_command();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let status = cmd
        .status()
        .with_context(|| format!("starting cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn has_cargo_subcommand(name: &str) -> bool {
    Command::new("cargo")
        .args([name, "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn step(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    let started = Instant::now();
    eprintln!("xtask: == {name}");
    f().with_context(|| format!("ci step `{name}`"))?;
    eprintln!("xtask: == {name}: ok in {:.1?}", started.elapsed());
    Ok(())
}

/// The variables every build step of `ci` runs with. `CARGO_INCREMENTAL=0`: incremental
/// compilation saves work only when a crate is built again after a small edit, and costs
/// extra work on every build to keep its caches; `ci` on a fresh clone builds every crate
/// once. With `CARGO_INCREMENTAL=0`, the workspace's own crates (every target, dependencies
/// already built) built in 106-108 s instead of 177-178 s, and clippy checked them in 33 s
/// instead of 40 s (2 cores). A `CARGO_INCREMENTAL`
/// the caller set is kept (a developer who runs `ci` again and again after small edits may want
/// `CARGO_INCREMENTAL=1`).
fn ci_env(caller_set_incremental: bool) -> Vec<(&'static str, &'static str)> {
    if caller_set_incremental {
        Vec::new()
    } else {
        vec![("CARGO_INCREMENTAL", "0")]
    }
}

fn ci() -> Result<()> {
    let started = Instant::now();
    let env = ci_env(std::env::var_os("CARGO_INCREMENTAL").is_some());
    step("fmt", || cargo(&["fmt", "--all", "--", "--check"]))?;
    step("codegen --check", || {
        codegen::run(&workspace_root()?, codegen::Mode::Check)
    })?;
    step("clippy", || {
        cargo_env(
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--locked",
                "--",
                "-D",
                "warnings",
            ],
            &env,
        )
    })?;
    step("doc", || {
        let mut doc_env = env.clone();
        doc_env.push(("RUSTDOCFLAGS", "-D warnings"));
        cargo_env(&["doc", "--workspace", "--no-deps", "--locked"], &doc_env)
    })?;
    step("test", || {
        // `nextest run --workspace` builds every package's binaries before any test runs; the
        // provisioner's process tests use that sf-sandbox instead of building their own.
        let target_dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map_or_else(|| workspace_root().map(|r| r.join("target")), Ok)?;
        let sf_sandbox = target_dir
            .join("debug")
            .join(format!("sf-sandbox{}", std::env::consts::EXE_SUFFIX));
        let sf_sandbox = sf_sandbox.to_string_lossy().into_owned();
        let mut test_env = env.clone();
        test_env.push(("PP_SF_SANDBOX_BIN", sf_sandbox.as_str()));
        if has_cargo_subcommand("nextest") {
            cargo_env(
                &[
                    "nextest",
                    "run",
                    "--workspace",
                    "--locked",
                    "--no-fail-fast",
                ],
                &test_env,
            )?;
        } else {
            eprintln!("xtask: cargo-nextest not installed, using cargo test");
            cargo_env(
                &[
                    "test",
                    "--workspace",
                    "--locked",
                    "--lib",
                    "--bins",
                    "--tests",
                ],
                &test_env,
            )?;
        }
        // nextest does not run doctests.
        cargo_env(&["test", "--workspace", "--locked", "--doc"], &env)
    })?;
    step("package", package)?;
    step("deny", deny)?;
    eprintln!("xtask: ci passed in {:.1?}", started.elapsed());
    Ok(())
}

/// `cargo package` of every package whose manifest lets it be published (the library crates
/// other services import): manifests, metadata and file lists are checked and a `.crate` is
/// assembled for each, the workspace's own crates standing in for the registry. Nothing is
/// published; `--no-verify` skips rebuilding each package from its `.crate`, which would build
/// every dependency a second time (the workspace build above has compiled the same sources).
fn package() -> Result<()> {
    let names = publishable_packages()?;
    if names.is_empty() {
        bail!("no package is publishable: the library crates set `publish = true`");
    }
    let mut args = vec!["package", "--no-verify", "--allow-dirty", "--locked"];
    for name in &names {
        args.extend(["-p", name.as_str()]);
    }
    cargo(&args)
}

/// The workspace's packages that may be published (`publish` not `false`), by package name.
pub(crate) fn publishable_packages() -> Result<Vec<String>> {
    let out = cargo_command()
        .args(["metadata", "--format-version", "1", "--no-deps", "--locked"])
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("reading cargo metadata")?;
    let packages = meta["packages"]
        .as_array()
        .context("cargo metadata without packages")?;
    Ok(packages
        .iter()
        // `publish = false` reads as `[]`; allowed everywhere reads as `null`.
        .filter(|p| p["publish"].as_array().is_none_or(|to| !to.is_empty()))
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect())
}

fn deny() -> Result<()> {
    if !has_cargo_subcommand("deny") {
        eprintln!("xtask: cargo-deny missing; installing it from crates.io (takes a few minutes)");
        cargo(&["install", "--locked", "cargo-deny"])?;
    }
    cargo(&["deny", "--locked", "check", "bans", "licenses", "sources"])?;
    // Advisories need the advisory database from the network: try, never fail on it.
    let mut child = cargo_command()
        .args(["deny", "--locked", "check", "advisories"])
        .spawn()
        .context("starting cargo deny check advisories")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().context("waiting for cargo deny")? {
            if !status.success() {
                eprintln!(
                    "xtask: warning: `cargo deny check advisories` did not pass ({status}); \
                     offline or an advisory needs a look"
                );
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            eprintln!("xtask: warning: advisories check timed out (offline?); skipped");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn bench(extra: &[String]) -> Result<()> {
    let mut args = vec!["bench", "--workspace", "--locked", "--benches"];
    if !extra.is_empty() {
        args.push("--");
        args.extend(extra.iter().map(String::as_str));
    }
    cargo(&args)?;
    // The backlog drill: 100,000 events wait in the sandbox while the provisioner is down; the
    // release binary drains them (exactly once, peak RSS <= 128 MiB, asserted by the test).
    // `BACKLOG_ORDERS` overrides the size.
    let orders = std::env::var("BACKLOG_ORDERS").unwrap_or_else(|_| "100000".to_owned());
    cargo_env(
        &[
            "test",
            "--release",
            "--locked",
            "-p",
            "provisioner",
            "--test",
            "it",
            "backlog",
            "--",
            "--nocapture",
        ],
        &[("BACKLOG_ORDERS", orders.as_str())],
    )
}

/// The cargo-fuzz targets in `fuzz/fuzz_targets/`, one per parser of outside input.
const FUZZ_TARGETS: [&str; 5] = [
    "avro_decode",
    "whmcs_response",
    "php_form",
    "ciphertext",
    "status_path",
];

/// `cargo +nightly fuzz run <target> -- -max_total_time=<seconds>`, when the tools are here.
fn fuzz(args: &[String]) -> Result<()> {
    let (Some(target), Some(seconds), None) = (args.first(), args.get(1), args.get(2)) else {
        bail!(
            "usage: cargo xtask fuzz <target> <seconds>, target one of: {}",
            FUZZ_TARGETS.join(", ")
        );
    };
    if !FUZZ_TARGETS.contains(&target.as_str()) {
        bail!(
            "unknown fuzz target `{target}` (expected one of: {})",
            FUZZ_TARGETS.join(", ")
        );
    }
    let seconds: u64 = seconds
        .parse()
        .ok()
        .filter(|s| *s > 0)
        .with_context(|| format!("`{seconds}` is not a positive number of seconds"))?;
    // `cargo +nightly` needs the rustup proxy, not the pinned toolchain's cargo in $CARGO.
    let nightly = |args: &[&str]| {
        let mut cmd = Command::new("cargo");
        cmd.arg("+nightly")
            .args(args)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO");
        cmd
    };
    let works = |mut cmd: Command| cmd.output().map(|o| o.status.success()).unwrap_or(false);
    if !works(nightly(&["--version"])) {
        bail!(
            "fuzzing needs a nightly toolchain (libFuzzer instrumentation is nightly-only): \
             install it with `rustup toolchain install nightly`, then rerun"
        );
    }
    if !works(nightly(&["fuzz", "--version"])) {
        bail!(
            "fuzzing needs cargo-fuzz: install it with `cargo install --locked cargo-fuzz`, \
             then rerun"
        );
    }
    let max_time = format!("-max_total_time={seconds}");
    let run = ["fuzz", "run", target.as_str(), "--", max_time.as_str()];
    eprintln!("xtask: $ cargo +nightly {}", run.join(" "));
    let status = nightly(&run)
        .status()
        .context("starting cargo +nightly fuzz run")?;
    if !status.success() {
        bail!(
            "fuzz target `{target}` failed ({status}); the crashing input is under fuzz/artifacts/{target}/"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_builds_without_incremental_caches_unless_the_caller_chose() {
        assert_eq!(ci_env(false), vec![("CARGO_INCREMENTAL", "0")]);
        assert!(ci_env(true).is_empty());
    }

    #[test]
    fn cargo_commands_do_not_inherit_what_cargo_run_set_for_the_xtask() {
        for key in [
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_PATH",
            "CARGO_PKG_NAME",
            "CARGO_CRATE_NAME",
            "CARGO_BIN_NAME",
            "CARGO_PRIMARY_PACKAGE",
            "OUT_DIR",
            "CARGO_TARGET_TMPDIR",
        ] {
            assert!(set_by_cargo_run(key), "{key}");
        }
        for key in [
            "CARGO",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_INCREMENTAL",
            "CARGO_TERM_COLOR",
            "RUSTFLAGS",
            "PATH",
        ] {
            assert!(!set_by_cargo_run(key), "{key}");
        }
        // Cargo sets them for this test process as `cargo run` does for the xtask: every one
        // is taken out of the command's environment, and nothing else is.
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let removed: Vec<String> = cargo_command()
            .get_envs()
            .filter(|(_, value)| value.is_none())
            .map(|(key, _)| key.to_string_lossy().into_owned())
            .collect();
        assert!(
            removed.iter().any(|key| key == "CARGO_MANIFEST_DIR"),
            "{removed:?}"
        );
        assert!(
            removed.iter().all(|key| set_by_cargo_run(key)),
            "{removed:?}"
        );
    }
}
