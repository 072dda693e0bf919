//! Order intake's idempotency ledger: one row per customer and `Idempotency-Key`, stored before
//! anything is sent to Salesforce, holding the request's fingerprint and, once there is one,
//! the final answer.

use std::time::Duration;

use audit::NewAuditRecord;
use chrono::{DateTime, Utc};

use crate::Backend;
use crate::error::Result;
use crate::sql::SqlStore;
use crate::tx::{Arg, Row};
use crate::types::{OrderRequestAnswer, OrderRequestKey, OrderRequestStart, ms};

const W: &str = "order request";

const SQL_INSERT: &str = "INSERT INTO order_requests (customer_number, idempotency_key, \
     fingerprint, state, claimed_until, created_at, updated_at) \
     VALUES ($1, $2, $3, 'in_flight', $4, $5, $5) \
     ON CONFLICT (customer_number, idempotency_key) DO NOTHING";

const SQL_TAKE_OVER: &str = "UPDATE order_requests SET claimed_until = $1, updated_at = $2 \
     WHERE customer_number = $3 AND idempotency_key = $4 AND state = 'in_flight' \
     AND claimed_until = $5";

const SQL_ANSWER: &str = "UPDATE order_requests SET state = 'answered', answer_status = $1, \
     answer = $2, order_id = $3, updated_at = $4 \
     WHERE customer_number = $5 AND idempotency_key = $6";

const SQL_RELEASE: &str = "UPDATE order_requests SET claimed_until = 0, updated_at = $1 \
     WHERE customer_number = $2 AND idempotency_key = $3 AND state = 'in_flight'";

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

impl SqlStore {
    pub(crate) async fn begin_order_request_row(
        &self,
        key: &OrderRequestKey,
        fingerprint: &str,
        hold: Duration,
        now: DateTime<Utc>,
    ) -> Result<OrderRequestStart> {
        let (customer, idem) = (key.customer_number.clone(), key.idempotency_key.clone());
        let fingerprint = fingerprint.to_owned();
        let now_ms = ms(now);
        let until = now_ms.saturating_add(millis(hold));
        let lock = if self.backend() == Backend::Postgres {
            " FOR UPDATE"
        } else {
            ""
        };
        let select = format!(
            "SELECT fingerprint, state, answer_status, answer, order_id, claimed_until \
             FROM order_requests WHERE customer_number = $1 AND idempotency_key = $2{lock}"
        );
        self.transact("starting an order request", move |tx| {
            Box::pin(async move {
                let inserted = tx
                    .exec(
                        "storing an order request",
                        SQL_INSERT,
                        &[
                            Arg::text(customer.as_str()),
                            Arg::text(idem.as_str()),
                            Arg::text(fingerprint.as_str()),
                            Arg::Int(until),
                            Arg::Int(now_ms),
                        ],
                    )
                    .await?;
                if inserted == 1 {
                    return Ok(OrderRequestStart::Started { taken_over: false });
                }
                let rows = tx
                    .query(
                        "reading an order request",
                        &select,
                        &[Arg::text(customer.as_str()), Arg::text(idem.as_str())],
                    )
                    .await?;
                let Some(row) = rows.first() else {
                    // Deleted between the two statements: nothing of it is left to answer.
                    return Ok(OrderRequestStart::InFlight {
                        retry_after: Duration::from_secs(1),
                    });
                };
                if Row::required(row.text("fingerprint", W)?, "fingerprint", W)? != fingerprint {
                    return Ok(OrderRequestStart::Mismatch);
                }
                if Row::required(row.text("state", W)?, "state", W)? == "answered" {
                    let status = Row::required(row.int("answer_status", W)?, "answer_status", W)?;
                    return Ok(OrderRequestStart::Answered(OrderRequestAnswer {
                        status: u16::try_from(status).unwrap_or(500),
                        body: Row::required(row.text("answer", W)?, "answer", W)?,
                        order_id: row.text("order_id", W)?,
                    }));
                }
                let claimed = Row::required(row.int("claimed_until", W)?, "claimed_until", W)?;
                if claimed > now_ms {
                    let left = u64::try_from(claimed - now_ms).unwrap_or(0);
                    return Ok(OrderRequestStart::InFlight {
                        retry_after: Duration::from_millis(left),
                    });
                }
                let taken = tx
                    .exec(
                        "taking over an order request",
                        SQL_TAKE_OVER,
                        &[
                            Arg::Int(until),
                            Arg::Int(now_ms),
                            Arg::text(customer.as_str()),
                            Arg::text(idem.as_str()),
                            Arg::Int(claimed),
                        ],
                    )
                    .await?;
                Ok(if taken == 1 {
                    OrderRequestStart::Started { taken_over: true }
                } else {
                    OrderRequestStart::InFlight {
                        retry_after: Duration::from_secs(1),
                    }
                })
            })
        })
        .await
    }

    pub(crate) async fn answer_order_request_row(
        &self,
        key: &OrderRequestKey,
        answer: OrderRequestAnswer,
        audit: Vec<NewAuditRecord>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let args = vec![
            Arg::Int(i64::from(answer.status)),
            Arg::Text(Some(answer.body)),
            Arg::Text(answer.order_id),
            Arg::Int(ms(now)),
            Arg::text(key.customer_number.as_str()),
            Arg::text(key.idempotency_key.as_str()),
        ];
        self.transact("answering an order request", move |tx| {
            Box::pin(async move {
                tx.exec("answering an order request", SQL_ANSWER, &args)
                    .await?;
                audit.into_iter().for_each(|r| tx.audit(r));
                Ok(())
            })
        })
        .await
    }

    pub(crate) async fn release_order_request_row(
        &self,
        key: &OrderRequestKey,
        audit: Vec<NewAuditRecord>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let args = vec![
            Arg::Int(ms(now)),
            Arg::text(key.customer_number.as_str()),
            Arg::text(key.idempotency_key.as_str()),
        ];
        self.transact("releasing an order request", move |tx| {
            Box::pin(async move {
                tx.exec("releasing an order request", SQL_RELEASE, &args)
                    .await?;
                audit.into_iter().for_each(|r| tx.audit(r));
                Ok(())
            })
        })
        .await
    }

    pub(crate) async fn order_request_customer_row(
        &self,
        order_id: &str,
    ) -> Result<Option<(String, DateTime<Utc>)>> {
        let row = self
            .read_opt(
                "finding an order request by Order",
                "SELECT customer_number, updated_at FROM order_requests WHERE order_id = $1",
                &[Arg::text(order_id)],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let customer = Row::required(row.text("customer_number", W)?, "customer_number", W)?;
        let at = Row::required(row.int("updated_at", W)?, "updated_at", W)?;
        Ok(Some((
            customer,
            DateTime::from_timestamp_millis(at).unwrap_or_default(),
        )))
    }
}
