//! Generates Rust code for every contract under `proto/` with the vendored
//! protoc (no system protoc needed), plus one file descriptor set that the
//! gRPC servers hand to the reflection service.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };

    // Read at run time, not with `env!`: cargo may reuse a compiled build
    // script for a checkout at another path.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        root.join("stockmesh/inventory/v1/inventory.proto"),
        root.join("stockmesh/product/v1/product.proto"),
    ];
    let out = PathBuf::from(std::env::var("OUT_DIR")?);

    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("stockmesh_descriptor.bin"))
        .compile_protos(&files, std::slice::from_ref(&root))?;

    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
