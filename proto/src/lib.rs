//! lambdarec contracts: the gRPC API (`lambdarec.v1`), the model bundle format that the trainer
//! writes and the server reads, and the event archive (the master dataset) that the server's
//! archiver writes and the trainer reads, over any `object_store` (local, memory, S3, GCS, Azure).

pub mod archive;
pub mod bundle;

/// Generated messages, `recommender_client` and `recommender_server` for package `lambdarec.v1`.
pub mod v1 {
    tonic::include_proto!("lambdarec.v1");
}

/// Encoded `FileDescriptorSet` of `lambdarec.v1`, for `tonic-reflection`'s
/// `register_encoded_file_descriptor_set`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("lambdarec_descriptor");

pub use bundle::{
    Bundle, BundleError, Dims, FORMAT_VERSION, FileEntry, ItemTable, Manifest, Store, Tensor,
};

#[cfg(test)]
mod tests {
    use super::v1;

    #[test]
    fn descriptor_set_describes_the_service() {
        let haystack = String::from_utf8_lossy(super::FILE_DESCRIPTOR_SET);
        for needle in [
            "lambdarec.v1",
            "Recommender",
            "StreamEvents",
            "ModelInfoResponse",
        ] {
            assert!(haystack.contains(needle), "{needle}");
        }
    }

    #[test]
    fn generated_types_keep_the_contract() {
        assert_eq!(v1::ErrorCode::Ok as i32, 0);
        assert_eq!(v1::ErrorCode::UnknownItem as i32, 1);
        assert_eq!(v1::ErrorCode::Internal as i32, 4);
        // Unset optionals stay distinguishable from their zero values (exclude_seen defaults to true).
        let request = v1::RecommendRequest::default();
        assert_eq!(request.exclude_seen, None);
        assert_eq!(v1::ReloadRequest::default().version, None);
        let ack = v1::EventAck {
            code: v1::ErrorCode::Overloaded.into(),
            ..Default::default()
        };
        assert_eq!(ack.code(), v1::ErrorCode::Overloaded);
    }
}
