//! The part of the OTLP protobuf schema (`opentelemetry.proto.collector.metrics.v1`, `metrics.v1`,
//! `common.v1`, `resource.v1`) that the exporter writes: resource, scope, and gauge, sum and
//! histogram metrics with double values. Declared with `prost`'s derive (the field numbers are
//! the schema's), so no build script and no generated crate; the tests decode with the same
//! types. Fields the exporter never sets (exemplars, metadata, exponential histograms,
//! summaries) are left out: a decoder skips them.

use prost::Message;

/// `ExportMetricsServiceRequest`: the body of `POST /v1/metrics`.
#[derive(Clone, PartialEq, Message)]
pub struct ExportMetricsServiceRequest {
    /// The resources' metrics.
    #[prost(message, repeated, tag = "1")]
    pub resource_metrics: Vec<ResourceMetrics>,
}

/// `ExportMetricsServiceResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct ExportMetricsServiceResponse {
    /// Set when the receiver rejected some data points.
    #[prost(message, optional, tag = "1")]
    pub partial_success: Option<ExportMetricsPartialSuccess>,
}

/// `ExportMetricsPartialSuccess`.
#[derive(Clone, PartialEq, Message)]
pub struct ExportMetricsPartialSuccess {
    /// Data points the receiver rejected.
    #[prost(int64, tag = "1")]
    pub rejected_data_points: i64,
    /// Why.
    #[prost(string, tag = "2")]
    pub error_message: String,
}

/// `ResourceMetrics`.
#[derive(Clone, PartialEq, Message)]
pub struct ResourceMetrics {
    /// The resource (`service.name`, ...).
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    /// The metrics, by instrumentation scope.
    #[prost(message, repeated, tag = "2")]
    pub scope_metrics: Vec<ScopeMetrics>,
    /// Unused.
    #[prost(string, tag = "3")]
    pub schema_url: String,
}

/// `Resource`.
#[derive(Clone, PartialEq, Message)]
pub struct Resource {
    /// The resource attributes.
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
    /// Unused.
    #[prost(uint32, tag = "2")]
    pub dropped_attributes_count: u32,
}

/// `ScopeMetrics`.
#[derive(Clone, PartialEq, Message)]
pub struct ScopeMetrics {
    /// The instrumentation scope (the meter).
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    /// The metrics.
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    /// Unused.
    #[prost(string, tag = "3")]
    pub schema_url: String,
}

/// `InstrumentationScope`.
#[derive(Clone, PartialEq, Message)]
pub struct InstrumentationScope {
    /// The meter's name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its version.
    #[prost(string, tag = "2")]
    pub version: String,
}

/// `Metric`: one instrument and its data points.
#[derive(Clone, PartialEq, Message)]
pub struct Metric {
    /// The instrument name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// A description.
    #[prost(string, tag = "2")]
    pub description: String,
    /// The UCUM unit.
    #[prost(string, tag = "3")]
    pub unit: String,
    /// The data.
    #[prost(oneof = "MetricData", tags = "5, 7, 9")]
    pub data: Option<MetricData>,
}

/// `Metric.data`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum MetricData {
    /// A gauge.
    #[prost(message, tag = "5")]
    Gauge(Gauge),
    /// A sum (a counter when monotonic).
    #[prost(message, tag = "7")]
    Sum(Sum),
    /// A histogram.
    #[prost(message, tag = "9")]
    Histogram(Histogram),
}

/// `AggregationTemporality`: delta.
pub const AGGREGATION_TEMPORALITY_DELTA: i32 = 1;
/// `AggregationTemporality`: cumulative.
pub const AGGREGATION_TEMPORALITY_CUMULATIVE: i32 = 2;

/// `Gauge`.
#[derive(Clone, PartialEq, Message)]
pub struct Gauge {
    /// The points.
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<NumberDataPoint>,
}

/// `Sum`.
#[derive(Clone, PartialEq, Message)]
pub struct Sum {
    /// The points.
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<NumberDataPoint>,
    /// Delta or cumulative.
    #[prost(int32, tag = "2")]
    pub aggregation_temporality: i32,
    /// A counter's sums are monotonic.
    #[prost(bool, tag = "3")]
    pub is_monotonic: bool,
}

/// `Histogram`.
#[derive(Clone, PartialEq, Message)]
pub struct Histogram {
    /// The points.
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<HistogramDataPoint>,
    /// Delta or cumulative.
    #[prost(int32, tag = "2")]
    pub aggregation_temporality: i32,
}

/// `NumberDataPoint` with a double value.
#[derive(Clone, PartialEq, Message)]
pub struct NumberDataPoint {
    /// The attributes.
    #[prost(message, repeated, tag = "7")]
    pub attributes: Vec<KeyValue>,
    /// The start of the interval (nanoseconds since the epoch).
    #[prost(fixed64, tag = "2")]
    pub start_time_unix_nano: u64,
    /// The end of the interval.
    #[prost(fixed64, tag = "3")]
    pub time_unix_nano: u64,
    /// The value (`as_double`).
    #[prost(double, optional, tag = "4")]
    pub as_double: Option<f64>,
    /// Flags.
    #[prost(uint32, tag = "8")]
    pub flags: u32,
}

/// `HistogramDataPoint`.
#[derive(Clone, PartialEq, Message)]
pub struct HistogramDataPoint {
    /// The attributes.
    #[prost(message, repeated, tag = "9")]
    pub attributes: Vec<KeyValue>,
    /// The start of the interval (nanoseconds since the epoch).
    #[prost(fixed64, tag = "2")]
    pub start_time_unix_nano: u64,
    /// The end of the interval.
    #[prost(fixed64, tag = "3")]
    pub time_unix_nano: u64,
    /// How many values.
    #[prost(fixed64, tag = "4")]
    pub count: u64,
    /// Their sum.
    #[prost(double, optional, tag = "5")]
    pub sum: Option<f64>,
    /// The count per bucket (one bucket: all values).
    #[prost(fixed64, repeated, tag = "6")]
    pub bucket_counts: Vec<u64>,
    /// The bucket bounds (none: one bucket).
    #[prost(double, repeated, tag = "7")]
    pub explicit_bounds: Vec<f64>,
    /// Flags.
    #[prost(uint32, tag = "10")]
    pub flags: u32,
    /// The smallest value.
    #[prost(double, optional, tag = "11")]
    pub min: Option<f64>,
    /// The largest value.
    #[prost(double, optional, tag = "12")]
    pub max: Option<f64>,
}

/// `KeyValue` (an attribute).
#[derive(Clone, PartialEq, Message)]
pub struct KeyValue {
    /// The key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// The value.
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

/// `AnyValue`, of which the exporter writes strings only.
#[derive(Clone, PartialEq, Message)]
pub struct AnyValue {
    /// The value.
    #[prost(oneof = "Value", tags = "1")]
    pub value: Option<Value>,
}

/// `AnyValue.value`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Value {
    /// A string.
    #[prost(string, tag = "1")]
    StringValue(String),
}

impl KeyValue {
    /// A string attribute.
    pub fn string(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(value.into())),
            }),
        }
    }

    /// The value, when it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s),
        }
    }
}
