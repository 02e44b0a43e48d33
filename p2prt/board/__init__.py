"""The message board: accounts, clusters, leases."""
