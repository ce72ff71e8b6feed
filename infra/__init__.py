"""What runs darkroom's infrastructure locally: Kafka, MinIO, FerretDB, topics, the stack."""
