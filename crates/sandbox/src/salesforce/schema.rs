//! The org's schema as the integration user sees it: the sObjects and fields the provisioner
//! and the order intake use, answered by `GET .../sobjects/{sObject}/describe` and consulted by
//! the SOQL and PATCH handling (a removed field is an `INVALID_FIELD`, a field the user may not
//! edit an `INVALID_FIELD_FOR_INSERT_UPDATE`).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::org::ApiError;

/// One field's definition (what the org has before any test changes it).
#[derive(Clone, Debug)]
struct FieldDef {
    name: &'static str,
    label: &'static str,
    kind: &'static str,
    length: u64,
    createable: bool,
    updateable: bool,
    nillable: bool,
    unique: bool,
    external_id: bool,
    /// `referenceTo[0]` and `relationshipName` of a lookup.
    reference: Option<(&'static str, &'static str)>,
}

const fn field(
    name: &'static str,
    label: &'static str,
    kind: &'static str,
    length: u64,
) -> FieldDef {
    FieldDef {
        name,
        label,
        kind,
        length,
        createable: true,
        updateable: true,
        nillable: true,
        unique: false,
        external_id: false,
        reference: None,
    }
}

impl FieldDef {
    /// System-maintained: neither createable nor updateable.
    const fn read_only(mut self) -> Self {
        self.createable = false;
        self.updateable = false;
        self
    }

    /// Set on create only (a master-detail parent, a price book entry).
    const fn create_only(mut self) -> Self {
        self.updateable = false;
        self
    }

    const fn required(mut self) -> Self {
        self.nillable = false;
        self
    }

    const fn external_unique(mut self) -> Self {
        self.unique = true;
        self.external_id = true;
        self
    }

    const fn lookup(mut self, to: &'static str, relationship: &'static str) -> Self {
        self.reference = Some((to, relationship));
        self
    }
}

fn id_field() -> FieldDef {
    field("Id", "Record ID", "id", 18).read_only().required()
}

