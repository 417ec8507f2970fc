"""Device runtime: model manager, inference service, cascade, store-and-forward queue, sync."""
