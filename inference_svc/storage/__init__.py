"""Object storage (S3, GCS, Azure Blob through obstore): bucket URIs, the stores that serve
them, and the durable upload queue behind the evidence archive and the result export."""
