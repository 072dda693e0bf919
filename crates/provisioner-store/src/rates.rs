//! Rate limits shared by every instance on the database (GCRA, one row per key).

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::Backend;
use crate::error::Result;
use crate::jobs::now_sql;
use crate::sql::{NowSource, SqlStore};
use crate::tx::{Arg, Row};
use crate::types::{SharedRate, ms};

impl SqlStore {
    pub(crate) async fn take_rate_slot_row(
        &self,
        scope: &str,
        key: &str,
        rate: SharedRate,
        now: DateTime<Utc>,
    ) -> Result<Option<Duration>> {
        let now_expr = now_sql(self.now_source, "$5");
        let greatest = match self.backend() {
            Backend::Postgres => "GREATEST",
            Backend::Sqlite => "MAX",
        };
        let (interval, tolerance) = (rate.interval_ms(), rate.tolerance_ms());
        let take = format!(
            "INSERT INTO rate_limits (scope, key, tat_ms) VALUES ($1, $2, {now_expr} + $3) {}",
            gcra_upsert(greatest, &now_expr, "$3", "$4")
        );
        let wait = format!(
            "SELECT {} AS wait_ms FROM rate_limits WHERE scope = $1 AND key = $2",
            gcra_wait(greatest, "tat_ms", &now_expr, "$3", "$4")
        );
        let mut args = vec![
            Arg::text(scope),
            Arg::text(key),
            Arg::Int(interval),
            Arg::Int(tolerance),
        ];
        if self.now_source == NowSource::Caller {
            args.push(Arg::Int(ms(now)));
        }
        if self.backend() == Backend::Postgres {
            // Each statement on its own, without BEGIN and COMMIT round trips: the take is
            // atomic by itself, and the wait it reads after a refusal is only advice (the
            // next take decides again).
            if !self
                .one_statement("taking a rate slot", &take, &args)
                .await?
                .is_empty()
            {
                return Ok(None);
            }
            let rows = self
                .one_statement("reading a rate limit", &wait, &args)
                .await?;
            return wait_of(rows.first()).map(Some);
        }
        self.transact("taking a rate slot", move |tx| {
            Box::pin(async move {
                if tx
                    .query_opt("taking a rate slot", &take, &args)
                    .await?
                    .is_some()
                {
                    return Ok(None);
                }
                let row = tx.query_opt("reading a rate limit", &wait, &args).await?;
                wait_of(row.as_ref()).map(Some)
            })
        })
        .await
    }
}

/// The GCRA's take, the tail of an `INSERT INTO rate_limits (scope, key, tat_ms) ...` whose new
/// row starts at now + `interval`: an event is let through when the key's theoretical arrival
/// time, moved on by one interval, stays within `tolerance` (`burst` intervals) of now. One
/// statement, so two instances can't both take the last slot (PostgreSQL locks the row for the
/// upsert). It returns a row only when the slot was taken. The arguments are SQL expressions:
/// `greatest` is the backend's two-argument maximum.
pub(crate) fn gcra_upsert(greatest: &str, now: &str, interval: &str, tolerance: &str) -> String {
    format!(
        "ON CONFLICT (scope, key) DO UPDATE \
         SET tat_ms = {greatest}(rate_limits.tat_ms, {now}) + {interval} \
         WHERE {greatest}(rate_limits.tat_ms, {now}) + {interval} - {now} <= {tolerance} \
         RETURNING tat_ms"
    )
}

/// The GCRA's wait, in ms, until a slot of the row whose arrival time is `tat` comes back (0 or
/// less: one is free).
pub(crate) fn gcra_wait(
    greatest: &str,
    tat: &str,
    now: &str,
    interval: &str,
    tolerance: &str,
) -> String {
    format!("{greatest}({tat}, {now}) + {interval} - {tolerance} - {now}")
}

/// The wait the rate-limit row gives after a refused take (at least 1 ms).
fn wait_of(row: Option<&Row>) -> Result<Duration> {
    let wait_ms = match row {
        Some(row) => row.int("wait_ms", "rate limit")?,
        None => None,
    };
    Ok(refused_wait(wait_ms))
}

/// A refused take's wait from the [`gcra_wait`] the database computed (NULL when it had no
/// row to read): at least 1 ms, so a refusal always waits.
pub(crate) fn refused_wait(wait_ms: Option<i64>) -> Duration {
    Duration::from_millis(u64::try_from(wait_ms.unwrap_or(0).max(1)).unwrap_or(1))
}
