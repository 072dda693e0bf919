//! The records of the emulated installation: clients, products, orders and services.

use std::collections::BTreeMap;

use super::php::Value;

/// A WHMCS client (customer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// Client id (assigned when seeded).
    pub id: u64,
    /// First name.
    pub first_name: String,
    /// Last name.
    pub last_name: String,
    /// Company name.
    pub company_name: String,
    /// Email.
    pub email: String,
    /// `Active`, `Inactive` or `Closed`.
    pub status: String,
    /// Client custom fields by id.
    pub custom_fields: BTreeMap<u64, String>,
}

impl Client {
    /// An Active client.
    pub fn active(first_name: &str, email: &str) -> Self {
        Self {
            id: 0,
            first_name: first_name.to_owned(),
            last_name: "Tester".to_owned(),
            company_name: String::new(),
            email: email.to_owned(),
            status: "Active".to_owned(),
            custom_fields: BTreeMap::new(),
        }
    }

    /// The same client with another status.
    pub fn with_status(mut self, status: &str) -> Self {
        status.clone_into(&mut self.status);
        self
    }
}

/// A product custom field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductCustomField {
    /// Custom field id (`tblcustomfields.id`, unique across products).
    pub id: u64,
    /// Field name.
    pub name: String,
    /// Whether AddOrder must carry a value.
    pub required: bool,
}

/// A configurable option of a product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductConfigOption {
    /// Configurable option id.
    pub id: u64,
    /// Option name.
    pub name: String,
    /// `dropdown`, `radio`, `yesno`, `quantity`, `text`.
    pub kind: String,
}

/// A product (what can be ordered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    /// Product id, `pid` (assigned when seeded).
    pub id: u64,
    /// Name.
    pub name: String,
    /// Group name.
    pub group_name: String,
    /// Custom fields: defined per product (AddOrder keeps only values of these ids).
    pub custom_fields: Vec<ProductCustomField>,
    /// Configurable options.
    pub config_options: Vec<ProductConfigOption>,
    /// When set, the module's create action fails with this message (AcceptOrder with
    /// autosetup and ModuleCreate).
    pub module_error: Option<String>,
}

impl Product {
    /// A product without fields or options.
    pub fn new(name: &str) -> Self {
        Self {
            id: 0,
            name: name.to_owned(),
            group_name: "Servers".to_owned(),
            custom_fields: Vec::new(),
            config_options: Vec::new(),
            module_error: None,
        }
    }

    /// Adds a custom field.
    pub fn with_custom_field(mut self, id: u64, name: &str, required: bool) -> Self {
        self.custom_fields.push(ProductCustomField {
            id,
            name: name.to_owned(),
            required,
        });
        self
    }

    /// Adds a configurable option.
    pub fn with_config_option(mut self, id: u64, name: &str, kind: &str) -> Self {
        self.config_options.push(ProductConfigOption {
            id,
            name: name.to_owned(),
            kind: kind.to_owned(),
        });
        self
    }
}

/// An order.
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    /// Order id.
    pub id: u64,
    /// Order number (random-looking, 10 digits).
    pub order_num: u64,
    /// Client id.
    pub client_id: u64,
    /// `Pending` or `Active`.
    pub status: String,
    /// Gateway.
    pub payment_method: String,
    /// Services created by the order, in line order.
    pub service_ids: Vec<u64>,
    /// Invoice id, 0 when `noinvoice` was set.
    pub invoice_id: u64,
    /// Whether `noemail` was truthy.
    pub no_email: bool,
    /// Whether AcceptOrder asked for welcome emails (`sendemail`).
    pub send_email: Option<bool>,
    /// How many AcceptOrder calls committed on it: more than one means the module ran again
    /// (an AcceptOrder held by [`crate::whmcs::Fault::HoldThenCommit`] commits even when
    /// another one committed meanwhile, as WHMCS would).
    pub accepts: u32,
}

/// A service (a client's product).
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// Service id (assigned when created).
    pub id: u64,
    /// Client id.
    pub client_id: u64,
    /// Order id (0 for seeded services).
    pub order_id: u64,
    /// Product id.
    pub product_id: u64,
    /// Billing cycle as sent.
    pub billing_cycle: String,
    /// Domain.
    pub domain: String,
    /// `Pending` or `Active`.
    pub status: String,
    /// Custom field values by field id, as decoded from `customfields[i]`.
    pub custom_fields: BTreeMap<u64, String>,
    /// Config option values by option id, as decoded from `configoptions[i]`.
    pub config_options: BTreeMap<u64, Value>,
    /// How many times the module's create ran successfully.
    pub module_creates: u32,
}

impl Service {
    /// A Pending service of `client_id` for `product_id`, for seeding.
    pub fn new(client_id: u64, product_id: u64) -> Self {
        Self {
            id: 0,
            client_id,
            order_id: 0,
            product_id,
            billing_cycle: "monthly".to_owned(),
            domain: String::new(),
            status: "Pending".to_owned(),
            custom_fields: BTreeMap::new(),
            config_options: BTreeMap::new(),
            module_creates: 0,
        }
    }

    /// The same service with custom field `id` set.
    pub fn with_custom_field(mut self, id: u64, value: &str) -> Self {
        self.custom_fields.insert(id, value.to_owned());
        self
    }
}
