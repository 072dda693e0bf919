//! `provisioner config check` (issue 7, done-when 4): every configuration variable shown, every
//! problem named, no secret shown.

use std::collections::BTreeMap;
use std::path::Path;

use test_support::process::{Captured, PATIENCE};

use crate::logs::pem_body_lines;
use crate::support::{CapturedProvisioner as _, MASTER_KEY, PORTAL_TOKEN};

/// Every configuration variable (README, Configuration), by the name a user sets.
const DESIGN_VARIABLES: &[&str] = &[
    "SF_EVENTS_ENABLED",
    "SF_PROVISION_EVENT_CHANNEL",
    "SF_EVENTS_REPLAY",
    "SF_LOGIN_URL",
    "SF_AUDIENCE",
    "SF_CLIENT_ID",
    "SF_USERNAME",
    "SF_PRIVATE_KEY",
    "SF_API_VERSION",
    "SF_PUBSUB_ENDPOINT",
    "SF_PUBSUB_CA_FILE",
    "SF_PUBSUB_BATCH",
    "SF_ORDER_STATUS_APPROVED",
    "SF_ORDER_STATUS_PROVISIONING",
    "SF_ORDER_STATUS_PROVISIONED",
    "SF_ORDER_STATUS_FAILED",
    "WHMCS_API_URL",
    "WHMCS_API_IDENTIFIER",
    "WHMCS_API_SECRET",
    "WHMCS_ACCESS_KEY",
    "WHMCS_PAYMENT_METHOD",
    "WHMCS_ORDER_REF_FIELD_ID",
    "WHMCS_SEND_EMAIL",
    "WHMCS_NO_INVOICE",
    "WHMCS_TIMEOUT",
    "WHMCS_ACCEPT_TIMEOUT",
    "WHMCS_SETTLE",
    "WHMCS_PAGE_SIZE",
    "DATABASE_URL",
    "JOB_LEASE",
    "FIELD_ENCRYPTION_KEY",
    "ENCRYPTION_KEY_ROTATION_DAYS",
    "AUDIT_LOG_RETENTION_DAYS",
    "SECURITY_ALERT_WEBHOOK",
    "PROVISIONER_HTTP_ADDR",
    "PROVISIONER_TLS_CERT_FILE",
    "PROVISIONER_TLS_KEY_FILE",
    "PORTAL_API_TOKEN",
    "HTTP_ALLOWED_CIDRS",
    "PROVISIONER_CONCURRENCY",
    "CUSTOMER_PROVISION_RATE",
    "CUSTOMER_STATUS_RATE",
    "RECONCILE_INTERVAL",
    "LOG_FORMAT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_SERVICE_NAME",
];

