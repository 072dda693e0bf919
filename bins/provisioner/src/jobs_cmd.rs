//! `provisioner jobs list|show`: the job ledger as an operator reads it (README, "Operating:
//! jobs").
//!
//! Both commands open the store like the other operator commands (no one-service lock, no
//! migrations), so they work beside a running `provisioner run` on SQLite and on PostgreSQL.
//! Every state is shown twice: the view the status API reports (`received`, `provisioning`,
//! `provisioned`, `failed`, `refused`; [`provisioner_store::JobView::of`]) and the raw
//! state and recovery step behind it. `--json` prints one document with the store's own
//! snake_case field names: every field of a job (plus its `view`), so fields added to
//! [`provisioner_store::Job`] appear without a change here; the text form prints the fields it
//! knows by name and any other field after them.

use std::io::Write as _;

use anyhow::anyhow;
use chrono::{DateTime, SecondsFormat, Utc};
use provisioner_store::{Job, JobFilter, JobView, Store};
use serde::Serialize;

use crate::cli::{Failure, JobsCommand, JobsListArgs, JobsShowArgs};
use crate::config::Config;

/// Most audit records `jobs show` prints for one Order (a note on stderr says when more exist).
const AUDIT_LIMIT: u32 = 1000;

/// A job as `--json` prints it: its view, then every field of [`Job`].
#[derive(Serialize)]
struct JobJson<'a> {
    view: JobView,
    #[serde(flatten)]
    job: &'a Job,
}

impl<'a> JobJson<'a> {
    fn of(job: &'a Job) -> Self {
        JobJson {
            view: JobView::of(job),
            job,
        }
    }
}

/// `jobs show --json`.
#[derive(Serialize)]
struct ShowJson<'a> {
    job: JobJson<'a>,
    audit: &'a [audit::SealedRecord],
}

fn runtime(e: impl Into<anyhow::Error>) -> Failure {
    Failure::Runtime(e.into())
}

/// Writes `text` to stdout at once.
fn print(text: &str) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| runtime(anyhow!(e).context("writing to stdout")))
}

fn json_text(value: &impl Serialize) -> Result<String, Failure> {
    let mut text = serde_json::to_string_pretty(value).map_err(runtime)?;
    text.push('\n');
    Ok(text)
}

/// `provisioner jobs list|show`.
pub(crate) async fn jobs(config: &Config, command: JobsCommand) -> Result<(), Failure> {
    let store = crate::ops::store(config, false).await?;
    match command {
        JobsCommand::List(args) => list(&*store, args).await,
        JobsCommand::Show(args) => show(&*store, args).await,
    }
}

async fn list(store: &dyn Store, args: JobsListArgs) -> Result<(), Failure> {
    // One more than asked, to tell whether another page follows.
    let filter = JobFilter {
        view: args.state,
        customer_number: args.customer,
        after_seq: args.after,
        limit: args.limit.saturating_add(1),
    };
    let mut jobs = store
        .list_jobs(&filter)
        .await
        .map_err(|e| runtime(anyhow!(e).context("listing jobs")))?;
    let more = jobs.len() > args.limit as usize;
    jobs.truncate(args.limit as usize);
    if args.json {
        let shown: Vec<JobJson<'_>> = jobs.iter().map(JobJson::of).collect();
        print(&json_text(&shown)?)?;
    } else {
        print(&list_text(&jobs))?;
    }
    if let (true, Some(last)) = (more, jobs.last()) {
        eprintln!(
            "provisioner: more jobs follow; the next page: --after {}",
            last.seq
        );
    }
    Ok(())
}

async fn show(store: &dyn Store, args: JobsShowArgs) -> Result<(), Failure> {
    // Jobs are stored under the 18-character id events carry.
    let order_id = args.order_id.to_18();
    let job = store
        .job(&order_id)
        .await
        .map_err(|e| runtime(anyhow!(e).context("reading the job")))?
        .ok_or_else(|| runtime(anyhow!("no job for order {order_id}")))?;
    let audit = store
        .audit_for_order(&order_id, AUDIT_LIMIT)
        .await
        .map_err(|e| runtime(anyhow!(e).context("reading the order's audit records")))?;
    if args.json {
        print(&json_text(&ShowJson {
            job: JobJson::of(&job),
            audit: &audit,
        })?)?;
    } else {
        print(&show_text(&job, &audit)?)?;
    }
    if audit.len() >= AUDIT_LIMIT as usize {
        eprintln!(
            "provisioner: only the first {AUDIT_LIMIT} audit records of {order_id} are shown"
        );
    }
    Ok(())
}