/// One sObject as the integration user sees it now.
#[derive(Clone, Debug)]
struct ObjectState {
    label: &'static str,
    label_plural: &'static str,
    key_prefix: &'static str,
    createable: bool,
    updateable: bool,
    fields: Vec<FieldState>,
    /// `(relationshipName, childSObject, field)` of child relationships.
    children: Vec<(&'static str, &'static str, &'static str)>,
}

#[derive(Clone, Debug)]
struct FieldState {
    def: FieldDef,
    removed: bool,
    /// Field-level security: `false` once a test takes edit access away.
    editable: bool,
}

/// The sObjects the sandbox describes, with what tests changed.
#[derive(Clone, Debug)]
pub(crate) struct Schema {
    objects: BTreeMap<&'static str, ObjectState>,
}

impl Default for Schema {
    fn default() -> Self {
        Self::standard()
    }
}

fn object(
    label: &'static str,
    label_plural: &'static str,
    key_prefix: &'static str,
    fields: Vec<FieldDef>,
) -> ObjectState {
    ObjectState {
        label,
        label_plural,
        key_prefix,
        createable: true,
        updateable: true,
        fields: fields
            .into_iter()
            .map(|def| FieldState {
                def,
                removed: false,
                editable: true,
            })
            .collect(),
        children: Vec::new(),
    }
}

impl Schema {
    /// The org as the product needs it: standard fields plus the product's custom fields.
    pub(crate) fn standard() -> Self {
        let mut order = object(
            "Order",
            "Orders",
            "801",
            vec![
                id_field(),
                field("OrderNumber", "Order Number", "string", 30)
                    .read_only()
                    .required(),
                field("Status", "Status", "picklist", 40).required(),
                field("AccountId", "Account ID", "reference", 18).lookup("Account", "Account"),
                field("EffectiveDate", "Order Start Date", "date", 0).required(),
                field("Pricebook2Id", "Price Book ID", "reference", 18)
                    .lookup("Pricebook2", "Pricebook2"),
                field("TotalAmount", "Order Amount", "currency", 0)
                    .read_only()
                    .required(),
                field("LastModifiedDate", "Last Modified Date", "datetime", 0)
                    .read_only()
                    .required(),
                // Formula fields copying the Account's values.
                field("Customer_Number__c", "Customer Number", "string", 1300).read_only(),
                field("WHMCS_Client_Id__c", "WHMCS Client Id", "string", 1300).read_only(),
                field("WHMCS_Order_Id__c", "WHMCS Order Id", "string", 40),
                field("WHMCS_Service_Ids__c", "WHMCS Service Ids", "string", 255),
                field("Provisioned_At__c", "Provisioned At", "datetime", 0),
                field("Provisioning_Error__c", "Provisioning Error", "string", 255),
                field("Portal_Request_Id__c", "Portal Request Id", "string", 255).external_unique(),
            ],
        );
        order.children.push(("OrderItems", "OrderItem", "OrderId"));
        let order_item = object(
            "Order Product",
            "Order Products",
            "802",
            vec![
                id_field(),
                field("OrderId", "Order ID", "reference", 18)
                    .lookup("Order", "Order")
                    .create_only()
                    .required(),
                field("PricebookEntryId", "Price Book Entry ID", "reference", 18)
                    .lookup("PricebookEntry", "PricebookEntry")
                    .create_only()
                    .required(),
                field("Product2Id", "Product ID", "reference", 18)
                    .lookup("Product2", "Product2")
                    .read_only(),
                field("Quantity", "Quantity", "double", 0).required(),
                field("UnitPrice", "Unit Price", "currency", 0).required(),
                field("ListPrice", "List Price", "currency", 0).read_only(),
                field("TotalPrice", "Total Price", "currency", 0).read_only(),
                // A formula reading the product's WHMCS pid.
                field("WHMCS_Product_Id__c", "WHMCS Product Id", "double", 0).read_only(),
                field("Billing_Cycle__c", "Billing Cycle", "string", 40),
                field("Config_Options__c", "Config Options", "textarea", 131_072),
            ],
        );
        let account = object(
            "Account",
            "Accounts",
            "001",
            vec![
                id_field(),
                field("Name", "Account Name", "string", 255).required(),
                field("Customer_Number__c", "Customer Number", "string", 40),
                field("WHMCS_Client_Id__c", "WHMCS Client Id", "string", 40),
                field("LastModifiedDate", "Last Modified Date", "datetime", 0)
                    .read_only()
                    .required(),
            ],
        );
        let product = object(
            "Product",
            "Products",
            "01t",
            vec![
                id_field(),
                field("Name", "Product Name", "string", 255).required(),
                field("IsActive", "Active", "boolean", 0).required(),
                field("WHMCS_Product_Id__c", "WHMCS Product Id", "double", 0),
            ],
        );
        let entry = object(
            "Price Book Entry",
            "Price Book Entries",
            "01u",
            vec![
                id_field(),
                field("Pricebook2Id", "Price Book ID", "reference", 18)
                    .lookup("Pricebook2", "Pricebook2")
                    .create_only()
                    .required(),
                field("Product2Id", "Product ID", "reference", 18)
                    .lookup("Product2", "Product2")
                    .create_only()
                    .required(),
                field("UnitPrice", "List Price", "currency", 0).required(),
                field("IsActive", "Active", "boolean", 0).required(),
            ],
        );
        let objects = [
            ("Order", order),
            ("OrderItem", order_item),
            ("Account", account),
            ("Product2", product),
            ("PricebookEntry", entry),
        ]
        .into_iter()
        .collect();
        Self { objects }
    }

    /// The object named `sobject` (API names are case-insensitive in Salesforce).
    fn object_key(&self, sobject: &str) -> Option<&'static str> {
        self.objects
            .keys()
            .copied()
            .find(|k| k.eq_ignore_ascii_case(sobject))
    }

