//! Logging setup: tracing events as text or JSON Lines (`--log-format`), on stderr
//! written through the progress display so that log lines never tear the bars, and
//! optionally into an owner-only file (`--log-file`).
//!
//! A JSON line is one flat object: `timestamp` (RFC 3339, UTC), `level`, `target`,
//! `message`, then the event's own fields. The executor's per-request event
//! (`keyfleet::request`, info) carries `run`, `job`, `action`, `region`, `endpoint`,
//! `request_id`, `code`, `latency_ms` and `attempt`. Events never carry a secret: the
//! SecretKey is a `Secret` (printed `***`) and no event names it.

use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, bail};
use indicatif::MultiProgress;
use tracing::field::{Field, Visit};
use tracing_indicatif::writer::{IndicatifWriter, Stderr};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use super::term::Env;
use crate::GlobalArgs;

static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// The process's one set of progress bars; log lines suspend them while printing.
pub(crate) fn bars() -> MultiProgress {
    BARS.get_or_init(MultiProgress::new).clone()
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people.
    Text,
    /// JSON Lines: one object per event, for log shippers.
    Json,
}

/// The filter for a sink: `RUST_LOG` when set, else `-v`'s level, at least `floor`
/// (0 warn, 1 info, ...).
fn filter(verbose: u8, floor: u8) -> EnvFilter {
    if let Ok(filter) = EnvFilter::try_from_default_env() {
        return filter;
    }
    EnvFilter::new(match verbose.max(floor) {
        // sqlx warns about slow statements (a busy lock, a large plan): noise to an operator.
        0 => "warn,sqlx=error",
        1 => "warn,keyfleet=info,sqlx=error",
        2 => "warn,keyfleet=debug,sqlx=error",
        _ => "warn,keyfleet=trace,sqlx=error",
    })
}

/// Installs the global subscriber. Without `--log-file`, events go to stderr in
/// `--log-format` (text at warn by default; JSON at info, as log shippers want every
/// request). With it, they go to the file in that format (info or more) and stderr
/// stays the operator's: text, warnings only unless `-v`, beside the progress bars.
pub(crate) fn init(global: &GlobalArgs) -> anyhow::Result<()> {
    let verbose = global.verbose;
    let stderr_writer = IndicatifWriter::<Stderr>::new(bars());
    let stderr_format = if global.log_file.is_some() {
        LogFormat::Text
    } else {
        global.log_format
    };
    let stderr = match stderr_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(stderr_writer)
            .with_ansi(Env::stderr().colour())
            .with_filter(filter(verbose, 0))
            .boxed(),
        LogFormat::Json => JsonLines::new(stderr_writer)
            .with_filter(filter(verbose, 1))
            .boxed(),
    };
    let file = match &global.log_file {
        None => None,
        Some(path) => {
            let file = open_log_file(path)?;
            let writer = Mutex::new(file);
            Some(match global.log_format {
                LogFormat::Text => tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .with_ansi(false)
                    .with_filter(filter(verbose, 1))
                    .boxed(),
                LogFormat::Json => JsonLines::new(writer)
                    .with_filter(filter(verbose, 1))
                    .boxed(),
            })
        }
    };
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .try_init();
    Ok(())
}

/// Opens (creating mode 0600) the log file for appending. A symlink is refused, and
/// so is a file others may read: a log names instances, keys and endpoints.
fn open_log_file(path: &Path) -> anyhow::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    let file = options
        .open(path)
        .with_context(|| format!("cannot open --log-file {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let meta = file
            .metadata()
            .with_context(|| format!("cannot inspect --log-file {}", path.display()))?;
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        if !meta.is_file() {
            bail!("--log-file {}: not a regular file", path.display());
        }
        if meta.uid() != uid || meta.mode() & 0o077 != 0 {
            bail!(
                "--log-file {}: others may read or write it (mode {:o}, owner {}); the log \
                 names instances, keys and endpoints: chmod 600 it, or name a new file",
                path.display(),
                meta.mode() & 0o777,
                meta.uid()
            );
        }
    }
    Ok(file)
}

/// A layer writing each event as one JSON object on one line.
struct JsonLines<W> {
    writer: W,
}

impl<W> JsonLines<W> {
    fn new(writer: W) -> JsonLines<W> {
        JsonLines { writer }
    }
}

/// Collects an event's fields into a JSON object, numbers and booleans kept typed.
struct Fields(serde_json::Map<String, serde_json::Value>);

impl Visit for Fields {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.0.insert(field.name().into(), text.into());
    }
}

/// The line for one event (without the newline).
fn json_line(event: &tracing::Event<'_>, now: time::OffsetDateTime) -> String {
    let mut fields = Fields(serde_json::Map::new());
    event.record(&mut fields);
    let timestamp = now
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let meta = event.metadata();
    let mut object = serde_json::Map::new();
    object.insert("timestamp".into(), timestamp.into());
    object.insert("level".into(), meta.level().as_str().into());
    object.insert("target".into(), meta.target().into());
    let message = fields.0.remove("message").unwrap_or_default();
    object.insert("message".into(), message);
    object.extend(fields.0);
    serde_json::Value::Object(object).to_string()
}

impl<S, W> Layer<S> for JsonLines<W>
where
    S: tracing::Subscriber,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + 'static,
{
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: LayerContext<'_, S>) {
        let mut line = json_line(event, time::OffsetDateTime::now_utc());
        line.push('\n');
        let _ = self.writer.make_writer().write_all(line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for Captured {
        type Writer = Captured;
        fn make_writer(&'w self) -> Captured {
            self.clone()
        }
    }

    #[test]
    fn an_event_is_one_flat_json_object_with_typed_fields() {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::registry().with(JsonLines::new(captured.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                target: "keyfleet::request",
                run = 3,
                job = 17,
                action = "DisassociateInstancesKeyPairs",
                code = "RequestLimitExceeded",
                latency_ms = 42,
                retried = true,
                "request \"refused\"\nagain"
            );
        });
        let bytes = captured.0.lock().unwrap().clone();
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        let line: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["target"], "keyfleet::request");
        assert_eq!(line["run"], 3);
        assert_eq!(line["job"], 17);
        assert_eq!(line["latency_ms"], 42);
        assert_eq!(line["retried"], true);
        assert_eq!(line["code"], "RequestLimitExceeded");
        assert_eq!(line["message"], "request \"refused\"\nagain");
        let timestamp = line["timestamp"].as_str().unwrap();
        assert!(timestamp.ends_with('Z'), "UTC: {timestamp}");
    }

    #[test]
    fn a_log_file_is_created_owner_only_and_a_shared_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyfleet.log");
        drop(open_log_file(&path).unwrap());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = open_log_file(&path).unwrap_err().to_string();
            assert!(err.contains("others may read"), "{err}");
            let link = dir.path().join("link.log");
            std::os::unix::fs::symlink(&path, &link).unwrap();
            assert!(open_log_file(&link).is_err());
        }
    }
}
