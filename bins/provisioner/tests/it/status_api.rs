//! A loopback client for the status API that keeps a transcript of every answer, and the
//! status body contract (README, Status API).

use std::collections::BTreeSet;

use test_support::process::PATIENCE;
use tokio::time::timeout;

/// One status API answer.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) body: String,
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// A loopback client for the status API that keeps a transcript of every answer.
pub(crate) struct StatusApi {
    http: reqwest::Client,
    base: String,
    pub(crate) transcript: Vec<u8>,
}

impl StatusApi {
    pub(crate) fn new(port: u16) -> Self {
        StatusApi {
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            base: format!("http://127.0.0.1:{port}"),
            transcript: Vec::new(),
        }
    }

    pub(crate) async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut request = self.http.get(format!("{}{path}", self.base));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = timeout(PATIENCE, request.send())
            .await
            .expect("the status API answers in time")
            .unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().await.unwrap();
        self.transcript
            .extend_from_slice(format!("{status} {path}\n").as_bytes());
        for (k, v) in &headers {
            self.transcript.extend_from_slice(k.as_str().as_bytes());
            self.transcript.extend_from_slice(b": ");
            self.transcript.extend_from_slice(v.as_bytes());
            self.transcript.push(b'\n');
        }
        self.transcript.extend_from_slice(body.as_bytes());
        self.transcript.push(b'\n');
        Answer {
            status,
            headers,
            body,
        }
    }

    /// `GET /v1/orders/{order}/status` as `customer` with `token`.
    pub(crate) async fn status(&mut self, order: &str, customer: &str, token: &str) -> Answer {
        let auth = format!("Bearer {token}");
        self.get(
            &format!("/v1/orders/{order}/status"),
            &[("authorization", &auth), ("x-customer-number", customer)],
        )
        .await
    }
}

/// The status body keys of the status API contract, every one always present.
pub(crate) fn assert_status_body(answer: &Answer, order_id: &str, whmcs_order_id: &str) {
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let body = answer.json();
    let object = body.as_object().expect("a JSON object");
    let keys: BTreeSet<&str> = object.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "orderId",
            "status",
            "whmcsOrderId",
            "serviceIds",
            "updatedAt",
            "error"
        ]),
        "{body}"
    );
    assert_eq!(body["orderId"], order_id, "{body}");
    assert_eq!(body["status"], "provisioned", "{body}");
    assert_eq!(body["whmcsOrderId"], whmcs_order_id, "{body}");
    let services = body["serviceIds"]
        .as_array()
        .expect("serviceIds is an array");
    assert!(!services.is_empty(), "{body}");
    assert!(services.iter().all(serde_json::Value::is_string), "{body}");
    chrono::DateTime::parse_from_rfc3339(body["updatedAt"].as_str().expect("a string"))
        .unwrap_or_else(|e| panic!("updatedAt is not RFC 3339 ({e}): {body}"));
    assert!(body["error"].is_null(), "{body}");
}
