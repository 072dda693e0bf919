//! Salesforce and WHMCS in memory, as one instance's clients reach them, with the seed's faults.
//!
//! Every call has a client deadline (its timeout, from the moment the engine makes the call):
//! the request travels (latency), is handled at the true time it arrives, and the answer travels
//! back; the instance's gate holds a paused process before the request leaves and before the
//! answer is seen. A request still inside the paused process at its deadline is never sent (the
//! client's timeout covers the whole call). AddOrder and AcceptOrder take processing time at
//! WHMCS; a slow one commits after the client gave up, but within its timeout + `WHMCS_SETTLE`
//! (the contract's bound on how late a call may still commit). AcceptOrder runs the module
//! create for as long as it takes, the order staying Pending meanwhile: a second AcceptOrder
//! that arrives then runs a second module create, which the invariants count.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::time::Instant;
use whmcs_client::{Action, Error as WErr};

use crate::ports::Inst;
use crate::world::{self, World};

/// Salesforce as one instance's REST client reaches it.
pub struct SimSalesforce {
    pub world: Arc<World>,
    pub inst: Arc<Inst>,
    pub timeout: Duration,
}

fn sf_transport(action: sf_rest::Action) -> sf_rest::Error {
    sf_rest::Error::Transport {
        action,
        timeout: true,
        reason: "sim: timed out".to_owned(),
    }
}

fn sf_order(o: &world::SfOrder) -> sf_rest::Order {
    sf_rest::Order {
        id: sf_rest::OrderId::parse(&o.id).unwrap_or_else(|_| unreachable_id()),
        order_number: Some(o.id[12..15].to_owned()),
        status: Some(o.status.clone()),
        account_id: None,
        customer_number: Some(o.customer.clone()),
        whmcs_client_id: Some(o.client_id.to_string()),
        whmcs_order_id: o.whmcs_order_id.clone(),
        request_id: None,
        items: o
            .items
            .iter()
            .enumerate()
            .map(|(i, (pid, qty))| sf_rest::OrderItem {
                id: format!("802{i}"),
                quantity: *qty,
                whmcs_product_id: Some(pid.to_string()),
                billing_cycle: Some("monthly".to_owned()),
                config_options: None,
            })
            .collect(),
    }
}

fn unreachable_id() -> sf_rest::OrderId {
    panic!("the simulation makes valid Order ids")
}

impl SimSalesforce {
    /// One call: the request travels, `handle` runs at the true time it arrives, the answer
    /// travels back. As the real client: a request held up past its own timeout (a pause of
    /// the process before it went out) still goes out, and the caller hears a timeout; one
    /// past the caller's `requested` deadline (`OrderUpdate::deadline`) does not go out.
    async fn call<T>(
        &self,
        action: sf_rest::Action,
        requested: Option<Instant>,
        what: String,
        handle: impl FnOnce(&World) -> sf_rest::Result<T>,
    ) -> sf_rest::Result<T> {
        let world = &self.world;
        let own = Instant::now() + self.timeout;
        let deadline = requested.map_or(own, |r| r.min(own));
        self.inst.gate().await;
        tokio::time::sleep(world.latency()).await;
        if requested.is_some_and(|r| Instant::now() > r) {
            world.trace(format!(
                "{} sf {what} -> not sent (past the caller's deadline)",
                self.inst.name
            ));
            return Err(sf_transport(action));
        }
        if Instant::now() > deadline {
            world.trace(format!(
                "{} sf {what} -> sent late (paused)",
                self.inst.name
            ));
        }
        let faults = &world.faults;
        let out = if world.chance(faults.sf_transient) {
            Err(sf_rest::Error::Api {
                action,
                status: 503,
                code: "SERVER_UNAVAILABLE".to_owned(),
                message: "sim".to_owned(),
                fields: Vec::new(),
            })
        } else {
            handle(world)
        };
        let lost = out.is_ok() && world.chance(faults.sf_lost_response);
        world.trace(format!(
            "{} sf {what} -> {}{}",
            self.inst.name,
            match &out {
                Ok(_) => "ok".to_owned(),
                Err(e) => format!("error {e}"),
            },
            if lost { " (answer lost)" } else { "" }
        ));
        tokio::time::sleep(world.latency()).await;
        self.inst.gate().await;
        if lost || Instant::now() > deadline {
            return Err(sf_transport(action));
        }
        out
    }
}