    fn field_mut(&mut self, sobject: &str, field: &str) -> Option<&mut FieldState> {
        let key = self.object_key(sobject)?;
        self.objects
            .get_mut(key)?
            .fields
            .iter_mut()
            .find(|f| f.def.name.eq_ignore_ascii_case(field))
    }

    /// Takes `field` out of `sobject` (a field deleted, or hidden from the user); `false` when
    /// there is no such field.
    pub(crate) fn remove_field(&mut self, sobject: &str, field: &str) -> bool {
        self.field_mut(sobject, field)
            .map(|f| f.removed = true)
            .is_some()
    }

    /// Gives a removed field back; `false` when there is no such field.
    pub(crate) fn restore_field(&mut self, sobject: &str, field: &str) -> bool {
        self.field_mut(sobject, field)
            .map(|f| f.removed = false)
            .is_some()
    }

    /// Field-level edit access of the integration user; `false` when there is no such field.
    pub(crate) fn set_field_updateable(
        &mut self,
        sobject: &str,
        field: &str,
        updateable: bool,
    ) -> bool {
        self.field_mut(sobject, field)
            .map(|f| f.editable = updateable)
            .is_some()
    }

    /// Object-level edit access of the integration user; `false` when there is no such object.
    pub(crate) fn set_object_updateable(&mut self, sobject: &str, updateable: bool) -> bool {
        let Some(key) = self.object_key(sobject) else {
            return false;
        };
        self.objects
            .get_mut(key)
            .map(|o| o.updateable = updateable)
            .is_some()
    }

    /// A visible field of a visible object.
    fn visible(&self, sobject: &str, field: &str) -> Option<(&ObjectState, &FieldState)> {
        let object = self.objects.get(self.object_key(sobject)?)?;
        let state = object
            .fields
            .iter()
            .find(|f| !f.removed && f.def.name.eq_ignore_ascii_case(field))?;
        Some((object, state))
    }

    /// The describe answer of `sobject`, or 404 `NOT_FOUND` as Salesforce gives for an object
    /// the user cannot see. `statuses` are the values of the Order `Status` picklist.
    pub(crate) fn describe(
        &self,
        sobject: &str,
        version: &str,
        statuses: &[String],
    ) -> Result<Value, ApiError> {
        let not_found = || ApiError::new(404, "NOT_FOUND", "The requested resource does not exist");
        let name = self.object_key(sobject).ok_or_else(not_found)?;
        let object = self.objects.get(name).ok_or_else(not_found)?;
        let fields: Vec<Value> = object
            .fields
            .iter()
            .filter(|f| !f.removed)
            .map(|f| field_json(name, object, f, statuses))
            .collect();
        let children: Vec<Value> = object
            .children
            .iter()
            .map(|(relationship, child, field)| {
                json!({
                    "childSObject": child,
                    "field": field,
                    "relationshipName": relationship,
                    "cascadeDelete": true,
                })
            })
            .collect();
        let base = format!("/services/data/{version}/sobjects/{name}");
        Ok(json!({
            "name": name,
            "label": object.label,
            "labelPlural": object.label_plural,
            "keyPrefix": object.key_prefix,
            "custom": false,
            "queryable": true,
            "retrieveable": true,
            "searchable": true,
            "createable": object.createable,
            "updateable": object.updateable,
            "deletable": object.updateable,
            "childRelationships": children,
            "fields": fields,
            "urls": {
                "sobject": base,
                "describe": format!("{base}/describe"),
                "rowTemplate": format!("{base}/{{ID}}"),
            },
        }))
    }

    /// Refuses a query naming a field the org does not have (or the user cannot see), as
    /// Salesforce does: 400 `INVALID_FIELD`. Objects the schema does not know are left to the
    /// query handling. `soql` is whitespace-normalised.
    pub(crate) fn check_soql(&self, soql: &str) -> Result<(), ApiError> {
        self.check_select(soql, &mask_literals(soql), None)
    }

