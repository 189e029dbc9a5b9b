//! fim-agent: the kube-fim scan engine as a command line tool (AIDE-compatible exit codes).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Args, Parser, Subcommand, ValueEnum};

use fim_engine::config::{Config, ConfigError, ParseContext};
use fim_engine::db::{DbError, DbReader, DbWriter, FORMAT_VERSION, Header};
use fim_engine::hash::Algorithm;
use fim_engine::report::{self, ReportContext};
use fim_engine::scan::{Outcome, ScanError, ScanOptions, scan};

/// AIDE's exit codes for errors (aide(1), EXIT STATUS).
mod exit {
    pub const WRITE_ERROR: u8 = 14;
    pub const INVALID_ARGUMENT: u8 = 15;
    pub const CONFIG_ERROR: u8 = 17;
    pub const IO_ERROR: u8 = 18;
    pub const VERSION_MISMATCH: u8 = 19;
}

#[derive(Parser)]
#[command(
    name = "fim-agent",
    version,
    about = "kube-fim file integrity scanner (AIDE-compatible)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Scan the tree and write a new baseline database.
    Init(InitArgs),
    /// Compare the tree with the baseline. Exit status: 1 added + 2 removed + 4 changed.
    Check(CheckArgs),
    /// Compare like check, then replace the baseline with the current state.
    Update(CheckArgs),
    /// Write an integrity-sum image snapshot: `<hex>  <path>` for every file under the given dirs.
    Snapshot(SnapshotArgs),
    /// Run as the node agent of a FileIntegrity (what the operator's DaemonSet starts).
    Daemon(fim_agent::daemon::DaemonArgs),
}

#[derive(Args)]
struct Common {
    /// Host root that the config's node paths live under.
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// AIDE-syntax config; the built-in default rules when absent.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Baseline database file.
    #[arg(long)]
    db: PathBuf,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Hashing threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args)]
struct InitArgs {
    #[command(flatten)]
    common: Common,
    /// Replace an existing database.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct CheckArgs {
    #[command(flatten)]
    common: Common,
    /// Rehash only files whose size, mtime, ctime or inode changed.
    #[arg(long)]
    incremental: bool,
}

#[derive(Args)]
struct SnapshotArgs {
    /// Directory holding the image's root filesystem.
    #[arg(
        long,
        required_unless_present = "image_archive",
        conflicts_with = "image_archive"
    )]
    root: Option<PathBuf>,
    /// An image archive read in place instead: OCI image layout tar (`skopeo copy … oci-archive:`,
    /// `buildah push … oci-archive:`) or `docker save` tar. No runtime, root or unpacking needed.
    #[arg(long)]
    image_archive: Option<PathBuf>,
    /// Comma-separated directories relative to the root (`app,bin`).
    #[arg(long, value_delimiter = ',', required = true)]
    dir: Vec<String>,
    #[arg(long, default_value = "sha256")]
    algorithm: String,
    /// Output file (default `snapshot.<ALGORITHM>`, or `<NAME>.yaml` with --output-cr); `-` for
    /// standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Image reference the snapshot is of (`registry:5000/app:1`); an OCI archive's manifest
    /// digest is recorded beside it.
    #[arg(long)]
    image: Option<String>,
    /// Write a Snapshot manifest named NAME (for `kubectl apply`) instead of the bare lines.
    #[arg(long, value_name = "NAME", requires = "image")]
    output_cr: Option<String>,
    /// Namespace of the Snapshot (and first component of its object key).
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Write the lines to S3 at the Snapshot's object key; the manifest then references the
    /// object (`spec.source`) instead of carrying it: for snapshots too big for a resource.
    #[arg(long, requires = "output_cr")]
    upload: bool,
    /// Replace an object at the key that holds other data (`--upload`).
    #[arg(long, requires = "upload")]
    force: bool,
    #[command(flatten)]
    s3: fim_agent::snapshot_store::S3Args,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Text,
    Json,
}

/// A failure with the exit code AIDE would use for it.
struct Failure {
    code: u8,
    message: String,
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure {
            code: exit::CONFIG_ERROR,
            message: format!("config error: {e}"),
        }
    }
}