#[async_trait]
impl sf_rest::OrderApi for SimSalesforce {
    async fn fetch_order(&self, order_id: &str) -> sf_rest::Result<sf_rest::Order> {
        let id = order_id.to_owned();
        self.call(
            sf_rest::Action::FetchOrder,
            None,
            format!("fetch {order_id}"),
            move |w| {
                let state = w.state();
                match state.orders.get(&id) {
                    Some(o) => Ok(sf_order(o)),
                    None => Err(sf_rest::Error::NotFound {
                        action: sf_rest::Action::FetchOrder,
                        order_id: id.clone(),
                    }),
                }
            },
        )
        .await
    }

    async fn update_order(
        &self,
        order_id: &str,
        update: &sf_rest::OrderUpdate,
    ) -> sf_rest::Result<()> {
        let id = order_id.to_owned();
        let update = update.clone();
        let what = format!(
            "patch {order_id} {}",
            update.status.as_deref().unwrap_or("-")
        );
        let requested = update.deadline;
        self.call(sf_rest::Action::UpdateOrder, requested, what, move |w| {
            let permanent = w.chance(w.faults.sf_permanent);
            let now = w.now();
            let mut state = w.state();
            let module_creates: u32 = {
                let whmcs = &state.whmcs;
                let creates = &state.module_creates;
                whmcs
                    .values()
                    .filter(|o| o.sf_ref == id)
                    .map(|o| creates.get(&o.id).copied().unwrap_or(0))
                    .sum()
            };
            let Some(order) = state.orders.get_mut(&id) else {
                return Err(sf_rest::Error::NotFound {
                    action: sf_rest::Action::UpdateOrder,
                    order_id: id.clone(),
                });
            };
            if permanent {
                // A validation rule refuses the PATCH: the Order has a permanent cause now.
                order.permanent_cause = true;
                return Err(sf_rest::Error::Api {
                    action: sf_rest::Action::UpdateOrder,
                    status: 400,
                    code: "FIELD_CUSTOM_VALIDATION_EXCEPTION".to_owned(),
                    message: "sim".to_owned(),
                    fields: Vec::new(),
                });
            }
            // The validation rules the README's Salesforce setup installs: the provisioning
            // status only from the approved or the failed status, the failed status only from
            // the approved or the provisioning status (either kept as it is), so neither PATCH
            // overwrites a withdrawal (or `Activated`) that landed after the run's last read.
            let rules = [
                (
                    world::PROVISIONING,
                    [world::APPROVED, world::FAILED],
                    "Provisioning PATCH refused by its validation rule",
                ),
                (
                    world::FAILED,
                    [world::APPROVED, world::PROVISIONING],
                    "failed PATCH refused by its validation rule",
                ),
            ];
            for (guarded, from, counter) in rules {
                if update.status.as_deref() == Some(guarded)
                    && order.status != guarded
                    && !from.contains(&order.status.as_str())
                {
                    state.count(counter);
                    return Err(sf_rest::Error::Api {
                        action: sf_rest::Action::UpdateOrder,
                        status: 400,
                        code: "FIELD_CUSTOM_VALIDATION_EXCEPTION".to_owned(),
                        message: format!("Status can be set to {guarded} only from {from:?}"),
                        fields: Vec::new(),
                    });
                }
            }
            let failed_after_accept =
                update.status.as_deref() == Some(world::FAILED) && module_creates > 0;
            let withdrawn_overwritten = update.status.as_deref() == Some(world::PROVISIONING)
                && order.status == world::DRAFT;
            if let Some(status) = &update.status {
                order.status = status.clone();
            }
            if let Some(id) = &update.whmcs_order_id {
                order.whmcs_order_id = Some(id.clone());
            }
            if let Some(ids) = &update.whmcs_service_ids {
                order.service_ids = ids.clone();
            }
            order.last_modified = now;
            drop(state);
            if withdrawn_overwritten {
                w.violation(format!(
                    "Order {id}: a withdrawal overwritten by the Provisioning PATCH"
                ));
            }
            if failed_after_accept {
                w.violation(format!(
                    "Order {id} marked failed after its AcceptOrder ran a module create"
                ));
            }
            Ok(())
        })
        .await
    }

