//! Loading AWS configuration: the SDK's default chain (environment, profile, web identity, ECS
//! task role, EC2 instance role through IMDS), a region, and endpoint overrides for LocalStack
//! or emulators.
//!
//! The standard variables work as with every AWS SDK: `AWS_REGION`, `AWS_PROFILE`,
//! `AWS_ENDPOINT_URL` (all services), `AWS_ENDPOINT_URL_KINESIS`, `AWS_ENDPOINT_URL_DYNAMODB`.
//! Explicit options win over the environment.
//!
//! The SDK's own retries are switched off: the runtime decides how to back off (with jitter)
//! on throttling and counts it. Timeouts are set explicitly so that a hung connection cannot
//! stall a shard or a lease renewal for longer than the failover time.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};

/// Options on top of the default chain.
#[derive(Clone, Debug, Default)]
pub struct AwsOptions {
    /// The region (otherwise `AWS_REGION`, the profile, or IMDS).
    pub region: Option<String>,
    /// One endpoint for both Kinesis and DynamoDB (LocalStack); otherwise the `AWS_ENDPOINT_URL*`
    /// variables, otherwise the real AWS endpoints.
    pub endpoint_url: Option<String>,
    /// A named profile (otherwise `AWS_PROFILE` or `default`).
    pub profile: Option<String>,
}

/// Connect timeout of every call.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Timeout of one attempt of a call (a `GetRecords` of 10 MB included).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Loads SDK configuration from the default chain plus `options`.
pub async fn load_sdk_config(options: &AwsOptions) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .operation_timeout(ATTEMPT_TIMEOUT + Duration::from_secs(2))
                .build(),
        );
    if let Some(region) = &options.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(endpoint) = &options.endpoint_url {
        loader = loader.endpoint_url(endpoint.clone());
    }
    if let Some(profile) = &options.profile {
        loader = loader.profile_name(profile.clone());
    }
    loader.load().await
}
