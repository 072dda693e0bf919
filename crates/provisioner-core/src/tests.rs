//! mockall tests of every decision of the core: each check, each error class, resumption from
//! each recovery point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use audit::{AuditKey, ChainHead, MockAuditLog, NewAuditRecord};
use chrono::Utc;
use provisioner_store::{Job, JobSource, JobState, MockStore, Step};
use secrecy::SecretString;
use sf_rest::{MockOrderApi, Order, OrderId, OrderItem};
use whmcs_client::{ClientDetails, ClientStatus, MockWhmcsApi, PlacedOrder};

use crate::alerts::MockAlerts;
use crate::config::{EngineConfig, OrderStatuses};
use crate::intake::{EventFields, IntakeItem, IntakeResult};
use crate::job::{JobOutcome, JobRunner, Ports};
use crate::reason::StopReason;

const ORDER: &str = "801000000000001AAA";
const CUSTOMER: &str = "C-1001";

type Calls = Arc<Mutex<Vec<String>>>;

fn log(calls: &Calls, s: impl Into<String>) {
    let mut s = s.into();
    // A job run in a worker slot (`World::run_in_slot`): whether it held its slot for this.
    if let Some(held) = crate::slot::current_slot_held() {
        s.push_str(if held { "@held" } else { "@lent" });
    }
    calls.lock().unwrap().push(s);
}

/// Logs audit records as the audit mock does (`audit:<action>`, `audit:<action>:<step>`):
/// the records a store write carries in its transaction.
fn log_records(calls: &Calls, records: &[NewAuditRecord]) {
    let key = AuditKey::from_bytes(&[7u8; 32]).unwrap();
    for r in records {
        let sealed = ChainHead::GENESIS.seal(&key, r.clone()).unwrap();
        log(calls, format!("audit:{}", sealed.record.action));
        if let Some(step) = sealed.record.details.get(audit::DetailKey::Step) {
            log(calls, format!("audit:{}:{step}", sealed.record.action));
        }
    }
}

/// A job claimed now whose intent (the call of unknown outcome at `step`) was sent
/// `sent_ago` before the claim with a 30 s timeout.
fn job_with_intent(step: Step, attempts: u32, sent_ago: chrono::Duration) -> Job {
    let mut job = job(step, attempts);
    job.intent = Some(provisioner_store::Intent {
        sent_at: job.claimed_at() - sent_ago,
        timeout: std::time::Duration::from_secs(30),
    });
    job
}

/// A job whose call of unknown outcome can no longer commit (sent a day ago).
fn settled_job(step: Step, attempts: u32) -> Job {
    job_with_intent(step, attempts, chrono::Duration::days(1))
}

fn job(step: Step, attempts: u32) -> Job {
    let now = Utc::now();
    Job {
        seq: 1,
        order_id: ORDER.into(),
        customer_number: CUSTOMER.into(),
        account_id: None,
        event_id: Some("evt-1".into()),
        source: JobSource::Event,
        state: JobState::Running,
        step,
        whmcs_order_id: matches!(
            step,
            Step::WhmcsOrdered | Step::AcceptUnknown | Step::Accepted
        )
        .then(|| "77".into()),
        service_ids: if matches!(
            step,
            Step::WhmcsOrdered | Step::AcceptUnknown | Step::Accepted
        ) {
            vec!["5".into(), "6".into()]
        } else {
            vec![]
        },
        attempts,
        next_attempt_at: now,
        lease_owner: Some("w".into()),
        lease_until: None,
        last_error: None,
        created_at: now,
        updated_at: now,
        reopened_by: None,
        reopened_at: None,
        writeback_since: None,
        stuck_alerted_at: None,
        claim_epoch: 1,
        intent: None,
    }
}

