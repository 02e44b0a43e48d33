"""The worker role: lends this machine's CPUs to a cluster."""