    async fn list_approved_orders(
        &self,
        older_than: Duration,
    ) -> sf_rest::Result<Vec<sf_rest::ApprovedOrder>> {
        self.list_orders_in_status(world::APPROVED, older_than)
            .await
    }

    async fn list_orders_in_status(
        &self,
        status: &str,
        older_than: Duration,
    ) -> sf_rest::Result<Vec<sf_rest::ApprovedOrder>> {
        let status = status.to_owned();
        self.call(
            sf_rest::Action::ListApprovedOrders,
            None,
            format!("list {status}"),
            move |w| {
                let cutoff: DateTime<Utc> =
                    w.now() - chrono::Duration::from_std(older_than).unwrap_or_default();
                Ok(w.state()
                    .orders
                    .values()
                    .filter(|o| o.status == status && o.last_modified <= cutoff)
                    .filter_map(|o| {
                        Some(sf_rest::ApprovedOrder {
                            id: sf_rest::OrderId::parse(&o.id).ok()?,
                            account_id: None,
                            customer_number: Some(o.customer.clone()),
                            last_modified: Some(o.last_modified),
                        })
                    })
                    .collect())
            },
        )
        .await
    }
}

/// WHMCS as one instance's client reaches it.
pub struct SimWhmcs {
    pub world: Arc<World>,
    pub inst: Arc<Inst>,
    /// `WHMCS_TIMEOUT`.
    pub timeout: Duration,
    /// `WHMCS_ACCEPT_TIMEOUT`.
    pub accept_timeout: Duration,
    /// `WHMCS_SETTLE`: a slow call commits before its deadline + this (the contract's bound).
    pub settle: Duration,
}

fn transient(action: Action, reason: &str) -> WErr {
    WErr::Transient {
        action,
        http_status: None,
        reason: format!("sim: {reason}"),
    }
}

fn unknown(action: Action) -> WErr {
    WErr::UnknownOutcome {
        action,
        http_status: None,
        reason: "sim: timed out".to_owned(),
    }
}

/// What a run commits when it is done.
type Commit<T> = Box<dyn FnOnce(&World) -> whmcs_client::Result<T> + Send>;

/// What a non-idempotent call does once it arrives: answer at once (`Err`), or run for a
/// while and then commit.
enum Arrival<T> {
    Answer(whmcs_client::Result<T>),
    Run { took: Duration, commit: Commit<T> },
}

impl SimWhmcs {
    /// A read: the request travels, `handle` answers at the true time it arrives, the answer
    /// travels back.
    async fn read<T>(
        &self,
        action: Action,
        what: String,
        handle: impl FnOnce(&World) -> whmcs_client::Result<T>,
    ) -> whmcs_client::Result<T> {
        let world = &self.world;
        let deadline = Instant::now() + self.timeout;
        self.inst.gate().await;
        tokio::time::sleep(world.latency()).await;
        if Instant::now() > deadline {
            return Err(transient(action, "timed out"));
        }
        let out = if world.chance(world.faults.whmcs_transient) {
            Err(transient(action, "connection reset"))
        } else {
            handle(world)
        };
        world.trace(format!(
            "{} whmcs {what} -> {}",
            self.inst.name,
            match &out {
                Ok(_) => "ok".to_owned(),
                Err(e) => format!("error {e}"),
            }
        ));
        tokio::time::sleep(world.latency()).await;
        self.inst.gate().await;
        if Instant::now() > deadline {
            return Err(transient(action, "timed out"));
        }
        out
    }

