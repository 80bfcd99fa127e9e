"""SSH to instances: host-key policy, a connection pool with SFTP, remote commands."""
