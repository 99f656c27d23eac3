//! Test fixture: local AWS emulators (Kinesis and DynamoDB) on loopback.
//!
//! [`ensure_started`] returns the endpoints once per process. When `AWS_ENDPOINT_URL_KINESIS`
//! and `AWS_ENDPOINT_URL_DYNAMODB` are both set (e.g. LocalStack via docker compose, or an
//! earlier `eval "$(localstack/start-emulators.sh)"`), they are used as they are. Otherwise it
//! runs `<workspace>/localstack/start-emulators.sh`, which installs and starts the pinned npm
//! emulators (or reuses running ones; it is safe to call from parallel test binaries), and
//! exports the `export K=V` lines it prints into this process's environment, so the AWS SDK's
//! default configuration picks them up. Those include `AWS_ENDPOINT_URL`, the edge proxy's URL
//! (one port for both services, like LocalStack's 4566; the service-specific variables take
//! precedence in the SDK), which is [`Endpoints::edge`].
//!
//! A failure panics with the script's stderr: tests that need the emulators fail, never skip.
//! The emulators are left running; `localstack/stop-emulators.sh` stops them.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Where the emulators answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints {
    /// Kinesis endpoint URL, e.g. `http://127.0.0.1:4567`.
    pub kinesis: String,
    /// DynamoDB endpoint URL, e.g. `http://127.0.0.1:4568`.
    pub dynamodb: String,
    /// One URL for both services (the edge proxy, like LocalStack's port 4566), e.g.
    /// `http://127.0.0.1:4566`: always `Some` when the start script ran; from
    /// `AWS_ENDPOINT_URL` (`None` if unset or empty) when the endpoints came from the environment.
    pub edge: Option<String>,
    /// AWS region to sign requests for.
    pub region: String,
}

const KINESIS_VAR: &str = "AWS_ENDPOINT_URL_KINESIS";
const DYNAMODB_VAR: &str = "AWS_ENDPOINT_URL_DYNAMODB";
const DEFAULT_REGION: &str = "us-east-1";

static ENDPOINTS: OnceLock<Endpoints> = OnceLock::new();

/// Starts the emulators if needed (once per process) and returns their endpoints. Panics,
/// with the start script's output, if they cannot be started.
pub fn ensure_started() -> &'static Endpoints {
    ENDPOINTS.get_or_init(init)
}

fn non_empty_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn init() -> Endpoints {
    if let (Some(kinesis), Some(dynamodb)) = (non_empty_var(KINESIS_VAR), non_empty_var(DYNAMODB_VAR)) {
        let region = non_empty_var("AWS_REGION").unwrap_or_else(|| {
            std::env::set_var("AWS_REGION", DEFAULT_REGION);
            DEFAULT_REGION.to_owned()
        });
        // The emulators accept any credentials, but the SDK must find some to sign with.
        if non_empty_var("AWS_ACCESS_KEY_ID").is_none() && non_empty_var("AWS_PROFILE").is_none() {
            std::env::set_var("AWS_ACCESS_KEY_ID", "test");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
        }
        return Endpoints {
            kinesis,
            dynamodb,
            edge: non_empty_var("AWS_ENDPOINT_URL"),
            region,
        };
    }

    let script = script_path();
    let output = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        panic!(
            "{} failed ({}); the emulator tests need it.\n--- stderr ---\n{stderr}\n--- stdout ---\n{stdout}",
            script.display(),
            output.status
        );
    }

    let vars = parse_exports(&stdout).unwrap_or_else(|e| {
        panic!(
            "unexpected output from {}: {e}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
            script.display()
        )
    });
    for (key, value) in &vars {
        std::env::set_var(key, value);
    }
    let get = |name: &str| {
        vars.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| {
                panic!(
                    "{} did not export {name}\n--- stdout ---\n{stdout}",
                    script.display()
                )
            })
    };
    Endpoints {
        kinesis: get(KINESIS_VAR),
        dynamodb: get(DYNAMODB_VAR),
        edge: vars
            .iter()
            .find(|(k, _)| k == "AWS_ENDPOINT_URL")
            .map(|(_, v)| v.clone()),
        region: vars
            .iter()
            .find(|(k, _)| k == "AWS_REGION")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| DEFAULT_REGION.to_owned()),
    }
}

/// `<workspace root>/localstack/start-emulators.sh`; this crate lives in `<root>/tests`.
fn script_path() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().unwrap_or(&manifest);
    root.join("localstack").join("start-emulators.sh")
}

/// Parses `export KEY=VALUE` lines (values optionally single- or double-quoted). Blank lines
/// are ignored; anything else is an error (the script's stdout is a contract).
fn parse_exports(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut vars = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let rest = line
            .strip_prefix("export ")
            .ok_or_else(|| format!("not an `export K=V` line: {line:?}"))?;
        let (key, value) = rest
            .split_once('=')
            .ok_or_else(|| format!("no `=` in line: {line:?}"))?;
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("bad variable name in line: {line:?}"));
        }
        let value = value.trim();
        let value = ['"', '\'']
            .iter()
            .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
            .unwrap_or(value);
        vars.push((key.to_owned(), value.to_owned()));
    }
    if vars.is_empty() {
        return Err("no `export` lines".to_owned());
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_script_contract() {
        let out = "export AWS_ENDPOINT_URL_KINESIS=http://127.0.0.1:4567\n\
                   export AWS_ENDPOINT_URL_DYNAMODB='http://127.0.0.1:4568'\n\n\
                   export AWS_REGION=\"us-east-1\"\n";
        let vars = parse_exports(out).unwrap();
        assert_eq!(
            vars,
            vec![
                (KINESIS_VAR.to_owned(), "http://127.0.0.1:4567".to_owned()),
                (DYNAMODB_VAR.to_owned(), "http://127.0.0.1:4568".to_owned()),
                ("AWS_REGION".to_owned(), "us-east-1".to_owned()),
            ]
        );
    }

    #[test]
    fn rejects_stray_output() {
        assert!(parse_exports("installing...\nexport A=b\n").is_err());
        assert!(parse_exports("").is_err());
        assert!(parse_exports("export =x\n").is_err());
    }

    #[test]
    fn script_path_is_in_the_workspace() {
        assert!(script_path().is_file(), "{} missing", script_path().display());
    }
}