    /// A non-idempotent call: `arrive` decides at the true arrival time; a run commits in a
    /// task of the world (it lands whatever happens to the caller); the caller waits for it
    /// until its deadline: `timeout` from now, or the caller's own `requested` deadline when
    /// that is sooner (as the real client: `NewOrder::deadline`).
    async fn write<T: Send + 'static>(
        &self,
        action: Action,
        timeout: Duration,
        requested: Option<Instant>,
        what: String,
        arrive: impl FnOnce(&World, Instant) -> Arrival<T>,
    ) -> whmcs_client::Result<T> {
        let world = Arc::clone(&self.world);
        let name = self.inst.name.clone();
        let own = Instant::now() + timeout;
        let deadline = requested.map_or(own, |r| r.min(own));
        self.inst.gate().await;
        tokio::time::sleep(world.latency()).await;
        if Instant::now() > deadline {
            world.trace(format!("{name} whmcs {what} -> not sent (paused)"));
            return Err(unknown(action));
        }
        if world.chance(world.faults.whmcs_transient) {
            world.trace(format!("{name} whmcs {what} -> refused before it ran"));
            tokio::time::sleep(world.latency()).await;
            self.inst.gate().await;
            return Err(transient(action, "connection refused"));
        }
        let out = match arrive(&world, deadline) {
            Arrival::Answer(out) => {
                world.trace(format!(
                    "{name} whmcs {what} -> {}",
                    match &out {
                        Ok(_) => "ok".to_owned(),
                        Err(e) => format!("error {e}"),
                    }
                ));
                tokio::time::sleep(world.latency()).await;
                out
            }
            Arrival::Run { took, commit } => {
                world.trace(format!(
                    "{name} whmcs {what} -> runs {} ms",
                    took.as_millis()
                ));
                world.state().inflight += 1;
                let (tx, rx) = tokio::sync::oneshot::channel();
                let w = Arc::clone(&world);
                let line = format!("whmcs {what} (from {name}) committed");
                tokio::spawn(async move {
                    tokio::time::sleep(took).await;
                    let out = commit(&w);
                    w.trace(format!(
                        "{line}: {}",
                        match &out {
                            Ok(_) => "ok".to_owned(),
                            Err(e) => format!("error {e}"),
                        }
                    ));
                    w.state().inflight -= 1;
                    let _ = tx.send(out);
                });
                let answer = tokio::select! {
                    biased;
                    out = rx => out.unwrap_or_else(|_| Err(unknown(action))),
                    _ = tokio::time::sleep_until(deadline) => Err(unknown(action)),
                };
                if answer.is_ok() {
                    tokio::time::sleep(world.latency()).await;
                }
                answer
            }
        };
        self.inst.gate().await;
        if Instant::now() > deadline && out.is_ok() {
            world.trace(format!(
                "{name} whmcs {what}: answer came after the timeout"
            ));
            return Err(unknown(action));
        }
        if out.is_ok() && world.chance(world.faults.whmcs_lost_response) {
            world.trace(format!("{name} whmcs {what}: answer lost"));
            return Err(unknown(action));
        }
        out
    }

    /// How long a call arriving now, with the client's `deadline`, runs at WHMCS: usually
    /// briefly; a slow one up to past the deadline, but never past deadline + 80% of the settle
    /// margin.
    fn run_time(&self, world: &World, deadline: Instant, usual: Duration) -> Duration {
        if world.chance(world.faults.whmcs_slow) {
            world.count("slow WHMCS write");
            let latest =
                deadline.saturating_duration_since(Instant::now()) + self.settle.mul_f64(0.8);
            latest.mul_f64(world.rng(|r| rand::Rng::random_range(r, 0.3..1.0)))
        } else {
            usual.mul_f64(world.rng(|r| rand::Rng::random_range(r, 0.0..1.0)))
        }
    }
}

