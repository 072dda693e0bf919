//! Operator commands: config check, audit, keys, dead letters, reconcile, migrate, backup.

use std::io::Write as _;
use std::sync::Arc;

use anyhow::{Context as _, anyhow};
use chrono::Utc;
use provisioner_store::{DeadLetterState, JobSource, JobState, Store};

use crate::app;
use crate::cli::{AuditCommand, BackupArgs, DlqCommand, Failure, KeysCommand};
use crate::config::Config;

fn out(text: &str) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")
        .and_then(|()| stdout.flush())
        .map_err(|e| Failure::Runtime(anyhow!(e).context("writing to stdout")))
}

fn runtime(e: anyhow::Error) -> Failure {
    Failure::Runtime(e)
}

/// `value` as the pretty JSON document a `--json` listing prints.
fn json_text(value: &impl serde::Serialize) -> Result<String, Failure> {
    serde_json::to_string_pretty(value).map_err(|e| runtime(anyhow!(e)))
}

pub(crate) async fn store(
    config: &Config,
    migrate: bool,
) -> Result<Arc<provisioner_store::SqlStore>, Failure> {
    let missing = config.missing_for_store();
    if !missing.is_empty() {
        return Err(Failure::Usage(anyhow!(missing.join("; "))));
    }
    // Operator commands run next to the service: no one-process lock.
    app::open_store(config, migrate, false)
        .await
        .map_err(runtime)
}

