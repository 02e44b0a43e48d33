"""The client role: owns tasks and their results, leases workers, dispatches directly."""
