//! The `telemetry:` section: OpenTelemetry traces, Prometheus metrics and
//! alerts. (Owned by the telemetry work; extended there.)

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Telemetry {}