impl From<DbError> for Failure {
    fn from(e: DbError) -> Self {
        let code = match e {
            DbError::Version { .. } => exit::VERSION_MISMATCH,
            DbError::Write { .. } => exit::WRITE_ERROR,
            DbError::Open { .. } | DbError::Corrupt { .. } => exit::IO_ERROR,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

impl From<ScanError> for Failure {
    fn from(e: ScanError) -> Self {
        match e {
            ScanError::Db(e) => e.into(),
            ScanError::Root { .. } | ScanError::Threads(_) | ScanError::ScopedBaseline => Failure {
                code: exit::INVALID_ARGUMENT,
                message: e.to_string(),
            },
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(exit::INVALID_ARGUMENT);
        }
    };
    match run(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("fim-agent: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn run(command: Command) -> Result<u8, Failure> {
    match command {
        Command::Init(c) => run_scan("init", &c.common, false, c.force),
        Command::Check(c) => run_scan("check", &c.common, c.incremental, false),
        Command::Update(c) => run_scan("update", &c.common, c.incremental, false),
        Command::Snapshot(s) => run_snapshot(&s),
        Command::Daemon(d) => run_daemon(d),
    }
}

fn run_daemon(args: fim_agent::daemon::DaemonArgs) -> Result<u8, Failure> {
    use tracing_subscriber::{EnvFilter, layer::SubscriberExt, reload, util::SubscriberInitExt};
    let level = |debug: bool| if debug { "debug" } else { "info" };
    // RUST_LOG, when set, fixes the filter; otherwise spec.debug switches it live.
    let from_env = EnvFilter::try_from_default_env().ok();
    let fixed = from_env.is_some();
    let (filter, handle) =
        reload::Layer::new(from_env.unwrap_or_else(|| EnvFilter::new(level(args.debug))));
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer())
        .init();
    let set_debug: Option<fim_agent::daemon::SetDebug> = (!fixed).then(|| {
        std::sync::Arc::new(move |debug: bool| {
            if let Err(e) = handle.reload(EnvFilter::new(level(debug))) {
                tracing::warn!("cannot change the log level: {e}");
            }
        }) as fim_agent::daemon::SetDebug
    });
    // kube's rustls needs one process-wide crypto provider.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure {
            code: exit::INVALID_ARGUMENT,
            message: format!("cannot start the runtime: {e}"),
        })?;
    runtime
        .block_on(fim_agent::daemon::run(args, set_debug))
        .map(|()| 0)
        .map_err(|e| Failure {
            code: exit::INVALID_ARGUMENT,
            message: e.to_string(),
        })
}

fn load_config(c: &Common) -> Result<Config, Failure> {
    let ctx = ParseContext::from_environment(Some(c.root.clone()));
    Ok(match &c.config {
        Some(path) => Config::from_file(path, &ctx)?,
        None => Config::default_rules(&ctx),
    })
}

fn run_scan(command: &str, c: &Common, incremental: bool, force: bool) -> Result<u8, Failure> {
    let started = SystemTime::now();
    let config = load_config(c)?;
    let mut opts = ScanOptions::new(&c.root);
    opts.incremental = incremental;
    opts.progress = fim_agent::progress::terminal_bar();
    if let Some(t) = c.threads {
        opts.threads = t.max(1);
    }
    let baseline = match command {
        "init" => {
            if c.db.exists() && !force {
                return Err(Failure {
                    code: exit::INVALID_ARGUMENT,
                    message: format!(
                        "database {} already exists; use `update`, or `init --force` to replace it",
                        c.db.display()
                    ),
                });
            }
            None
        }
        _ => Some(DbReader::open(&c.db)?),
    };
    if let Some(b) = &baseline {
        if b.header.config_digest != config.digest() {
            eprintln!(
                "fim-agent: note: the config changed since the baseline was written; entries the new rules no longer select are ignored"
            );
        }
        let root = c.root.display().to_string();
        if b.header.root != root {
            eprintln!(
                "fim-agent: warning: the baseline was written for root {}, this check reads {root}",
                b.header.root
            );
        }
    }
    let output = match command {
        "check" => None,
        _ => Some(DbWriter::create(&c.db, &header(&config, &c.root))?),
    };
    let outcome = scan(&config, &opts, baseline, output)?;
    print_report(command, c, &outcome, started)?;
    Ok(if command == "init" {
        0
    } else {
        outcome.exit_bits() as u8
    })
}

fn header(config: &Config, root: &Path) -> Header {
    Header {
        format_version: FORMAT_VERSION,
        created: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default(),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        config_digest: config.digest(),
        root: root.display().to_string(),
    }
}

fn print_report(
    command: &str,
    c: &Common,
    outcome: &Outcome,
    started: SystemTime,
) -> Result<(), Failure> {
    let ctx = ReportContext {
        command,
        root: &c.root.display().to_string(),
        database: &c.db.display().to_string(),
        started,
    };
    let text = match c.format {
        Format::Text => report::text(outcome, &ctx),
        Format::Json => format!("{:#}\n", report::json(outcome, &ctx)),
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush())
        .map_err(|e| Failure {
            code: exit::WRITE_ERROR,
            message: format!("cannot write the report: {e}"),
        })
}

fn run_snapshot(s: &SnapshotArgs) -> Result<u8, Failure> {
    use fim_agent::snapshot_store::{self as store, ManifestInput};
    let invalid = |message: String| Failure {
        code: exit::INVALID_ARGUMENT,
        message,
    };
    let algorithm: Algorithm = s
        .algorithm
        .parse()
        .map_err(|e: fim_engine::hash::UnknownAlgorithm| invalid(e.to_string()))?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let (data, archive_digest) = match (&s.root, &s.image_archive) {
        (_, Some(archive)) => {
            let snap = fim_engine::image::archive::snapshot_archive(archive, &s.dir, algorithm)
                .map_err(|e| invalid(e.to_string()))?;
            (snap.text, snap.digest)
        }
        (Some(root), None) => (
            fim_engine::snapshot::snapshot(root, &s.dir, algorithm, threads)
                .map_err(|e| invalid(e.to_string()))?,
            None,
        ),
        (None, None) => return Err(invalid("--root or --image-archive is required".into())),
    };
    let mut body = data.into_bytes();
    let mut default_out = format!("snapshot.{}", algorithm.upper_name());
    if let Some(name) = &s.output_cr {
        let image = s.image.as_deref().unwrap_or_default();
        let reference =
            fim_engine::image::ImageRef::parse(image).map_err(|e| invalid(e.to_string()))?;
        // The archive's digest must be the one the reference pins, if it pins one.
        if let (Some(pinned), Some(found)) = (&reference.digest, &archive_digest)
            && pinned != found
        {
            return Err(invalid(format!(
                "--image pins {pinned}, but the archive holds {found}"
            )));
        }
        let crd_algorithm: kube_fim_crds::Algorithm = algorithm
            .upper_name()
            .parse()
            .map_err(|e: kube_fim_crds::UnknownAlgorithm| invalid(format!("--output-cr: {e}")))?;
        let input = ManifestInput {
            name,
            namespace: &s.namespace,
            image,
            image_digest: archive_digest
                .as_deref()
                .filter(|_| reference.digest.is_none()),
            algorithm: crd_algorithm,
        };
        let source = if s.upload {
            Some(upload(&input, &body, s)?)
        } else {
            None
        };
        body = store::manifest(&input, &body, source).into_bytes();
        default_out = format!("{name}.yaml");
    } else if s.image.is_some() {
        eprintln!("fim-agent: note: --image is recorded only in a manifest (--output-cr)");
    }
    let out = s.out.clone().unwrap_or_else(|| PathBuf::from(default_out));
    let write_err = |e: std::io::Error| Failure {
        code: exit::WRITE_ERROR,
        message: format!("cannot write {}: {e}", out.display()),
    };
    if out.as_os_str() == "-" {
        std::io::stdout().write_all(&body).map_err(write_err)?;
    } else {
        std::fs::write(&out, body).map_err(write_err)?;
        eprintln!("created {}", out.display());
    }
    Ok(0)
}

/// `--upload`: writes the lines at the Snapshot's key (refusing to replace other data unless
/// `--force`) and returns the `spec.source` pointing at them.
fn upload(
    input: &fim_agent::snapshot_store::ManifestInput<'_>,
    data: &[u8],
    s: &SnapshotArgs,
) -> Result<kube_fim_crds::SnapshotSource, Failure> {
    use fim_agent::snapshot_store as store;
    let fail = |message: String| Failure {
        code: exit::WRITE_ERROR,
        message,
    };
    let key = store::upload_key(input).map_err(|e| fail(e.to_string()))?;
    let sha256 = store::sha256_hex(data);
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        let bucket = store::store(&s.s3).map_err(|e| fail(e.to_string()))?;
        if let Some(existing) = bucket.get(&key).await.map_err(|e| fail(e.to_string()))?
            && store::sha256_hex(&existing) != sha256
            && !s.force
        {
            return Err(fail(format!(
                "s3://{}/{key} already holds other data; --force replaces it",
                bucket.name
            )));
        }
        bucket
            .put(&key, data.to_vec())
            .await
            .map_err(|e| fail(e.to_string()))?;
        eprintln!("uploaded s3://{}/{key} ({} bytes)", bucket.name, data.len());
        Ok(kube_fim_crds::SnapshotSource { key, sha256 })
    })
}
