//! Writes the OLM bundle (`bundle/`) from config/ (see `kube_fim_crds::bundle`).
//!
//! Usage: `bundlegen [--out DIR] [--version X.Y.Z] [--replaces CSV] [--skip-range RANGE]
//! [--channels a,b] [--operator-image IMG] [--agent-image IMG]`. Without options it writes the
//! committed bundle: <workspace>/bundle for this workspace's version. The e2e upgrade test uses
//! the options to build a second version into a temporary directory.

use std::{
    fs,
    path::{Path, PathBuf},
    process::ExitCode,
};

use kube_fim_crds::bundle::{BundleOptions, generate};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bundlegen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let root = workspace_root();
    let mut out = root.join("bundle");
    let mut opts = BundleOptions::for_version(env!("CARGO_PKG_VERSION"));
    let mut skip_range_set = false;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            println!(
                "usage: bundlegen [--out DIR] [--version X.Y.Z] [--replaces CSV] [--skip-range RANGE] \
                 [--channels a,b] [--operator-image IMG] [--agent-image IMG]"
            );
            return Ok(());
        }
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--out" => out = PathBuf::from(value),
            "--version" => opts.version = value,
            "--replaces" => opts.replaces = Some(value),
            "--skip-range" => {
                opts.skip_range = (!value.is_empty()).then_some(value);
                skip_range_set = true;
            }
            "--channels" => opts.channels = value.split(',').map(str::to_owned).collect(),
            "--operator-image" => opts.operator_image = Some(value),
            "--agent-image" => opts.agent_image = Some(value),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if !skip_range_set {
        opts.skip_range = Some(format!("<{}", opts.version));
    }
    let read = |p: &str| fs::read_to_string(root.join(p)).map_err(|e| e.to_string());
    let files = generate(&read, &opts).map_err(|e| e.to_string())?;
    // Stale manifests (a renamed object) must not stay behind.
    let manifests = out.join("manifests");
    if let Ok(entries) = fs::read_dir(&manifests) {
        for entry in entries.flatten() {
            let rel = format!("manifests/{}", entry.file_name().to_string_lossy());
            if !files.iter().any(|(name, _)| *name == rel) {
                fs::remove_file(entry.path()).map_err(|e| format!("{rel}: {e}"))?;
                println!("removed {}", entry.path().display());
            }
        }
    }
    for (name, content) in files {
        let path = out.join(&name);
        if fs::read_to_string(&path).is_ok_and(|old| old == content) {
            continue;
        }
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        fs::write(&path, content).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crds/ is inside the workspace")
}
