//! The store of the emulated installation: records by id, the secondary indexes that keep
//! per-client lookups O(log n), and the sandbox's own bookkeeping (request log, faults).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::faults::{Fault, FaultEntry};
use super::model::{Client, Order, Product, Service};
use super::server::RecordedRequest;
use crate::record_log::RecordLog;

/// The emulated installation. `clients`, `orders` and `services` change only through
/// [`State::insert_client`], [`State::insert_order`] and [`State::insert_service`] (or in ways
/// that leave the indexed fields alone: status, module creates), which keep the indexes in sync.
#[derive(Default)]
pub(super) struct State {
    pub(super) clients: BTreeMap<u64, Client>,
    pub(super) products: BTreeMap<u64, Product>,
    pub(super) orders: BTreeMap<u64, Order>,
    pub(super) services: BTreeMap<u64, Service>,
    /// ASCII-lowercased email -> ids of the clients with it (WHMCS compares emails
    /// case-insensitively; seeding may repeat one).
    clients_by_email: HashMap<String, BTreeSet<u64>>,
    /// Client id -> ids of its services.
    services_by_client: HashMap<u64, BTreeSet<u64>>,
    /// Client id -> ids of its orders.
    orders_by_client: HashMap<u64, BTreeSet<u64>>,
    pub(super) next_client: u64,
    pub(super) next_product: u64,
    pub(super) next_order: u64,
    pub(super) next_service: u64,
    pub(super) next_invoice: u64,
    pub(super) requests: RecordLog<RecordedRequest>,
    pub(super) faults: HashMap<String, Vec<FaultEntry>>,
    pub(super) rate_faults: HashMap<String, Vec<(Fault, f64)>>,
    pub(super) rng: Option<rand::rngs::StdRng>,
    pub(super) ip_denied: bool,
    pub(super) allowed_actions: Option<HashSet<String>>,
    /// Calls held by [`Fault::HoldThenCommit`] that have not committed (or been refused) yet.
    pub(super) holding: usize,
}

/// Removes `id` from the set under `key`, dropping the set when it empties.
fn unindex<K: std::hash::Hash + Eq>(index: &mut HashMap<K, BTreeSet<u64>>, key: &K, id: u64) {
    if let Some(ids) = index.get_mut(key) {
        ids.remove(&id);
        if ids.is_empty() {
            index.remove(key);
        }
    }
}

impl State {
    /// Adds or replaces the client stored under `client.id`.
    pub(super) fn insert_client(&mut self, client: Client) {
        let id = client.id;
        if let Some(old) = self.clients.get(&id) {
            let key = old.email.to_ascii_lowercase();
            unindex(&mut self.clients_by_email, &key, id);
        }
        self.clients_by_email
            .entry(client.email.to_ascii_lowercase())
            .or_default()
            .insert(id);
        self.clients.insert(id, client);
    }

    /// The client with the lowest id whose email equals `email` ignoring ASCII case.
    pub(super) fn client_by_email(&self, email: &str) -> Option<&Client> {
        self.clients_by_email
            .get(&email.to_ascii_lowercase())
            .and_then(|ids| ids.first())
            .and_then(|id| self.clients.get(id))
    }

    /// Adds or replaces the service stored under `service.id`.
    pub(super) fn insert_service(&mut self, service: Service) {
        let id = service.id;
        if let Some(old) = self.services.get(&id) {
            let key = old.client_id;
            unindex(&mut self.services_by_client, &key, id);
        }
        self.services_by_client
            .entry(service.client_id)
            .or_default()
            .insert(id);
        self.services.insert(id, service);
    }

    /// Adds or replaces the order stored under `order.id`.
    pub(super) fn insert_order(&mut self, order: Order) {
        let id = order.id;
        if let Some(old) = self.orders.get(&id) {
            let key = old.client_id;
            unindex(&mut self.orders_by_client, &key, id);
        }
        self.orders_by_client
            .entry(order.client_id)
            .or_default()
            .insert(id);
        self.orders.insert(id, order);
    }

    /// The services of `client_id`, by id.
    pub(super) fn services_of(&self, client_id: u64) -> impl Iterator<Item = &Service> {
        self.services_by_client
            .get(&client_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.services.get(id))
    }

    /// The orders of `client_id`, by id.
    pub(super) fn orders_of(&self, client_id: u64) -> impl Iterator<Item = &Order> {
        self.orders_by_client
            .get(&client_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.orders.get(id))
    }
}
