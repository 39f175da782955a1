//! `stockmesh-keygen DIR`: writes a fresh Ed25519 pair as DIR/private.pem
//! (mode 0600) and DIR/public.pem, for local runs. Existing files are kept.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: stockmesh-keygen DIR");
        return ExitCode::from(2);
    };
    let private = dir.join("private.pem");
    let public = dir.join("public.pem");
    if private.exists() && public.exists() {
        return ExitCode::SUCCESS;
    }
    let result = (|| -> anyhow::Result<()> {
        let (private_pem, public_pem) = stockmesh_platform::auth::generate_keypair()?;
        std::fs::create_dir_all(&dir)?;
        write_private(&private, &private_pem)?;
        std::fs::write(&public, public_pem)?;
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("stockmesh-keygen: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(unix)]
fn write_private(path: &std::path::Path, pem: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(pem.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &std::path::Path, pem: &str) -> std::io::Result<()> {
    std::fs::write(path, pem)
}