fn service(o: &world::WOrder, id: u64, pid: u64) -> whmcs_client::Service {
    whmcs_client::Service {
        id,
        client_id: o.client_id,
        order_id: o.id,
        product_id: pid,
        name: format!("product {pid}"),
        domain: String::new(),
        status: if o.active { "Active" } else { "Pending" }.to_owned(),
        billing_cycle: "Monthly".to_owned(),
        username: String::new(),
        custom_fields: vec![whmcs_client::FieldValue {
            id: world::REF_FIELD,
            name: "Salesforce Order".to_owned(),
            value: o.sf_ref.clone(),
        }],
        config_options: Vec::new(),
    }
}

fn services_of(w: &World, client_id: u64) -> Vec<whmcs_client::Service> {
    w.state()
        .whmcs
        .values()
        .filter(|o| o.client_id == client_id)
        .flat_map(|o| o.services.iter().map(|(id, pid)| service(o, *id, *pid)))
        .collect()
}

/// Every record on one page.
fn one_page<T>(items: Vec<T>) -> whmcs_client::ListPage<T> {
    let n = items.len() as u64;
    whmcs_client::ListPage {
        total_results: n,
        start_number: 0,
        num_returned: n,
        items,
    }
}

fn whmcs_order(o: &world::WOrder) -> whmcs_client::Order {
    whmcs_client::Order {
        id: o.id,
        order_number: o.id.to_string(),
        client_id: o.client_id,
        status: if o.active { "Active" } else { "Pending" }.to_owned(),
        payment_method: "banktransfer".to_owned(),
        invoice_id: None,
        amount: "0.00".to_owned(),
        date: String::new(),
        line_items: Vec::new(),
    }
}

#[async_trait]
impl whmcs_client::WhmcsApi for SimWhmcs {
    async fn get_client_details(
        &self,
        client_id: u64,
    ) -> whmcs_client::Result<whmcs_client::ClientDetails> {
        self.read(
            Action::GetClientsDetails,
            format!("GetClientsDetails {client_id}"),
            move |w| match w.state().clients.get(&client_id) {
                Some(active) => Ok(whmcs_client::ClientDetails {
                    id: client_id,
                    status: if *active {
                        whmcs_client::ClientStatus::Active
                    } else {
                        whmcs_client::ClientStatus::Inactive
                    },
                    first_name: String::new(),
                    last_name: String::new(),
                    company_name: String::new(),
                    email: String::new(),
                    custom_fields: Vec::new(),
                    email_verified: true,
                }),
                None => Err(WErr::Business {
                    action: Action::GetClientsDetails,
                    http_status: 200,
                    message: "Client Not Found".to_owned(),
                }),
            },
        )
        .await
    }

    async fn get_clients_products(
        &self,
        query: &whmcs_client::ProductsQuery,
        _page: whmcs_client::Page,
    ) -> whmcs_client::Result<whmcs_client::ListPage<whmcs_client::Service>> {
        let client_id = query.client_id.unwrap_or_default();
        self.read(
            Action::GetClientsProducts,
            format!("GetClientsProducts {client_id}"),
            move |w| Ok(one_page(services_of(w, client_id))),
        )
        .await
    }

    async fn all_client_services(
        &self,
        client_id: u64,
    ) -> whmcs_client::Result<Vec<whmcs_client::Service>> {
        self.read(
            Action::GetClientsProducts,
            format!("GetClientsProducts {client_id}"),
            move |w| Ok(services_of(w, client_id)),
        )
        .await
    }

    async fn find_service_by_custom_field(
        &self,
        client_id: u64,
        field_id: u64,
        value: &str,
    ) -> whmcs_client::Result<Option<whmcs_client::Service>> {
        let value = value.to_owned();
        self.read(
            Action::GetClientsProducts,
            format!("GetClientsProducts {client_id} find"),
            move |w| {
                Ok(services_of(w, client_id)
                    .into_iter()
                    .find(|s| s.custom_field(field_id) == Some(value.as_str())))
            },
        )
        .await
    }

