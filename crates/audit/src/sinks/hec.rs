//! Splunk HTTP Event Collector: one `POST` per batch to the configured
//! endpoint (`…/services/collector/event`) with `Authorization: Splunk
//! <token>`; the body is the batch's event objects concatenated, one per
//! line:
//!
//! ```json
//! {"time":1795000000.123456,"host":"gw-1/4242","source":"portcullis","sourcetype":"portcullis:audit","index":"audit","event":{…}}
//! ```
//!
//! Acknowledged by a 2xx whose body is `{"code":0,…}` (or empty). A 4xx other
//! than 408/429 (bad token, unknown index, disabled token) is a configuration
//! error: it is logged as such and retried at the longest backoff, never
//! dropped. Indexer acknowledgement (HEC channels) is not used: a 200 means
//! Splunk received the batch, not that it is indexed.
//!
//! The token is a secret: it is sent as a sensitive header and never logged.

use super::DeliveryError;
use crate::db::StoredRecord;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde_json::Value;

pub(super) struct HecSink {
    client: reqwest::Client,
    endpoint: reqwest::Url,
    authorization: HeaderValue,
    index: Option<String>,
    sourcetype: String,
}

impl HecSink {
    pub(super) fn new(
        endpoint: &str,
        token: &str,
        index: Option<String>,
        sourcetype: Option<String>,
    ) -> Result<HecSink, String> {
        let endpoint =
            reqwest::Url::parse(endpoint).map_err(|e| format!("endpoint is not a URL: {e}"))?;
        let mut authorization = HeaderValue::from_str(&format!("Splunk {}", token.trim()))
            .map_err(|_| "the token contains characters a header cannot carry".to_owned())?;
        authorization.set_sensitive(true);
        Ok(HecSink {
            client: super::http::client()?,
            endpoint,
            authorization,
            index,
            sourcetype: sourcetype.unwrap_or_else(|| "portcullis:audit".into()),
        })
    }

    pub(super) fn describe(&self) -> String {
        super::redact_url(self.endpoint.as_str())
    }

    pub(super) async fn deliver(&mut self, records: &[StoredRecord]) -> Result<(), DeliveryError> {
        let body = request_body(records, self.index.as_deref(), &self.sourcetype);
        let resp = self
            .client
            .post(self.endpoint.clone())
            .header(AUTHORIZATION, self.authorization.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(super::http::transport_error)?;
        let (status, retry_after, text) = super::http::read_response(resp).await?;
        if !(200..300).contains(&status) {
            return Err(super::http::status_error(status, retry_after, &text));
        }
        let text = text.trim();
        if text.is_empty() {
            return Ok(());
        }
        match serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| v.get("code").and_then(Value::as_i64))
        {
            Some(0) => Ok(()),
            Some(code) => Err(DeliveryError::Protocol(format!(
                "HEC answered HTTP {status} with code {code}: {}",
                super::http::shorten(text, 300)
            ))),
            None => Err(DeliveryError::Protocol(format!(
                "HEC answered HTTP {status} without a HEC status: {}",
                super::http::shorten(text, 300)
            ))),
        }
    }
}

/// The batch as HEC event objects, one per line.
pub(crate) fn request_body(
    records: &[StoredRecord],
    index: Option<&str>,
    sourcetype: &str,
) -> String {
    let quote = |s: &str| Value::String(s.to_owned()).to_string();
    let mut out = String::with_capacity(records.len() * 1200);
    for r in records {
        // Seconds with the microseconds as a decimal fraction, written out
        // rather than through a float (which would round them).
        out.push_str(&format!(
            "{{\"time\":{}.{:06},\"host\":{},\"source\":\"portcullis\",\"sourcetype\":{}",
            r.time_us.div_euclid(1_000_000),
            r.time_us.rem_euclid(1_000_000),
            quote(&r.replica),
            quote(sourcetype),
        ));
        if let Some(index) = index {
            out.push_str(&format!(",\"index\":{}", quote(index)));
        }
        out.push_str(",\"event\":");
        out.push_str(&super::export_text(r));
        out.push_str("}\n");
    }
    out
}
