//! Read-only catalog calls: the products that can be ordered (`GetProducts`) and the active
//! payment gateways (`GetPaymentMethods`), for configuration checks. Read leniently like every
//! other reply: ids as numbers or numeric strings, `""` for an empty list, unknown keys ignored.

use serde::Deserialize;

use crate::lenient;

/// A product of the catalog (`products.product[]` of `GetProducts`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct CatalogProduct {
    /// Product id (`pid`).
    #[serde(deserialize_with = "lenient::u64_any", default)]
    pub pid: u64,
    /// Product group id (`gid`).
    #[serde(deserialize_with = "lenient::u64_any", default)]
    pub gid: u64,
    /// Product type: `hostingaccount`, `reselleraccount`, `server` or `other`.
    #[serde(rename = "type", deserialize_with = "lenient::string_any", default)]
    pub kind: String,
    /// Name.
    #[serde(deserialize_with = "lenient::string_any", default)]
    pub name: String,
    /// The server module that provisions it (empty: none).
    #[serde(deserialize_with = "lenient::string_any", default)]
    pub module: String,
    /// `free`, `onetime` or `recurring`.
    #[serde(rename = "paytype", deserialize_with = "lenient::string_any", default)]
    pub pay_type: String,
    /// Custom fields shown on the order form. WHMCS leaves out fields without "Show on Order
    /// Form" (e.g. an admin-only external-ref field), so a missing id here is not proof that
    /// the field does not exist.
    #[serde(
        rename = "customfields",
        deserialize_with = "lenient::nested_list",
        default
    )]
    pub custom_fields: Vec<ProductCustomField>,
    /// Configurable options.
    #[serde(
        rename = "configoptions",
        deserialize_with = "lenient::nested_list",
        default
    )]
    pub config_options: Vec<ProductConfigOption>,
}

impl CatalogProduct {
    /// The custom field with this id, if GetProducts shows it.
    pub fn custom_field(&self, id: u64) -> Option<&ProductCustomField> {
        self.custom_fields.iter().find(|f| f.id == id)
    }
}

/// A product custom field (`customfields.customfield[]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct ProductCustomField {
    /// Custom field id.
    #[serde(deserialize_with = "lenient::u64_any", default)]
    pub id: u64,
    /// Name.
    #[serde(deserialize_with = "lenient::string_any", default)]
    pub name: String,
    /// Whether an order must fill it in.
    #[serde(deserialize_with = "lenient::bool_any", default)]
    pub required: bool,
}

/// A configurable option (`configoptions.configoption[]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct ProductConfigOption {
    /// Configurable option id.
    #[serde(deserialize_with = "lenient::u64_any", default)]
    pub id: u64,
    /// Name.
    #[serde(deserialize_with = "lenient::string_any", default)]
    pub name: String,
    /// The option type as WHMCS sends it (`1` dropdown, `2` radio, `3` yes/no, `4` quantity).
    #[serde(rename = "type", deserialize_with = "lenient::string_any", default)]
    pub option_type: String,
}

/// An active payment gateway (`paymentmethods.paymentmethod[]` of `GetPaymentMethods`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct PaymentMethod {
    /// The gateway's system name, what AddOrder's `paymentmethod` takes (e.g. `banktransfer`).
    #[serde(deserialize_with = "lenient::string_any", default)]
    pub module: String,
    /// The name shown to clients.
    #[serde(
        rename = "displayname",
        deserialize_with = "lenient::string_any",
        default
    )]
    pub display_name: String,
}

#[derive(Deserialize)]
pub(crate) struct CatalogEnvelope {
    #[serde(deserialize_with = "lenient::nested_list", default)]
    pub(crate) products: Vec<CatalogProduct>,
}

#[derive(Deserialize)]
pub(crate) struct PaymentMethodsEnvelope {
    #[serde(
        rename = "paymentmethods",
        deserialize_with = "lenient::nested_list",
        default
    )]
    pub(crate) methods: Vec<PaymentMethod>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    #[test]
    fn products_read_leniently() {
        let env: CatalogEnvelope = serde_json::from_value(json!({
            "result": "success", "totalresults": "2",
            "products": {"product": [
                {"pid": "3", "gid": 1, "type": "server", "name": "VPS S", "module": "autorelease",
                 "paytype": "recurring", "pricing": {"USD": {"monthly": "5.00"}},
                 "customfields": {"customfield": [{"id": "12", "name": "Ref", "required": "on"}]},
                 "configoptions": {"configoption": [{"id": 4, "name": "Root", "type": 1,
                                    "options": {"option": []}}]}},
                {"pid": 4, "name": "Bare", "customfields": "", "configoptions": ""}
            ]}
        }))
        .unwrap();
        assert_eq!(env.products.len(), 2);
        let first = &env.products[0];
        assert_eq!((first.pid, first.gid), (3, 1));
        assert!(first.custom_field(12).unwrap().required);
        assert_eq!(first.config_options[0].option_type, "1");
        assert!(env.products[1].custom_fields.is_empty());
    }

    #[test]
    fn payment_methods_read_with_an_empty_list_as_empty_string() {
        let env: PaymentMethodsEnvelope = serde_json::from_value(json!({
            "result": "success", "totalresults": 1,
            "paymentmethods": {"paymentmethod": [{"module": "paypal", "displayname": "PayPal"}]}
        }))
        .unwrap();
        assert_eq!(env.methods[0].module, "paypal");
        let none: PaymentMethodsEnvelope =
            serde_json::from_value(json!({"result": "success", "paymentmethods": ""})).unwrap();
        assert!(none.methods.is_empty());
    }
}