fn order(status: &str) -> Order {
    Order {
        id: OrderId::parse(ORDER).unwrap(),
        order_number: Some("00000100".into()),
        status: Some(status.into()),
        account_id: None,
        customer_number: Some(CUSTOMER.into()),
        whmcs_client_id: Some("12".into()),
        whmcs_order_id: None,
        request_id: None,
        items: vec![OrderItem {
            id: "802000000000001AAA".into(),
            quantity: 2,
            whmcs_product_id: Some("3".into()),
            billing_cycle: Some("monthly".into()),
            config_options: Some(SecretString::from(r#"{"9":"root-pw"}"#.to_owned())),
        }],
    }
}

fn whmcs_order(status: &str) -> whmcs_client::Order {
    serde_json::from_value(serde_json::json!({"id": 77, "userid": 12, "status": status})).unwrap()
}

/// A service of client 12 as GetClientsProducts shows it, with custom `fields` (id, value).
fn service(id: u64, order_id: u64, pid: u64, fields: &[(u64, &str)]) -> whmcs_client::Service {
    let fields: Vec<serde_json::Value> = fields
        .iter()
        .map(
            |(id, value)| serde_json::json!({"id": id, "name": "Salesforce Order", "value": value}),
        )
        .collect();
    serde_json::from_value(serde_json::json!({
        "id": id, "clientid": 12, "orderid": order_id, "pid": pid,
        "customfields": {"customfield": fields},
    }))
    .unwrap()
}

fn active_client() -> ClientDetails {
    ClientDetails {
        id: 12,
        status: ClientStatus::Active,
        first_name: String::new(),
        last_name: String::new(),
        company_name: String::new(),
        email: String::new(),
        custom_fields: vec![],
        email_verified: false,
    }
}

fn business(action: whmcs_client::Action, message: &str) -> whmcs_client::Error {
    whmcs_client::Error::Business {
        action,
        http_status: 200,
        message: message.into(),
    }
}

fn transient(action: whmcs_client::Action) -> whmcs_client::Error {
    whmcs_client::Error::Transient {
        action,
        http_status: Some(502),
        reason: "bad gateway".into(),
    }
}

fn sf_timeout() -> sf_rest::Error {
    sf_rest::Error::Transport {
        action: sf_rest::Action::FetchOrder,
        timeout: true,
        reason: "timed out".into(),
    }
}

fn unknown(action: whmcs_client::Action) -> whmcs_client::Error {
    whmcs_client::Error::UnknownOutcome {
        action,
        http_status: None,
        reason: "connection closed before the answer".into(),
    }
}

/// Mocks whose every call is logged; tests add the expectations they need.
struct World {
    calls: Calls,
    orders: MockOrderApi,
    whmcs: MockWhmcsApi,
    store: MockStore,
    config: EngineConfig,
    shutdown: bool,
    rate: Option<crate::job::ProvisionLimit>,
    /// The fake WHMCS services table: the lookup and the ref check read it, AddOrder adds to it.
    services: Arc<Mutex<Vec<whmcs_client::Service>>>,
    /// Lines the AddOrder of `add_order_ok` must carry.
    expect_lines: usize,
    /// Whether the AddOrder of `add_order_ok` drops the custom fields (a wrong field id).
    drops_fields: bool,
    /// What the claim decided about the customer's rate ([`JobRunner::run_claimed`]).
    claimed: provisioner_store::RateTake,
}

impl World {
    fn new() -> Self {
        let calls: Calls = Arc::default();
        let mut store = MockStore::new();
        let c = calls.clone();
        store
            .expect_advance()
            .returning(move |_, _, step, update, audit, _| {
                let mut s = format!("advance:{step}");
                if let Some(id) = update.whmcs_order_id {
                    s.push_str(&format!(":{id}"));
                }
                log(&c, s);
                log_records(&c, &audit);
                Ok(())
            });
        let c = calls.clone();
        store
            .expect_reschedule()
            .returning(move |_, _, retry, audit, _| {
                let mut s = format!("reschedule:count={}", retry.count_attempt);
                if let Some(step) = retry.step {
                    s.push_str(&format!(":step={step}"));
                }
                if retry.stuck_alerted {
                    s.push_str(":stuck");
                }
                log(&c, s);
                log_records(&c, &audit);
                Ok(())
            });
        let c = calls.clone();
        store.expect_finish().returning(move |_, _, end, audit, _| {
            if let Some(letter) = &end.dead_letter {
                log(&c, format!("dead_letter:{}", letter.reason));
            }
            log(&c, format!("finish:{}", end.state));
            log_records(&c, &audit);
            Ok(())
        });
        // The fence check before a failed job's PATCH.
        store.expect_renew_lease().returning(|_, _, _, _| Ok(()));
        let c = calls.clone();
        store.expect_release().returning(move |_, _, _| {
            log(&c, "release");
            Ok(())
        });
        let c = calls.clone();
        store
            .expect_dead_letter()
            .returning(move |letter, _, audit, _| {
                log(&c, format!("dead_letter:{}", letter.reason));
                log_records(&c, &audit);
                Ok("dl-1".into())
            });
        let mut orders = MockOrderApi::new();
        let c = calls.clone();
        orders.expect_update_order().returning(move |_, update| {
            // Every Order PATCH is bounded by the lease (a paused worker's PATCH sent late
            // would overwrite what the lease's next holder wrote).
            let deadline = update
                .deadline
                .expect("every Order PATCH carries a deadline");
            assert!(
                deadline > tokio::time::Instant::now(),
                "a PATCH on a live lease has time left"
            );
            log(
                &c,
                format!("sf_patch:{}", update.status.clone().unwrap_or_default()),
            );
            Ok(())
        });
        World {
            calls,
            orders,
            whmcs: MockWhmcsApi::new(),
            store,
            config: EngineConfig {
                order_ref_fields: Some(4.into()),
                ..EngineConfig::default()
            },
            shutdown: false,
            rate: None,
            services: Arc::default(),
            expect_lines: 2,
            drops_fields: false,
            claimed: provisioner_store::RateTake::Undecided,
        }
    }

    fn fetch_returns(&mut self, o: Order) {
        let c = self.calls.clone();
        self.orders.expect_fetch_order().returning(move |_| {
            log(&c, "sf_fetch");
            Ok(o.clone())
        });
    }

    fn client_active(&mut self) {
        let c = self.calls.clone();
        self.whmcs.expect_get_client_details().returning(move |_| {
            log(&c, "whmcs_client");
            Ok(active_client())
        });
    }

    /// GetClientsProducts over the fake services table: another Order's service 9, and with
    /// `found` services 5 and 6 of that WHMCS order carrying this Order's ref in field 4.
    fn lookup_finds(&mut self, found: Option<u64>) {
        {
            let mut services = self.services.lock().unwrap();
            services.push(service(9, 12, 3, &[(4, "801000000000009AAA")]));
            if let Some(o) = found {
                services.push(service(5, o, 3, &[(4, ORDER)]));
                services.push(service(6, o, 3, &[(4, ORDER)]));
            }
        }
        let c = self.calls.clone();
        let services = self.services.clone();
        self.whmcs
            .expect_client_service_refs()
            .returning(move |client| {
                assert_eq!(client, 12);
                log(&c, "whmcs_services");
                Ok(services
                    .lock()
                    .unwrap()
                    .iter()
                    .map(whmcs_client::ServiceRef::from)
                    .collect())
            });
    }

    /// AddOrder creates WHMCS order 77 with services 5, 6, ... holding each line's custom
    /// fields (none when `drops_fields`).
    fn add_order_ok(&mut self) {
        let c = self.calls.clone();
        let services = self.services.clone();
        let (expect_lines, drops) = (self.expect_lines, self.drops_fields);
        self.whmcs.expect_add_order().returning(move |o| {
            assert_eq!(o.lines.len(), expect_lines, "quantity 2 gives two lines");
            assert_eq!(o.client_id, 12);
            log(&c, "whmcs_add_order");
            let mut ids = Vec::new();
            let mut table = services.lock().unwrap();
            for (i, line) in o.lines.iter().enumerate() {
                let id = 5 + i as u64;
                let fields: Vec<(u64, &str)> = if drops {
                    Vec::new()
                } else {
                    line.custom_fields
                        .0
                        .iter()
                        .map(|(k, v)| (*k, v.as_str()))
                        .collect()
                };
                table.push(service(id, 77, line.product_id, &fields));
                ids.push(id);
            }
            Ok(PlacedOrder {
                order_id: 77,
                service_ids: ids,
                addon_ids: vec![],
                domain_ids: vec![],
                invoice_id: None,
            })
        });
    }

    fn accept_ok(&mut self) {
        let c = self.calls.clone();
        self.whmcs.expect_accept_order().returning(move |r| {
            assert_eq!(r.order_id, 77);
            assert!(r.auto_setup);
            log(&c, "whmcs_accept");
            Ok(())
        });
    }

    /// The ports, configuration and rate of this world (alerts and audit as in [`World::run`]).
    fn into_parts(self) -> (Ports, Arc<EngineConfig>, Option<crate::job::ProvisionLimit>) {
        let mut audit = MockAuditLog::new();
        audit.expect_append().returning(|r| {
            let key = AuditKey::from_bytes(&[7u8; 32]).unwrap();
            Ok(ChainHead::GENESIS.seal(&key, r).unwrap())
        });
        let ports = Ports {
            orders: Arc::new(self.orders),
            whmcs: Arc::new(self.whmcs),
            store: Arc::new(self.store),
            audit: Arc::new(audit),
            alerts: Arc::new(MockAlerts::new()),
            clock: Arc::new(crate::SystemClock::new()),
            opener: None,
        };
        (ports, Arc::new(self.config), self.rate)
    }

    async fn run(self, job: Job) -> (JobOutcome, Vec<String>) {
        let (mut outcomes, calls) = self.run_all(vec![job]).await;
        (outcomes.remove(0), calls)
    }

    /// [`World::run`] in a worker slot of its own, as the engine runs a job: every logged
    /// call says whether the job held its slot for it (`@held`, `@lent`). Also returns the
    /// slots free afterwards.
    async fn run_in_slot(self, job: Job) -> (JobOutcome, Vec<String>, usize) {
        let permits = Arc::new(tokio::sync::Semaphore::new(1));
        let permit = Arc::clone(&permits).acquire_owned().await.unwrap();
        let slot = crate::slot::Slot::new(Arc::clone(&permits), permit);
        let (outcome, calls) = Arc::clone(&slot).scope(self.run(job)).await;
        (outcome, calls, permits.available_permits())
    }

    /// Runs `jobs` one after the other through one runner (one process).
    async fn run_all(self, jobs: Vec<Job>) -> (Vec<JobOutcome>, Vec<String>) {
        let calls = self.calls.clone();
        let mut audit = MockAuditLog::new();
        let key = AuditKey::from_bytes(&[7u8; 32]).unwrap();
        let c = calls.clone();
        audit.expect_append().returning(move |r| {
            let sealed = ChainHead::GENESIS.seal(&key, r).unwrap();
            log(&c, format!("audit:{}", sealed.record.action));
            if let Some(step) = sealed.record.details.get(audit::DetailKey::Step) {
                log(&c, format!("audit:{}:{step}", sealed.record.action));
            }
            Ok(sealed)
        });
        let mut alerts = MockAlerts::new();
        let c = calls.clone();
        alerts
            .expect_order_refused()
            .returning(move |_, _| log(&c, "alert:refused"));
        let c = calls.clone();
        alerts
            .expect_provisioning_failed()
            .returning(move |_, _| log(&c, "alert:failed"));
        let c = calls.clone();
        alerts
            .expect_approval_withdrawn()
            .returning(move |_, _, whmcs| {
                log(
                    &c,
                    format!(
                        "alert:withdrawn:{}",
                        whmcs.map(|id| id.to_string()).unwrap_or_default()
                    ),
                )
            });
        let c = calls.clone();
        alerts
            .expect_writeback_stuck()
            .returning(move |_, _, _| log(&c, "alert:writeback_stuck"));
        let c = calls.clone();
        alerts
            .expect_ref_field_not_stored()
            .returning(move |pid, field| {
                log(&c, format!("alert:ref_field_not_stored:{pid}:{field}"))
            });
        let ports = Ports {
            orders: Arc::new(self.orders),
            whmcs: Arc::new(self.whmcs),
            store: Arc::new(self.store),
            audit: Arc::new(audit),
            alerts: Arc::new(alerts),
            clock: Arc::new(crate::SystemClock::new()),
            opener: None,
        };
        let (_tx, rx) = tokio::sync::watch::channel(self.shutdown);
        let runner = JobRunner::new(ports, Arc::new(self.config), "w".into(), self.rate, rx);
        let mut outcomes = Vec::new();
        for job in jobs {
            let outcome = match self.claimed {
                provisioner_store::RateTake::Undecided => runner.run(job).await,
                decided => {
                    let clock: Arc<dyn crate::Clock> = Arc::new(crate::SystemClock::new());
                    let now = clock.monotonic();
                    let lease = crate::job::LeaseHealth::new(
                        std::time::Duration::from_secs(3_600),
                        clock,
                        now,
                    );
                    runner.run_claimed(job, &lease, decided).await
                }
            };
            outcomes.push(outcome);
        }
        let calls = calls.lock().unwrap().clone();
        (outcomes, calls)
    }
}

/// A resumed job's way to AddOrder: look up by ref, re-check approval, store the intent, order.
const LOOKUP_THEN_ADD_ORDER: [&str; 5] = [
    "sf_fetch",
    "whmcs_services",
    "sf_fetch",
    "advance:order_unknown",
    "whmcs_add_order",
];

/// The calls that change something outside (no audit lines).
/// `outcome` is a provisioning with WHMCS order 77 (the lookups' and AddOrder's order here).
#[track_caller]
fn assert_provisioned_77(outcome: &JobOutcome) {
    assert!(
        matches!(
            outcome,
            JobOutcome::Provisioned {
                whmcs_order_id: 77,
                ..
            }
        ),
        "{outcome:?}"
    );
}

fn effects(calls: &[String]) -> Vec<&str> {
    calls
        .iter()
        .map(String::as_str)
        .filter(|c| !c.starts_with("audit:"))
        .collect()
}

/// A world where every call succeeds: an approved Order, an active client, nothing ordered
/// yet, AddOrder and AcceptOrder answered.
fn happy_world() -> World {
    let mut w = World::new();
    w.fetch_returns(order("Approved"));
    w.client_active();
    w.lookup_finds(None);
    w.add_order_ok();
    w.accept_ok();
    w
}

#[tokio::test]
async fn happy_path_runs_every_step_in_order() {
    let (outcome, calls) = happy_world().run(job(Step::Received, 0)).await;
    assert_eq!(
        outcome,
        JobOutcome::Provisioned {
            whmcs_order_id: 77,
            service_ids: vec![5, 6]
        }
    );
    assert_eq!(
        effects(&calls),
        [
            "sf_fetch",
            "whmcs_client",
            // Stored before the PATCH: it is decided against the claim's current token.
            "advance:checked",
            "sf_patch:Provisioning",
            // `marked_provisioning` goes with the next write.
            "whmcs_services",
            // Approval is re-checked right before each non-idempotent WHMCS call.
            "sf_fetch",
            // The intent, with its sent time and timeout, right before the call.
            "advance:order_unknown",
            "whmcs_add_order",
            // The product's first order in this process: did WHMCS store the ref?
            "whmcs_services",
            "sf_fetch",
            // The WHMCS ids (`whmcs_ordered`) go with the AcceptOrder intent.
            "advance:accept_unknown:77",
            "whmcs_accept",
            "sf_patch:Activated",
            "finish:done",
        ]
    );
    // Every step is still in the audit trail.
    for step in [
        "checked",
        "marked_provisioning",
        "whmcs_ordered",
        "accepted",
    ] {
        assert!(
            calls.contains(&format!("audit:step_succeeded:{step}")),
            "{step}: {calls:?}"
        );
    }
    // The points that only save idempotent work go with the next write: the intent stored
    // before the next WHMCS call.
    let at = |c: &str| calls.iter().position(|x| x == c).unwrap_or(usize::MAX);
    assert!(at("advance:order_unknown") < at("audit:step_succeeded:marked_provisioning"));
    assert!(at("audit:step_succeeded:marked_provisioning") < at("whmcs_add_order"));
    assert!(at("advance:accept_unknown:77") < at("audit:step_succeeded:whmcs_ordered"));
    assert!(at("audit:step_succeeded:whmcs_ordered") < at("whmcs_accept"));
    assert!(calls.contains(&"audit:order_provisioned".to_owned()));
    assert!(!calls.iter().any(|c| c.starts_with("alert")));
}

/// A job waiting for a store write to commit lends its worker slot (the bound is on jobs at
/// work: on PostgreSQL a commit is a round trip and a log flush, and a slot held through it
/// idles); every call to Salesforce and WHMCS is made holding one, and the job ends holding
/// its slot again.
#[tokio::test]
async fn store_writes_lend_the_worker_slot_and_external_calls_hold_it() {
    let (outcome, calls, free) = happy_world().run_in_slot(job(Step::Received, 0)).await;
    assert_provisioned_77(&outcome);
    let writes: Vec<&String> = calls
        .iter()
        .filter(|c| c.starts_with("advance:") || c.starts_with("finish:"))
        .collect();
    assert_eq!(writes.len(), 4, "{calls:?}");
    assert!(writes.iter().all(|c| c.ends_with("@lent")), "{calls:?}");
    let external: Vec<&String> = calls
        .iter()
        .filter(|c| c.starts_with("sf_") || c.starts_with("whmcs_"))
        .collect();
    assert!(external.len() >= 8, "{calls:?}");
    assert!(external.iter().all(|c| c.ends_with("@held")), "{calls:?}");
    assert_eq!(free, 0, "the job ends holding its slot");
}

#[tokio::test]
async fn without_a_provisioning_status_no_intermediate_patch_is_sent() {
    let mut w = World::new();
    w.config.statuses = OrderStatuses {
        provisioning: None,
        ..OrderStatuses::default()
    };
    w.config.order_ref_fields = None;
    w.fetch_returns(order("Approved"));
    w.client_active();
    w.add_order_ok();
    w.accept_ok();
    let (outcome, calls) = w.run(job(Step::Received, 0)).await;
    assert!(matches!(outcome, JobOutcome::Provisioned { .. }));
    assert!(!calls.contains(&"sf_patch:Provisioning".to_owned()));
    assert!(!calls.contains(&"whmcs_services".to_owned()));
}

async fn refused_with(o: Order, code: StopReason) {
    let mut w = World::new();
    w.fetch_returns(o);
    let (outcome, calls) = w.run(job(Step::Received, 0)).await;
    assert_eq!(outcome, JobOutcome::Refused { code });
    // No WHMCS call (the mock has no expectations) and no write to the Order.
    assert_eq!(
        effects(&calls),
        ["sf_fetch", "finish:refused", "alert:refused"]
    );
    assert!(calls.contains(&"audit:order_refused".to_owned()));
}

#[tokio::test]
async fn an_order_that_is_not_approved_is_refused_without_writes() {
    refused_with(order("Draft"), StopReason::NotApproved).await;
}

#[tokio::test]
async fn an_activated_order_without_a_whmcs_id_is_refused() {
    refused_with(order("Activated"), StopReason::NotApproved).await;
}

#[tokio::test]
async fn a_customer_mismatch_is_refused_without_writes() {
    let mut o = order("Approved");
    o.customer_number = Some("C-9999".into());
    refused_with(o, StopReason::CustomerMismatch).await;
}

#[tokio::test]
async fn an_unknown_order_is_refused() {
    let mut w = World::new();
    w.orders.expect_fetch_order().returning(|id| {
        Err(sf_rest::Error::NotFound {
            action: sf_rest::Action::FetchOrder,
            order_id: id.to_owned(),
        })
    });
    let (outcome, calls) = w.run(job(Step::Received, 0)).await;
    assert_eq!(
        outcome,
        JobOutcome::Refused {
            code: StopReason::OrderNotFound
        }
    );
    assert_eq!(effects(&calls), ["finish:refused", "alert:refused"]);
}

#[tokio::test]
async fn an_already_provisioned_order_is_done_without_alert() {
    let mut w = World::new();
    let mut o = order("Activated");
    o.whmcs_order_id = Some("77".into());
    w.fetch_returns(o);
    let (outcome, calls) = w.run(job(Step::Received, 0)).await;
    assert_eq!(outcome, JobOutcome::AlreadyProvisioned);
    assert_eq!(effects(&calls), ["sf_fetch", "finish:done"]);
}

#[tokio::test]
async fn our_own_unfinished_work_is_resumed_with_a_lookup_not_refused() {
    // A restored backup or a lost job: the Order already says Provisioning, with no WHMCS id,
    // and WHMCS holds nothing with its ref: the lost run never had an AddOrder answered.
    let mut w = World::new();
    w.config.whmcs_settle = std::time::Duration::from_secs(30);
    w.fetch_returns(order("Provisioning"));
    w.client_active();
    w.lookup_finds(None);
    // No AddOrder expectation: one sent before the settle point panics the mock.
    let job = job(Step::Received, 0);
    let claimed = job.claimed_at();
    let wait = w.config.whmcs_timeout + w.config.whmcs_settle;
    let (outcome, calls) = w.run(job).await;
    // The lost run's AddOrder counts as sent now: not repeated before its settle point.
    assert_eq!(
        outcome,
        JobOutcome::Delayed {
            at: claimed + chrono::Duration::from_std(wait).unwrap()
        }
    );
    assert_eq!(
        effects(&calls)[..5],
        [
            "sf_fetch",
            "whmcs_client",
            // Looked up at once; nothing found.
            "whmcs_services",
            // Resumed as "AddOrder outcome unknown": no PATCH (it already says so).
            "advance:order_unknown",
            "whmcs_services",
        ]
    );
    assert!(!calls.iter().any(|c| c.starts_with("alert")), "{calls:?}");
}

#[tokio::test]
async fn our_own_unfinished_work_found_in_whmcs_is_never_accepted_twice() {
    // A restored backup or a lost job, and the lost run's AddOrder is in WHMCS: its AcceptOrder
    // may have been sent too and still be running the server module (the order stays Pending
    // meanwhile). It counts as sent now: an order still Pending is accepted only after the
    // settle point, one already Active is done without an AcceptOrder.
    for (status, settles) in [("Pending", true), ("Active", false)] {
        let mut w = World::new();
        w.config.whmcs_settle = std::time::Duration::from_secs(30);
        w.fetch_returns(order("Provisioning"));
        w.client_active();
        w.lookup_finds(Some(77));
        let c = w.calls.clone();
        w.whmcs.expect_get_order().returning(move |_| {
            log(&c, "whmcs_get_order");
            Ok(Some(whmcs_order(status)))
        });
        // No AcceptOrder expectation: an AcceptOrder panics the mock.
        let job = job(Step::Received, 0);
        let claimed = job.claimed_at();
        let wait = w.config.whmcs_accept_timeout + w.config.whmcs_settle;
        let (outcome, calls) = w.run(job).await;
        if settles {
            assert_eq!(
                outcome,
                JobOutcome::Delayed {
                    at: claimed + chrono::Duration::from_std(wait).unwrap()
                },
                "{status}"
            );
        } else {
            assert_provisioned_77(&outcome);
        }
        assert_eq!(
            effects(&calls)[..5],
            [
                "sf_fetch",
                "whmcs_client",
                "whmcs_services",
                // The found order's ids and the AcceptOrder intent (sent now), in one write.
                "advance:accept_unknown:77",
                "whmcs_get_order",
            ],
            "{status}"
        );
        assert!(!calls.contains(&"whmcs_add_order".to_owned()), "{calls:?}");
        assert!(!calls.contains(&"whmcs_accept".to_owned()), "{calls:?}");
        assert!(!calls.iter().any(|c| c.starts_with("alert")), "{calls:?}");
    }
}

#[tokio::test]
async fn our_own_unfinished_work_without_a_ref_field_is_never_ordered_twice() {
    let mut w = World::new();
    w.config.order_ref_fields = None;
    w.fetch_returns(order("Provisioning"));
    w.client_active();
    let (outcome, calls) = w.run(job(Step::Received, 0)).await;
    assert!(matches!(outcome, JobOutcome::Failed { .. }), "{outcome:?}");
    assert!(!calls.contains(&"whmcs_add_order".to_owned()), "{calls:?}");
}

#[tokio::test]
async fn an_operator_retry_accepts_the_failed_status_an_event_does_not() {
    // A failed job reopened by a late event (its reopening closed its dead letter): the
    // failure stands, refused, and the store opens the letter again.
    for source in [JobSource::Event, JobSource::Reconcile] {
        let mut w = World::new();
        w.fetch_returns(order("Provisioning Failed"));
        w.store.expect_reopened_letters().returning(|_| Ok(1));
        let mut reopened = job(Step::Received, 0);
        reopened.reopened_by = Some(source);
        let (outcome, calls) = w.run(reopened).await;
        assert_eq!(
            outcome,
            JobOutcome::Refused {
                code: StopReason::NotApproved
            },
            "{source:?}"
        );
        assert_eq!(
            effects(&calls),
            ["sf_fetch", "finish:refused", "alert:refused"]
        );
    }

    let mut w = World::new();
    w.fetch_returns(order("Provisioning Failed"));
    w.client_active();
    w.lookup_finds(None);
    w.add_order_ok();
    w.accept_ok();
    let mut retried = job(Step::Received, 0);
    retried.reopened_by = Some(JobSource::Operator);
    let (outcome, calls) = w.run(retried).await;
    assert!(
        matches!(outcome, JobOutcome::Provisioned { .. }),
        "{outcome:?}"
    );
    assert!(calls.contains(&"sf_patch:Provisioning".to_owned()));
}

/// A job never reopened that finds its Order in the failed status: only an earlier run of
/// this job wrote it, and that run stopped between its PATCH and storing its end (a crash, a
/// restored backup). It ends failed with its dead letter and alert, writing nothing to the
/// Order (whose `Provisioning_Error__c` holds the first run's reason) or to WHMCS; refused
/// `not_approved`, the failure would have no dead letter.
#[tokio::test]
async fn a_failure_whose_end_was_not_stored_ends_failed_with_its_dead_letter() {
    // At the checks (a run from the start: taken over, restored) and at the re-fetch before
    // AcceptOrder (a run resumed after its AddOrder); a job never reopened, and one a new
    // event reopened after a refusal (its reopening closed no dead letter: the failed status
    // is its own run's).
    let cases = [None, Some(JobSource::Event), Some(JobSource::Reconcile)];
    for (start, reopened_by) in [Step::Received, Step::WhmcsOrdered]
        .into_iter()
        .flat_map(|s| cases.into_iter().map(move |r| (s, r)))
    {
        let mut w = World::new();
        w.fetch_returns(order("Provisioning Failed"));
        w.store.expect_reopened_letters().returning(|_| Ok(0));
        let mut resumed = job(start, 0);
        resumed.reopened_by = reopened_by;
        let (outcome, calls) = w.run(resumed).await;
        let JobOutcome::Failed { reason } = outcome else {
            panic!("{start:?}: expected failure, got {outcome:?}")
        };
        assert!(reason.contains("earlier run"), "{reason}");
        let effects = effects(&calls);
        assert_eq!(effects.len(), 4, "{start:?}: {effects:?}");
        assert_eq!(effects[0], "sf_fetch");
        assert!(effects[1].starts_with("dead_letter:"), "{effects:?}");
        assert_eq!(&effects[2..], ["finish:failed", "alert:failed"]);
        assert!(
            calls.contains(&"audit:order_failed".to_owned()),
            "{calls:?}"
        );
    }
}

/// Fetches answer `first` once, then `then` (an Order changed while the job runs).
fn fetch_changes(w: &mut World, first: Order, then: Order) {
    let c = w.calls.clone();
    let mut seen = 0;
    w.orders.expect_fetch_order().returning(move |_| {
        log(&c, "sf_fetch");
        seen += 1;
        Ok(if seen == 1 {
            first.clone()
        } else {
            then.clone()
        })
    });
}

#[tokio::test]
async fn approval_withdrawn_before_add_order_stops_with_nothing_written() {
    let mut other_customer = order("Approved");
    other_customer.customer_number = Some("C-9999".into());
    for changed in [order("Draft"), order("Cancelled"), other_customer] {
        let mut w = World::new();
        fetch_changes(&mut w, order("Approved"), changed);
        w.client_active();
        w.lookup_finds(None);
        let (outcome, calls) = w.run(job(Step::Received, 0)).await;
        assert_eq!(
            outcome,
            JobOutcome::Refused {
                code: StopReason::ApprovalWithdrawn
            }
        );
        // The PATCH to Provisioning happened before the change; nothing after it but the
        // point it reached (stored ahead of the job's end).
        assert_eq!(
            effects(&calls)[4..],
            [
                "whmcs_services",
                "sf_fetch",
                "advance:marked_provisioning",
                "finish:refused",
                "alert:withdrawn:"
            ]
        );
        assert!(calls.contains(&"audit:order_refused".to_owned()));
    }
}

#[tokio::test]
async fn approval_withdrawn_before_accept_order_names_the_pending_whmcs_order() {
    let mut w = World::new();
    let c = w.calls.clone();
    w.whmcs.expect_get_order().returning(move |_| {
        log(&c, "whmcs_get_order");
        Ok(Some(whmcs_order("Pending")))
    });
    w.fetch_returns(order("Draft"));
    let (outcome, calls) = w.run(settled_job(Step::AcceptUnknown, 2)).await;
    assert_eq!(
        outcome,
        JobOutcome::Refused {
            code: StopReason::ApprovalWithdrawn
        }
    );
    assert_eq!(
        effects(&calls),
        [
            "whmcs_get_order",
            "sf_fetch",
            "finish:refused",
            "alert:withdrawn:77"
        ]
    );
}

/// An AddOrder goes through, then the re-check before AcceptOrder answers `recheck`.
fn ordered_then_rechecked(recheck: fn() -> Result<Order, sf_rest::Error>) -> World {
    let mut w = World::new();
    let c = w.calls.clone();
    let mut seen = 0;
    w.orders.expect_fetch_order().returning(move |_| {
        log(&c, "sf_fetch");
        seen += 1;
        if seen <= 2 {
            Ok(order("Approved"))
        } else {
            recheck()
        }
    });
    w.lookup_finds(None);
    w.add_order_ok();
    w
}

#[tokio::test]
async fn the_whmcs_ids_not_stored_yet_are_stored_ahead_of_a_refusal() {
    let w = ordered_then_rechecked(|| Ok(order("Draft")));
    let (outcome, calls) = w.run(job(Step::MarkedProvisioning, 0)).await;
    assert_eq!(
        outcome,
        JobOutcome::Refused {
            code: StopReason::ApprovalWithdrawn
        }
    );
    assert_eq!(
        effects(&calls)[5..],
        [
            "whmcs_services",
            "sf_fetch",
            "advance:whmcs_ordered:77",
            "finish:refused",
            "alert:withdrawn:77"
        ]
    );
    assert!(calls.contains(&"audit:step_succeeded:whmcs_ordered".to_owned()));
}

#[tokio::test]
async fn the_whmcs_ids_not_stored_yet_are_stored_ahead_of_a_retry() {
    let w = ordered_then_rechecked(|| Err(sf_timeout()));
    let (outcome, calls) = w.run(job(Step::MarkedProvisioning, 0)).await;
    assert!(
        matches!(outcome, JobOutcome::Retrying { .. }),
        "{outcome:?}"
    );
    assert_eq!(
        effects(&calls)[5..],
        [
            "whmcs_services",
            "sf_fetch",
            "advance:whmcs_ordered:77",
            "reschedule:count=true"
        ]
    );
}

#[tokio::test]
async fn a_deleted_order_counts_as_withdrawn() {
    let mut w = World::new();
    w.orders.expect_fetch_order().returning(|id| {
        Err(sf_rest::Error::NotFound {
            action: sf_rest::Action::FetchOrder,
            order_id: id.to_owned(),
        })
    });
    let (outcome, calls) = w.run(job(Step::WhmcsOrdered, 0)).await;
    assert_eq!(
        outcome,
        JobOutcome::Refused {
            code: StopReason::ApprovalWithdrawn
        }
    );
    assert!(!calls.contains(&"whmcs_accept".to_owned()));
}

async fn fails_with(w: World, start: Step, needle: &str) -> Vec<String> {
    let (outcome, calls) = w.run_owned(job(start, 0)).await;
    let JobOutcome::Failed { reason } = outcome else {
        panic!("expected failure, got {outcome:?}")
    };
    assert!(
        reason.contains(needle),
        "{reason:?} should mention {needle:?}"
    );
    let effects = effects(&calls);
    let tail = &effects[effects.len() - 4..];
    assert_eq!(tail[0], "sf_patch:Provisioning Failed");
    assert!(tail[1].starts_with("dead_letter:"));
    assert_eq!(&tail[2..], ["finish:failed", "alert:failed"]);
    calls
}

impl World {
    async fn run_owned(self, job: Job) -> (JobOutcome, Vec<String>) {
        self.run(job).await
    }
}

#[tokio::test]
async fn an_inactive_whmcs_client_fails_the_order() {
    let mut w = World::new();
    w.fetch_returns(order("Approved"));
    w.whmcs.expect_get_client_details().returning(|_| {
        let mut c = active_client();
        c.status = ClientStatus::Closed;
        Ok(c)
    });
    fails_with(w, Step::Received, "not Active").await;
}

#[tokio::test]
async fn invalid_order_data_fails_with_a_reason_naming_the_field() {
    type Mutation = Box<dyn Fn(&mut Order)>;
    let cases: Vec<(Mutation, &str)> = vec![
        (Box::new(|o| o.whmcs_client_id = None), "WHMCS_Client_Id__c"),
        (Box::new(|o| o.items.clear()), "no OrderItems"),
        (
            Box::new(|o| o.items[0].whmcs_product_id = Some("abc".into())),
            "WHMCS_Product_Id__c",
        ),
        (
            Box::new(|o| o.items[0].billing_cycle = None),
            "Billing_Cycle__c",
        ),
        (
            Box::new(|o| {
                o.items[0].config_options = Some(SecretString::from("not json".to_owned()))
            }),
            "Config_Options__c",
        ),
    ];
    for (mutate, needle) in cases {
        let mut w = World::new();
        let mut o = order("Approved");
        mutate(&mut o);
        w.fetch_returns(o);
        w.client_active();
        let calls = fails_with(w, Step::Received, needle).await;
        assert!(!calls.iter().any(|c| c.starts_with("whmcs_add")));
    }
}

#[tokio::test]
async fn resuming_after_an_unknown_add_order_finds_the_earlier_attempt() {
    let mut w = World::new();
    w.fetch_returns(order("Provisioning"));
    w.lookup_finds(Some(77));
    w.accept_ok();
    // Found at once, before the settle point: a lookup may always settle the outcome.
    let job = job_with_intent(Step::OrderUnknown, 1, chrono::Duration::seconds(1));
    let (outcome, calls) = w.run(job).await;
    assert_eq!(
        outcome,
        JobOutcome::Provisioned {
            whmcs_order_id: 77,
            service_ids: vec![5, 6]
        }
    );
    assert!(
        !calls.contains(&"whmcs_add_order".to_owned()),
        "never a second AddOrder"
    );
    // The ids found go with the AcceptOrder intent.
    assert_eq!(
        effects(&calls)[..4],
        [
            "sf_fetch",
            "whmcs_services",
            "sf_fetch",
            "advance:accept_unknown:77"
        ]
    );
}

#[tokio::test]
async fn resuming_after_an_unknown_add_order_without_a_ref_field_fails_safe() {
    let mut w = World::new();
    w.config.order_ref_fields = None;
    w.fetch_returns(order("Provisioning"));
    let calls = fails_with(w, Step::OrderUnknown, "outcome unknown").await;
    assert!(!calls.contains(&"whmcs_add_order".to_owned()));
}

#[tokio::test]
async fn resuming_at_marked_provisioning_looks_up_then_orders() {
    let mut w = World::new();
    w.fetch_returns(order("Provisioning"));
    w.lookup_finds(None);
    w.add_order_ok();
    w.accept_ok();
    let (outcome, calls) = w.run(job(Step::MarkedProvisioning, 0)).await;
    assert!(matches!(outcome, JobOutcome::Provisioned { .. }));
    assert_eq!(effects(&calls)[..5], LOOKUP_THEN_ADD_ORDER);
}

#[tokio::test]
async fn without_a_ref_field_the_add_order_intent_is_stored_before_the_call() {
    let mut w = World::new();
    w.config.order_ref_fields = None;
    w.fetch_returns(order("Provisioning"));
    w.add_order_ok();
    w.accept_ok();
    let (outcome, calls) = w.run(job(Step::MarkedProvisioning, 0)).await;
    assert!(matches!(outcome, JobOutcome::Provisioned { .. }));
    assert_eq!(
        effects(&calls)[..5],
        [
            "sf_fetch",
            "sf_fetch",
            "advance:order_unknown",
            "whmcs_add_order",
            "advance:whmcs_ordered:77"
        ]
    );
}

/// A run that starts at `checked` (a crash or takeover between the check and the PATCH, a
/// restored backup) has not seen the Order: it checks it again before the PATCH, which would
/// otherwise overwrite whatever the Order says now.
#[tokio::test]
async fn resuming_at_checked_checks_the_order_again_before_marking_it() {
    let (_, calls) = happy_world().run(job(Step::Checked, 0)).await;
    assert_eq!(
        effects(&calls)[..4],
        [
            "sf_fetch",
            "whmcs_client",
            "advance:checked",
            "sf_patch:Provisioning"
        ]
    );
    let patch = calls.iter().position(|c| c == "sf_patch:Provisioning");
    let add = calls.iter().position(|c| c == "whmcs_add_order");
    let refetch = calls
        .iter()
        .enumerate()
        .any(|(i, c)| c == "sf_fetch" && Some(i) > patch && Some(i) < add);
    assert!(
        add.is_some() && refetch,
        "approval is re-checked between the PATCH and AddOrder: {calls:?}"
    );
    assert!(calls.contains(&"whmcs_accept".to_owned()), "{calls:?}");
}

/// Resumed at `checked` from a restored backup while the run the backup predates has
/// finished the Order: done, and the `Activated` it wrote stays (no PATCH at all).
#[tokio::test]
async fn resuming_at_checked_on_an_order_provisioned_since_is_done_without_a_patch() {
    let mut w = World::new();
    let mut provisioned = order("Activated");
    provisioned.whmcs_order_id = Some("77".into());
    w.fetch_returns(provisioned);
    let (outcome, calls) = w.run(job(Step::Checked, 0)).await;
    assert!(
        matches!(outcome, JobOutcome::AlreadyProvisioned),
        "{outcome:?}"
    );
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("sf_patch") || c.starts_with("whmcs_")),
        "{calls:?}"
    );
}