/// A complete, valid environment that needs no running sandbox (nothing is contacted).
fn complete_env(dir: &Path) -> BTreeMap<String, String> {
    let key_file = dir.join("sf-key.pem");
    std::fs::write(&key_file, test_support::keys::PRIVATE_KEY_PEM).unwrap();
    [
        ("SF_LOGIN_URL", "http://127.0.0.1:9"),
        ("SF_CLIENT_ID", "3MVG9-client-id"),
        ("SF_USERNAME", "integration@example.com"),
        ("SF_PRIVATE_KEY_FILE", key_file.to_str().unwrap()),
        ("SF_PUBSUB_ENDPOINT", "http://127.0.0.1:9"),
        ("SF_PUBSUB_BATCH", "42"),
        ("WHMCS_API_URL", "http://127.0.0.1:9/includes/api.php"),
        ("WHMCS_API_IDENTIFIER", "whmcs-ident-canary-11aa"),
        ("WHMCS_API_SECRET", "whmcs-secret-canary-22bb"),
        ("WHMCS_ACCESS_KEY", "whmcs-access-canary-33cc"),
        ("WHMCS_ORDER_REF_FIELD_ID", "7"),
        ("DATABASE_URL", "sqlite:///nonexistent/never-opened.db"),
        ("FIELD_ENCRYPTION_KEY", MASTER_KEY),
        (
            "SECURITY_ALERT_WEBHOOK",
            "http://127.0.0.1:9/hook?key=webhook-canary-44dd",
        ),
        ("PORTAL_API_TOKEN", PORTAL_TOKEN),
        ("PROVISIONER_HTTP_ADDR", "127.0.0.1:0"),
        ("CUSTOMER_STATUS_RATE", "5/second"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

async fn config_check(env: &BTreeMap<String, String>) -> (Option<i32>, String, String) {
    let mut check = Captured::provisioner("provisioner config check", &["config", "check"], env);
    let code = check.wait_exit(PATIENCE).await;
    (code, check.stdout(), check.stderr())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_names_every_problem_and_redacts_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = [
        "whmcs-ident-canary-11aa",
        "whmcs-secret-canary-22bb",
        "whmcs-access-canary-33cc",
        "webhook-canary-44dd",
        PORTAL_TOKEN,
        MASTER_KEY.trim_start_matches("base64:"),
    ];
    let pem_lines = pem_body_lines(test_support::keys::PRIVATE_KEY_PEM);

    // Complete: exit 0, every configuration variable shown, the secrets redacted.
    let env = complete_env(dir.path());
    let (code, stdout, stderr) = config_check(&env).await;
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    for name in DESIGN_VARIABLES {
        assert!(
            stdout.lines().any(|l| l.starts_with(&format!("{name}="))),
            "{name} not shown:\n{stdout}"
        );
    }
    for name in [
        "SF_PRIVATE_KEY",
        "WHMCS_API_IDENTIFIER",
        "WHMCS_API_SECRET",
        "WHMCS_ACCESS_KEY",
        "FIELD_ENCRYPTION_KEY",
        "PORTAL_API_TOKEN",
        "SECURITY_ALERT_WEBHOOK",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("{name}=[REDACTED]"))),
            "{name} not redacted:\n{stdout}"
        );
    }
    assert!(
        stdout.lines().any(|l| l.starts_with("SF_PUBSUB_BATCH=42")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("SF_API_VERSION=v62.0")),
        "{stdout}"
    );
    for secret in secrets
        .iter()
        .copied()
        .chain(pem_lines.iter().map(String::as_str))
    {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} shown"
        );
    }

    // Missing and malformed variables: exit 2, each one named on stderr, no secret shown.
    let mut bad = complete_env(dir.path());
    for missing in ["SF_CLIENT_ID", "WHMCS_API_URL", "PORTAL_API_TOKEN"] {
        bad.remove(missing);
    }
    let malformed = [
        ("SF_PUBSUB_BATCH", "500"),
        ("JOB_LEASE", "soon"),
        ("HTTP_ALLOWED_CIDRS", "10.0.0.0/33"),
        ("CUSTOMER_STATUS_RATE", "5/fortnight"),
        ("PROVISIONER_HTTP_ADDR", "localhost"),
        ("DATABASE_URL", "mysql://db/provisioner"),
        ("WHMCS_SEND_EMAIL", "maybe"),
        ("SF_EVENTS_REPLAY", "YESTERDAY"),
    ];
    for (k, v) in malformed {
        bad.insert(k.to_owned(), v.to_owned());
    }
    let (code, stdout, stderr) = config_check(&bad).await;
    assert_eq!(code, Some(2), "stdout:\n{stdout}\nstderr:\n{stderr}");
    for name in malformed.iter().map(|(k, _)| *k).chain([
        "SF_CLIENT_ID",
        "WHMCS_API_URL",
        "PORTAL_API_TOKEN",
    ]) {
        assert!(stderr.contains(name), "{name} not named:\n{stderr}");
    }
    for secret in secrets
        .iter()
        .copied()
        .chain(pem_lines.iter().map(String::as_str))
    {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} shown"
        );
    }

    // A malformed secret is named without its value.
    let mut bad_key = complete_env(dir.path());
    bad_key.insert("FIELD_ENCRYPTION_KEY".into(), "tiny-canary".into());
    bad_key.insert(
        "SF_PRIVATE_KEY_FILE".into(),
        dir.path().join("absent.pem").display().to_string(),
    );
    let (code, stdout, stderr) = config_check(&bad_key).await;
    assert_eq!(code, Some(2), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("FIELD_ENCRYPTION_KEY"), "{stderr}");
    assert!(stderr.contains("SF_PRIVATE_KEY_FILE"), "{stderr}");
    assert!(!stdout.contains("tiny-canary") && !stderr.contains("tiny-canary"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_shows_per_product_ref_fields_and_names_malformed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = complete_env(dir.path());
    env.insert("WHMCS_ORDER_REF_FIELD_ID".into(), "3:12,4:15".into());
    let (code, stdout, stderr) = config_check(&env).await;
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("WHMCS_ORDER_REF_FIELD_ID=3:12,4:15")),
        "{stdout}"
    );
    for (bad, says) in [
        ("3:12,4", r#""4" is not a pid:fieldid pair"#),
        ("3:x", r#""x" is not a custom field id"#),
        ("3:12,3:13", "product 3 is listed twice"),
    ] {
        env.insert("WHMCS_ORDER_REF_FIELD_ID".into(), bad.into());
        let (code, stdout, stderr) = config_check(&env).await;
        assert_eq!(code, Some(2), "{bad}: stdout:\n{stdout}\nstderr:\n{stderr}");
        assert!(
            stderr.contains(&format!("WHMCS_ORDER_REF_FIELD_ID: {says}")),
            "{bad}: {stderr}"
        );
    }
}

/// Finding 2 of the security review: `DATABASE_URL` is a secret. `config check` shows it with
/// the password redacted, `DATABASE_URL_FILE` works, and a command that cannot reach the
/// database names the problem without the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_password_is_never_shown() {
    const PASSWORD: &str = "db-canary-55ee";
    let dir = tempfile::tempdir().unwrap();
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let url = format!("postgres://provisioner:{PASSWORD}@127.0.0.1:1/prov");
    let mut env = complete_env(dir.path());
    env.insert("DATABASE_URL".into(), url.clone());
    let (code, stdout, stderr) = config_check(&env).await;
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l
                .starts_with("DATABASE_URL=postgres://provisioner:[REDACTED]@127.0.0.1:1/prov")),
        "{stdout}"
    );
    assert!(
        !stdout.contains(PASSWORD) && !stderr.contains(PASSWORD),
        "{stdout}\n{stderr}"
    );

    // From a file, as a credential store hands it over.
    let file = dir.path().join("database-url");
    std::fs::write(&file, format!("{url}\n")).unwrap();
    env.remove("DATABASE_URL");
    env.insert("DATABASE_URL_FILE".into(), file.display().to_string());
    let (code, stdout, _) = config_check(&env).await;
    assert_eq!(code, Some(0));
    assert!(
        stdout.lines().any(
            |l| l.starts_with("DATABASE_URL=postgres://provisioner:[REDACTED]@")
                && l.contains("file")
        ),
        "{stdout}"
    );
    assert!(!stdout.contains(PASSWORD));

    // Every error path that involves the URL: unreachable, malformed, unsupported.
    for bad in [
        url.clone(),
        format!("postgres://provisioner:{PASSWORD}@127.0.0.1:notaport/prov"),
        format!("mysql://provisioner:{PASSWORD}@127.0.0.1/prov"),
    ] {
        env.insert("DATABASE_URL".into(), bad.clone());
        env.remove("DATABASE_URL_FILE");
        for args in [
            &["migrate"][..],
            &["jobs", "list"][..],
            &["config", "check"][..],
        ] {
            let mut cmd = Captured::provisioner("provisioner", args, &env);
            let code = cmd.wait_exit(PATIENCE).await;
            let (out, err) = (cmd.stdout(), cmd.stderr());
            assert!(
                !out.contains(PASSWORD) && !err.contains(PASSWORD),
                "{args:?} with {bad}: exit {code:?}\n{out}\n{err}"
            );
            if args[0] != "config" {
                assert_ne!(code, Some(0), "{args:?} with {bad}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_needs_both_files_and_config_check_shows_whether_it_is_on() {
    let dir = tempfile::tempdir().unwrap();
    let cert = test_support::tls::self_signed();
    let cert_file = dir.path().join("tls.crt");
    let key_file = dir.path().join("tls.key");
    std::fs::write(&cert_file, &cert.cert_pem).unwrap();
    std::fs::write(&key_file, &cert.key_pem).unwrap();
    let key_lines: Vec<&str> = cert
        .key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();

    let env = complete_env(dir.path());
    let (code, stdout, stderr) = config_check(&env).await;
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("# status API: plain HTTP (TLS off)"),
        "{stdout}"
    );

    // Only one of the two, either way: exit 2 naming the other, for `run` too.
    for (given, file, missing) in [
        (
            "PROVISIONER_TLS_CERT_FILE",
            &cert_file,
            "PROVISIONER_TLS_KEY_FILE",
        ),
        (
            "PROVISIONER_TLS_KEY_FILE",
            &key_file,
            "PROVISIONER_TLS_CERT_FILE",
        ),
    ] {
        let mut env = complete_env(dir.path());
        env.insert(given.into(), file.display().to_string());
        let (code, stdout, stderr) = config_check(&env).await;
        assert_eq!(
            code,
            Some(2),
            "{given}: stdout:\n{stdout}\nstderr:\n{stderr}"
        );
        assert!(stderr.contains(&format!("{missing}: required")), "{stderr}");
        let mut run = Captured::provisioner("provisioner run", &["run"], &env);
        assert_eq!(run.wait_exit(PATIENCE).await, Some(2), "{}", run.stderr());
        assert!(run.stderr().contains(missing), "{}", run.stderr());
    }

    // Both, but the key file holds no key: exit 2 naming the key file, the text not shown.
    let mut env = complete_env(dir.path());
    env.insert(
        "PROVISIONER_TLS_CERT_FILE".into(),
        cert_file.display().to_string(),
    );
    env.insert(
        "PROVISIONER_TLS_KEY_FILE".into(),
        cert_file.display().to_string(),
    );
    let (code, _, stderr) = config_check(&env).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("PROVISIONER_TLS_KEY_FILE:"), "{stderr}");

    // Both: TLS on; the key's text appears nowhere.
    let mut env = complete_env(dir.path());
    env.insert(
        "PROVISIONER_TLS_CERT_FILE".into(),
        cert_file.display().to_string(),
    );
    env.insert(
        "PROVISIONER_TLS_KEY_FILE".into(),
        key_file.display().to_string(),
    );
    let (code, stdout, stderr) = config_check(&env).await;
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("# status API: HTTPS (TLS on)"), "{stdout}");
    for line in key_lines {
        assert!(
            !stdout.contains(line) && !stderr.contains(line),
            "key shown"
        );
    }
}

