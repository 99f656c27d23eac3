//! Logging of every binary, set up in this one place: log lines go to stderr (stdout is for
//! data), filtered by `RUST_LOG` (each binary has its default), as text or as JSON.
//!
//! - `--log-format text` (the default): human-readable lines, coloured only when stderr is a
//!   terminal and `NO_COLOR` is not set (to anything but the empty string, as
//!   <https://no-color.org> asks); in a file, a pipe or the journal there are no escape codes.
//! - `--log-format json`: one JSON object per line, as tracing-subscriber writes them:
//!   `timestamp`, `level`, `fields` (with `message`), `target`, and the spans. The lines the
//!   binaries print for their user on stderr (the final error, the status page's address) are
//!   JSON objects of the same shape then, so that every line of stderr is one.
//!
//! `KCL_LOG_FORMAT=json` in the environment does what the flag does.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

use aws_smithy_types::date_time::Format;
use aws_smithy_types::DateTime;

/// How log lines are written on stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people; coloured only on a terminal, and never with `NO_COLOR` set.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields`, `target`, spans).
    Json,
}

/// The logging flags every binary takes (`#[command(flatten)]` in its arguments).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct LogArgs {
    /// Log lines on stderr: text (coloured only on a terminal, never with NO_COLOR set) or json
    /// (one JSON object per line, for log pipelines). RUST_LOG chooses what is logged.
    #[arg(
        long,
        value_enum,
        value_name = "FORMAT",
        env = "KCL_LOG_FORMAT",
        default_value_t,
        global = true
    )]
    pub log_format: LogFormat,
}

/// What [`init`] chose: the program's name and the format, for [`print_error`] and [`notice`].
static CHOSEN: OnceLock<(&'static str, LogFormat)> = OnceLock::new();

/// Whether text logs may be coloured: only on a terminal, and not with `NO_COLOR` set (to a
/// non-empty value).
pub fn use_colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Sets logging up for the program `program` (its name, the `target` of the lines [`notice`]
/// and [`print_error`] write in JSON): to stderr, filtered by `RUST_LOG`, by default
/// `default_filter` (the SDK's probing of IMDS for a region is kept quiet), in the format of
/// `args`. Call it once, after the arguments are parsed.
pub fn init(program: &'static str, default_filter: &str, args: &LogArgs) {
    let format = args.log_format;
    let _ = CHOSEN.set((program, format));
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{default_filter},aws_config=error")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A line that cannot be written (stderr closed: the reader of the pipe is gone) is
        // dropped; by default the subscriber reports it with `eprintln!`, which panics then
        // and takes down the task that logged.
        .log_internal_errors(false);
    match format {
        LogFormat::Text => {
            let colour = use_colour(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            );
            builder.with_ansi(colour).init();
        }
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

fn chosen() -> (&'static str, LogFormat) {
    CHOSEN.get().copied().unwrap_or(("kcl", LogFormat::Text))
}

/// One line of stderr in the JSON format of the logs.
fn json_line(level: &str, target: &str, message: &str) -> String {
    let timestamp = DateTime::from(std::time::SystemTime::now())
        .fmt(Format::DateTime)
        .unwrap_or_default();
    serde_json::json!({
        "timestamp": timestamp,
        "level": level,
        "fields": { "message": message },
        "target": target,
    })
    .to_string()
}

/// Writes a line for the program's user on stderr, whatever `RUST_LOG` says: as it is with
/// text logs, as an `INFO` JSON object with JSON logs.
pub fn notice(message: &str) {
    let (program, format) = chosen();
    let line = match format {
        LogFormat::Text => message.to_owned(),
        LogFormat::Json => json_line("INFO", program, message),
    };
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// An error with its causes, on one line, each message once, never a `Debug` dump
/// ([`kcl_core::ErrorChain`]).
pub fn error_text(error: &anyhow::Error) -> String {
    let error: &(dyn std::error::Error + 'static) = error.as_ref();
    kcl_core::ErrorChain(error).to_string()
}

/// Writes the error that ends the program on stderr, whatever `RUST_LOG` says: `error: ` and
/// the error with its causes, on one line, with text logs; an `ERROR` JSON object with JSON
/// logs.
pub fn print_error(error: &anyhow::Error) {
    let (program, format) = chosen();
    let message = error_text(error);
    let line = match format {
        LogFormat::Text => format!("error: {message}"),
        LogFormat::Json => json_line("ERROR", program, &message),
    };
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(use_colour(true, None));
        assert!(
            use_colour(true, Some(OsStr::new(""))),
            "an empty NO_COLOR is not set"
        );
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(false, None));
        assert!(!use_colour(false, Some(OsStr::new("1"))));
    }

    #[test]
    fn json_lines_have_the_shape_of_the_logs() {
        let line = json_line("ERROR", "kcl-tail", "a \"quoted\"\nmessage");
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(v["level"], "ERROR");
        assert_eq!(v["target"], "kcl-tail");
        assert_eq!(v["fields"]["message"], "a \"quoted\"\nmessage");
        assert!(v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{v}");
    }
}