/// Resumed at `checked` after the approval was withdrawn: refused, and the withdrawal stays
/// (no `Provisioning` PATCH over it).
#[tokio::test]
async fn resuming_at_checked_after_a_withdrawal_is_refused_without_a_patch() {
    let mut w = World::new();
    w.fetch_returns(order("Draft"));
    let (outcome, calls) = w.run(job(Step::Checked, 0)).await;
    assert!(matches!(outcome, JobOutcome::Refused { .. }), "{outcome:?}");
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("sf_patch") || c.starts_with("whmcs_")),
        "{calls:?}"
    );
}

/// A job resumed at `whmcs_ordered` (WHMCS order 77 added) whose Order is `Activated`
/// naming WHMCS order `named`.
async fn resumed_before_accept_on_an_order_naming(named: &str) -> (JobOutcome, Vec<String>) {
    let mut w = World::new();
    let mut provisioned = order("Activated");
    provisioned.whmcs_order_id = Some(named.into());
    w.fetch_returns(provisioned);
    let mut resumed = job(Step::WhmcsOrdered, 0);
    resumed.whmcs_order_id = Some("77".into());
    resumed.service_ids = vec!["501".into()];
    w.run(resumed).await
}

/// The re-fetch before AcceptOrder finds the Order provisioned with this job's WHMCS order
/// (a restored job behind the run that finished it): done, no AcceptOrder, no refusal.
#[tokio::test]
async fn the_refetch_before_accept_finds_the_order_provisioned_by_this_job() {
    let (outcome, calls) = resumed_before_accept_on_an_order_naming("77").await;
    assert!(
        matches!(outcome, JobOutcome::AlreadyProvisioned),
        "{outcome:?}"
    );
    assert!(!calls.contains(&"whmcs_accept".to_owned()), "{calls:?}");
    assert!(
        !calls.iter().any(|c| c.starts_with("sf_patch")),
        "{calls:?}"
    );
}

