"""Reading: storage (local and S3), frame-exact video decoding, manifests. No Ray, no torch."""
