//! The stockmesh gRPC contracts, generated from `proto/` at build time.
//!
//! `proto/` is the only source of truth; nothing here is written by hand
//! except these module declarations.

/// `stockmesh.inventory.v1`: stock and reservations.
pub mod inventory {
    pub mod v1 {
        tonic::include_proto!("stockmesh.inventory.v1");
    }
}

/// `stockmesh.product.v1`: the catalog as other services read it.
pub mod product {
    pub mod v1 {
        tonic::include_proto!("stockmesh.product.v1");
    }
}

/// Encoded `FileDescriptorSet` of every contract, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("stockmesh_descriptor");
