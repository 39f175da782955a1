//! Prints every object the operator would create for an InventorySystem
//! manifest, as multi-document YAML:
//!
//!     cargo run -q -p stockmesh-operator --bin render -- k8s/examples/full.yaml [--namespace shop] [--redact]
//!
//! No cluster is involved: generated Secrets get fresh random values (or
//! `REDACTED` with `--redact`), an external database/broker Secret is stood in
//! for by placeholder URLs, and the owner UID is a fixed placeholder.

use anyhow::{Context as _, bail};
use stockmesh_operator::render::{RenderOptions, render_yaml};

const USAGE: &str = "usage: render <inventorysystem.yaml> [--namespace NS] [--redact]";

fn main() -> anyhow::Result<()> {
    let mut path = None;
    let mut opts = RenderOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            "--namespace" | "-n" => opts.namespace = Some(args.next().context(USAGE)?),
            "--redact" => opts.redact = true,
            other if path.is_none() && !other.starts_with('-') => path = Some(other.to_owned()),
            other => bail!("unexpected argument {other:?}\n{USAGE}"),
        }
    }
    let path = path.context(USAGE)?;
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    print!("{}", render_yaml(&text, &opts)?);
    Ok(())
}
