//! sObject describe: which fields the org has and what the integration user may do with them
//! (`GET /services/data/vXX.X/sobjects/{sObject}/describe`), read as a typed subset of
//! Salesforce's DescribeSObjectResult. Fields this crate does not model are ignored.

use serde::{Deserialize, Deserializer};

/// The longest sObject API name accepted (Salesforce's limit is 40 characters plus `__c`
/// and a namespace prefix).
pub const MAX_SOBJECT_NAME_CHARS: usize = 80;

/// An sObject's describe answer: the object and its fields as the user sees them.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct SObjectDescribe {
    /// API name, e.g. `Order`.
    pub name: String,
    /// Display label.
    #[serde(default)]
    pub label: String,
    /// Whether the user can query it.
    #[serde(default)]
    pub queryable: bool,
    /// Whether the user can create records.
    #[serde(default)]
    pub createable: bool,
    /// Whether the user can update records.
    #[serde(default)]
    pub updateable: bool,
    /// Every field the user can see (a deleted or hidden field is simply absent).
    #[serde(default)]
    pub fields: Vec<FieldDescribe>,
}

impl SObjectDescribe {
    /// The field with this API name (matched case-insensitively, as Salesforce does), if the
    /// user can see it.
    pub fn field(&self, name: &str) -> Option<&FieldDescribe> {
        self.fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
    }
}

/// One field of an [`SObjectDescribe`].
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct FieldDescribe {
    /// API name, e.g. `Status` or `WHMCS_Order_Id__c`.
    pub name: String,
    /// Display label.
    #[serde(default)]
    pub label: String,
    /// The field's data type.
    #[serde(rename = "type")]
    pub field_type: FieldType,
    /// Maximum length of text fields (0 for other types).
    #[serde(default)]
    pub length: u64,
    /// Whether the user can set it on create.
    #[serde(default)]
    pub createable: bool,
    /// Whether the user can change it on update.
    #[serde(default)]
    pub updateable: bool,
    /// Whether it may be empty.
    #[serde(default)]
    pub nillable: bool,
    /// Whether it is a custom field (`__c`).
    #[serde(default)]
    pub custom: bool,
    /// Whether values must be unique.
    #[serde(default)]
    pub unique: bool,
    /// Whether it is an external id.
    #[serde(default)]
    pub external_id: bool,
    /// The values of a picklist (empty for other types).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub picklist_values: Vec<PicklistValue>,
    /// The sObjects a lookup points to (empty for other types).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub reference_to: Vec<String>,
}

impl FieldDescribe {
    /// Whether `value` is an active value of this picklist.
    pub fn has_active_value(&self, value: &str) -> bool {
        self.picklist_values
            .iter()
            .any(|v| v.active && v.value == value)
    }
}

/// One value of a picklist field.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct PicklistValue {
    /// The API value (what REST reads and writes).
    pub value: String,
    /// Display label.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub label: String,
    /// Whether it can be chosen.
    #[serde(default)]
    pub active: bool,
    /// Whether it is the field's default.
    #[serde(default)]
    pub default_value: bool,
}

/// A field's data type as describe names it (lower-case in the JSON).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FieldType {
    /// `id`.
    Id,
    /// `string`.
    String,
    /// `textarea` (also long and rich text areas).
    TextArea,
    /// `picklist`.
    Picklist,
    /// `multipicklist`.
    MultiPicklist,
    /// `reference` (a lookup or master-detail).
    Reference,
    /// `double` (a Number field).
    Double,
    /// `int`.
    Int,
    /// `currency`.
    Currency,
    /// `percent`.
    Percent,
    /// `boolean` (a checkbox).
    Boolean,
    /// `date`.
    Date,
    /// `datetime`.
    DateTime,
    /// `email`.
    Email,
    /// `phone`.
    Phone,
    /// `url`.
    Url,
    /// Any other type, as named by Salesforce.
    Other(String),
}

impl FieldType {
    /// Reads describe's type name.
    pub fn parse(name: &str) -> Self {
        match name {
            "id" => Self::Id,
            "string" => Self::String,
            "textarea" => Self::TextArea,
            "picklist" => Self::Picklist,
            "multipicklist" => Self::MultiPicklist,
            "reference" => Self::Reference,
            "double" => Self::Double,
            "int" => Self::Int,
            "currency" => Self::Currency,
            "percent" => Self::Percent,
            "boolean" => Self::Boolean,
            "date" => Self::Date,
            "datetime" => Self::DateTime,
            "email" => Self::Email,
            "phone" => Self::Phone,
            "url" => Self::Url,
            other => Self::Other(other.to_owned()),
        }
    }

    /// Whether the field holds text (string, text area, email, phone, url).
    pub fn is_text(&self) -> bool {
        matches!(
            self,
            Self::String | Self::TextArea | Self::Email | Self::Phone | Self::Url
        )
    }

    /// Whether the field holds a number (double, int, currency, percent).
    pub fn is_number(&self) -> bool {
        matches!(
            self,
            Self::Double | Self::Int | Self::Currency | Self::Percent
        )
    }
}

impl<'de> Deserialize<'de> for FieldType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Ok(Self::parse(&name))
    }
}

fn null_as_empty<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Whether `name` can be an sObject API name (letters, digits, underscores, not starting with
/// a digit or underscore), so it is safe in a URL path.
pub(crate) fn valid_sobject_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SOBJECT_NAME_CHARS
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_the_subset_and_ignores_the_rest() {
        let json = serde_json::json!({
            "name": "Order", "label": "Order", "queryable": true, "createable": true,
            "updateable": false, "keyPrefix": "801", "urls": {},
            "fields": [
                {"name": "Status", "type": "picklist", "length": 40, "createable": true,
                 "updateable": true, "nillable": false, "custom": false, "soapType": "xsd:string",
                 "picklistValues": [{"value": "Draft", "label": "Draft", "active": true,
                                     "defaultValue": true, "validFor": null}],
                 "referenceTo": []},
                {"name": "AccountId", "type": "reference", "referenceTo": ["Account"],
                 "picklistValues": null},
                {"name": "Geo__c", "type": "location"}
            ]
        });
        let d: SObjectDescribe = serde_json::from_value(json).unwrap();
        assert!(!d.updateable);
        let status = d.field("status").unwrap();
        assert_eq!(status.field_type, FieldType::Picklist);
        assert!(status.has_active_value("Draft"));
        assert!(!status.has_active_value("Approved"));
        assert_eq!(d.field("AccountId").unwrap().reference_to, ["Account"]);
        assert_eq!(
            d.field("Geo__c").unwrap().field_type,
            FieldType::Other("location".into())
        );
    }

    #[test]
    fn sobject_names_are_checked_before_they_reach_a_url() {
        for ok in ["Order", "OrderItem", "ns__Thing__c", "Product2"] {
            assert!(valid_sobject_name(ok), "{ok}");
        }
        for bad in [
            "",
            "Order/../x",
            "_x",
            "2x",
            "Order?x",
            "Ordér",
            &"a".repeat(81),
        ] {
            assert!(!valid_sobject_name(bad), "{bad}");
        }
    }
}