/// The same re-fetch finding another WHMCS order named on the Order: not this job's work,
/// refused `approval_withdrawn` (with its alert), nothing sent.
#[tokio::test]
async fn the_refetch_before_accept_refuses_an_order_provisioned_with_another_whmcs_order() {
    let (outcome, calls) = resumed_before_accept_on_an_order_naming("78").await;
    assert!(matches!(outcome, JobOutcome::Refused { .. }), "{outcome:?}");
    assert!(!calls.contains(&"whmcs_accept".to_owned()), "{calls:?}");
}

#[tokio::test]
async fn an_unknown_add_order_outcome_is_retried_from_the_intent() {
    let mut w = World::new();
    w.fetch_returns(order("Provisioning"));
    w.lookup_finds(None);
    w.whmcs
        .expect_add_order()
        .times(1)
        .returning(|_| Err(unknown(whmcs_client::Action::AddOrder)));
    let (outcome, calls) = w.run(job(Step::MarkedProvisioning, 0)).await;
    assert!(
        matches!(outcome, JobOutcome::Retrying { .. }),
        "{outcome:?}"
    );
    // The intent was stored right before the call: the retry looks the order up before any
    // second AddOrder, and waits for the settle point if it is not there.
    assert_eq!(
        effects(&calls),
        [
            "sf_fetch",
            "whmcs_services",
            "sf_fetch",
            "advance:order_unknown",
            "reschedule:count=true"
        ]
    );
    assert!(calls.contains(&"audit:step_failed".to_owned()));
}

#[tokio::test]
async fn a_business_error_on_add_order_fails_the_order() {
    let mut w = World::new();
    w.fetch_returns(order("Provisioning"));
    w.lookup_finds(None);
    w.whmcs.expect_add_order().returning(|_| {
        Err(business(
            whmcs_client::Action::AddOrder,
            "Client ID Not Found",
        ))
    });
    fails_with(w, Step::MarkedProvisioning, "Client ID Not Found").await;
}