    fn check_select(&self, full: &str, text: &str, parent: Option<&str>) -> Result<(), ApiError> {
        let Some(body) = text.strip_prefix("SELECT ") else {
            return Ok(());
        };
        let Some(from) = find_top_level(body, " FROM ") else {
            return Ok(());
        };
        let (list, after) = (&body[..from], &body[from + " FROM ".len()..]);
        let (target, clauses) = after.split_once(' ').unwrap_or((after, ""));
        let object = match parent {
            None => self.object_key(target),
            Some(parent) => self
                .objects
                .get(parent)
                .and_then(|o| o.children.iter().find(|(rel, _, _)| *rel == target))
                .and_then(|(_, child, _)| self.object_key(child)),
        };
        let Some(object) = object else {
            return Ok(());
        };
        for item in split_top_level(list) {
            let item = item.trim();
            if let Some(inner) = item.strip_prefix('(').and_then(|i| i.strip_suffix(')')) {
                self.check_select(full, inner, Some(object))?;
            } else {
                self.check_path(full, object, item)?;
            }
        }
        if let Some(conditions) = clauses.strip_prefix("WHERE ") {
            let end = [" ORDER BY ", " LIMIT ", " GROUP BY "]
                .iter()
                .filter_map(|k| find_top_level(conditions, k))
                .min()
                .unwrap_or(conditions.len());
            for condition in conditions[..end]
                .split(" AND ")
                .flat_map(|c| c.split(" OR "))
            {
                let path = condition.trim_start_matches('(').split(' ').next();
                if let Some(path) = path.filter(|p| !p.is_empty()) {
                    self.check_path(full, object, path)?;
                }
            }
        }
        Ok(())
    }

    /// `Field` or `Relationship.Field` on `object`.
    fn check_path(&self, full: &str, object: &str, path: &str) -> Result<(), ApiError> {
        let mut current = object;
        let mut segments = path.split('.').peekable();
        while let Some(segment) = segments.next() {
            let Some(state) = self.objects.get(current) else {
                return Ok(());
            };
            if segments.peek().is_none() {
                if self.visible(current, segment).is_none() {
                    return Err(no_such_column(full, path, segment, current));
                }
                return Ok(());
            }
            let next =
                state
                    .fields
                    .iter()
                    .filter(|f| !f.removed)
                    .find_map(|f| match f.def.reference {
                        Some((to, rel)) if rel.eq_ignore_ascii_case(segment) => Some(to),
                        _ => None,
                    });
            match next.and_then(|to| self.object_key(to)) {
                Some(to) => current = to,
                None if next.is_some() => return Ok(()),
                None => return Err(no_such_column(full, path, segment, current)),
            }
        }
        Ok(())
    }

    /// Refuses a create naming a removed field (`INVALID_FIELD`). Edit access taken away by
    /// [`Schema::set_field_updateable`] concerns updates only; unknown objects and fields pass.
    pub(crate) fn check_create(&self, sobject: &str, field: &str) -> Result<(), ApiError> {
        let Some(key) = self.object_key(sobject) else {
            return Ok(());
        };
        let removed = self.objects.get(key).is_some_and(|o| {
            o.fields
                .iter()
                .any(|f| f.removed && f.def.name.eq_ignore_ascii_case(field))
        });
        if removed {
            return Err(ApiError::new(
                400,
                "INVALID_FIELD",
                format!("No such column '{field}' on sobject of type {key}"),
            ));
        }
        Ok(())
    }

    /// Refuses a write of `field` on `sobject` the user may not make: a field that is not
    /// there (`INVALID_FIELD`), an object or field without edit access
    /// (`INVALID_FIELD_FOR_INSERT_UPDATE`). Unknown objects and fields pass (the handlers
    /// check those themselves).
    pub(crate) fn check_update(&self, sobject: &str, field: &str) -> Result<(), ApiError> {
        let Some(key) = self.object_key(sobject) else {
            return Ok(());
        };
        let Some(object) = self.objects.get(key) else {
            return Ok(());
        };
        let Some(state) = object
            .fields
            .iter()
            .find(|f| f.def.name.eq_ignore_ascii_case(field))
        else {
            return Ok(());
        };
        if state.removed {
            return Err(ApiError::new(
                400,
                "INVALID_FIELD",
                format!("No such column '{field}' on sobject of type {key}"),
            ));
        }
        if !(object.updateable && state.editable) {
            return Err(ApiError::new(
                400,
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                format!("Unable to create/update fields: {field}. Please check the security settings of this field and verify that it is read/write for your profile or permission set."),
            )
            .field(field));
        }
        Ok(())
    }
}

