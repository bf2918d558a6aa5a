"""Development helpers (local S3, benchmarks, data preparation); importable by the tests."""