#[tokio::test]
async fn a_configuration_error_is_retried_not_failed() {
    let mut w = World::new();
    w.fetch_returns(order("Approved"));
    w.whmcs.expect_get_client_details().returning(|_| {
        Err(whmcs_client::Error::Configuration {
            action: whmcs_client::Action::GetClientsDetails,
            http_status: 403,
            message: "Authentication Failed".into(),
        })
    });
    let (outcome, _) = w.run(job(Step::Received, 0)).await;
    assert!(
        matches!(outcome, JobOutcome::Retrying { .. }),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn resuming_after_an_unknown_accept_checks_the_order_first() {
    for (status, accepts) in [("Active", false), ("Pending", true)] {
        let mut w = World::new();
        let c = w.calls.clone();
        w.whmcs.expect_get_order().returning(move |_| {
            log(&c, "whmcs_get_order");
            Ok(Some(whmcs_order(status)))
        });
        if accepts {
            w.fetch_returns(order("Provisioning"));
            w.accept_ok();
        }
        let (outcome, calls) = w.run(settled_job(Step::AcceptUnknown, 1)).await;
        assert_provisioned_77(&outcome);
        assert_eq!(
            calls.contains(&"whmcs_accept".to_owned()),
            accepts,
            "{status}"
        );
        assert_eq!(effects(&calls)[0], "whmcs_get_order");
        assert_eq!(
            calls.contains(&"sf_fetch".to_owned()),
            accepts,
            "approval is re-checked only before a call: {calls:?}"
        );
    }
}

#[tokio::test]
async fn accept_on_an_already_active_order_counts_as_accepted() {
    let mut w = World::new();
    w.fetch_returns(order("Provisioning"));
    w.whmcs.expect_accept_order().returning(|_| {
        Err(business(
            whmcs_client::Action::AcceptOrder,
            "Order ID not found or Status not Pending",
        ))
    });
    w.whmcs
        .expect_get_order()
        .returning(|_| Ok(Some(whmcs_order("Active"))));
    let (outcome, calls) = w.run(job(Step::WhmcsOrdered, 0)).await;
    assert!(
        matches!(outcome, JobOutcome::Provisioned { .. }),
        "{outcome:?}"
    );
    assert!(calls.contains(&"audit:step_succeeded:accepted".to_owned()));
    assert!(calls.contains(&"sf_patch:Activated".to_owned()));
}

#[tokio::test]
async fn a_transient_accept_failure_is_retried() {
    let mut w = World::new();
    w.whmcs
        .expect_accept_order()
        .returning(|_| Err(transient(whmcs_client::Action::AcceptOrder)));
    w.fetch_returns(order("Provisioning"));
    let (outcome, calls) = w.run(job(Step::WhmcsOrdered, 0)).await;
    assert!(matches!(outcome, JobOutcome::Retrying { .. }));
    assert_eq!(
        effects(&calls),
        [
            "sf_fetch",
            "advance:accept_unknown",
            "reschedule:count=true"
        ]
    );
}

#[tokio::test]
async fn resuming_at_accepted_only_writes_back() {
    let w = World::new();
    let (outcome, calls) = w.run(job(Step::Accepted, 0)).await;
    assert_eq!(
        outcome,
        JobOutcome::Provisioned {
            whmcs_order_id: 77,
            service_ids: vec![5, 6]
        }
    );
    assert_eq!(effects(&calls), ["sf_patch:Activated", "finish:done"]);
}

/// The backoff grows for a job that keeps failing where it stands, not for one that got
/// further before a transient fault: that one waits the first delay again (`attempts` still
/// counts towards the limit either way).
#[tokio::test]
async fn a_job_that_got_further_before_a_fault_waits_the_first_delay_again() {
    let retrying_after = |start: Step| async move {
        let mut w = World::new();
        w.fetch_returns(order(if start == Step::Received {
            "Approved"
        } else {
            "Provisioning"
        }));
        w.client_active();
        w.whmcs
            .expect_client_service_refs()
            .returning(|_| Err(transient(whmcs_client::Action::GetClientsProducts)));
        let policy = w.config.retry.clone();
        let before = Utc::now();
        let (outcome, _) = w.run(job(start, 5)).await;
        let JobOutcome::Retrying { at, .. } = outcome else {
            panic!("{outcome:?}");
        };
        (policy, (at - before).to_std().unwrap())
    };
    // From `received` to the lookup, then the fault: progress, so the first delay.
    let (policy, waited) = retrying_after(Step::Received).await;
    assert!(
        waited <= policy.delay(0, 1.0) + std::time::Duration::from_secs(1),
        "{waited:?}"
    );
    // Failing again at the lookup where it stands: the sixth attempt's delay.
    let (policy, waited) = retrying_after(Step::MarkedProvisioning).await;
    assert!(waited >= policy.delay(5, 0.0), "{waited:?}");
    assert!(policy.delay(5, 0.0) > policy.delay(0, 1.0) * 4);
}

/// A lost answer at the step the job stands at is not WHMCS failing there: the first few in a
/// row look the call up again at once (the settle rule paces the repeats). Found by the faulty
/// `bench procs` run: an Order whose repeated AddOrder lost its answer three times waited
/// 6.5 s, then 13 s, with WHMCS answering at once; and the tail of that run was Orders looking
/// up a lost answer a first delay (1-2 s) after it was lost, each time.
#[tokio::test]
async fn unknown_outcomes_in_a_row_are_looked_up_at_once_then_back_off() {
    let after_lost_add_order = |attempts: u32| async move {
        let mut w = World::new();
        w.fetch_returns(order("Provisioning"));
        w.lookup_finds(None);
        let c = w.calls.clone();
        w.whmcs.expect_add_order().returning(move |_| {
            log(&c, "whmcs_add_order");
            Err(unknown(whmcs_client::Action::AddOrder))
        });
        let policy = w.config.retry.clone();
        let before = Utc::now();
        // Past its settle point: the lookup misses and AddOrder is sent again, its answer lost.
        let job = job_with_intent(Step::OrderUnknown, attempts, chrono::Duration::seconds(61));
        let (outcome, calls) = w.run(job).await;
        assert!(calls.contains(&"whmcs_add_order".to_owned()), "{calls:?}");
        let JobOutcome::Retrying { at, .. } = outcome else {
            panic!("{outcome:?}");
        };
        (policy, (at - before).to_std().unwrap())
    };
    for attempts in 0..3 {
        let (policy, waited) = after_lost_add_order(attempts).await;
        // Due at once: well before the shortest first delay.
        assert!(
            waited < policy.delay(0, 0.0) / 2,
            "attempt {attempts}: {waited:?}"
        );
    }
    // A longer run of them backs off: after eight attempts, the sixth delay.
    let (policy, waited) = after_lost_add_order(8).await;
    assert!(waited >= policy.delay(5, 0.0), "{waited:?}");
    // A read failing where the job stands still backs off from the second attempt.
    let mut w = World::new();
    w.fetch_returns(order("Provisioning"));
    w.whmcs
        .expect_client_service_refs()
        .returning(|_| Err(transient(whmcs_client::Action::GetClientsProducts)));
    let policy = w.config.retry.clone();
    let before = Utc::now();
    let job = job_with_intent(Step::OrderUnknown, 2, chrono::Duration::seconds(61));
    let (outcome, _) = w.run(job).await;
    let JobOutcome::Retrying { at, .. } = outcome else {
        panic!("{outcome:?}");
    };
    assert!((at - before).to_std().unwrap() >= policy.delay(2, 0.0));
}

#[tokio::test]
async fn a_retryable_salesforce_error_is_retried_then_given_up() {
    let make = || {
        let mut w = World::new();
        w.orders
            .expect_fetch_order()
            .returning(|_| Err(sf_timeout()));
        w
    };
    let (outcome, _) = make().run(job(Step::Received, 0)).await;
    assert!(matches!(outcome, JobOutcome::Retrying { .. }));
    let w = make();
    let max = w.config.retry.max_attempts;
    fails_with_job(w, job(Step::Received, max - 1), "gave up after").await;
}

/// Found by the simulation (seed 1604): AcceptOrder ran the module create but its answer was
/// lost on the job's last attempt, and the job was failed ("gave up after 12 attempts") with
/// WHMCS provisioning the services. Once the AcceptOrder intent is stored, the retry budget
/// never fails the job: it looks the order up again.
#[tokio::test]
async fn the_retry_budget_never_fails_a_job_whose_accept_order_may_have_run() {
    let max = World::new().config.retry.max_attempts;
    // The last attempt sends AcceptOrder, and its answer is lost.
    let mut w = World::new();
    w.whmcs
        .expect_accept_order()
        .returning(|_| Err(unknown(whmcs_client::Action::AcceptOrder)));
    w.fetch_returns(order("Provisioning"));
    let (outcome, calls) = w.run(job(Step::WhmcsOrdered, max - 1)).await;
    assert!(
        matches!(outcome, JobOutcome::Retrying { .. }),
        "{outcome:?}"
    );
    assert!(
        !calls.iter().any(|c| c.starts_with("sf_patch")),
        "{calls:?}"
    );
    // A later attempt at the stored intent cannot even ask WHMCS.
    let mut w = World::new();
    w.whmcs
        .expect_get_order()
        .returning(|_| Err(transient(whmcs_client::Action::GetOrders)));
    let (outcome, calls) = w.run(job(Step::AcceptUnknown, max + 5)).await;
    assert!(
        matches!(outcome, JobOutcome::Retrying { .. }),
        "{outcome:?}"
    );
    assert_eq!(effects(&calls), ["reschedule:count=true"]);
    // Before the intent no AcceptOrder was sent: the budget still ends the job.
    let mut w = World::new();
    w.orders
        .expect_fetch_order()
        .returning(|_| Err(sf_timeout()));
    fails_with_job(w, job(Step::WhmcsOrdered, max - 1), "gave up after").await;
}

async fn fails_with_job(w: World, job: Job, needle: &str) {
    let (outcome, calls) = w.run(job).await;
    let JobOutcome::Failed { reason } = outcome else {
        panic!("expected failure, got {outcome:?}")
    };
    assert!(reason.contains(needle), "{reason}");
    assert!(calls.contains(&"finish:failed".to_owned()));
    assert!(calls.contains(&"alert:failed".to_owned()));
}

/// A world whose PATCH to `status` fails with the permanent-looking error `code` (`message`,
/// `fields`); every other PATCH goes through.
fn patch_refused(
    status: &'static str,
    code: &'static str,
    message: &'static str,
    fields: &'static [&'static str],
) -> World {
    let mut w = World::new();
    w.orders.checkpoint();
    let c = w.calls.clone();
    w.orders.expect_update_order().returning(move |_, update| {
        log(
            &c,
            format!("sf_patch:{}", update.status.clone().unwrap_or_default()),
        );
        if update.status.as_deref() == Some(status) {
            Err(sf_rest::Error::Api {
                action: sf_rest::Action::UpdateOrder,
                status: 400,
                code: code.into(),
                message: message.into(),
                fields: fields.iter().map(|f| (*f).to_owned()).collect(),
            })
        } else {
            Ok(())
        }
    });
    w
}

/// A world whose write-back (PATCH Activated) fails with a permanent-looking error.
fn write_back_refused() -> World {
    patch_refused(
        "Activated",
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
        "bad value for restricted picklist field: Activated",
        &["Status"],
    )
}

/// A world whose PATCH to the provisioning status is refused by the validation rule that
/// guards it (the Order left the approved status since the check).
fn provisioning_patch_refused() -> World {
    let mut w = patch_refused(
        "Provisioning",
        "FIELD_CUSTOM_VALIDATION_EXCEPTION",
        "Status can be set to Provisioning only from Approved",
        &[],
    );
    w.client_active();
    w
}

/// A withdrawal that lands between the check and the PATCH to the provisioning status: the
/// validation rule refuses the PATCH, the Order read again says withdrawn, and the job is
/// refused `approval_withdrawn` with nothing written (it used to overwrite the withdrawal,
/// then provision the Order). A refusal while the Order still reads approved is the permanent
/// error it looks like.
#[tokio::test]
async fn a_withdrawal_after_the_check_is_not_overwritten_by_the_provisioning_patch() {
    let mut w = provisioning_patch_refused();
    fetch_changes(&mut w, order("Approved"), order("Draft"));
    let (outcome, calls) = w.run(job(Step::Received, 0)).await;
    assert_eq!(
        outcome,
        JobOutcome::Refused {
            code: StopReason::ApprovalWithdrawn
        }
    );
    assert_eq!(
        effects(&calls),
        [
            "sf_fetch",
            "whmcs_client",
            "advance:checked",
            "sf_patch:Provisioning",
            "sf_fetch",
            "finish:refused",
            "alert:withdrawn:"
        ]
    );

    let mut w = provisioning_patch_refused();
    w.fetch_returns(order("Approved"));
    let (outcome, calls) = w.run(job(Step::Received, 0)).await;
    let JobOutcome::Failed { reason } = outcome else {
        panic!("expected failure, got {outcome:?}")
    };
    assert!(
        reason.contains("FIELD_CUSTOM_VALIDATION_EXCEPTION"),
        "{reason}"
    );
    // Read again, approved: the PATCH once more (the Order may have been withdrawn and
    // approved again in between), whose refusal then stands.
    let patches = calls
        .iter()
        .filter(|c| *c == "sf_patch:Provisioning")
        .count();
    assert_eq!(patches, 2, "{calls:?}");
    assert!(calls.contains(&"sf_patch:Provisioning Failed".to_owned()));
}

#[tokio::test]
async fn a_failing_write_back_after_accept_retries_and_never_marks_the_order_failed() {
    // Attempts far past the retry budget, and days after the job was created: still a retry.
    let mut stale = job(Step::Accepted, 500);
    stale.created_at = Utc::now() - chrono::Duration::days(30);
    let (outcome, calls) = write_back_refused().run(stale).await;
    let JobOutcome::Retrying { reason, .. } = outcome else {
        panic!("expected a retry, got {outcome:?}")
    };
    assert!(reason.contains("PICKLIST"), "{reason}");
    assert_eq!(
        effects(&calls),
        ["sf_patch:Activated", "reschedule:count=true:step=accepted"]
    );
    assert!(!calls.iter().any(|c| c.starts_with("alert")), "{calls:?}");
    assert!(!calls.contains(&"sf_patch:Provisioning Failed".to_owned()));
}

#[tokio::test]
async fn the_accepted_record_goes_with_the_next_write_never_on_its_own() {
    // AcceptOrder succeeds, the write-back fails: the retry carries `accepted` before its
    // `step_failed`, and nothing was appended on its own.
    let mut w = write_back_refused();
    w.fetch_returns(order("Provisioning"));
    w.accept_ok();
    let (outcome, calls) = w.run(job(Step::WhmcsOrdered, 0)).await;
    assert!(
        matches!(outcome, JobOutcome::Retrying { .. }),
        "{outcome:?}"
    );
    let after_accept: Vec<&str> = calls
        .iter()
        .skip_while(|c| *c != "whmcs_accept")
        .map(String::as_str)
        .collect();
    assert_eq!(
        after_accept,
        [
            "whmcs_accept",
            "sf_patch:Activated",
            "reschedule:count=true:step=accepted",
            "audit:step_succeeded",
            "audit:step_succeeded:accepted",
            "audit:step_failed",
            "audit:step_failed:accepted",
        ]
    );
}

#[tokio::test]
async fn a_write_back_failing_for_the_configured_time_raises_writeback_stuck_once() {
    let since = Utc::now() - chrono::Duration::minutes(61);
    let mut failing = job(Step::Accepted, 3);
    failing.writeback_since = Some(since);
    let (_, calls) = write_back_refused().run(failing.clone()).await;
    assert_eq!(
        effects(&calls),
        [
            "sf_patch:Activated",
            "reschedule:count=true:step=accepted:stuck",
            "alert:writeback_stuck"
        ]
    );
    // Already raised for this Order: not again.
    failing.stuck_alerted_at = Some(Utc::now());
    let (_, calls) = write_back_refused().run(failing.clone()).await;
    assert!(!calls.iter().any(|c| c.starts_with("alert")), "{calls:?}");
    // Not yet an hour: no alert.
    failing.stuck_alerted_at = None;
    failing.writeback_since = Some(Utc::now() - chrono::Duration::minutes(59));
    let (_, calls) = write_back_refused().run(failing).await;
    assert!(!calls.iter().any(|c| c.starts_with("alert")), "{calls:?}");
}

#[tokio::test]
async fn a_rate_limited_customer_is_delayed_without_an_attempt() {
    let mut w = World::new();
    let rate: security::Rate = "1/hour".parse().unwrap();
    let limiter = Arc::new(security::KeyedRateLimiter::new(rate));
    assert!(limiter.check(&CUSTOMER.to_owned()).is_ok());
    w.rate = Some(crate::job::ProvisionLimit::Process(limiter));
    let (outcome, calls) = w.run(job(Step::Received, 0)).await;
    assert!(matches!(outcome, JobOutcome::Delayed { .. }));
    assert_eq!(effects(&calls), ["reschedule:count=false"]);
}

/// Runs a job about to start whose customer's shared rate has no slot for 90 s: delayed at
/// least that long, with nothing but its reschedule written.
async fn delayed_90_s_without_an_attempt(w: World) {
    let before = chrono::Utc::now();
    let (outcome, calls) = w.run(job(Step::Received, 0)).await;
    let JobOutcome::Delayed { at } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(at >= before + chrono::Duration::seconds(90), "{at}");
    assert_eq!(effects(&calls), ["reschedule:count=false"]);
}

#[tokio::test]
async fn a_shared_rate_is_taken_from_the_store_and_delays_without_an_attempt() {
    let mut w = World::new();
    w.store
        .expect_take_rate_slot()
        .withf(|scope, key, rate, _| {
            scope == crate::PROVISION_RATE_SCOPE
                && key == CUSTOMER
                && rate.burst == 2
                && rate.interval == std::time::Duration::from_secs(1_800)
        })
        .times(1)
        .returning(|_, _, _, _| Ok(Some(std::time::Duration::from_secs(90))));
    w.rate = Some(crate::job::ProvisionLimit::shared(
        "2/hour".parse().unwrap(),
    ));
    delayed_90_s_without_an_attempt(w).await;
}

#[tokio::test]
async fn a_rate_refused_with_the_claim_delays_without_asking_the_store_again() {
    // No `take_rate_slot` expected: the mock fails the test if the runner asks.
    let mut w = World::new();
    w.rate = Some(crate::job::ProvisionLimit::shared(
        "2/hour".parse().unwrap(),
    ));
    w.claimed = provisioner_store::RateTake::Refused(std::time::Duration::from_secs(90));
    delayed_90_s_without_an_attempt(w).await;
}

#[tokio::test]
async fn a_rate_slot_taken_with_the_claim_starts_the_job_at_once() {
    // The job starts (its Order turns out not approved: refused, as without a rate) and the
    // store is not asked for a slot again: the mock has no `take_rate_slot` expectation.
    let mut w = World::new();
    w.fetch_returns(order("Draft"));
    w.rate = Some(crate::job::ProvisionLimit::shared(
        "2/hour".parse().unwrap(),
    ));
    w.claimed = provisioner_store::RateTake::Taken;
    let (outcome, calls) = w.run(job(Step::Received, 0)).await;
    assert_eq!(
        outcome,
        JobOutcome::Refused {
            code: StopReason::NotApproved
        }
    );
    assert_eq!(
        effects(&calls),
        ["sf_fetch", "finish:refused", "alert:refused"]
    );
}

#[tokio::test]
async fn a_shared_rate_the_store_cannot_answer_starts_nothing() {
    let mut w = World::new();
    w.store.expect_take_rate_slot().returning(|_, _, _, _| {
        Err(provisioner_store::Error::Io {
            op: "test".into(),
            source: std::io::Error::other("down"),
        })
    });
    w.rate = Some(crate::job::ProvisionLimit::shared(
        "2/hour".parse().unwrap(),
    ));
    let (outcome, calls) = w.run(job(Step::Received, 0)).await;
    assert_eq!(outcome, JobOutcome::StoreUnavailable);
    assert!(effects(&calls).is_empty(), "{calls:?}");
}

#[tokio::test]
async fn a_lost_lease_stops_all_writes() {
    let mut w = World::new();
    w.fetch_returns(order("Approved"));
    w.client_active();
    w.store.checkpoint();
    w.store.expect_advance().returning(|id, owner, _, _, _, _| {
        Err(provisioner_store::Error::LeaseLost {
            order_id: id.into(),
            owner: owner.into(),
        })
    });
    let (outcome, calls) = w.run(job(Step::Received, 0)).await;
    assert_eq!(outcome, JobOutcome::LeaseLost);
    assert_eq!(effects(&calls), ["sf_fetch", "whmcs_client"]);
}

#[tokio::test]
async fn shutdown_releases_the_job_at_a_step_boundary() {
    let mut w = World::new();
    w.shutdown = true;
    let (outcome, calls) = w.run(job(Step::WhmcsOrdered, 0)).await;
    assert_eq!(outcome, JobOutcome::Released);
    assert_eq!(effects(&calls), ["release"]);
}

// ---- intake ----

fn intake_ports(store: MockStore, calls: &Calls) -> Ports {
    let mut audit = MockAuditLog::new();
    let key = AuditKey::from_bytes(&[7u8; 32]).unwrap();
    let c = calls.clone();
    audit.expect_append().returning(move |r| {
        let sealed = ChainHead::GENESIS.seal(&key, r).unwrap();
        log(&c, format!("audit:{}", sealed.record.action));
        Ok(sealed)
    });
    Ports {
        orders: Arc::new(MockOrderApi::new()),
        whmcs: Arc::new(MockWhmcsApi::new()),
        store: Arc::new(store),
        audit: Arc::new(audit),
        alerts: Arc::new(MockAlerts::new()),
        clock: Arc::new(crate::SystemClock::new()),
        opener: None,
    }
}

/// Logs every saved checkpoint as `checkpoint:[..]`.
fn expect_checkpoints(store: &mut MockStore, calls: &Calls) {
    let c = calls.clone();
    store.expect_save_checkpoint().returning(move |cp, _| {
        log(&c, format!("checkpoint:{:?}", cp.replay_id));
        Ok(())
    });
}

#[tokio::test]
async fn intake_stores_good_events_and_dead_letters_bad_ones_with_the_checkpoint() {
    let calls: Calls = Arc::default();
    let mut store = MockStore::new();
    let c = calls.clone();
    store.expect_ingest_events().returning(move |events, _| {
        Ok(events
            .iter()
            .map(|e| {
                log(&c, format!("ingest:{}", e.order_id));
                // The store audits each stored event in the same transaction.
                log(&c, "audit:event_received");
                provisioner_store::IngestOutcome::Enqueued
            })
            .collect())
    });
    let c = calls.clone();
    store
        .expect_dead_letter()
        .returning(move |letter, cp, audit, _| {
            assert_eq!(cp.unwrap().replay_id, vec![2]);
            assert_eq!(letter.payload.as_deref(), Some(&b"garbage"[..]));
            log(&c, format!("dead_letter:{}", letter.reason));
            log_records(&c, &audit);
            Ok("dl".into())
        });
    expect_checkpoints(&mut store, &calls);
    let ports = intake_ports(store, &calls);
    let topic = "/event/OrderProvisionRequested__e";
    let good = IntakeItem::Event {
        event_id: "evt-1".into(),
        replay_id: vec![1],
        payload: vec![],
        decoded: Ok(EventFields {
            order_id: ORDER.into(),
            customer_number: CUSTOMER.into(),
            account_id: None,
        }),
    };
    assert_eq!(
        crate::intake::handle(&ports, topic, good).await.unwrap(),
        IntakeResult::Enqueued
    );
    let bad = IntakeItem::Event {
        event_id: "evt-2".into(),
        replay_id: vec![2],
        payload: b"garbage".to_vec(),
        decoded: Err("missing required field OrderId__c".into()),
    };
    assert!(matches!(
        crate::intake::handle(&ports, topic, bad).await.unwrap(),
        IntakeResult::DeadLettered(_)
    ));
    let forged = IntakeItem::Event {
        event_id: "evt-3".into(),
        replay_id: vec![2],
        payload: b"garbage".to_vec(),
        decoded: Ok(EventFields {
            order_id: "x' OR Id != '".into(),
            customer_number: CUSTOMER.into(),
            account_id: None,
        }),
    };
    assert!(matches!(
        crate::intake::handle(&ports, topic, forged).await.unwrap(),
        IntakeResult::DeadLettered(_)
    ));
    let keepalive = IntakeItem::Keepalive {
        latest_replay_id: vec![9],
    };
    assert_eq!(
        crate::intake::handle(&ports, topic, keepalive)
            .await
            .unwrap(),
        IntakeResult::Checkpointed
    );
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        [
            format!("ingest:{ORDER}"),
            "audit:event_received".into(),
            "dead_letter:missing required field OrderId__c".into(),
            "audit:dead_lettered".into(),
            "dead_letter:OrderId__c is not a 15/18-character Salesforce id".into(),
            "audit:dead_lettered".into(),
            "checkpoint:[9]".into(),
        ]
    );
}