fn no_such_column(full: &str, path: &str, segment: &str, object: &str) -> ApiError {
    let column = full.find(path).map_or(1, |at| at + 1);
    let caret = " ".repeat(column.saturating_sub(1));
    ApiError::new(
        400,
        "INVALID_FIELD",
        format!(
            "\n{full}\n{caret}^\nERROR at Row:1:Column:{column}\nNo such column '{segment}' on entity '{object}'. If you are attempting to use a custom field, be sure to append the '__c' after the custom field name. Please reference your WSDL or the describe call for the appropriate names."
        ),
    )
}

fn field_json(
    object_name: &str,
    object: &ObjectState,
    f: &FieldState,
    statuses: &[String],
) -> Value {
    let def = &f.def;
    let picklist: Vec<Value> = if object_name == "Order" && def.name == "Status" {
        statuses
            .iter()
            .enumerate()
            .map(|(n, value)| {
                json!({ "value": value, "label": value, "active": true, "defaultValue": n == 0, "validFor": null })
            })
            .collect()
    } else {
        Vec::new()
    };
    let (precision, scale) = match def.kind {
        "currency" => (18, 2),
        "double" => (18, 0),
        _ => (0, 0),
    };
    let (reference_to, relationship) = match def.reference {
        Some((to, rel)) => (vec![to], Value::from(rel)),
        None => (Vec::new(), Value::Null),
    };
    json!({
        "name": def.name,
        "label": def.label,
        "type": def.kind,
        "length": def.length,
        "precision": precision,
        "scale": scale,
        "createable": def.createable && object.createable,
        "updateable": def.updateable && object.updateable && f.editable,
        "nillable": def.nillable,
        "custom": def.name.ends_with("__c"),
        "unique": def.unique,
        "externalId": def.external_id,
        "idLookup": def.name == "Id" || def.external_id,
        "filterable": true,
        "calculated": def.name.ends_with("__c") && !def.createable,
        "restrictedPicklist": !picklist.is_empty(),
        "picklistValues": picklist,
        "referenceTo": reference_to,
        "relationshipName": relationship,
    })
}