fn time(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn or_dash(value: Option<&str>) -> String {
    value.map_or_else(|| "-".to_owned(), str::to_owned)
}

fn services(job: &Job) -> String {
    if job.service_ids.is_empty() {
        "-".to_owned()
    } else {
        job.service_ids.join(",")
    }
}

/// Rows as columns separated by two spaces, each as wide as its widest cell; no trailing
/// blanks.
fn columns(rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            let width = cell.chars().count();
            match widths.get_mut(i) {
                Some(w) => *w = (*w).max(width),
                None => widths.push(width),
            }
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn list_text(jobs: &[Job]) -> String {
    if jobs.is_empty() {
        return "no jobs\n".to_owned();
    }
    let header = [
        "SEQ",
        "ORDER",
        "STATE",
        "RAW",
        "CUSTOMER",
        "WHMCS_ORDER",
        "SERVICES",
        "ATTEMPTS",
        "UPDATED",
    ];
    let mut rows = vec![header.map(str::to_owned).to_vec()];
    rows.extend(jobs.iter().map(|job| {
        vec![
            job.seq.to_string(),
            job.order_id.clone(),
            JobView::of(job).to_string(),
            format!("{}/{}", job.state, job.step),
            job.customer_number.clone(),
            or_dash(job.whmcs_order_id.as_deref()),
            services(job),
            job.attempts.to_string(),
            time(&job.updated_at),
        ]
    }));
    columns(&rows)
}

/// The fields of [`Job`] that [`show_text`] prints by name; any other is printed after them.
const KNOWN_FIELDS: &[&str] = &[
    "seq",
    "order_id",
    "customer_number",
    "account_id",
    "event_id",
    "source",
    "state",
    "step",
    "whmcs_order_id",
    "service_ids",
    "attempts",
    "next_attempt_at",
    "lease_owner",
    "lease_until",
    "last_error",
    "created_at",
    "updated_at",
];

/// A JSON value as one text cell: strings bare, null as `-`, anything else as JSON.
fn cell(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) if items.is_empty() => "-".to_owned(),
        serde_json::Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn show_text(job: &Job, audit: &[audit::SealedRecord]) -> Result<String, Failure> {
    let view = JobView::of(job);
    let field = |name: &str, value: String| vec![name.to_owned(), value];
    let mut fields = vec![
        field("order", job.order_id.clone()),
        field("seq", job.seq.to_string()),
        field(
            "state",
            format!("{view} (state {}, step {})", job.state, job.step),
        ),
        field("customer", job.customer_number.clone()),
        field("account", or_dash(job.account_id.as_deref())),
        field(
            "source",
            match &job.event_id {
                Some(event) => format!("{} (event {event})", job.source),
                None => job.source.to_string(),
            },
        ),
        field("attempts", job.attempts.to_string()),
        field("next_attempt", time(&job.next_attempt_at)),
        field("last_reason", or_dash(job.last_error.as_deref())),
        field("whmcs_order", or_dash(job.whmcs_order_id.as_deref())),
        field("services", services(job)),
        field(
            "lease",
            match (&job.lease_owner, &job.lease_until) {
                (Some(owner), Some(until)) => format!("{owner} until {}", time(until)),
                (Some(owner), None) => owner.clone(),
                _ => "-".to_owned(),
            },
        ),
        field("created", time(&job.created_at)),
        field("updated", time(&job.updated_at)),
    ];
    // Fields this command does not know by name yet, as the store serialises them.
    if let serde_json::Value::Object(all) = serde_json::to_value(job).map_err(runtime)? {
        fields.extend(
            all.iter()
                .filter(|(name, _)| !KNOWN_FIELDS.contains(&name.as_str()))
                .map(|(name, value)| field(name, cell(value))),
        );
    }
    let mut out = columns(&fields);
    out.push('\n');
    if audit.is_empty() {
        out.push_str("audit: no records\n");
        return Ok(out);
    }
    out.push_str(&format!("audit ({} records):\n", audit.len()));
    let mut rows = vec![
        ["SEQ", "AT", "ACTOR", "ACTION", "OUTCOME", "DETAILS"]
            .map(str::to_owned)
            .to_vec(),
    ];
    rows.extend(audit.iter().map(|sealed| {
        let r = &sealed.record;
        let details: Vec<String> = r
            .details
            .iter()
            .map(|(key, value)| format!("{}={value}", key.as_str()))
            .collect();
        vec![
            r.seq.to_string(),
            time(&r.at),
            r.actor.to_string(),
            r.action.to_string(),
            r.outcome.to_string(),
            if details.is_empty() {
                "-".to_owned()
            } else {
                details.join(" ")
            },
        ]
    }));
    out.push_str(&columns(&rows));
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn columns_align_without_trailing_blanks() {
        let rows = vec![
            vec!["A".to_owned(), "BB".to_owned(), "C".to_owned()],
            vec!["long".to_owned(), "x".to_owned(), String::new()],
        ];
        assert_eq!(columns(&rows), "A     BB  C\nlong  x\n");
    }

    #[test]
    fn json_values_become_cells() {
        use serde_json::json;
        assert_eq!(cell(&json!(null)), "-");
        assert_eq!(cell(&json!("op")), "op");
        assert_eq!(cell(&json!([])), "-");
        assert_eq!(cell(&json!(["1", "2"])), "1,2");
        assert_eq!(cell(&json!(3)), "3");
        assert_eq!(cell(&json!(true)), "true");
    }
}