fn good_event(n: u8, order: &str) -> IntakeItem {
    IntakeItem::Event {
        event_id: format!("evt-{n}"),
        replay_id: vec![n],
        payload: vec![],
        decoded: Ok(EventFields {
            order_id: order.into(),
            customer_number: CUSTOMER.into(),
            account_id: None,
        }),
    }
}

#[tokio::test]
async fn a_batch_stores_runs_of_good_events_together_and_keeps_the_item_order() {
    let calls: Calls = Arc::default();
    let mut store = MockStore::new();
    let c = calls.clone();
    store.expect_ingest_events().returning(move |events, _| {
        let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
        log(&c, format!("ingest:{}", ids.join(",")));
        Ok(events
            .iter()
            .map(|e| {
                // The store audits each stored event in the same transaction.
                if e.event_id == "evt-2" {
                    log(&c, "audit:event_duplicate");
                    provisioner_store::IngestOutcome::DuplicateEvent
                } else {
                    log(&c, "audit:event_received");
                    provisioner_store::IngestOutcome::Enqueued
                }
            })
            .collect())
    });
    let c = calls.clone();
    store
        .expect_dead_letter()
        .returning(move |letter, cp, audit, _| {
            // The bad event's checkpoint is its own replay id: after the run before it.
            assert_eq!(cp.unwrap().replay_id, vec![3]);
            log(
                &c,
                format!("dead_letter:{}", letter.event_id.unwrap_or_default()),
            );
            log_records(&c, &audit);
            Ok("dl".into())
        });
    expect_checkpoints(&mut store, &calls);
    let ports = intake_ports(store, &calls);
    let bad = IntakeItem::Event {
        event_id: "evt-3".into(),
        replay_id: vec![3],
        payload: b"garbage".to_vec(),
        decoded: Err("missing required field OrderId__c".into()),
    };
    let items = vec![
        good_event(1, ORDER),
        good_event(2, ORDER),
        bad,
        good_event(4, "801000000000004AAA"),
        IntakeItem::Keepalive {
            latest_replay_id: vec![9],
        },
    ];
    let results = crate::intake::handle_batch(&ports, "/event/OrderProvisionRequested__e", items)
        .await
        .unwrap();
    assert_eq!(results.len(), 5);
    assert_eq!(results[0], IntakeResult::Enqueued);
    assert_eq!(results[1], IntakeResult::Duplicate);
    assert!(matches!(results[2], IntakeResult::DeadLettered(_)));
    assert_eq!(results[3], IntakeResult::Enqueued);
    assert_eq!(results[4], IntakeResult::Checkpointed);
    let calls = calls.lock().unwrap().clone();
    let effects: Vec<&str> = calls
        .iter()
        .map(String::as_str)
        .filter(|c| !c.starts_with("audit:"))
        .collect();
    assert_eq!(
        effects,
        [
            "ingest:evt-1,evt-2",
            "dead_letter:evt-3",
            "ingest:evt-4",
            "checkpoint:[9]"
        ]
    );
    // Every event is audited: received, duplicate, dead-lettered, received.
    let audits: Vec<&str> = calls
        .iter()
        .map(String::as_str)
        .filter(|c| c.starts_with("audit:"))
        .collect();
    assert_eq!(audits.len(), 4, "{audits:?}");
    assert!(audits.contains(&"audit:event_duplicate"));
}

