"""Ray Data pipelines. Each job wraps a Ray-free runner as a ``map_batches`` callable class."""