/// `TOKIO_WORKER_THREADS` that is not a number of threads (empty, zero, a word) is a
/// configuration error naming it, for `config check` and for `run`, instead of the runtime's
/// panic; a good value is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_worker_thread_count_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["", "0", "two", "100000"] {
        let mut env = complete_env(dir.path());
        env.insert("TOKIO_WORKER_THREADS".into(), bad.into());
        let (code, stdout, stderr) = config_check(&env).await;
        assert_eq!(
            code,
            Some(2),
            "{bad:?}: stdout:\n{stdout}\nstderr:\n{stderr}"
        );
        assert!(stderr.contains("TOKIO_WORKER_THREADS"), "{bad:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{bad:?}: {stderr}");
        let mut run = Captured::provisioner("provisioner run", &["run"], &env);
        assert_eq!(
            run.wait_exit(PATIENCE).await,
            Some(2),
            "{bad:?}: {}",
            run.stderr()
        );
        assert!(
            run.stderr().contains("TOKIO_WORKER_THREADS") && !run.stderr().contains("panicked"),
            "{bad:?}: {}",
            run.stderr()
        );
    }
    // `config check` names the number `run` would start: as set; else one per CPU, one less
    // with a SQLite store or a PostgreSQL server on this machine.
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    for (set, url, want) in [
        (Some("3"), "sqlite:///nonexistent/never-opened.db", 3),
        (
            None,
            "sqlite:///nonexistent/never-opened.db",
            cpus.saturating_sub(1).max(1),
        ),
        (
            None,
            "postgres://u@127.0.0.1:9/db",
            cpus.saturating_sub(1).max(1),
        ),
        (None, "postgres://u@db.invalid:9/db", cpus),
    ] {
        let mut env = complete_env(dir.path());
        if let Some(n) = set {
            env.insert("TOKIO_WORKER_THREADS".into(), n.into());
        }
        env.insert("DATABASE_URL".into(), url.into());
        let (code, stdout, stderr) = config_check(&env).await;
        assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
        assert!(
            stdout.contains(&format!("# run: {want} runtime worker thread(s) (")),
            "{set:?} {url}: {stdout}"
        );
    }
}
