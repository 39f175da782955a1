//! Prints the InventorySystem CRD as YAML (`make crd` writes it to
//! `k8s/crd/inventorysystem.yaml`).

fn main() -> anyhow::Result<()> {
    print!("{}", stockmesh_operator::crd::crd_yaml()?);
    Ok(())
}