#[tokio::test]
async fn an_engine_shut_down_right_after_start_stops() {
    let calls: Calls = Arc::default();
    let mut store = MockStore::new();
    store.expect_claim().returning(|_, _, _| Ok(None));
    store
        .expect_rotate_keys_if_older_than()
        .returning(|_, _, _| Ok(None));
    let mut ports = intake_ports(store, &calls);
    let mut orders = MockOrderApi::new();
    orders
        .expect_list_approved_orders()
        .returning(|_| Ok(vec![]));
    orders
        .expect_list_orders_in_status()
        .returning(|_, _| Ok(vec![]));
    ports.orders = Arc::new(orders);
    let engine = crate::Engine::new(ports, EngineConfig::default(), None);
    let handle = engine.start();
    // Shut down before the background tasks had a chance to run: must not hang.
    tokio::time::timeout(std::time::Duration::from_secs(10), handle.shutdown())
        .await
        .expect("shutdown returns");
}

/// Counts increments of one counter, on this thread (the test runtime's only thread).
struct CountOne {
    name: &'static str,
    count: Arc<std::sync::atomic::AtomicU64>,
}

impl metrics::Recorder for CountOne {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }

    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        if key.name() == self.name {
            metrics::Counter::from_arc(Arc::clone(&self.count))
        } else {
            metrics::Counter::noop()
        }
    }

    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }

    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

#[tokio::test]
async fn a_step_whose_audit_record_is_not_stored_does_not_advance_and_is_counted() {
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let recorder = CountOne {
        name: crate::metrics::AUDIT_FAILURES_TOTAL,
        count: Arc::clone(&count),
    };
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mut w = World::new();
    w.fetch_returns(order("Approved"));
    w.client_active();
    w.store.checkpoint();
    // The store refuses the step: its audit record could not be stored, so neither was the
    // recovery point (one transaction).
    let c = w.calls.clone();
    w.store
        .expect_advance()
        .returning(move |_, _, step, _, _, _| {
            log(&c, format!("advance_refused:{step}"));
            Err(provisioner_store::Error::Audit(Box::new(
                audit::Error::Backend {
                    op: "audit: insert",
                    source: "injected".into(),
                },
            )))
        });
    let c = w.calls.clone();
    w.store
        .expect_reschedule()
        .returning(move |_, _, retry, audit, _| {
            log(&c, format!("reschedule:count={}", retry.count_attempt));
            log_records(&c, &audit);
            Ok(())
        });
    let (outcome, calls) = w.run(job(Step::Received, 0)).await;
    assert!(
        matches!(outcome, JobOutcome::Retrying { .. }),
        "{outcome:?}"
    );
    // Nothing after the refused step: no PATCH, no WHMCS order.
    assert_eq!(
        effects(&calls),
        [
            "sf_fetch",
            "whmcs_client",
            "advance_refused:checked",
            "reschedule:count=true"
        ]
    );
    assert!(!calls.contains(&"audit:step_succeeded:checked".to_owned()));
    assert_eq!(count.load(std::sync::atomic::Ordering::Relaxed), 1);
    if let JobOutcome::Retrying { reason, .. } = outcome {
        assert!(reason.starts_with("audit:"), "{reason}");
    }
}

// ---- fenced leases ----

#[tokio::test]
async fn a_lapsed_lease_starts_no_external_call_and_gives_the_job_back() {
    for step in [
        Step::Checked,
        Step::MarkedProvisioning,
        Step::WhmcsOrdered,
        Step::Accepted,
    ] {
        let w = World::new();
        let calls = w.calls.clone();
        let (ports, config, rate) = w.into_parts();
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let runner = JobRunner::new(ports, config, "w".into(), rate, rx);
        // Claimed a whole lease ago and never renewed.
        let lease = std::time::Duration::from_secs(3);
        let clock = Arc::new(TestClock::at(lease));
        let health = crate::LeaseHealth::new(lease, clock, std::time::Duration::ZERO);
        let outcome = runner.run_fenced(job(step, 0), &health).await;
        assert_eq!(outcome, JobOutcome::LeaseLost, "{step}");
        let calls = calls.lock().unwrap().clone();
        assert_eq!(effects(&calls), ["release"], "{step}: {calls:?}");
    }
}

/// A run whose lease lapsed while its AddOrder was out (a paused process, a slow WHMCS) makes
/// no further call once the answer is in, the check that WHMCS stored the external ref
/// included (a read, but of a claim another instance may hold by now): the run gives the job
/// back with the WHMCS ids it got, and the product stays unchecked for its next order.
#[tokio::test]
async fn a_lease_that_lapses_during_add_order_ends_the_run_at_its_answer() {
    let mut w = World::new();
    w.fetch_returns(order("Approved"));
    w.lookup_finds(None);
    let lease = std::time::Duration::from_secs(3);
    let clock = Arc::new(TestClock::at(std::time::Duration::ZERO));
    let c = w.calls.clone();
    let paused = clock.clone();
    w.whmcs.expect_add_order().returning(move |_| {
        log(&c, "whmcs_add_order");
        // The answer comes back a whole lease later.
        paused.set(lease * 2);
        Ok(PlacedOrder {
            order_id: 77,
            service_ids: vec![5, 6],
            addon_ids: vec![],
            domain_ids: vec![],
            invoice_id: None,
        })
    });
    let calls = w.calls.clone();
    let (ports, config, rate) = w.into_parts();
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let runner = JobRunner::new(ports, config, "w".into(), rate, rx);
    let health = crate::LeaseHealth::new(lease, clock, std::time::Duration::ZERO);
    let outcome = runner
        .run_fenced(job(Step::MarkedProvisioning, 0), &health)
        .await;
    assert_eq!(outcome, JobOutcome::LeaseLost);
    let calls = calls.lock().unwrap().clone();
    let effects = effects(&calls);
    let answered = effects
        .iter()
        .position(|c| *c == "whmcs_add_order")
        .unwrap();
    assert_eq!(&effects[..=answered], LOOKUP_THEN_ADD_ORDER, "{calls:?}");
    for after in &effects[answered + 1..] {
        assert!(
            !after.starts_with("whmcs_") && !after.starts_with("sf_"),
            "{after} after the lease lapsed: {calls:?}"
        );
    }
}

/// Wall-clock time from the system, monotonic time set by the test.
#[derive(Debug)]
struct TestClock(std::sync::Mutex<std::time::Duration>);

impl TestClock {
    fn at(monotonic: std::time::Duration) -> Self {
        TestClock(std::sync::Mutex::new(monotonic))
    }

    fn set(&self, monotonic: std::time::Duration) {
        *self.0.lock().unwrap() = monotonic;
    }
}

impl crate::Clock for TestClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
    }

    fn monotonic(&self) -> std::time::Duration {
        *self.0.lock().unwrap()
    }
}

#[tokio::test]
async fn a_renewed_lease_keeps_the_run_going_and_a_lost_one_stops_it() {
    let lease = std::time::Duration::from_secs(3);
    let clock = Arc::new(TestClock::at(lease));
    let health = crate::LeaseHealth::new(lease, clock.clone(), std::time::Duration::ZERO);
    assert!(!health.is_live());
    health.renewed(lease);
    assert!(health.is_live());
    // Two thirds of a lease after the renewal was sent, no call may start.
    clock.set(lease + lease * 2 / 3);
    assert!(!health.is_live());
    health.renewed(lease + lease * 2 / 3);
    assert!(health.is_live());
    health.lost();
    assert!(!health.is_live());
}

#[tokio::test]
async fn a_failing_job_whose_claim_was_taken_over_writes_nothing_to_the_order() {
    let mut w = World::new();
    w.fetch_returns(order("Approved"));
    w.store.checkpoint();
    w.store.expect_renew_lease().returning(|id, token, _, _| {
        Err(provisioner_store::Error::LeaseLost {
            order_id: id.into(),
            owner: token.into(),
        })
    });
    let c = w.calls.clone();
    w.whmcs.expect_get_client_details().returning(move |_| {
        log(&c, "whmcs_client");
        Ok(ClientDetails {
            status: ClientStatus::Inactive,
            ..active_client()
        })
    });
    let (outcome, calls) = w.run(job(Step::Received, 0)).await;
    assert_eq!(outcome, JobOutcome::LeaseLost);
    assert_eq!(
        effects(&calls),
        ["sf_fetch", "whmcs_client"],
        "no PATCH, no dead letter"
    );
}