/// `provisioner config check`: the effective configuration (secrets redacted) on stdout,
/// every problem (malformed and missing variables alike) by name on stderr.
pub(crate) fn config_check(
    sources: &crate::config::Sources,
    parsed: Result<Config, Vec<String>>,
    workers: impl FnOnce(&str) -> (usize, &'static str),
) -> Result<(), Failure> {
    match parsed {
        Ok(config) => {
            for (name, value, origin) in &config.shown {
                out(&format!("{name}={value}  # {origin}"))?;
            }
            let (n, why) = workers(secrecy::ExposeSecret::expose_secret(&config.database_url));
            out(&format!("# run: {n} runtime worker thread(s) ({why})"))?;
            out(if config.tls.is_some() {
                "# status API: HTTPS (TLS on)"
            } else {
                "# status API: plain HTTP (TLS off)"
            })?;
            let missing = config.missing_for_run();
            if missing.is_empty() {
                out("# configuration ok")?;
                Ok(())
            } else {
                for m in &missing {
                    eprintln!("provisioner: {m}");
                }
                Err(Failure::Usage(anyhow!(
                    "{} problem(s): {}",
                    missing.len(),
                    missing.join("; ")
                )))
            }
        }
        Err(mut errors) => {
            for (name, value, origin) in crate::config::shown(sources) {
                out(&format!("{name}={value}  # {origin}"))?;
            }
            // Missing variables too, unless a problem with them is already named (an
            // unreadable `SF_PRIVATE_KEY_FILE`, say).
            for missing in crate::config::missing_required(sources) {
                let name = missing.split([' ', ':']).next().unwrap_or_default();
                if !errors.iter().any(|e| e.starts_with(name)) {
                    errors.push(missing);
                }
            }
            for e in &errors {
                eprintln!("provisioner: {e}");
            }
            Err(Failure::Usage(anyhow!(
                "{} problem(s): {}",
                errors.len(),
                errors.join("; ")
            )))
        }
    }
}

/// `[CHAIN.]SEQ:MAC`, as `audit verify` prints a head and the witness publishes it (no
/// `CHAIN.`: chain 0).
fn parse_head(text: &str) -> anyhow::Result<(u32, u64, audit::Mac)> {
    let (position, mac) = text
        .split_once(':')
        .ok_or_else(|| anyhow!("--expect-head {text:?}: expected [CHAIN.]SEQ:MAC"))?;
    let (chain, seq) = match position.trim().split_once('.') {
        Some((chain, seq)) => (
            chain
                .parse::<u32>()
                .map_err(|_| anyhow!("--expect-head: {chain:?} is not a chain number"))?,
            seq,
        ),
        None => (0, position.trim()),
    };
    let seq = seq
        .parse::<u64>()
        .map_err(|_| anyhow!("--expect-head: {seq:?} is not a sequence number"))?;
    let mac = mac
        .trim()
        .parse::<audit::Mac>()
        .map_err(|_| anyhow!("--expect-head: the MAC must be 64 hex digits"))?;
    Ok((chain, seq, mac))
}

/// The witnessed record `seq` must still be in the verified chain with MAC `mac`: else the
/// tail was cut, rows were wiped or an older database was restored.
async fn check_witness(
    store: &provisioner_store::SqlStore,
    verified: &provisioner_store::AuditSummary,
    chain: u32,
    seq: u64,
    mac: &audit::Mac,
) -> anyhow::Result<()> {
    let Some(summary) = verified
        .chains
        .iter()
        .find(|c| c.chain == chain)
        .map(|c| &c.summary)
    else {
        anyhow::bail!(
            "witnessed chain {chain} is missing: its rows were wiped or an older database \
             restored"
        );
    };
    if seq > summary.head.seq {
        anyhow::bail!(
            "witnessed record {seq} is missing: the chain ends at {} (its tail was cut, its rows \
             wiped, or an older database restored)",
            summary.head.seq
        );
    }
    if seq == summary.anchor.seq && summary.anchor.removed > 0 && summary.anchor.mac == *mac {
        // The witnessed record was purged by retention, and is the anchor the chain continues
        // from: the same record.
        return Ok(());
    }
    if seq <= summary.anchor.seq {
        anyhow::bail!(
            "witnessed record {seq} is before the retention anchor (seq {}): purged, cannot be \
             checked; use a later witness",
            summary.anchor.seq
        );
    }
    let found = audit::AuditLog::read_range(&store.audit_chain(chain), seq, 1)
        .await
        .context("reading the witnessed record")?;
    match found.first() {
        Some(record) if record.record.seq == seq && record.mac == *mac => Ok(()),
        Some(record) if record.record.seq == seq => anyhow::bail!(
            "witnessed record {seq} differs: its MAC is {}, the witness says {mac} (the chain \
             was rewritten or an older database restored)",
            record.mac
        ),
        _ => anyhow::bail!("witnessed record {seq} is missing from the chain"),
    }
}

/// `audit verify --json`: chain 0's figures at the top level (`records` and
/// `purged_before_anchor` over every chain), and every chain under `chains`.
fn verify_document(
    summary: &provisioner_store::AuditSummary,
    witnessed: bool,
) -> serde_json::Value {
    let chain = |c: &provisioner_store::ChainSummary| {
        let s = &c.summary;
        serde_json::json!({
            "chain": c.chain,
            "records": s.records,
            "first_seq": s.first_seq,
            "last_seq": s.last_seq,
            "purged_before_anchor": s.anchor.removed,
            "anchor_seq": s.anchor.seq,
            "head": {"seq": s.head.seq, "mac": s.head.mac.to_string()},
        })
    };
    let first = summary.chains.first().map(|c| c.summary);
    serde_json::json!({
        "ok": true,
        "records": summary.records(),
        "first_seq": first.and_then(|s| s.first_seq),
        "last_seq": first.and_then(|s| s.last_seq),
        "purged_before_anchor": summary.purged(),
        "anchor_seq": first.map(|s| s.anchor.seq),
        "head": first.map(|s| serde_json::json!({"seq": s.head.seq, "mac": s.head.mac.to_string()})),
        "chains": summary.chains.iter().map(chain).collect::<Vec<_>>(),
        "witness": witnessed.then_some("matched"),
    })
}

/// `provisioner audit verify|purge`.
pub(crate) async fn audit(config: &Config, command: AuditCommand) -> Result<(), Failure> {
    let store = store(config, false).await?;
    match command {
        AuditCommand::Verify { expect_head, json } => {
            let expected = expect_head
                .as_deref()
                .map(parse_head)
                .transpose()
                .map_err(Failure::Usage)?;
            let verified = match store
                .verify_audit()
                .await
                .context("audit chain verification failed")
            {
                Ok(summary) => match expected {
                    Some((chain, seq, mac)) => check_witness(&store, &summary, chain, seq, &mac)
                        .await
                        .map(|()| summary),
                    None => Ok(summary),
                },
                Err(e) => Err(e),
            };
            if json {
                let document = match &verified {
                    Ok(summary) => verify_document(summary, expected.is_some()),
                    Err(e) => serde_json::json!({"ok": false, "error": format!("{e:#}")}),
                };
                out(&json_text(&document)?)?;
            }
            let summary = verified.map_err(runtime)?;
            if json {
                return Ok(());
            }
            for c in &summary.chains {
                // An empty chain other than the first says nothing.
                if c.chain > 0 && c.summary.records == 0 && c.summary.anchor.is_genesis() {
                    continue;
                }
                let s = &c.summary;
                out(&format!(
                    "audit chain ok: {} records (seq {}..{}), {} purged before the anchor; head {}:{}",
                    s.records,
                    s.first_seq.unwrap_or(0),
                    s.last_seq.unwrap_or(0),
                    s.anchor.removed,
                    security::chain_position(c.chain, s.head.seq),
                    s.head.mac,
                ))?;
            }
            Ok(())
        }
        AuditCommand::Purge => {
            let policy = audit::RetentionPolicy::from_days(i64::from(config.audit_retention_days))
                .map_err(|e| Failure::Usage(anyhow!(e).context("AUDIT_LOG_RETENTION_DAYS")))?;
            let report =
                audit::AuditLog::purge(&*store, policy.cutoff(Utc::now()), audit::Actor::RETENTION)
                    .await
                    .context("purging the audit log")
                    .map_err(runtime)?;
            out(&format!(
                "purged {} records older than {} days; chain now anchored at seq {}",
                report.removed,
                policy.days(),
                report.anchor.seq
            ))
        }
    }
}

/// `provisioner keys status|rotate|reencrypt`.
pub(crate) async fn keys(config: &Config, command: KeysCommand) -> Result<(), Failure> {
    let store = store(config, false).await?;
    match command {
        KeysCommand::Status { json } => {
            let keys = store.keyring().key_infos();
            if json {
                return out(&json_text(&keys)?);
            }
            for key in keys {
                out(&format!(
                    "key {}  created {}  {}",
                    key.id,
                    key.created_at.to_rfc3339(),
                    if key.primary {
                        "primary"
                    } else {
                        "decrypt-only"
                    }
                ))?;
            }
            Ok(())
        }
        KeysCommand::Rotate => {
            // The store records `key_rotated` in the rotation's own transaction.
            let id = store
                .rotate_keys_if_older_than(0, audit::Actor::OPERATOR, Utc::now())
                .await
                .context("rotating the data key")
                .map_err(runtime)?;
            out(&format!(
                "new primary key: {}",
                id.map_or_else(|| "unchanged".to_owned(), |k| k.to_string())
            ))
        }
        KeysCommand::Reencrypt => {
            let moved = store
                .reencrypt_all()
                .await
                .context("re-encrypting")
                .map_err(runtime)?;
            let record = audit::NewAuditRecord::new(
                audit::Actor::OPERATOR,
                audit::Action::KEYS_REENCRYPTED,
                audit::Outcome::Success,
            )
            .detail(audit::DetailKey::Count, moved.to_string())
            .map_err(|e| runtime(anyhow!(e)))?;
            audit::AuditLog::append(&*store, record)
                .await
                .map_err(|e| runtime(anyhow!(e)))?;
            out(&format!(
                "re-encrypted {moved} values under the primary key"
            ))
        }
    }
}

/// `provisioner dlq list|show|retry|discard`.
pub(crate) async fn dlq(config: &Config, command: DlqCommand) -> Result<(), Failure> {
    let store = store(config, false).await?;
    let not_found = |id: &str| Failure::Usage(anyhow!("no dead letter {id}"));
    match command {
        DlqCommand::List { all, json } => {
            let state = (!all).then_some(DeadLetterState::Open);
            let letters = store
                .dead_letters(state, 1000)
                .await
                .map_err(|e| runtime(anyhow!(e)))?;
            if json {
                return out(&json_text(&letters)?);
            }
            for l in letters {
                out(&format!(
                    "{}  {}  {}  order={}  attempts={}  {}",
                    l.id,
                    l.created_at.to_rfc3339(),
                    l.state,
                    l.order_id.as_deref().unwrap_or("-"),
                    l.attempts,
                    l.reason
                ))?;
            }
            Ok(())
        }
        DlqCommand::Show { id, payload } => {
            let letter = store
                .dead_letter_by_id(&id)
                .await
                .map_err(|e| runtime(anyhow!(e)))?
                .ok_or_else(|| not_found(&id))?;
            out(&serde_json::to_string_pretty(&letter).map_err(|e| runtime(anyhow!(e)))?)?;
            if payload
                && let Some(bytes) = store
                    .dead_letter_payload(&id)
                    .await
                    .map_err(|e| runtime(anyhow!(e)))?
            {
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                out(&format!("payload (hex): {hex}"))?;
            }
            Ok(())
        }
        DlqCommand::Retry { id } => {
            let letter = store
                .dead_letter_by_id(&id)
                .await
                .map_err(|e| runtime(anyhow!(e)))?
                .ok_or_else(|| not_found(&id))?;
            let Some(order_id) = letter.order_id.clone() else {
                return Err(Failure::Usage(anyhow!(
                    "dead letter {id} names no order (a malformed event); discard it, the reconcile sweep covers its order"
                )));
            };
            // A failed job keeps its row (the ledger): it is reopened from its recovery point,
            // and its checks accept the failed status this provisioner wrote. A dead letter
            // whose order has no job (an event's) gets a fresh operator job.
            let job = store
                .job(&order_id)
                .await
                .map_err(|e| runtime(anyhow!(e)))?;
            let reopen = provisioner_store::Reopen {
                by: JobSource::Operator,
                customer_number: None,
                account_id: None,
                event_id: None,
            };
            match job {
                Some(job) if matches!(job.state, JobState::Failed | JobState::Refused) => {
                    let records = vec![
                        op_record(audit::Action::JOB_REOPENED, Some(&order_id))?,
                        op_record(audit::Action::DEAD_LETTER_RETRIED, Some(&order_id))?,
                    ];
                    let reopened = store
                        .reopen(&order_id, reopen, records, Utc::now())
                        .await
                        .map_err(|e| runtime(anyhow!(e)))?;
                    if !reopened {
                        return Err(Failure::Runtime(anyhow!(
                            "order {order_id}'s job changed meanwhile; run `provisioner jobs show {order_id}`"
                        )));
                    }
                }
                Some(job) => {
                    return Err(Failure::Usage(anyhow!(
                        "order {order_id}'s job is {} (only failed or refused jobs are retried)",
                        job.state
                    )));
                }
                None => {
                    return Err(Failure::Usage(anyhow!(
                        "order {order_id} has no job to retry"
                    )));
                }
            }
            out(&format!(
                "order {order_id} queued again; a running provisioner picks it up"
            ))
        }
        DlqCommand::Discard { id } => {
            let record = op_record(audit::Action::DEAD_LETTER_DISCARDED, None)?;
            store
                .set_dead_letter_state(&id, DeadLetterState::Discarded, vec![record], Utc::now())
                .await
                .map_err(|e| match e {
                    provisioner_store::Error::NotFound { .. } => not_found(&id),
                    other => runtime(anyhow!(other)),
                })?;
            out(&format!("dead letter {id} discarded"))
        }
    }
}

/// An operator's audit record, stored with the change it records.
fn op_record(
    action: audit::Action,
    order_id: Option<&str>,
) -> Result<audit::NewAuditRecord, Failure> {
    let mut record =
        audit::NewAuditRecord::new(audit::Actor::OPERATOR, action, audit::Outcome::Success);
    if let Some(id) = order_id {
        record = record.order_id(id).map_err(|e| runtime(anyhow!(e)))?;
    }
    Ok(record)
}

/// `provisioner reconcile`: one sweep now.
pub(crate) async fn reconcile(config: &Config) -> Result<(), Failure> {
    let store = store(config, true).await?;
    let wired = app::wire(config, store, app::engine_config(config))
        .await
        .map_err(Failure::Usage)?;
    let n = wired
        .engine
        .build()
        .reconcile_once()
        .await
        .map_err(|e| runtime(anyhow!(e)))?;
    out(&format!(
        "reconcile enqueued {n} approved order(s) without a job or with a refused or failed one"
    ))
}

/// `provisioner migrate`.
pub(crate) async fn migrate(config: &Config) -> Result<(), Failure> {
    store(config, true).await?;
    out("migrations applied")
}

/// `provisioner backup --to FILE`.
pub(crate) async fn backup(config: &Config, args: BackupArgs) -> Result<(), Failure> {
    if !secrecy::ExposeSecret::expose_secret(&config.database_url).starts_with("sqlite://") {
        return Err(Failure::Usage(anyhow!(
            "backup --to works for SQLite; back PostgreSQL up with pg_dump (see README, Operations)"
        )));
    }
    // No process lock: a backup may run next to the service.
    provisioner_store::SqlStore::backup_sqlite(
        secrecy::ExposeSecret::expose_secret(&config.database_url),
        &args.to,
    )
    .await
    .with_context(|| format!("backing up to {}", args.to.display()))
    .map_err(runtime)?;
    out(&format!("backup written to {}", args.to.display()))
}
