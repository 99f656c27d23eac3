//! Test fixture: moto's server on loopback, for the CloudWatch metrics tests and the DynamoDB
//! Streams ones (moto serves DynamoDB and DynamoDB Streams on the same endpoint).
//!
//! [`ensure_started`] runs `<workspace>/localstack/start-moto.sh` once per process (it installs
//! the pinned `moto[server]` into a virtualenv under the emulator directory and starts it, or
//! reuses a running one; it is safe to call from parallel test binaries) and returns moto's
//! endpoint URL. The process environment is left alone: the tests build their CloudWatch client
//! with this endpoint, static test credentials and region `us-east-1`.
//!
//! A failure panics with the script's stderr: the tests that need moto fail, never skip. moto is
//! left running; `localstack/stop-moto.sh` stops it.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

const ENDPOINT_VAR: &str = "AWS_ENDPOINT_URL_CLOUDWATCH";

static ENDPOINT: OnceLock<String> = OnceLock::new();

/// Starts moto if needed (once per process) and returns its endpoint URL, e.g.
/// `http://127.0.0.1:4569`. Panics, with the start script's output, if it cannot be started.
pub fn ensure_started() -> &'static str {
    ENDPOINT.get_or_init(init)
}

fn init() -> String {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let script = manifest
        .parent()
        .unwrap_or(&manifest)
        .join("localstack")
        .join("start-moto.sh");
    let output = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        panic!(
            "{} failed ({}); the CloudWatch tests need it.\n--- stderr ---\n{stderr}\n--- stdout ---\n{stdout}",
            script.display(),
            output.status
        );
    }
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("export {ENDPOINT_VAR}=")))
        .map(|v| v.trim_matches(|c| c == '"' || c == '\'').to_owned())
        .unwrap_or_else(|| {
            panic!(
                "{} did not export {ENDPOINT_VAR}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
                script.display()
            )
        })
}

/// The Python of the virtualenv `start-moto.sh` installs moto into (moto depends on boto3, so
/// it has boto3 too): `<KCL_EMULATOR_DIR or <workspace>/localstack/.emulators>/moto-venv/bin/python`.
/// Starts moto first, so that the virtualenv exists.
pub fn python() -> PathBuf {
    ensure_started();
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().unwrap_or(&manifest).to_path_buf();
    let dir = std::env::var_os("KCL_EMULATOR_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("localstack").join(".emulators"));
    dir.join("moto-venv").join("bin").join("python")
}

/// A CloudWatch client for moto: its endpoint, static test credentials, region `us-east-1`.
pub fn cloudwatch_client() -> aws_sdk_cloudwatch::Client {
    use aws_sdk_cloudwatch::config::{BehaviorVersion, Credentials, Region};
    let config = aws_sdk_cloudwatch::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "kcl-tests"))
        .endpoint_url(ensure_started())
        .build();
    aws_sdk_cloudwatch::Client::from_conf(config)
}
