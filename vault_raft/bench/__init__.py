"""``vault-raft bench``: commit latency and throughput next to etcd, raw pysyncobj and the
disk floor."""
