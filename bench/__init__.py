"""Standard workloads (../shared/BENCH.md) for HotMesh and its peers, on one PostgreSQL."""
