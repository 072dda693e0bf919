//! The alert outbox: security alerts stored until the webhook has taken them.

use std::time::Duration;

use audit::NewAuditRecord;
use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::jobs::now_sql;
use crate::sql::{NowSource, SqlStore};
use crate::tx::{Arg, Row};
use crate::types::{NewAlert, QueuedAlert, ms};

const SQL_INSERT_ALERT: &str = "INSERT INTO alert_outbox (kind, body, attempts, next_attempt_at, \
     created_at) VALUES ($1, $2, 0, $3, $3)";

/// Drops every alert but the newest `$1`.
const SQL_BOUND_ALERTS: &str = "DELETE FROM alert_outbox WHERE id <= \
     (SELECT id FROM alert_outbox ORDER BY id DESC LIMIT 1 OFFSET $1)";

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

impl SqlStore {
    /// The clock argument a statement built with [`now_sql`] needs, if any.
    fn caller_now(&self, now: DateTime<Utc>) -> Option<Arg> {
        (self.now_source == NowSource::Caller).then(|| Arg::Int(ms(now)))
    }

    pub(crate) async fn queue_alert_row(
        &self,
        alert: NewAlert,
        max_waiting: u64,
        audit: Vec<NewAuditRecord>,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let insert = vec![
            Arg::Text(Some(alert.kind)),
            Arg::Text(Some(alert.body)),
            Arg::Int(ms(now)),
        ];
        let keep = i64::try_from(max_waiting.max(1)).unwrap_or(i64::MAX);
        self.transact("queueing an alert", move |tx| {
            Box::pin(async move {
                tx.exec("queueing an alert", SQL_INSERT_ALERT, &insert)
                    .await?;
                let dropped = tx
                    .exec(
                        "bounding the alert outbox",
                        SQL_BOUND_ALERTS,
                        &[Arg::Int(keep)],
                    )
                    .await?;
                audit.into_iter().for_each(|r| tx.audit(r));
                Ok(dropped)
            })
        })
        .await
    }

    pub(crate) async fn take_alert_rows(
        &self,
        limit: u32,
        hold: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<QueuedAlert>> {
        let now_expr = now_sql(self.now_source, "$3");
        let skip_locked = match self.now_source {
            NowSource::Postgres => " FOR UPDATE SKIP LOCKED",
            NowSource::Caller if self.backend() == crate::Backend::Postgres => {
                " FOR UPDATE SKIP LOCKED"
            }
            NowSource::Caller => "",
        };
        let sql = format!(
            "UPDATE alert_outbox SET next_attempt_at = {now_expr} + $1, attempts = attempts + 1 \
             WHERE id IN (SELECT id FROM alert_outbox WHERE next_attempt_at <= {now_expr} \
             ORDER BY id LIMIT $2{skip_locked}) RETURNING id, kind, body, attempts"
        );
        let mut args = vec![Arg::Int(millis(hold)), Arg::Int(i64::from(limit))];
        args.extend(self.caller_now(now));
        let mut taken = self
            .transact("taking alerts", move |tx| {
                Box::pin(async move {
                    let rows = tx.query("taking alerts", &sql, &args).await?;
                    rows.iter().map(queued_from_row).collect::<Result<Vec<_>>>()
                })
            })
            .await?;
        taken.sort_by_key(|a| a.id);
        Ok(taken)
    }

    pub(crate) async fn delete_alert_row(&self, id: i64) -> Result<()> {
        self.write(
            "removing a delivered alert",
            "DELETE FROM alert_outbox WHERE id = $1",
            vec![Arg::Int(id)],
        )
        .await
        .map(|_| ())
    }

    pub(crate) async fn retry_alert_row(
        &self,
        id: i64,
        after: Duration,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let sql = format!(
            "UPDATE alert_outbox SET next_attempt_at = {} + $1, last_error = $2 WHERE id = $3",
            now_sql(self.now_source, "$4")
        );
        let mut args = vec![Arg::Int(millis(after)), Arg::text(error), Arg::Int(id)];
        args.extend(self.caller_now(now));
        self.transact("rescheduling an alert", move |tx| {
            Box::pin(async move { tx.exec("rescheduling an alert", &sql, &args).await })
        })
        .await
        .map(|_| ())
    }

    pub(crate) async fn count_alert_rows(&self) -> Result<u64> {
        self.read_count(
            "counting waiting alerts",
            "SELECT COUNT(*) AS n FROM alert_outbox",
            &[],
        )
        .await
    }
}

fn queued_from_row(row: &Row) -> Result<QueuedAlert> {
    const W: &str = "alert outbox";
    Ok(QueuedAlert {
        id: Row::required(row.int("id", W)?, "id", W)?,
        kind: Row::required(row.text("kind", W)?, "kind", W)?,
        body: Row::required(row.text("body", W)?, "body", W)?,
        attempts: u32::try_from(Row::required(row.int("attempts", W)?, "attempts", W)?)
            .unwrap_or(u32::MAX),
    })
}
