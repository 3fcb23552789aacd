"""flexingest: declarative ingestion pipelines over cloud buckets."""

__version__ = "0.1.0"