/// Config with field 4 on product 3 and field 9 on product 8, and an Order of two lines of
/// product 3 and one of product 8.
fn two_products(w: &mut World) -> Order {
    w.config.order_ref_fields = Some(crate::config::RefFields::PerProduct(
        [(3, 4), (8, 9)].into_iter().collect(),
    ));
    let mut o = order("Approved");
    let mut second = o.items[0].clone();
    second.id = "802000000000002AAA".into();
    second.quantity = 1;
    second.whmcs_product_id = Some("8".into());
    o.items.push(second);
    o
}

#[tokio::test]
async fn each_line_carries_the_ref_field_of_its_own_product() {
    let mut w = World::new();
    let o = two_products(&mut w);
    w.fetch_returns(o);
    w.client_active();
    w.lookup_finds(None);
    w.whmcs.expect_add_order().returning(|o| {
        let fields: Vec<(u64, Vec<(u64, String)>)> = o
            .lines
            .iter()
            .map(|l| {
                let f = l.custom_fields.0.iter().map(|(k, v)| (*k, v.clone()));
                (l.product_id, f.collect())
            })
            .collect();
        assert_eq!(
            fields,
            [
                (3, vec![(4, ORDER.to_owned())]),
                (3, vec![(4, ORDER.to_owned())]),
                (8, vec![(9, ORDER.to_owned())]),
            ]
        );
        Err(business(whmcs_client::Action::AddOrder, "stop here"))
    });
    let (outcome, _) = w.run(job(Step::Received, 0)).await;
    assert!(matches!(outcome, JobOutcome::Failed { .. }), "{outcome:?}");
}

#[tokio::test]
async fn the_lookup_matches_a_service_by_the_field_of_its_own_product() {
    let mut w = World::new();
    let mut o = two_products(&mut w);
    o.status = Some("Provisioning".into());
    w.fetch_returns(o);
    {
        let mut table = w.services.lock().unwrap();
        // Field 4 is product 3's: on a product 8 service it is not the ref (not a match).
        table.push(service(5, 70, 8, &[(4, ORDER)]));
        // Product 8's own field 9 holds the ref: the earlier attempt, WHMCS order 77.
        table.push(service(6, 77, 8, &[(9, ORDER)]));
        table.push(service(7, 77, 3, &[]));
    }
    w.lookup_finds(None);
    w.accept_ok();
    let (outcome, calls) = w.run(job(Step::OrderUnknown, 1)).await;
    assert_eq!(
        outcome,
        JobOutcome::Provisioned {
            whmcs_order_id: 77,
            service_ids: vec![6, 7]
        }
    );
    assert!(!calls.contains(&"whmcs_add_order".to_owned()), "{calls:?}");
}

#[tokio::test]
async fn a_product_without_a_ref_field_fails_before_any_whmcs_write() {
    let mut w = World::new();
    let mut o = two_products(&mut w);
    o.items[1].whmcs_product_id = Some("5".into());
    w.fetch_returns(o);
    // No WHMCS expectation at all: any WHMCS call panics the mock.
    let (outcome, calls) = w.run(job(Step::Received, 0)).await;
    let JobOutcome::Failed { reason } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(reason.contains("WHMCS product 5"), "{reason}");
    assert_eq!(
        effects(&calls),
        [
            "sf_fetch",
            "sf_patch:Provisioning Failed",
            &format!("dead_letter:{reason}"),
            "finish:failed",
            "alert:failed"
        ]
    );
    assert_eq!(
        StopReason::NoRefFieldForProduct.as_str(),
        "no_ref_field_for_product"
    );
}

#[tokio::test]
async fn the_ref_field_is_checked_once_per_product_and_alerts_when_not_stored() {
    // Two Orders of the same product (the second job's ref is another Order Id).
    let jobs = || {
        let mut second = job(Step::MarkedProvisioning, 0);
        second.order_id = "801000000000002AAA".into();
        vec![job(Step::MarkedProvisioning, 0), second]
    };
    // Stored: checked after the product's first AddOrder only, no alert.
    let mut w = World::new();
    w.fetch_returns(order("Provisioning"));
    w.lookup_finds(None);
    w.add_order_ok();
    w.accept_ok();
    let (outcomes, calls) = w.run_all(jobs()).await;
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, JobOutcome::Provisioned { .. }))
    );
    let after_add: Vec<&str> = effects(&calls)
        .windows(2)
        .filter(|w| w[0] == "whmcs_add_order")
        .map(|w| w[1])
        .collect();
    assert_eq!(after_add, ["whmcs_services", "sf_fetch"], "{calls:?}");
    assert!(!calls.iter().any(|c| c.starts_with("alert")), "{calls:?}");

    // Not stored (WHMCS dropped the field): one high alert for the product, not two.
    let mut w = World::new();
    w.drops_fields = true;
    w.fetch_returns(order("Provisioning"));
    w.lookup_finds(None);
    w.add_order_ok();
    w.accept_ok();
    let (outcomes, calls) = w.run_all(jobs()).await;
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, JobOutcome::Provisioned { .. }))
    );
    let alerts: Vec<&String> = calls.iter().filter(|c| c.starts_with("alert")).collect();
    assert_eq!(alerts, ["alert:ref_field_not_stored:3:4"]);
}

/// The settle rule (finding 2 of issue 15): a lookup that misses before the call's sent time +
/// its timeout + `WHMCS_SETTLE` does not let the call be repeated; the job waits for that
/// point (not an attempt) and looks again.
#[tokio::test]
async fn an_unknown_add_order_is_not_repeated_before_its_settle_point() {
    let mut w = World::new();
    w.config.whmcs_settle = std::time::Duration::from_secs(30);
    w.fetch_returns(order("Provisioning"));
    w.lookup_finds(None);
    // No AddOrder expectation: a repeat panics the mock.
    let job = job_with_intent(Step::OrderUnknown, 1, chrono::Duration::seconds(10));
    let point = job.intent.unwrap().settle_point(w.config.whmcs_settle);
    let (outcome, calls) = w.run(job).await;
    assert_eq!(outcome, JobOutcome::Delayed { at: point });
    assert_eq!(
        effects(&calls),
        ["sf_fetch", "whmcs_services", "reschedule:count=false"]
    );
    assert!(calls.contains(&"audit:step_failed".to_owned()));
}

#[tokio::test]
async fn an_unknown_add_order_is_repeated_after_its_settle_point_with_a_new_intent() {
    let mut w = World::new();
    w.fetch_returns(order("Provisioning"));
    w.lookup_finds(None);
    w.add_order_ok();
    w.accept_ok();
    // Sent 30 s timeout + 30 s settle + 1 s before this claim.
    let job = job_with_intent(Step::OrderUnknown, 1, chrono::Duration::seconds(61));
    let (outcome, calls) = w.run(job).await;
    assert!(
        matches!(outcome, JobOutcome::Provisioned { .. }),
        "{outcome:?}"
    );
    assert_eq!(effects(&calls)[..5], LOOKUP_THEN_ADD_ORDER);
}

#[tokio::test]
async fn an_accept_order_still_pending_is_not_repeated_before_its_settle_point() {
    let mut w = World::new();
    let c = w.calls.clone();
    w.whmcs.expect_get_order().returning(move |_| {
        log(&c, "whmcs_get_order");
        Ok(Some(whmcs_order("Pending")))
    });
    // No AcceptOrder expectation and no fetch: the server module may still be running.
    let job = job_with_intent(Step::AcceptUnknown, 1, chrono::Duration::seconds(5));
    let point = job.intent.unwrap().settle_point(w.config.whmcs_settle);
    let (outcome, calls) = w.run(job).await;
    assert_eq!(outcome, JobOutcome::Delayed { at: point });
    assert_eq!(
        effects(&calls),
        ["whmcs_get_order", "reschedule:count=false"]
    );
}

/// An unknown-outcome point without a recorded intent (a job from an older version) counts
/// as sent now: the intent is stored, and the job waits a whole timeout + settle.
#[tokio::test]
async fn an_unknown_outcome_without_a_recorded_intent_waits_a_whole_period() {
    let mut w = World::new();
    w.config.whmcs_timeout = std::time::Duration::from_secs(30);
    w.config.whmcs_settle = std::time::Duration::from_secs(30);
    w.fetch_returns(order("Provisioning"));
    w.lookup_finds(None);
    let job = job(Step::OrderUnknown, 1);
    let claimed = job.claimed_at();
    let (outcome, calls) = w.run(job).await;
    assert_eq!(
        outcome,
        JobOutcome::Delayed {
            at: claimed + chrono::Duration::seconds(60)
        }
    );
    assert_eq!(
        effects(&calls),
        [
            "sf_fetch",
            "whmcs_services",
            "advance:order_unknown",
            "reschedule:count=false"
        ]
    );
}

/// The sweep lists the Orders before it reads their jobs' states: a job that failed in
/// between (its Order PATCHed failed before its end was stored) shows as failed with its Order
/// listed approved. Reopened on that stale listing, the job would find the Order failed and
/// refuse it (`approval_withdrawn` with a false alert once past its checks). The Order is read
/// again first: only one still approved (or in the provisioning status) is reopened, and one
/// that cannot be read waits for the next sweep.
#[tokio::test]
async fn the_sweep_reopens_a_failed_job_only_when_its_order_reads_approved_again() {
    const STALE: &str = "801000000000001AAA";
    const APPROVED: &str = "801000000000002AAA";
    const PROVISIONING: &str = "801000000000003AAA";
    const UNREADABLE: &str = "801000000000004AAA";
    let calls: Calls = Arc::default();
    let mut store = MockStore::new();
    store.expect_job_states().returning(|ids| {
        Ok(ids
            .iter()
            .map(|id| (id.clone(), JobState::Failed))
            .collect())
    });
    let c = calls.clone();
    store.expect_reopen().returning(move |id, _, _, _| {
        log(&c, format!("reopen:{id}"));
        Ok(true)
    });
    let mut ports = intake_ports(store, &calls);
    let listed = |id: &str| sf_rest::ApprovedOrder {
        id: OrderId::parse(id).unwrap(),
        account_id: None,
        customer_number: Some(CUSTOMER.into()),
        last_modified: None,
    };
    let mut orders = MockOrderApi::new();
    orders
        .expect_list_approved_orders()
        .returning(move |_| Ok(vec![listed(STALE), listed(APPROVED), listed(UNREADABLE)]));
    orders
        .expect_list_orders_in_status()
        .returning(move |_, _| Ok(vec![listed(PROVISIONING)]));
    let c = calls.clone();
    orders.expect_fetch_order().returning(move |id| {
        log(&c, format!("fetch:{id}"));
        let status = match id {
            STALE => "Provisioning Failed",
            APPROVED => "Approved",
            PROVISIONING => "Provisioning",
            _ => return Err(sf_timeout()),
        };
        let mut o = order(status);
        o.id = OrderId::parse(id).unwrap();
        Ok(o)
    });
    ports.orders = Arc::new(orders);
    let engine = crate::Engine::new(ports, EngineConfig::default(), None);
    assert_eq!(engine.reconcile_once().await.unwrap(), 2);
    let calls: Vec<String> = calls
        .lock()
        .unwrap()
        .iter()
        .filter(|c| !c.starts_with("audit:"))
        .cloned()
        .collect();
    assert_eq!(
        calls,
        [
            format!("fetch:{STALE}"),
            format!("fetch:{APPROVED}"),
            format!("reopen:{APPROVED}"),
            format!("fetch:{UNREADABLE}"),
            format!("fetch:{PROVISIONING}"),
            format!("reopen:{PROVISIONING}"),
        ]
    );
}