/// `soql` with every byte inside a string literal replaced by `x` (same length, so positions
/// still point into the original), so quoted text never reads as fields, keywords or
/// parentheses.
fn mask_literals(soql: &str) -> String {
    let mut out = Vec::with_capacity(soql.len());
    let (mut inside, mut escaped) = (false, false);
    for &b in soql.as_bytes() {
        if inside {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'\'' {
                inside = false;
                out.push(b);
                continue;
            }
            out.push(b'x');
        } else {
            inside = b == b'\'';
            out.push(b);
        }
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Where `needle` first occurs in `text` outside parentheses.
fn find_top_level(text: &str, needle: &str) -> Option<usize> {
    let mut depth = 0_i32;
    for (at, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ if depth == 0 && text[at..].starts_with(needle) => return Some(at),
            _ => {}
        }
    }
    None
}

/// The comma-separated items of a select list, not splitting inside parentheses.
fn split_top_level(list: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0_i32, 0);
    for (at, c) in list.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&list[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    items.push(&list[start..]);
    items
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const ORDER_SOQL: &str = "SELECT Id, Status, (SELECT Id, Billing_Cycle__c FROM OrderItems) FROM Order WHERE Id = '801000000000001AAA'";

    #[test]
    fn removed_fields_fail_soql_wherever_they_are_named() {
        let mut schema = Schema::standard();
        schema.check_soql(ORDER_SOQL).unwrap();
        assert!(schema.remove_field("OrderItem", "Billing_Cycle__c"));
        let e = schema.check_soql(ORDER_SOQL).unwrap_err();
        assert_eq!((e.status, e.code), (400, "INVALID_FIELD"));
        assert!(
            e.message
                .contains("No such column 'Billing_Cycle__c' on entity 'OrderItem'")
        );

        let entries = "SELECT Id, UnitPrice, Product2.WHMCS_Product_Id__c FROM PricebookEntry WHERE Pricebook2Id = 'x' AND IsActive = true";
        schema.check_soql(entries).unwrap();
        schema.remove_field("Product2", "WHMCS_Product_Id__c");
        assert_eq!(
            schema.check_soql(entries).unwrap_err().code,
            "INVALID_FIELD"
        );

        let tricky =
            "SELECT Id FROM Order WHERE Portal_Request_Id__c = 'a AND Nope__c = (x) OR \\' y'";
        schema.check_soql(tricky).unwrap();
        let by_request = "SELECT Id, OrderNumber FROM Order WHERE Portal_Request_Id__c = 'r'";
        schema.check_soql(by_request).unwrap();
        schema.remove_field("Order", "Portal_Request_Id__c");
        assert_eq!(
            schema.check_soql(by_request).unwrap_err().code,
            "INVALID_FIELD"
        );
        assert_eq!(
            schema
                .check_create("order", "Portal_Request_Id__c")
                .unwrap_err()
                .code,
            "INVALID_FIELD"
        );
        schema.check_create("Order", "Status").unwrap();
        assert!(schema.restore_field("Order", "Portal_Request_Id__c"));
        schema
            .check_create("Order", "Portal_Request_Id__c")
            .unwrap();
        schema.check_soql(by_request).unwrap();
        assert!(!schema.remove_field("Order", "Nope__c"));
    }

    #[test]
    fn describe_reflects_removals_permissions_and_the_status_picklist() {
        let mut schema = Schema::standard();
        let statuses = vec!["Draft".to_owned(), "Approved".to_owned()];
        let names = |v: &Value| -> Vec<String> {
            v["fields"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["name"].as_str().unwrap().to_owned())
                .collect()
        };
        let d = schema.describe("order", "v62.0", &statuses).unwrap();
        assert_eq!(d["name"], "Order");
        assert!(names(&d).contains(&"Provisioning_Error__c".to_owned()));
        let status = d["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == "Status")
            .unwrap();
        assert_eq!(status["picklistValues"][1]["value"], "Approved");

        schema.remove_field("Order", "Provisioning_Error__c");
        assert!(schema.set_field_updateable("Order", "WHMCS_Order_Id__c", false));
        let d = schema.describe("Order", "v62.0", &statuses).unwrap();
        assert!(!names(&d).contains(&"Provisioning_Error__c".to_owned()));
        let field = |d: &Value, name: &str| {
            d["fields"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["name"] == name)
                .cloned()
                .unwrap()
        };
        assert_eq!(field(&d, "WHMCS_Order_Id__c")["updateable"], false);
        assert_eq!(field(&d, "Status")["updateable"], true);
        assert_eq!(
            schema
                .check_update("Order", "WHMCS_Order_Id__c")
                .unwrap_err()
                .code,
            "INVALID_FIELD_FOR_INSERT_UPDATE"
        );
        assert_eq!(
            schema
                .check_update("Order", "Provisioning_Error__c")
                .unwrap_err()
                .code,
            "INVALID_FIELD"
        );

        assert!(schema.set_object_updateable("Order", false));
        let d = schema.describe("Order", "v62.0", &statuses).unwrap();
        assert_eq!(d["updateable"], false);
        assert_eq!(field(&d, "Status")["updateable"], false);

        let e = schema.describe("Contract", "v62.0", &statuses).unwrap_err();
        assert_eq!((e.status, e.code), (404, "NOT_FOUND"));
    }
}
