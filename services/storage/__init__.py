"""The storage service: images in MinIO and their metadata in MongoDB."""
