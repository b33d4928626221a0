"""Trace records, their rendering, GPU timelines."""
