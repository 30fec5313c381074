//! Locates the `pillion` binary, building it once per test process so it is never stale.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

static BIN: OnceLock<PathBuf> = OnceLock::new();

/// The path of a freshly built `target/debug/pillion`.
///
/// The first caller runs `$CARGO build -p pillion --bin pillion` into the same target directory
/// as the running test executable; later callers reuse the result.
pub fn pillion_bin() -> &'static Path {
    BIN.get_or_init(|| {
        let target = target_dir();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(&cargo)
            .args(["build", "-p", "pillion", "--bin", "pillion", "--target-dir"])
            .arg(&target)
            .output()
            .unwrap_or_else(|e| panic!("running {cargo:?} build: {e}"));
        assert!(
            out.status.success(),
            "cargo build -p pillion failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = target.join("debug").join("pillion");
        assert!(bin.exists(), "{} missing after build", bin.display());
        bin
    })
}

/// The target directory: the test executable lives in `<target>/debug/deps/`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .nth(3)
        .expect("test executable is in <target>/debug/deps")
        .to_path_buf()
}
