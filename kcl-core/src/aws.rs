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

#[cfg(feature = "aws")]
use crate::SchedulerBuilder;

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

/// A consumer on AWS (feature `aws`): the stream through [`KinesisBackend`](crate::KinesisBackend)
/// and the leases in a DynamoDB table named after the application, created when the worker
/// starts if it is missing (see [`SchedulerBuilder::create_lease_table`]).
///
/// ```no_run
/// use kcl_core::prelude::*;
///
/// # async fn run() -> kcl_core::Result<()> {
/// Scheduler::builder("my-app", "my-stream")
///     .aws()
///     .await? // region, credentials and endpoint from the standard chain
///     .handler(|batch: Batch| async move {
///         println!("{} records from {}", batch.records().len(), batch.shard_id());
///         Ok(())
///     })
///     .build()?
///     .run(shutdown_signal())
///     .await
/// # }
/// ```
#[cfg(feature = "aws")]
impl SchedulerBuilder {
    /// Kinesis and the DynamoDB lease table with the SDK configuration of the standard chain
    /// ([`load_sdk_config`] with no options): region and credentials from the environment, the
    /// profile, web identity, the ECS task role or the EC2 instance role; endpoints from
    /// `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_KINESIS` and `AWS_ENDPOINT_URL_DYNAMODB`) for
    /// LocalStack or emulators. An error if no region is configured.
    pub async fn aws(self) -> crate::Result<Self> {
        self.aws_with(&AwsOptions::default()).await
    }

    /// [`SchedulerBuilder::aws`] with explicit options (a region,
    /// a profile, one endpoint for both services), which win over the environment.
    pub async fn aws_with(self, options: &AwsOptions) -> crate::Result<Self> {
        self.aws_sdk(&load_sdk_config(options).await)
    }

    /// [`SchedulerBuilder::aws`] with an SDK configuration of your
    /// own (another HTTP client, an assumed role's credentials). Use [`load_sdk_config`]'s
    /// retry and timeout settings (the runtime does the retrying). An error if it has no region.
    pub fn aws_sdk(self, sdk: &SdkConfig) -> crate::Result<Self> {
        if sdk.region().is_none() {
            return Err(crate::KclError::Config(
                "no AWS region: set AWS_REGION, or a region in the AWS profile, or AwsOptions::region".into(),
            ));
        }
        let table = self.application_name().to_owned();
        let store = kcl_lease::DynamoDbLeaseStore::new(aws_sdk_dynamodb::Client::new(sdk), table);
        Ok(self
            .backend(crate::KinesisBackend::from_conf(sdk))
            .lease_store(store))
    }
}

/// An IAM role whose credentials read some streams (typically a role of the account that owns
/// them), assumed through STS with [`assume_role`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AssumeRole {
    /// The role's ARN (`arn:aws:iam::ACCOUNT:role/NAME`).
    pub role_arn: String,
    /// The external id the role's trust policy asks for, if any.
    pub external_id: Option<String>,
    /// The session name (shown in the role account's CloudTrail).
    pub session_name: String,
}

impl AssumeRole {
    /// The role `role_arn`, session name `kcl-rust`, no external id.
    pub fn new(role_arn: impl Into<String>) -> Self {
        Self {
            role_arn: role_arn.into(),
            external_id: None,
            session_name: "kcl-rust".into(),
        }
    }

    /// Sets the external id (builder style).
    #[must_use]
    pub fn external_id(mut self, id: impl Into<String>) -> Self {
        self.external_id = Some(id.into());
        self
    }

    /// Sets the session name (builder style).
    #[must_use]
    pub fn session_name(mut self, name: impl Into<String>) -> Self {
        self.session_name = name.into();
        self
    }
}

/// `sdk` with the credentials of `role` instead of its own: STS `AssumeRole` is called with the
/// credentials of `sdk` (through its endpoint, region and timeouts), and the temporary
/// credentials are refreshed before they expire. Build the clients of the role's streams from
/// the result (e.g. one `KinesisBackend` per role behind a
/// [`RoutingBackend`](crate::RoutingBackend)); the lease table stays with `sdk`.
#[cfg(feature = "kinesis")]
pub async fn assume_role(sdk: &SdkConfig, role: &AssumeRole) -> SdkConfig {
    let mut provider = aws_config::sts::AssumeRoleProvider::builder(role.role_arn.clone())
        .session_name(role.session_name.clone())
        .configure(sdk);
    if let Some(id) = &role.external_id {
        provider = provider.external_id(id.clone());
    }
    let provider = provider.build().await;
    sdk.to_builder()
        .credentials_provider(aws_sdk_kinesis::config::SharedCredentialsProvider::new(provider))
        .build()
}

#[cfg(all(test, feature = "aws"))]
mod tests {
    use super::*;
    use crate::prelude::*;

    /// An SDK configuration without a region is refused with a sentence saying where a region
    /// comes from; with one, the builder has its backend and lease store.
    #[test]
    fn aws_sdk_needs_a_region_and_gives_the_backend_and_the_lease_store() {
        let handler = |_: Batch| async { Ok(()) };
        let no_region = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .build();
        let error = Scheduler::builder("my-app", "my-stream")
            .aws_sdk(&no_region)
            .map(|_| ())
            .expect_err("no region");
        assert!(
            error.to_string().contains("no AWS region: set AWS_REGION"),
            "{error}"
        );

        let sdk = no_region.to_builder().region(Region::new("eu-west-1")).build();
        let scheduler = Scheduler::builder("my-app", "my-stream")
            .aws_sdk(&sdk)
            .expect("a region")
            .handler(handler)
            .build()
            .expect("backend, lease store and handler given");
        assert_eq!(scheduler.config().application_name, "my-app");
    }

    /// A lease table that cannot be prepared (nothing listens at the endpoint) stops the worker
    /// at start with an error naming the call and the table.
    #[tokio::test]
    async fn a_lease_table_that_cannot_be_prepared_stops_the_worker_with_the_cause() {
        let options = AwsOptions {
            region: Some("eu-west-1".into()),
            endpoint_url: Some("http://127.0.0.1:9".into()),
            profile: None,
        };
        let credentials = aws_sdk_dynamodb::config::Credentials::new("id", "secret", None, None, "test");
        let sdk = load_sdk_config(&options)
            .await
            .to_builder()
            .credentials_provider(aws_sdk_dynamodb::config::SharedCredentialsProvider::new(
                credentials,
            ))
            .build();
        let run = Scheduler::builder("my-app", "my-stream")
            .aws_sdk(&sdk)
            .expect("a region")
            .handler(|_: Batch| async { Ok(()) })
            .build()
            .expect("a complete builder")
            .run(std::future::pending());
        let error = tokio::time::timeout(std::time::Duration::from_secs(60), run)
            .await
            .expect("stopped at start")
            .expect_err("nothing listens at the endpoint");
        let message = crate::ErrorChain(&error).to_string();
        assert!(message.contains("DescribeTable on table \"my-app\""), "{message}");
    }
}