    async fn add_order(
        &self,
        order: &whmcs_client::NewOrder,
    ) -> whmcs_client::Result<whmcs_client::PlacedOrder> {
        let client_id = order.client_id;
        let pids: Vec<u64> = order.lines.iter().map(|l| l.product_id).collect();
        let sf_ref = order
            .lines
            .first()
            .and_then(|l| l.custom_fields.0.get(&world::REF_FIELD).cloned())
            .unwrap_or_default();
        let what = format!("AddOrder {sf_ref}");
        let usual = self.timeout / 4;
        self.write(
            Action::AddOrder,
            self.timeout,
            order.deadline,
            what,
            move |w, deadline| {
                let took = self.run_time(w, deadline, usual);
                Arrival::Run {
                    took,
                    commit: Box::new(move |w: &World| {
                        let placed = w.state().add_whmcs_order(client_id, &sf_ref, &pids);
                        Ok(whmcs_client::PlacedOrder {
                            order_id: placed.id,
                            service_ids: placed.services.iter().map(|(id, _)| *id).collect(),
                            addon_ids: Vec::new(),
                            domain_ids: Vec::new(),
                            invoice_id: None,
                        })
                    }),
                }
            },
        )
        .await
    }

    async fn accept_order(
        &self,
        request: &whmcs_client::AcceptOrderRequest,
    ) -> whmcs_client::Result<()> {
        let id = request.order_id;
        let usual = self.accept_timeout / 4;
        self.write(
            Action::AcceptOrder,
            self.accept_timeout,
            request.deadline,
            format!("AcceptOrder {id}"),
            move |w, deadline| {
                let pending = w.state().whmcs.get(&id).is_some_and(|o| !o.active);
                if !pending {
                    return Arrival::Answer(Err(WErr::Business {
                        action: Action::AcceptOrder,
                        http_status: 200,
                        message: "Order ID not found or Status not Pending".to_owned(),
                    }));
                }
                // The module create starts now; the order stays Pending until it is done.
                *w.state().module_creates.entry(id).or_default() += 1;
                let took = self.run_time(w, deadline, usual);
                Arrival::Run {
                    took,
                    commit: Box::new(move |w: &World| {
                        if let Some(o) = w.state().whmcs.get_mut(&id) {
                            o.active = true;
                        }
                        Ok(())
                    }),
                }
            },
        )
        .await
    }

    async fn get_orders(
        &self,
        query: &whmcs_client::OrdersQuery,
        _page: whmcs_client::Page,
    ) -> whmcs_client::Result<whmcs_client::ListPage<whmcs_client::Order>> {
        let id = query.order_id;
        self.read(Action::GetOrders, "GetOrders".to_owned(), move |w| {
            let items: Vec<whmcs_client::Order> = w
                .state()
                .whmcs
                .values()
                .filter(|o| id.is_none_or(|id| o.id == id))
                .map(whmcs_order)
                .collect();
            Ok(one_page(items))
        })
        .await
    }

    async fn get_order(&self, order_id: u64) -> whmcs_client::Result<Option<whmcs_client::Order>> {
        self.read(
            Action::GetOrders,
            format!("GetOrders {order_id}"),
            move |w| Ok(w.state().whmcs.get(&order_id).map(whmcs_order)),
        )
        .await
    }

    async fn module_create(&self, _service_id: u64) -> whmcs_client::Result<()> {
        Err(WErr::InvalidInput {
            reason: "sim: the engine never calls ModuleCreate".to_owned(),
        })
    }

    async fn add_client(&self, _client: &whmcs_client::NewClient) -> whmcs_client::Result<u64> {
        Err(WErr::InvalidInput {
            reason: "sim: the engine never calls AddClient".to_owned(),
        })
    }
}
